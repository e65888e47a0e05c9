// discover_topology(): hwloc builds the skeleton (NUMA nodes, PCIe tree, PCI functions, NVLink bandwidth when an
// XML carries it), then sysfs, libnuma and NVML fill in what they know, then the link matrix is derived.

#include "collectors/topology/topology.hpp"

#include <hwloc.h>
#include <hwloc/distances.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <utility>

#include "collectors/topology/topology_sources.hpp"

namespace tally::collectors {
namespace {

struct HwlocTopologyFree {
  void operator()(hwloc_topology* topology) const { hwloc_topology_destroy(topology); }
};
using HwlocTopology = std::unique_ptr<hwloc_topology, HwlocTopologyFree>;

// hwloc 2 takes its Linux root and component list only from the environment (hwloc_topology_set_fsroot was
// removed in 2.0). Set for the duration of one load and restored after, so the process environment is unchanged
// once discovery returns. Not thread-safe: discovery runs on the agent's single loop thread, or in tallyctl.
class ScopedEnvironment {
 public:
  ScopedEnvironment() = default;
  ~ScopedEnvironment() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        unsetenv(it->first.c_str());
      }
    }
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

  void set(const std::string& name, const std::string& value) {
    const char* old = std::getenv(name.c_str());
    saved_.emplace_back(name, old != nullptr ? std::optional<std::string>(old) : std::nullopt);
    setenv(name.c_str(), value.c_str(), 1);
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

std::vector<std::uint32_t> bitmap_to_ids(hwloc_const_bitmap_t bitmap) {
  std::vector<std::uint32_t> ids;
  if (bitmap == nullptr) return ids;
  for (int id = hwloc_bitmap_first(bitmap); id >= 0; id = hwloc_bitmap_next(bitmap, id)) {
    ids.push_back(static_cast<std::uint32_t>(id));
  }
  return ids;
}

std::string info(hwloc_obj_t object, const char* name) {
  const char* value = hwloc_obj_get_info_by_name(object, name);
  return value != nullptr ? value : "";
}

Result<HwlocTopology> load_hwloc(const DiscoveryOptions& options) {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0) return make_error(ErrorCode::io, "hwloc_topology_init failed");
  HwlocTopology topology(raw);
  // Keep every bridge and PCI function: the link classes are derived from the whole PCIe tree.
  hwloc_topology_set_io_types_filter(raw, HWLOC_TYPE_FILTER_KEEP_ALL);
  // CPUs outside our cgroup still exist: numactl -H and lscpu count them too.
  hwloc_topology_set_flags(raw, HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED);
  ScopedEnvironment environment;
  if (!options.xml_file.empty()) {
    if (hwloc_topology_set_xml(raw, options.xml_file.c_str()) != 0) {
      return make_error(ErrorCode::invalid_argument, "hwloc cannot read XML {}: {}", options.xml_file.string(),
                        std::strerror(errno));
    }
  } else if (!options.sysfs_root.empty()) {
    std::error_code ec;
    if (!std::filesystem::is_directory(options.sysfs_root, ec)) {
      return make_error(ErrorCode::not_found, "sysfs root {} is not a directory", options.sysfs_root.string());
    }
    environment.set("HWLOC_FSROOT", std::filesystem::absolute(options.sysfs_root).string());
    // POWER9 + V100 expose GPU memory as CPU-less NUMA nodes; hwloc hides them unless asked. (On the host,
    // libnuma adds them instead: the agent never touches its environment while its ZeroMQ threads run.)
    environment.set("HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES", "1");
    // Only the Linux backend: the x86 backend would mix this host's CPUID into another node's capture.
    environment.set("HWLOC_COMPONENTS", "linux,stop");
  }
  if (hwloc_topology_load(raw) != 0) {
    const std::string what = !options.xml_file.empty()     ? "XML " + options.xml_file.string()
                             : !options.sysfs_root.empty() ? "sysfs root " + options.sysfs_root.string()
                                                           : std::string("this host");
    return make_error(ErrorCode::invalid_argument, "hwloc cannot load {}: {}", what, std::strerror(errno));
  }
  return topology;
}

// The NUMA node an I/O subtree hangs from: the only NUMA node with CPUs under its non-I/O ancestor; -1 when the
// ancestor spans several (I/O attached to the whole machine), as locality is then unknown.
std::int32_t local_numa_node(hwloc_topology_t topology, hwloc_obj_t ancestor) {
  std::int32_t found = -1;
  for (hwloc_obj_t numa = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_NUMANODE, nullptr); numa != nullptr;
       numa = hwloc_get_next_obj_by_type(topology, HWLOC_OBJ_NUMANODE, numa)) {
    if (numa->cpuset == nullptr || hwloc_bitmap_iszero(numa->cpuset)) continue;
    if (numa->subtype != nullptr && std::string_view(numa->subtype) == "GPUMemory") continue;
    if (ancestor->nodeset == nullptr || !hwloc_bitmap_isset(ancestor->nodeset, numa->os_index)) continue;
    if (found >= 0) return -1;
    found = static_cast<std::int32_t>(numa->os_index);
  }
  return found;
}

