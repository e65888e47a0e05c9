// Link classes between devices, from the PCIe tree and NUMA locality (docs/topology.md has the rules with an
// example), NVLink counts from per-link peers, and the labels and nearest NIC of each device.

#include <algorithm>
#include <map>

#include "collectors/topology/topology_sources.hpp"

namespace tally::collectors {
namespace {

// Tree nodes from `node` up to its host bridge (or the top when it hangs from no host bridge), `node` first.
std::vector<std::int32_t> path_to_root(const Topology& topology, std::int32_t node) {
  std::vector<std::int32_t> path;
  while (node >= 0) {
    path.push_back(node);
    node = topology.pcie[static_cast<std::size_t>(node)].parent;
  }
  return path;
}

std::int32_t numa_of(const Topology& topology, const Device& device) {
  if (device.numa_node >= 0) return device.numa_node;
  return device.pcie_node >= 0 ? topology.pcie[static_cast<std::size_t>(device.pcie_node)].numa_node : -1;
}

std::uint32_t nvlink_count(const Device& a, const Device& b) {
  std::uint32_t direct = 0, a_switch = 0, b_switch = 0;
  for (const NvLink& link : a.nvlinks) {
    if (!link.active) continue;
    if (link.remote_kind == NvLinkPeerKind::nvswitch) ++a_switch;
    if (link.remote == b.address) ++direct;
  }
  for (const NvLink& link : b.nvlinks) {
    if (link.active && link.remote_kind == NvLinkPeerKind::nvswitch) ++b_switch;
  }
  // Through NVSwitches every GPU reaches every other with all its switch links (DGX-2, HGX): nvidia-smi's NV#.
  return direct + std::min(a_switch, b_switch);
}

}  // namespace

std::string_view to_string(PathClass path_class) {
  switch (path_class) {
    case PathClass::self:
      return "X";
    case PathClass::pix:
      return "PIX";
    case PathClass::pxb:
      return "PXB";
    case PathClass::phb:
      return "PHB";
    case PathClass::node:
      return "NODE";
    case PathClass::sys:
      return "SYS";
  }
  return "SYS";
}

std::string_view to_string(NvLinkPeerKind kind) {
  switch (kind) {
    case NvLinkPeerKind::gpu:
      return "gpu";
    case NvLinkPeerKind::nvswitch:
      return "nvswitch";
    case NvLinkPeerKind::cpu:
      return "cpu";
    case NvLinkPeerKind::unknown:
      return "unknown";
  }
  return "unknown";
}

PathClass classify_path(const Topology& topology, std::int32_t device_a, std::int32_t device_b) {
  if (device_a == device_b) return PathClass::self;
  const Device& a = topology.devices[static_cast<std::size_t>(device_a)];
  const Device& b = topology.devices[static_cast<std::size_t>(device_b)];
  const auto path_a = path_to_root(topology, a.pcie_node);
  const auto path_b = path_to_root(topology, b.pcie_node);
  // Lowest common ancestor: the first node of a's path that is also on b's.
  for (std::size_t i = 1; i < path_a.size(); ++i) {
    const auto in_b = std::find(path_b.begin(), path_b.end(), path_a[i]);
    if (in_b == path_b.end()) continue;
    const PcieNode& common = topology.pcie[static_cast<std::size_t>(path_a[i])];
    if (common.kind == PcieNodeKind::host_bridge) return PathClass::phb;
    // Bridges strictly between each device and the common bridge: one (a switch's downstream port) or none
    // means both sit on one switch (PIX); more means switches in cascade (PXB).
    const std::size_t below_a = i - 1;
    const auto below_b = static_cast<std::size_t>(in_b - path_b.begin()) - 1;
    return std::max(below_a, below_b) <= 1 ? PathClass::pix : PathClass::pxb;
  }
  const std::int32_t numa_a = numa_of(topology, a);
  const std::int32_t numa_b = numa_of(topology, b);
  return numa_a >= 0 && numa_a == numa_b ? PathClass::node : PathClass::sys;
}

void derive_links(Topology& topology) {
  // Labels, numbered in PCI order per kind: nvidia-smi numbers GPUs in PCI bus order too.
  std::map<DeviceKind, std::uint32_t> next;
  for (Device& device : topology.devices) {
    const char* prefix = nullptr;
    switch (device.kind) {
      case DeviceKind::gpu:
        prefix = "GPU";
        break;
      case DeviceKind::accelerator:
        prefix = "ACC";
        break;
      case DeviceKind::nic:
        prefix = "NIC";
        break;
      case DeviceKind::nvswitch:
        prefix = "NVS";
        break;
      case DeviceKind::nvme:
        prefix = "NVME";
        break;
      case DeviceKind::display:
        prefix = "DISP";
        break;
      case DeviceKind::other:
        break;
    }
    if (prefix != nullptr) device.label = prefix + std::to_string(next[device.kind]++);
  }

  LinkMatrix& matrix = topology.links;
  matrix = LinkMatrix{};
  bool any_rdma = false;
  for (const Device& device : topology.devices) any_rdma |= device.kind == DeviceKind::nic && device.rdma;
  for (DeviceKind kind : {DeviceKind::gpu, DeviceKind::accelerator, DeviceKind::nic}) {
    for (std::size_t i = 0; i < topology.devices.size(); ++i) {
      const Device& device = topology.devices[i];
      if (device.kind != kind) continue;
      // Like nvidia-smi, only RDMA NICs (those GPUDirect can use) join the matrix.
      if (kind == DeviceKind::nic && !device.rdma) continue;
      matrix.endpoints.push_back(static_cast<std::int32_t>(i));
    }
  }
  const std::size_t n = matrix.endpoints.size();
  matrix.pcie.assign(n * n, PathClass::self);
  matrix.nvlinks.assign(n * n, 0);
  matrix.p2p.assign(n * n, -1);
  for (std::size_t row = 0; row < n; ++row) {
    for (std::size_t column = 0; column < n; ++column) {
      const auto a = matrix.endpoints[row];
      const auto b = matrix.endpoints[column];
      matrix.pcie[row * n + column] = classify_path(topology, a, b);
      if (row != column) {
        const Device& from = topology.devices[static_cast<std::size_t>(a)];
        const Device& to = topology.devices[static_cast<std::size_t>(b)];
        matrix.nvlinks[row * n + column] = nvlink_count(from, to);
        if (from.p2p_known && to.p2p_known) {
          const auto& peers = from.p2p_read_peers;
          matrix.p2p[row * n + column] = std::find(peers.begin(), peers.end(), to.address) != peers.end() ? 1 : 0;
        }
      }
    }
  }

  // Nearest NIC of each accelerator: the closest path class, RDMA NICs preferred, then PCI order.
  for (std::size_t i = 0; i < topology.devices.size(); ++i) {
    Device& device = topology.devices[i];
    if (device.kind != DeviceKind::gpu && device.kind != DeviceKind::accelerator) continue;
    std::int32_t best = -1;
    PathClass best_class = PathClass::sys;
    for (std::size_t j = 0; j < topology.devices.size(); ++j) {
      const Device& nic = topology.devices[j];
      if (nic.kind != DeviceKind::nic || (any_rdma && !nic.rdma)) continue;
      const PathClass path_class = classify_path(topology, static_cast<std::int32_t>(i), static_cast<std::int32_t>(j));
      if (best < 0 || path_class < best_class) {
        best = static_cast<std::int32_t>(j);
        best_class = path_class;
      }
    }
    device.nearest_nic = best;
  }
}

}  // namespace tally::collectors
