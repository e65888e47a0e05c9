#include "agent/partitioning/gpu_nodes.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <map>
#include <sstream>

#include <fmt/format.h>

namespace tally::partitioning {

std::string_view to_string(MigIsolation isolation) {
  switch (isolation) {
    case MigIsolation::none: return "none";
    case MigIsolation::device_files: return "device files (/dev/nvidia-caps)";
    case MigIsolation::proc_files: return "proc files (/proc/driver/nvidia/capabilities): not enforceable by device policy";
  }
  return "none";
}

namespace {

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// "00000000:34:00.0" (NVML) and "0000:34:00.0" (sysfs) name the same function: compare without leading zeros of
// the domain.
std::string canonical_bus_id(std::string_view bus_id) {
  std::string text = lower(bus_id);
  const std::size_t colon = text.find(':');
  if (colon == std::string::npos) return text;
  std::string domain = text.substr(0, colon);
  domain.erase(0, std::min(domain.find_first_not_of('0'), domain.size()));
  return domain + text.substr(colon);
}

std::optional<std::uint32_t> number(std::string_view text) {
  std::uint32_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// /proc/devices: the major of a character device driver by name.
std::optional<std::uint32_t> char_major(const FsRoot& fs, std::string_view driver) {
  std::istringstream in(fs.read_text("proc/devices").value_or(""));
  std::string line;
  bool in_char_section = false;
  while (std::getline(in, line)) {
    if (line.starts_with("Character devices:")) in_char_section = true;
    else if (line.starts_with("Block devices:")) in_char_section = false;
    else if (in_char_section) {
      std::istringstream fields(line);
      std::uint32_t major = 0;
      std::string name;
      if (fields >> major >> name && name == driver) return major;
    }
  }
  return std::nullopt;
}

// /proc/driver/nvidia-caps/mig-minors: "gpu0/gi1/access 12", "gpu0/gi1/ci0/access 13", "config 1"...
std::map<std::string, std::uint32_t> read_mig_minors(const FsRoot& fs) {
  std::map<std::string, std::uint32_t> minors;
  std::istringstream in(fs.read_text("proc/driver/nvidia-caps/mig-minors").value_or(""));
  std::string name, minor;
  while (in >> name >> minor) {
    if (auto value = number(minor)) minors[name] = *value;
  }
  return minors;
}

// /proc/driver/nvidia/gpus/<bus id>/information, "Key: value" lines.
struct ProcGpu {
  std::string uuid, bus_id, model;
  std::optional<std::uint32_t> minor;
};
std::vector<ProcGpu> read_proc_gpus(const FsRoot& fs) {
  std::vector<ProcGpu> gpus;
  for (const std::string& entry : fs.list("proc/driver/nvidia/gpus")) {
    const auto text = fs.read_text(fmt::format("proc/driver/nvidia/gpus/{}/information", entry));
    if (!text) continue;
    ProcGpu gpu;
    gpu.bus_id = entry;
    std::istringstream in(*text);
    std::string line;
    while (std::getline(in, line)) {
      const std::size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      const std::string key = line.substr(0, colon);
      std::string value = line.substr(colon + 1);
      value.erase(0, std::min(value.find_first_not_of(" \t"), value.size()));
      while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) value.pop_back();
      if (key == "Device Minor") gpu.minor = number(value);
      else if (key == "GPU UUID") gpu.uuid = value;
      else if (key == "Model") gpu.model = value;
      else if (key == "Bus Location") gpu.bus_id = value;
    }
    gpus.push_back(std::move(gpu));
  }
  // NVML's default order (CUDA_DEVICE_ORDER=PCI_BUS_ID): by bus id.
  std::sort(gpus.begin(), gpus.end(), [](const ProcGpu& a, const ProcGpu& b) {
    return canonical_bus_id(a.bus_id) < canonical_bus_id(b.bus_id);
  });
  return gpus;
}

// A DRM node's device number from sysfs ("226:128").
std::optional<DeviceNode> drm_node(const FsRoot& fs, const std::string& entry) {
  const auto dev = fs.read_line(fmt::format("sys/class/drm/{}/dev", entry));
  if (!dev) return std::nullopt;
  const std::size_t colon = dev->find(':');
  if (colon == std::string::npos) return std::nullopt;
  const auto major = number(std::string_view(*dev).substr(0, colon));
  const auto minor = number(std::string_view(*dev).substr(colon + 1));
  if (!major || !minor) return std::nullopt;
  return DeviceNode{*major, *minor, fmt::format("/dev/dri/{}", entry)};
}

// The PCI function a DRM node belongs to: the name its `device` link points at ("0000:c1:00.0").
std::string drm_bus_id(const FsRoot& fs, const std::string& entry) {
  std::error_code ec;
  const auto target = std::filesystem::read_symlink(fs.path(fmt::format("sys/class/drm/{}/device", entry)), ec);
  return ec ? std::string() : target.filename().string();
}

constexpr std::string_view kAmdVendor = "0x1002";

// AMD GPUs from /sys/class/drm: each render node of vendor 0x1002, with the card node of the same PCI function.
std::vector<GpuNodes> read_amd_gpus(const FsRoot& fs) {
  std::vector<GpuNodes> gpus;
  const std::vector<std::string> entries = fs.list("sys/class/drm");
  for (const std::string& entry : entries) {
    if (!entry.starts_with("renderD")) continue;
    if (fs.read_line(fmt::format("sys/class/drm/{}/device/vendor", entry)).value_or("") != kAmdVendor) continue;
    GpuNodes gpu;
    gpu.vendor = "amd";
    gpu.bus_id = drm_bus_id(fs, entry);
    gpu.name = fmt::format("AMD GPU {}", fs.read_line(fmt::format("sys/class/drm/{}/device/device", entry)).value_or("?"));
    gpu.node = drm_node(fs, entry);
    for (const std::string& card : entries) {
      // card<N> itself, not its connectors (card0-DP-1).
      if (!card.starts_with("card") || card.find('-') != std::string::npos) continue;
      if (gpu.bus_id.empty() || drm_bus_id(fs, card) != gpu.bus_id) continue;
      if (auto node = drm_node(fs, card)) gpu.also.push_back(*node);
    }
    gpus.push_back(std::move(gpu));
  }
  std::sort(gpus.begin(), gpus.end(), [](const GpuNodes& a, const GpuNodes& b) {
    return canonical_bus_id(a.bus_id) < canonical_bus_id(b.bus_id);
  });
  return gpus;
}

DeviceNode gpu_node(std::uint32_t minor) {
  return DeviceNode{kNvidiaMajor, minor, fmt::format("/dev/nvidia{}", minor)};
}

// The capability nodes of one MIG slice, when the node isolates MIG by device files.
std::vector<DeviceNode> slice_caps(const GpuInventory& inventory, const std::map<std::string, std::uint32_t>& minors,
                                   std::uint32_t gpu_minor, const SliceNodes& slice) {
  std::vector<DeviceNode> caps;
  if (!inventory.caps_major) return caps;
  for (const std::string& name :
       {fmt::format("gpu{}/gi{}/access", gpu_minor, slice.gpu_instance_id),
        fmt::format("gpu{}/gi{}/ci{}/access", gpu_minor, slice.gpu_instance_id, slice.compute_instance_id)}) {
    if (auto it = minors.find(name); it != minors.end()) {
      caps.push_back(DeviceNode{*inventory.caps_major, it->second,
                                fmt::format("/dev/nvidia-caps/nvidia-cap{}", it->second)});
    }
  }
  return caps;
}

std::string nvml_string(nvmlReturn_t (*call)(nvmlDevice_t, char*, unsigned), nvmlDevice_t device) {
  std::array<char, 96> buffer{};
  if (call == nullptr || call(device, buffer.data(), buffer.size()) != NVML_SUCCESS) return {};
  return std::string(buffer.data(), strnlen(buffer.data(), buffer.size()));
}

void read_slices(const collectors::NvmlFunctions& api, nvmlDevice_t device, GpuNodes& gpu) {
  unsigned current = 0, pending = 0;
  if (api.nvmlDeviceGetMigMode == nullptr || api.nvmlDeviceGetMigMode(device, &current, &pending) != NVML_SUCCESS) {
    return;
  }
  gpu.mig_enabled = current == NVML_DEVICE_MIG_ENABLE;
  unsigned max = 0;
  if (!gpu.mig_enabled || api.nvmlDeviceGetMaxMigDeviceCount == nullptr ||
      api.nvmlDeviceGetMigDeviceHandleByIndex == nullptr || api.nvmlDeviceGetGpuInstanceId == nullptr ||
      api.nvmlDeviceGetComputeInstanceId == nullptr || api.nvmlDeviceGetMaxMigDeviceCount(device, &max) != NVML_SUCCESS) {
    return;
  }
  for (unsigned i = 0; i < max; ++i) {
    nvmlDevice_t mig = nullptr;
    if (api.nvmlDeviceGetMigDeviceHandleByIndex(device, i, &mig) != NVML_SUCCESS) continue;  // no instance there
    SliceNodes slice;
    slice.index = i;
    if (api.nvmlDeviceGetGpuInstanceId(mig, &slice.gpu_instance_id) != NVML_SUCCESS ||
        api.nvmlDeviceGetComputeInstanceId(mig, &slice.compute_instance_id) != NVML_SUCCESS) {
      continue;
    }
    slice.uuid = nvml_string(api.nvmlDeviceGetUUID, mig);
    gpu.slices.push_back(std::move(slice));
  }
}

}  // namespace

const GpuNodes* GpuInventory::find(std::string_view selector) const {
  const std::string wanted = lower(selector);
  for (const GpuNodes& gpu : gpus) {
    if (wanted == std::to_string(gpu.index) || wanted == lower(gpu.uuid) ||
        (!gpu.bus_id.empty() && canonical_bus_id(wanted) == canonical_bus_id(gpu.bus_id))) {
      return &gpu;
    }
  }
  return nullptr;
}

GpuInventory read_gpu_inventory(const collectors::NvmlLibrary* nvml, const FsRoot& fs) {
  GpuInventory inventory;
  inventory.caps_major = char_major(fs, "nvidia-caps");
  const auto mig_minors = read_mig_minors(fs);
  if (!mig_minors.empty() && inventory.caps_major) {
    inventory.mig_isolation = MigIsolation::device_files;
  } else if (!fs.list("proc/driver/nvidia/capabilities/mig").empty()) {
    inventory.mig_isolation = MigIsolation::proc_files;
  }
  const std::vector<ProcGpu> proc_gpus = read_proc_gpus(fs);
  const auto proc_minor = [&](const std::string& uuid, const std::string& bus_id) -> std::optional<std::uint32_t> {
    for (const ProcGpu& gpu : proc_gpus) {
      if ((!uuid.empty() && lower(gpu.uuid) == lower(uuid)) ||
          (!bus_id.empty() && canonical_bus_id(gpu.bus_id) == canonical_bus_id(bus_id))) {
        return gpu.minor;
      }
    }
    return std::nullopt;
  };

  if (nvml != nullptr) {
    const collectors::NvmlFunctions& api = nvml->api();
    unsigned count = 0;
    if (const nvmlReturn_t status = api.nvmlDeviceGetCount_v2(&count); status != NVML_SUCCESS) {
      inventory.problems.push_back(fmt::format("nvmlDeviceGetCount_v2: {}", nvml->error_string(status)));
      count = 0;
    }
    for (unsigned index = 0; index < count; ++index) {
      nvmlDevice_t device = nullptr;
      if (const nvmlReturn_t status = api.nvmlDeviceGetHandleByIndex_v2(index, &device); status != NVML_SUCCESS) {
        inventory.problems.push_back(fmt::format("GPU {}: nvmlDeviceGetHandleByIndex_v2: {}", index,
                                                 nvml->error_string(status)));
        continue;
      }
      GpuNodes gpu;
      gpu.index = index;
      gpu.uuid = nvml_string(api.nvmlDeviceGetUUID, device);
      gpu.name = nvml_string(api.nvmlDeviceGetName, device);
      nvmlPciInfo_t pci{};
      if (api.nvmlDeviceGetPciInfo_v3(device, &pci) == NVML_SUCCESS) gpu.bus_id = pci.busId;
      unsigned minor = 0;
      std::optional<std::uint32_t> found;
      if (api.nvmlDeviceGetMinorNumber != nullptr && api.nvmlDeviceGetMinorNumber(device, &minor) == NVML_SUCCESS) {
        found = minor;
      } else {
        found = proc_minor(gpu.uuid, gpu.bus_id);
      }
      if (found) gpu.node = gpu_node(*found);
      else inventory.problems.push_back(fmt::format("GPU {}: device minor unknown (NVML and /proc say nothing)", index));
      read_slices(api, device, gpu);
      inventory.gpus.push_back(std::move(gpu));
    }
  } else {
    unsigned index = 0;
    for (const ProcGpu& proc : proc_gpus) {
      GpuNodes gpu;
      gpu.index = index++;
      gpu.uuid = proc.uuid;
      gpu.bus_id = proc.bus_id;
      gpu.name = proc.model;
      if (proc.minor) gpu.node = gpu_node(*proc.minor);
      inventory.gpus.push_back(std::move(gpu));
    }
  }
  for (GpuNodes& gpu : read_amd_gpus(fs)) {
    gpu.index = static_cast<unsigned>(inventory.gpus.size());
    if (!gpu.node) inventory.problems.push_back(fmt::format("AMD GPU {}: its render node's number is unknown", gpu.bus_id));
    inventory.gpus.push_back(std::move(gpu));
  }
  for (GpuNodes& gpu : inventory.gpus) {
    if (!gpu.node) continue;
    for (SliceNodes& slice : gpu.slices) {
      slice.caps = slice_caps(inventory, mig_minors, gpu.node->minor, slice);
    }
  }
  return inventory;
}

}  // namespace tally::partitioning