class TreeBuilder {
 public:
  TreeBuilder(hwloc_topology_t hwloc, Topology& topology) : hwloc_(hwloc), topology_(topology) {}

  void build() {
    visit_normal(hwloc_get_root_obj(hwloc_));
    std::sort(devices_.begin(), devices_.end(), [](const Device& a, const Device& b) { return a.address < b.address; });
    topology_.devices = std::move(devices_);
    for (std::size_t i = 0; i < topology_.devices.size(); ++i) {
      topology_.pcie[static_cast<std::size_t>(topology_.devices[i].pcie_node)].device = static_cast<std::int32_t>(i);
    }
  }

  // PCI address -> hwloc PCI device object, to resolve NVLink distances.
  const std::map<hwloc_obj_t, PciAddress>& pci_objects() const { return pci_objects_; }

 private:
  void visit_normal(hwloc_obj_t object) {
    for (hwloc_obj_t child = object->first_child; child != nullptr; child = child->next_sibling) visit_normal(child);
    if (object->io_arity == 0) return;
    const std::int32_t numa = local_numa_node(hwloc_, object);
    for (hwloc_obj_t io = object->io_first_child; io != nullptr; io = io->next_sibling) {
      visit_io(io, object, -1, numa);
    }
  }

  void visit_io(hwloc_obj_t io, hwloc_obj_t ancestor, std::int32_t parent, std::int32_t numa) {
    PcieNode node;
    node.parent = parent;
    node.numa_node = numa;
    if (io->type == HWLOC_OBJ_BRIDGE) {
      const auto& bridge = io->attr->bridge;
      if (bridge.upstream_type == HWLOC_OBJ_BRIDGE_HOST) {
        node.kind = PcieNodeKind::host_bridge;
      } else {
        node.kind = PcieNodeKind::bridge;
        const auto& pci = bridge.upstream.pci;
        node.address = PciAddress{pci.domain, pci.bus, pci.dev, pci.func};
      }
    } else if (io->type == HWLOC_OBJ_PCI_DEVICE) {
      node.kind = PcieNodeKind::device;
      const auto& pci = io->attr->pcidev;
      node.address = PciAddress{pci.domain, pci.bus, pci.dev, pci.func};
    } else {
      return;  // OS devices are read with their PCI function below
    }
    const auto index = static_cast<std::int32_t>(topology_.pcie.size());
    topology_.pcie.push_back(node);
    if (io->type == HWLOC_OBJ_PCI_DEVICE) add_device(io, ancestor, index, numa);
    for (hwloc_obj_t child = io->io_first_child; child != nullptr; child = child->next_sibling) {
      visit_io(child, ancestor, index, numa);
    }
  }

  void add_device(hwloc_obj_t pci_object, hwloc_obj_t ancestor, std::int32_t pcie_index, std::int32_t numa) {
    const auto& pci = pci_object->attr->pcidev;
    Device device;
    device.address = PciAddress{pci.domain, pci.bus, pci.dev, pci.func};
    pci_objects_.emplace(pci_object, device.address);
    device.class_code = pci.class_id;
    device.vendor_id = pci.vendor_id;
    device.device_id = pci.device_id;
    device.kind = pci_object->subtype != nullptr && std::string_view(pci_object->subtype) == "NVSwitch"
                      ? DeviceKind::nvswitch
                      : classify_pci_function(pci.class_id, pci.vendor_id);
    if (device.kind == DeviceKind::other) return;
    device.vendor_name = info(pci_object, "PCIVendor");
    device.model = info(pci_object, "PCIDevice");
    device.link_gbytes_per_s = static_cast<double>(pci.linkspeed);
    device.pcie_node = pcie_index;
    device.numa_node = numa;
    device.cpus = bitmap_to_ids(ancestor->cpuset);
    for (hwloc_obj_t os = pci_object->io_first_child; os != nullptr; os = os->next_sibling) {
      if (os->type != HWLOC_OBJ_OS_DEVICE || os->name == nullptr) continue;
      device.os_names.emplace_back(os->name);
      if (os->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS) device.rdma = true;
      if (device.model.empty()) {
        device.model = info(os, "GPUModel");
        if (device.model.empty()) device.model = info(os, "CoProcModel");
      }
      if (device.uuid.empty()) device.uuid = info(os, "NVIDIAUUID");
    }
    devices_.push_back(std::move(device));
  }

