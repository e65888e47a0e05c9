// Text views of the topology for `tallyctl topo`: the link matrix in nvidia-smi's layout and a compact tree.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <functional>

#include "agent/base/fs_root.hpp"
#include "collectors/topology/cpulist.hpp"
#include "collectors/topology/topology.hpp"

namespace tally::collectors {
namespace {

std::string gib(std::uint64_t bytes) { return fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (1ull << 30)); }

std::string describe(const Device& device) {
  std::string line = fmt::format("{} {}", device.address.to_string(), device.label.empty() ? "-" : device.label);
  if (!device.model.empty()) line += fmt::format(" \"{}\"", device.model);
  line += fmt::format(" [{:04x}:{:04x} class {:04x}]", device.vendor_id, device.device_id, device.class_code);
  if (!device.os_names.empty()) line += fmt::format(" ({})", fmt::join(device.os_names, ", "));
  if (!device.uuid.empty()) line += " " + device.uuid;
  if (device.memory_bytes != 0) line += " " + gib(device.memory_bytes);
  if (device.memory_numa_node >= 0) line += fmt::format(" memory on NUMA {}", device.memory_numa_node);
  if (device.mig_enabled)
    line += *device.mig_enabled ? fmt::format(" MIG on ({} instances)", device.mig_instances.size()) : " MIG off";
  if (!device.compute_partition.empty()) line += " partition " + device.compute_partition;
  if (device.lost) line += " LOST";
  return line;
}

}  // namespace

std::string format_link_matrix(const Topology& topology, bool nvlink_aware) {
  const LinkMatrix& matrix = topology.links;
  if (matrix.size() == 0) return "No GPUs, accelerators or RDMA NICs found.\n";
  std::string out = fmt::format("{:<8}", "");
  for (auto endpoint : matrix.endpoints)
    out += fmt::format("{:<8}", topology.devices[static_cast<std::size_t>(endpoint)].label);
  out += fmt::format("{:<20}{:<16}{}\n", "CPU Affinity", "NUMA Affinity", "GPU NUMA ID");
  for (std::size_t row = 0; row < matrix.size(); ++row) {
    const Device& device = topology.devices[static_cast<std::size_t>(matrix.endpoints[row])];
    out += fmt::format("{:<8}", device.label);
    for (std::size_t column = 0; column < matrix.size(); ++column) {
      const std::uint32_t nvlinks = matrix.nvlinks_at(row, column);
      const std::string cell = nvlink_aware && nvlinks > 0 ? fmt::format("NV{}", nvlinks)
                                                           : std::string(to_string(matrix.pcie_at(row, column)));
      out += fmt::format("{:<8}", cell);
    }
    const std::string numa = device.numa_node >= 0 ? std::to_string(device.numa_node) : "N/A";
    const std::string gpu_numa = device.memory_numa_node >= 0 ? std::to_string(device.memory_numa_node) : "N/A";
    out += fmt::format("{:<20}{:<16}{}\n", device.kind == DeviceKind::nic ? "" : format_cpulist(device.cpus),
                       device.kind == DeviceKind::nic ? "" : numa, device.kind == DeviceKind::nic ? "" : gpu_numa);
  }
  out +=
      "\nLegend:\n\n  X    = Self\n"
      "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)\n"
      "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA "
      "node\n"
      "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)\n"
      "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)\n"
      "  PIX  = Connection traversing at most a single PCIe bridge\n";
  if (nvlink_aware) out += "  NV#  = Connection traversing a bonded set of # NVLinks\n";
  bool header = false;
  for (auto endpoint : matrix.endpoints) {
    const Device& device = topology.devices[static_cast<std::size_t>(endpoint)];
    if (device.kind != DeviceKind::nic) continue;
    if (!header) out += "\nNIC Legend:\n\n";
    header = true;
    out += fmt::format("  {}: {}\n", device.label, fmt::join(device.os_names, ", "));
  }
  return out;
}

std::string format_topology_tree(const Topology& topology) {
  std::string out = fmt::format(
      "Node ({}): {} {} CPUs, {}, {} NUMA node(s), {} GPU(s), {} accelerator(s), {} NIC(s)\n", topology.source,
      topology.architecture.empty() ? "unknown architecture" : topology.architecture, topology.cpus.size(),
      gib(topology.memory_bytes), topology.numa_nodes.size(), topology.devices_of(DeviceKind::gpu).size(),
      topology.devices_of(DeviceKind::accelerator).size(), topology.devices_of(DeviceKind::nic).size());
  if (!topology.nvml_driver_version.empty()) out += fmt::format("NVIDIA driver {}\n", topology.nvml_driver_version);

  // Children lists, and which tree nodes lead to a classified device (the rest is left out: compact).
  std::vector<std::vector<std::int32_t>> children(topology.pcie.size());
  std::vector<bool> useful(topology.pcie.size(), false);
  for (std::size_t i = 0; i < topology.pcie.size(); ++i) {
    const PcieNode& node = topology.pcie[i];
    if (node.parent >= 0) children[static_cast<std::size_t>(node.parent)].push_back(static_cast<std::int32_t>(i));
    if (node.device >= 0) {
      for (std::int32_t up = static_cast<std::int32_t>(i); up >= 0;
           up = topology.pcie[static_cast<std::size_t>(up)].parent) {
        useful[static_cast<std::size_t>(up)] = true;
      }
    }
  }
  std::function<void(std::int32_t, int)> print = [&](std::int32_t index, int depth) {
    const PcieNode& node = topology.pcie[static_cast<std::size_t>(index)];
    if (!useful[static_cast<std::size_t>(index)]) return;
    const std::string indent(static_cast<std::size_t>(depth) * 2, ' ');
    if (node.kind == PcieNodeKind::host_bridge) {
      out += indent + "HostBridge\n";
    } else if (node.kind == PcieNodeKind::bridge) {
      out += fmt::format("{}Bridge {}\n", indent, node.address ? node.address->to_string() : "?");
    } else if (node.device >= 0) {
      out += indent + describe(topology.devices[static_cast<std::size_t>(node.device)]) + "\n";
    }
    for (auto child : children[static_cast<std::size_t>(index)]) print(child, depth + 1);
  };
  auto print_roots = [&](std::int32_t numa, int depth) {
    for (std::size_t i = 0; i < topology.pcie.size(); ++i) {
      if (topology.pcie[i].parent < 0 && topology.pcie[i].numa_node == numa) print(static_cast<std::int32_t>(i), depth);
    }
  };
  for (const NumaNode& node : topology.numa_nodes) {
    out += fmt::format("NUMA {}: CPUs {}, {}{}", node.os_index, node.cpus.empty() ? "none" : format_cpulist(node.cpus),
                       gib(node.memory_bytes), node.gpu_memory ? ", GPU memory" : "");
    if (!node.distances.empty()) out += fmt::format(", distances {}", fmt::join(node.distances, " "));
    out += "\n";
    print_roots(static_cast<std::int32_t>(node.os_index), 1);
  }
  bool unplaced = false;
  for (std::size_t i = 0; i < topology.pcie.size(); ++i) {
    unplaced |= topology.pcie[i].parent < 0 && topology.pcie[i].numa_node < 0 && useful[i];
  }
  if (unplaced) {
    out += "No NUMA locality:\n";
    print_roots(-1, 1);
  }
  for (const std::string& warning : topology.warnings) out += "warning: " + warning + "\n";
  return out;
}

}  // namespace tally::collectors
