// NVML joined to the hwloc/sysfs model by PCI address (Debian's hwloc has no NVML plugin). Errors degrade:
// a lost GPU keeps what hwloc and sysfs know; a call NVML does not support on a GPU leaves that field empty;
// a missing optional symbol turns its feature off. Each becomes one warning naming what is missing.

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <array>
#include <cstring>
#include <map>
#include <set>

#include "collectors/topology/topology_sources.hpp"

namespace tally::collectors {
namespace {

std::string text(const char* buffer, std::size_t size) { return std::string(buffer, strnlen(buffer, size)); }

std::optional<PciAddress> address_of(const nvmlPciInfo_t& pci) {
  return PciAddress::parse(text(pci.busId, sizeof(pci.busId)));
}

class NvmlJoin {
 public:
  NvmlJoin(Topology& topology, const NvmlLibrary& nvml) : topology_(topology), nvml_(nvml), api_(nvml.api()) {}

  void run() {
    topology_.nvml_driver_version = nvml_.driver_version();
    if (const auto missing = nvml_.missing_optional(kNvmlTopology); !missing.empty()) {
      add_warning(topology_, fmt::format("NVML library {} lacks {}: those details are not reported", nvml_.path(),
                                         fmt::join(missing, ", ")));
    }
    unsigned count = 0;
    if (const nvmlReturn_t status = api_.nvmlDeviceGetCount_v2(&count); status != NVML_SUCCESS) {
      add_warning(topology_, fmt::format("NVML nvmlDeviceGetCount_v2: {}; GPUs shown without NVML details",
                                         nvml_.error_string(status)));
      return;
    }
    std::vector<std::pair<nvmlDevice_t, Device*>> joined;
    for (unsigned index = 0; index < count; ++index) {
      nvmlDevice_t handle = nullptr;
      if (const nvmlReturn_t status = api_.nvmlDeviceGetHandleByIndex_v2(index, &handle); status != NVML_SUCCESS) {
        problem(fmt::format("NVML device {}", index), "nvmlDeviceGetHandleByIndex_v2", status);
        continue;
      }
      nvmlPciInfo_t pci{};
      if (const nvmlReturn_t status = api_.nvmlDeviceGetPciInfo_v3(handle, &pci); status != NVML_SUCCESS) {
        problem(fmt::format("NVML device {}", index), "nvmlDeviceGetPciInfo_v3", status);
        continue;
      }
      const auto address = address_of(pci);
      Device* device = address ? find(*address) : nullptr;
      if (device == nullptr) {
        unmatched_.push_back(text(pci.busId, sizeof(pci.busId)));
        continue;
      }
      device->kind = DeviceKind::gpu;  // NVML says so, whatever the PCI class claimed
      if (device->vendor_id == 0) device->vendor_id = static_cast<std::uint16_t>(pci.pciDeviceId & 0xffff);
      if (device->device_id == 0) device->device_id = static_cast<std::uint16_t>(pci.pciDeviceId >> 16);
      if (read_device(handle, *device)) joined.emplace_back(handle, device);
    }
    read_p2p(joined);
    report();
  }

 private:
  Device* find(const PciAddress& address) {
    for (Device& device : topology_.devices) {
      if (device.address == address) return &device;
    }
    return nullptr;
  }

  // Records a failed call; returns false when the GPU is lost (stop asking it anything).
  bool problem(const std::string& who, const char* call, nvmlReturn_t status) {
    if (status == NVML_ERROR_GPU_IS_LOST) {
      lost_.push_back(who);
      return false;
    }
    failures_[fmt::format("{} ({})", call, nvml_.error_string(status))].push_back(who);
    return true;
  }

  // Records a failed call on `device`; false when the GPU is lost (marked so), true to go on.
  bool keep_going(Device& device, const char* call, nvmlReturn_t status) {
    if (problem(device.address.to_string(), call, status)) return true;
    device.lost = true;
    return false;
  }