  hwloc_topology_t hwloc_;
  Topology& topology_;
  std::vector<Device> devices_;
  std::map<hwloc_obj_t, PciAddress> pci_objects_;
};

void read_numa_nodes(hwloc_topology_t hwloc, Topology& topology) {
  for (hwloc_obj_t numa = hwloc_get_next_obj_by_type(hwloc, HWLOC_OBJ_NUMANODE, nullptr); numa != nullptr;
       numa = hwloc_get_next_obj_by_type(hwloc, HWLOC_OBJ_NUMANODE, numa)) {
    NumaNode node;
    node.os_index = numa->os_index;
    node.cpus = bitmap_to_ids(numa->cpuset);
    node.memory_bytes = numa->attr->numanode.local_memory;
    node.gpu_memory = numa->subtype != nullptr && std::string_view(numa->subtype) == "GPUMemory";
    // hwloc gives a GPU memory node the CPUs of its package; like numactl -H, the model lists none.
    if (node.gpu_memory) node.cpus.clear();
    topology.numa_nodes.push_back(std::move(node));
  }
  std::sort(topology.numa_nodes.begin(), topology.numa_nodes.end(),
            [](const NumaNode& a, const NumaNode& b) { return a.os_index < b.os_index; });

  unsigned count = 1;
  hwloc_distances_s* distances = nullptr;
  if (hwloc_distances_get_by_type(hwloc, HWLOC_OBJ_NUMANODE, &count, &distances, HWLOC_DISTANCES_KIND_MEANS_LATENCY,
                                  0) != 0 ||
      count == 0) {
    return;
  }
  std::map<std::uint32_t, std::size_t> position;  // os index -> row in the hwloc matrix
  for (unsigned i = 0; i < distances->nbobjs; ++i) position[distances->objs[i]->os_index] = i;
  for (auto& node : topology.numa_nodes) {
    const auto row = position.find(node.os_index);
    if (row == position.end()) continue;
    for (const auto& other : topology.numa_nodes) {
      const auto column = position.find(other.os_index);
      node.distances.push_back(
          column == position.end()
              ? 0
              : static_cast<std::uint32_t>(distances->values[row->second * distances->nbobjs + column->second]));
    }
  }
  hwloc_distances_release(hwloc, distances);
}

// NVLink as hwloc's NVML backend recorded it in an XML ("NVLinkBandwidth", MB/s between GPUs and NVSwitches):
// turned into per-link entries, as NVML would report them, so one piece of code derives NV# for both sources.
void read_nvlink_bandwidth(hwloc_topology_t hwloc, const std::map<hwloc_obj_t, PciAddress>& pci_objects,
                           Topology& topology) {
  unsigned count = 1;
  hwloc_distances_s* distances = nullptr;
  if (hwloc_distances_get_by_name(hwloc, "NVLinkBandwidth", &count, &distances, 0) != 0 || count == 0) return;
  auto address_of = [&](hwloc_obj_t object) -> std::optional<PciAddress> {
    if (object->type == HWLOC_OBJ_OS_DEVICE) object = object->parent;
    const auto it = pci_objects.find(object);
    return it == pci_objects.end() ? std::nullopt : std::optional<PciAddress>(it->second);
  };
  const unsigned n = distances->nbobjs;
  for (unsigned i = 0; i < n; ++i) {
    const auto from = address_of(distances->objs[i]);
    Device* device = nullptr;
    if (from) {
      for (Device& candidate : topology.devices) {
        if (candidate.address == *from) device = &candidate;
      }
    }
    if (device == nullptr || device->kind != DeviceKind::gpu) continue;
    std::uint32_t link = 0;
    for (unsigned j = 0; j < n; ++j) {
      const std::uint64_t bandwidth = distances->values[i * n + j];
      if (i == j || bandwidth == 0) continue;
      const auto to = address_of(distances->objs[j]);
      const Device* peer = to ? topology.find(*to) : nullptr;
      // hwloc counts 25 GB/s per NVLink2+ link and 20 GB/s per NVLink1 (P100) link.
      const std::uint64_t per_link = bandwidth % 25000 != 0 && bandwidth % 20000 == 0 ? 20000 : 25000;
      const auto links = static_cast<std::uint32_t>(std::max<std::uint64_t>(1, (bandwidth + per_link / 2) / per_link));
      for (std::uint32_t k = 0; k < links; ++k) {
        NvLink nvlink;
        nvlink.link = link++;
        nvlink.active = true;
        nvlink.remote = to;
        nvlink.remote_kind = peer == nullptr                      ? NvLinkPeerKind::unknown
                             : peer->kind == DeviceKind::nvswitch ? NvLinkPeerKind::nvswitch
                             : peer->kind == DeviceKind::gpu      ? NvLinkPeerKind::gpu
                                                                  : NvLinkPeerKind::unknown;
        device->nvlinks.push_back(nvlink);
      }
    }
  }
  hwloc_distances_release(hwloc, distances);
}

