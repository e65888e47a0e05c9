// What sysfs and procfs add to hwloc's view: per-function PCI attributes (NUMA node, local CPUs, link speed and
// width), NIC names and RDMA ports, the GPU memory NUMA nodes of /proc/driver/nvidia, AMD partition modes.
// libnuma adds memory and distances per node on the host.

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <numa.h>

#include <algorithm>
#include <map>
#include <set>

#include "collectors/topology/topology_sources.hpp"
#include "collectors/topology/cpulist.hpp"

namespace tally::collectors {
namespace {

Device* find_device(Topology& topology, const PciAddress& address) {
  for (Device& device : topology.devices) {
    if (device.address == address) return &device;
  }
  return nullptr;
}

void add_name(Device& device, const std::string& name) {
  if (std::find(device.os_names.begin(), device.os_names.end(), name) == device.os_names.end()) {
    device.os_names.push_back(name);
  }
}

// The PCI function behind a class entry (/sys/class/net/eth0, /sys/class/infiniband/mlx5_0): the entry's own
// link target names the device path; older layouts only have a `device` link inside the entry.
std::optional<PciAddress> pci_function_of(const FsRoot& sysfs, const std::string& entry) {
  if (auto target = sysfs.link_target(entry)) {
    if (auto address = last_pci_address_in_path(*target)) return address;
  }
  if (auto target = sysfs.link_target(entry + "/device")) return last_pci_address_in_path(*target);
  return std::nullopt;
}

void read_pci_attributes(Topology& topology, const FsRoot& sysfs) {
  constexpr std::string_view kPciDevices = "sys/bus/pci/devices";
  if (!sysfs.exists(kPciDevices)) {
    add_warning(topology, fmt::format("{} is missing: PCI functions keep hwloc's view only (no sysfs NUMA node, "
                                      "local CPUs or link width)",
                                      sysfs.path(kPciDevices).string()));
    return;
  }
  // Attribute -> functions lacking it; reported together in one warning.
  std::map<std::string, std::vector<std::string>> missing;
  for (Device& device : topology.devices) {
    const std::string dir = fmt::format("{}/{}/", kPciDevices, device.address.to_string());
    if (!sysfs.exists(dir)) {
      missing["directory"].push_back(device.address.to_string());
      continue;
    }
    if (auto vendor = sysfs.read_uint(dir + "vendor")) {
      if (device.vendor_id == 0) device.vendor_id = static_cast<std::uint16_t>(*vendor);
    } else {
      missing["vendor"].push_back(device.address.to_string());
    }
    if (auto id = sysfs.read_uint(dir + "device")) {
      if (device.device_id == 0) device.device_id = static_cast<std::uint16_t>(*id);
    } else {
      missing["device"].push_back(device.address.to_string());
    }
    if (auto numa = sysfs.read_line(dir + "numa_node")) {
      // -1: the firmware does not say. Keep hwloc's locality then.
      if (const int node = std::atoi(numa->c_str()); node >= 0) device.numa_node = node;
    } else {
      missing["numa_node"].push_back(device.address.to_string());
    }
    if (auto cpus = sysfs.read_line(dir + "local_cpulist")) {
      if (auto parsed = parse_cpulist(*cpus); !parsed.empty()) device.cpus = std::move(parsed);
    } else if (auto mask = sysfs.read_line(dir + "local_cpus")) {
      if (auto parsed = parse_cpumask(*mask); !parsed.empty()) device.cpus = std::move(parsed);
    } else {
      missing["local_cpulist"].push_back(device.address.to_string());
    }
    // Link attributes exist only for PCIe functions (not for virtual or conventional PCI ones): no warning.
    if (auto speed = sysfs.read_line(dir + "current_link_speed")) device.link_speed = *speed;
    if (auto width = sysfs.read_uint(dir + "current_link_width"))
      device.link_width = static_cast<std::uint32_t>(*width);
    if (auto partition = sysfs.read_line(dir + "current_compute_partition")) device.compute_partition = *partition;
  }
  if (missing.empty()) return;
  std::vector<std::string> parts;
  for (const auto& [attribute, functions] : missing) {
    parts.push_back(fmt::format("{} ({} function(s), e.g. {})", attribute, functions.size(), functions.front()));
  }
  add_warning(topology, fmt::format("{} lacks {}: kept hwloc's view for those", sysfs.path(kPciDevices).string(),
                                    fmt::join(parts, ", ")));
}

void read_nics(Topology& topology, const FsRoot& sysfs) {
  for (const std::string& name : sysfs.list("sys/class/net")) {
    const auto address = pci_function_of(sysfs, "sys/class/net/" + name);
    if (!address) continue;  // virtual interfaces: lo, bridges, VLANs
    if (Device* device = find_device(topology, *address)) add_name(*device, name);
  }
  for (const std::string& name : sysfs.list("sys/class/infiniband")) {
    const std::string entry = "sys/class/infiniband/" + name;
    const auto address = pci_function_of(sysfs, entry);
    Device* device = address ? find_device(topology, *address) : nullptr;
    if (device == nullptr) continue;
    add_name(*device, name);
    device->rdma = true;
    const auto ports = sysfs.list(entry + "/ports");
    if (ports.empty()) continue;
    const std::string port = entry + "/ports/" + ports.front() + "/";
    device->rdma_rate = sysfs.read_line(port + "rate").value_or("");
    device->rdma_state = sysfs.read_line(port + "state").value_or("");
    device->rdma_link_layer = sysfs.read_line(port + "link_layer").value_or("");
  }
}

// /proc/driver/nvidia/gpus/<bus id>/: present with the NVIDIA driver; numa_status names the NUMA node holding
// the GPU's memory on coherent platforms (POWER9 + V100, Grace Hopper), `information` the model and UUID.
void read_nvidia_proc(Topology& topology, const FsRoot& sysfs) {
  for (const std::string& bus_id : sysfs.list("proc/driver/nvidia/gpus")) {
    const auto address = PciAddress::parse(bus_id);
    Device* device = address ? find_device(topology, *address) : nullptr;
    if (device == nullptr) continue;
    if (device->vendor_id == 0) device->vendor_id = kVendorNvidia;
    const std::string dir = "proc/driver/nvidia/gpus/" + bus_id + "/";
    if (auto status = sysfs.read_text(dir + "numa_status")) {
      const auto at = status->find("Node:");
      if (at != std::string::npos) {
        const int node = std::atoi(status->c_str() + at + 5);
        if (node >= 0) device->memory_numa_node = node;
      }
    }
    if (auto information = sysfs.read_text(dir + "information")) {
      auto field = [&](std::string_view key) -> std::string {
        const auto at = information->find(key);
        if (at == std::string::npos) return {};
        auto begin = information->find_first_not_of(" \t", at + key.size());
        auto end = information->find('\n', begin);
        return begin == std::string::npos ? std::string() : information->substr(begin, end - begin);
      };
      if (device->model.empty()) device->model = field("Model:");
      if (device->uuid.empty()) device->uuid = field("GPU UUID:");
    }
  }
  for (const Device& device : topology.devices) {
    if (device.memory_numa_node < 0) continue;
    for (NumaNode& node : topology.numa_nodes) {
      if (static_cast<std::int32_t>(node.os_index) == device.memory_numa_node && node.cpus.empty()) {
        node.gpu_memory = true;
      }
    }
  }
}

}  // namespace

void enrich_from_sysfs(Topology& topology, const FsRoot& sysfs) {
  read_pci_attributes(topology, sysfs);
  read_nics(topology, sysfs);
  read_nvidia_proc(topology, sysfs);
}

void enrich_from_libnuma(Topology& topology) {
  if (numa_available() < 0) return;  // no NUMA support in this kernel: hwloc's single node stands
  // Nodes with memory that hwloc left out (it hides NVIDIA GPU memory nodes by default): CPU-less, as in numactl -H.
  for (int id = 0; id <= numa_max_node(); ++id) {
    if (numa_bitmask_isbitset(numa_nodes_ptr, static_cast<unsigned>(id)) == 0) continue;
    if (topology.numa_node(static_cast<std::uint32_t>(id)) != nullptr) continue;
    NumaNode node;
    node.os_index = static_cast<std::uint32_t>(id);
    for (const Device& device : topology.devices) node.gpu_memory |= device.memory_numa_node == id;
    topology.numa_nodes.push_back(std::move(node));
  }
  std::sort(topology.numa_nodes.begin(), topology.numa_nodes.end(),
            [](const NumaNode& a, const NumaNode& b) { return a.os_index < b.os_index; });
  for (NumaNode& node : topology.numa_nodes) {
    const int id = static_cast<int>(node.os_index);
    if (const long long size = numa_node_size64(id, nullptr); size > 0)
      node.memory_bytes = static_cast<std::uint64_t>(size);
    node.distances.clear();
    for (const NumaNode& other : topology.numa_nodes) {
      const int distance = numa_distance(id, static_cast<int>(other.os_index));
      node.distances.push_back(distance > 0 ? static_cast<std::uint32_t>(distance) : 0);
    }
  }
}

}  // namespace tally::collectors