  // Returns false when the GPU turned out to be lost.
  bool read_device(nvmlDevice_t handle, Device& device) {
    if (api_.nvmlDeviceGetUUID != nullptr) {
      std::array<char, NVML_DEVICE_UUID_V2_BUFFER_SIZE> uuid{};
      const nvmlReturn_t status = api_.nvmlDeviceGetUUID(handle, uuid.data(), uuid.size());
      if (status == NVML_SUCCESS) {
        device.uuid = text(uuid.data(), uuid.size());
      } else if (!keep_going(device, "nvmlDeviceGetUUID", status)) {
        return false;
      }
    }
    if (api_.nvmlDeviceGetName != nullptr) {
      std::array<char, NVML_DEVICE_NAME_V2_BUFFER_SIZE> name{};
      const nvmlReturn_t status = api_.nvmlDeviceGetName(handle, name.data(), name.size());
      if (status == NVML_SUCCESS) {
        device.model = text(name.data(), name.size());
      } else if (!keep_going(device, "nvmlDeviceGetName", status)) {
        return false;
      }
    }
    if (api_.nvmlDeviceGetMemoryInfo != nullptr) {
      nvmlMemory_t memory{};
      const nvmlReturn_t status = api_.nvmlDeviceGetMemoryInfo(handle, &memory);
      if (status == NVML_SUCCESS) {
        device.memory_bytes = memory.total;
      } else if (!keep_going(device, "nvmlDeviceGetMemoryInfo", status)) {
        return false;
      }
    }
    if (!read_mig(handle, device)) return false;
    return read_nvlinks(handle, device);
  }

  bool read_mig(nvmlDevice_t handle, Device& device) {
    if (api_.nvmlDeviceGetMigMode == nullptr) return true;
    unsigned current = 0, pending = 0;
    const nvmlReturn_t status = api_.nvmlDeviceGetMigMode(handle, &current, &pending);
    // NOT_SUPPORTED: a GPU without MIG (before A100): normal, not a warning.
    if (status == NVML_ERROR_NOT_SUPPORTED) return true;
    if (status != NVML_SUCCESS) return keep_going(device, "nvmlDeviceGetMigMode", status);
    device.mig_enabled = current == NVML_DEVICE_MIG_ENABLE;
    if (!*device.mig_enabled || api_.nvmlDeviceGetMaxMigDeviceCount == nullptr ||
        api_.nvmlDeviceGetMigDeviceHandleByIndex == nullptr) {
      return true;
    }
    unsigned max = 0;
    if (api_.nvmlDeviceGetMaxMigDeviceCount(handle, &max) != NVML_SUCCESS) return true;
    for (unsigned index = 0; index < max; ++index) {
      nvmlDevice_t mig = nullptr;
      // NOT_FOUND: no MIG device at this index (instances need not be contiguous).
      if (api_.nvmlDeviceGetMigDeviceHandleByIndex(handle, index, &mig) != NVML_SUCCESS) continue;
      MigInstance instance;
      if (api_.nvmlDeviceGetGpuInstanceId != nullptr) api_.nvmlDeviceGetGpuInstanceId(mig, &instance.gpu_instance_id);
      if (api_.nvmlDeviceGetComputeInstanceId != nullptr) {
        api_.nvmlDeviceGetComputeInstanceId(mig, &instance.compute_instance_id);
      }
      if (api_.nvmlDeviceGetUUID != nullptr) {
        std::array<char, NVML_DEVICE_UUID_V2_BUFFER_SIZE> uuid{};
        if (api_.nvmlDeviceGetUUID(mig, uuid.data(), uuid.size()) == NVML_SUCCESS) {
          instance.uuid = text(uuid.data(), uuid.size());
        }
      }
      if (api_.nvmlDeviceGetMemoryInfo != nullptr) {
        nvmlMemory_t memory{};
        if (api_.nvmlDeviceGetMemoryInfo(mig, &memory) == NVML_SUCCESS) instance.memory_bytes = memory.total;
      }
      device.mig_instances.push_back(std::move(instance));
    }
    return true;
  }