std::string describe_source(const DiscoveryOptions& options) {
  if (!options.xml_file.empty()) return "xml:" + options.xml_file.string();
  if (!options.sysfs_root.empty()) return "sysfs:" + options.sysfs_root.string();
  return "host";
}

}  // namespace

void add_warning(Topology& topology, std::string message) {
  spdlog::warn("topology: {}", message);
  topology.warnings.push_back(std::move(message));
}

Result<Topology> discover_topology(const DiscoveryOptions& options) {
  auto hwloc = load_hwloc(options);
  if (!hwloc) return hwloc.error();
  hwloc_topology_t raw = hwloc->get();

  Topology topology;
  topology.source = describe_source(options);
  hwloc_obj_t root = hwloc_get_root_obj(raw);
  topology.architecture = info(root, "Architecture");
  topology.cpus = bitmap_to_ids(root->cpuset);
  topology.memory_bytes = root->total_memory;
  read_numa_nodes(raw, topology);
  TreeBuilder builder(raw, topology);
  builder.build();
  read_nvlink_bandwidth(raw, builder.pci_objects(), topology);
  hwloc.value().reset();

  const bool from_xml = !options.xml_file.empty();
  if (!from_xml) {
    const FsRoot sysfs(options.sysfs_root.empty() ? std::filesystem::path("/") : options.sysfs_root);
    enrich_from_sysfs(topology, sysfs);
    if (sysfs.is_host()) enrich_from_libnuma(topology);
  }

  const bool on_host = options.xml_file.empty() && options.sysfs_root.empty();
  if (options.use_nvml && (options.nvml_library || on_host)) {
    const std::string library = options.nvml_library.value_or(std::string(kDefaultNvmlLibrary));
    auto nvml = NvmlLibrary::open(library);
    if (nvml) {
      enrich_from_nvml(topology, **nvml);
    } else if (options.nvml_library || !topology.devices_of(DeviceKind::gpu).empty()) {
      // No NVIDIA library on a node without GPUs is normal; anywhere else it is worth one warning.
      bool nvidia = options.nvml_library.has_value();
      for (const Device* gpu : topology.devices_of(DeviceKind::gpu)) nvidia |= gpu->vendor_id == kVendorNvidia;
      if (nvidia) add_warning(topology, nvml.error().message + "; GPUs shown without UUID, memory, MIG or NVLink");
    }
  }
  derive_links(topology);
  return topology;
}

std::vector<const Device*> Topology::devices_of(DeviceKind kind) const {
  std::vector<const Device*> found;
  for (const Device& device : devices) {
    if (device.kind == kind) found.push_back(&device);
  }
  return found;
}

const Device* Topology::find(const PciAddress& address) const {
  const auto it = std::lower_bound(devices.begin(), devices.end(), address,
                                   [](const Device& device, const PciAddress& a) { return device.address < a; });
  return it != devices.end() && it->address == address ? &*it : nullptr;
}

const Device* Topology::find(std::string_view label) const {
  for (const Device& device : devices) {
    if (device.label == label) return &device;
  }
  return nullptr;
}

const NumaNode* Topology::numa_node(std::uint32_t os_index) const {
  for (const NumaNode& node : numa_nodes) {
    if (node.os_index == os_index) return &node;
  }
  return nullptr;
}

}  // namespace tally::collectors