  bool read_nvlinks(nvmlDevice_t handle, Device& device) {
    if (api_.nvmlDeviceGetNvLinkState == nullptr) return true;
    std::vector<NvLink> links;
    for (unsigned link = 0; link < NVML_NVLINK_MAX_LINKS; ++link) {
      nvmlEnableState_t active = NVML_FEATURE_DISABLED;
      const nvmlReturn_t status = api_.nvmlDeviceGetNvLinkState(handle, link, &active);
      // NOT_SUPPORTED / INVALID_ARGUMENT: no such link (PCIe-only GPU, or fewer links than the maximum).
      if (status == NVML_ERROR_GPU_IS_LOST) return keep_going(device, "nvmlDeviceGetNvLinkState", status);
      if (status != NVML_SUCCESS) break;
      NvLink nvlink;
      nvlink.link = link;
      nvlink.active = active == NVML_FEATURE_ENABLED;
      if (nvlink.active && api_.nvmlDeviceGetNvLinkRemotePciInfo_v2 != nullptr) {
        nvmlPciInfo_t remote{};
        if (api_.nvmlDeviceGetNvLinkRemotePciInfo_v2(handle, link, &remote) == NVML_SUCCESS) {
          nvlink.remote = address_of(remote);
        }
      }
      if (nvlink.active && api_.nvmlDeviceGetNvLinkRemoteDeviceType != nullptr) {
        nvmlIntNvLinkDeviceType_t type = NVML_NVLINK_DEVICE_TYPE_UNKNOWN;
        if (api_.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link, &type) == NVML_SUCCESS) {
          nvlink.remote_kind = type == NVML_NVLINK_DEVICE_TYPE_GPU      ? NvLinkPeerKind::gpu
                               : type == NVML_NVLINK_DEVICE_TYPE_SWITCH ? NvLinkPeerKind::nvswitch
                               : type == NVML_NVLINK_DEVICE_TYPE_IBMNPU ? NvLinkPeerKind::cpu
                                                                        : NvLinkPeerKind::unknown;
        }
      }
      if (nvlink.remote_kind == NvLinkPeerKind::unknown && nvlink.remote) {
        // Older drivers lack the remote type: the PCI class of the peer tells.
        if (const Device* peer = find(*nvlink.remote)) {
          nvlink.remote_kind = peer->kind == DeviceKind::nvswitch ? NvLinkPeerKind::nvswitch
                               : peer->kind == DeviceKind::gpu    ? NvLinkPeerKind::gpu
                                                                  : NvLinkPeerKind::unknown;
        }
      }
      links.push_back(nvlink);
    }
    // NVML is the authority when it answers: replace what an XML's bandwidth matrix said.
    if (!links.empty()) device.nvlinks = std::move(links);
    return true;
  }

  void read_p2p(const std::vector<std::pair<nvmlDevice_t, Device*>>& joined) {
    if (api_.nvmlDeviceGetP2PStatus == nullptr) return;
    for (const auto& [handle, device] : joined) {
      bool answered = true;
      for (const auto& [peer_handle, peer] : joined) {
        if (peer == device) continue;
        nvmlGpuP2PStatus_t status = NVML_P2P_STATUS_UNKNOWN;
        if (api_.nvmlDeviceGetP2PStatus(handle, peer_handle, NVML_P2P_CAPS_INDEX_READ, &status) != NVML_SUCCESS) {
          answered = false;
          break;
        }
        if (status == NVML_P2P_STATUS_OK) device->p2p_read_peers.push_back(peer->address);
      }
      device->p2p_known = answered;
      if (!answered) device->p2p_read_peers.clear();
    }
  }

  void report() {
    if (!lost_.empty()) {
      add_warning(topology_, fmt::format("NVML: GPU(s) {} are lost (GPU_IS_LOST): shown with what hwloc and sysfs "
                                         "know only",
                                         fmt::join(lost_, ", ")));
    }
    for (const auto& [what, who] : failures_) {
      add_warning(topology_, fmt::format("NVML {} for {}: that detail is not reported", what, fmt::join(who, ", ")));
    }
    if (!unmatched_.empty()) {
      add_warning(topology_, fmt::format("NVML GPU(s) {} have no PCI function in this topology: not shown",
                                         fmt::join(unmatched_, ", ")));
    }
  }

  Topology& topology_;
  const NvmlLibrary& nvml_;
  const NvmlFunctions& api_;
  std::vector<std::string> lost_;
  std::map<std::string, std::vector<std::string>> failures_;
  std::vector<std::string> unmatched_;
};

}  // namespace

void enrich_from_nvml(Topology& topology, const NvmlLibrary& nvml) { NvmlJoin(topology, nvml).run(); }

}  // namespace tally::collectors
