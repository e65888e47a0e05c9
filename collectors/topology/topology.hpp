#pragma once
// The node's hardware topology, in one model: NUMA nodes (CPUs, memory, distances) -> PCIe tree (host bridges,
// bridges and switch ports) -> devices (GPUs and other accelerators, NVSwitches, NICs, NVMe), plus a link matrix
// between accelerators and RDMA NICs using the link classes of `nvidia-smi topo -m` (docs/topology.md).
//
// Sources: hwloc (the host, a saved XML, or a sysfs root of another node), sysfs (PCI attributes, NICs,
// /proc/driver/nvidia), libnuma (host only: distances and memory per node) and NVML (dlopen'ed, see nvml.hpp),
// joined by PCI address. Whatever a source lacks becomes one warning naming what is missing; the rest is kept.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "collectors/topology/pci.hpp"
#include "agent/base/result.hpp"

namespace tally::collectors {

// How two devices reach each other over PCIe, closest first. The names are nvidia-smi's:
//   pix  through at most one PCIe switch (the devices share a switch's upstream port or a bridge)
//   pxb  through several PCIe switches, without crossing a host bridge
//   phb  through one PCIe host bridge (the CPU's root complex)
//   node through the interconnect between host bridges inside one NUMA node
//   sys  through the interconnect between NUMA nodes (QPI/UPI, Infinity Fabric, X-Bus)
enum class PathClass : std::uint8_t { self, pix, pxb, phb, node, sys };
std::string_view to_string(PathClass path_class);  // "X", "PIX", "PXB", "PHB", "NODE", "SYS"

struct NumaNode {
  std::uint32_t os_index = 0;
  std::vector<std::uint32_t> cpus;
  std::uint64_t memory_bytes = 0;
  std::vector<std::uint32_t> distances;  // to each entry of Topology::numa_nodes, in order; empty when unknown
  bool gpu_memory = false;               // a CPU-less node holding an accelerator's memory (POWER9 + V100)
};

enum class PcieNodeKind : std::uint8_t { host_bridge, bridge, device };

struct PcieNode {
  PcieNodeKind kind = PcieNodeKind::device;
  std::optional<PciAddress> address;  // bridges and devices; host bridges have none
  std::int32_t parent = -1;           // index in Topology::pcie; -1 for host bridges
  std::int32_t numa_node = -1;        // OS index of the nearest NUMA node (with CPUs); -1 when unknown
  std::int32_t device = -1;           // index in Topology::devices for kind == device
};

struct MigInstance {
  std::uint32_t gpu_instance_id = 0;
  std::uint32_t compute_instance_id = 0;
  std::string uuid;
  std::uint64_t memory_bytes = 0;
};

enum class NvLinkPeerKind : std::uint8_t { gpu, nvswitch, cpu, unknown };
std::string_view to_string(NvLinkPeerKind kind);

struct NvLink {
  std::uint32_t link = 0;
  bool active = false;
  std::optional<PciAddress> remote;
  NvLinkPeerKind remote_kind = NvLinkPeerKind::unknown;
};

struct Device {
  DeviceKind kind = DeviceKind::other;
  std::string label;  // GPU0, ACC0, NIC0, NVS0, NVME0, DISP0 (numbered in PCI order per kind); "" for other
  PciAddress address;
  std::uint16_t class_code = 0;
  std::uint16_t vendor_id = 0;  // 0: unknown
  std::uint16_t device_id = 0;
  std::string vendor_name;
  std::string model;
  std::int32_t pcie_node = -1;        // index in Topology::pcie
  std::int32_t numa_node = -1;        // nearest NUMA node with CPUs (OS index); -1 when unknown
  std::vector<std::uint32_t> cpus;    // CPUs local to the device
  double link_gbytes_per_s = 0;       // PCIe link bandwidth as hwloc reports it (GB/s); 0 when unknown
  std::string link_speed;             // sysfs current_link_speed, e.g. "16.0 GT/s PCIe"
  std::uint32_t link_width = 0;       // sysfs current_link_width (lanes)
  std::vector<std::string> os_names;  // eth0, mlx5_0, nvme0n1, cuda0, ve0 ...
  // NICs
  bool rdma = false;            // has an RDMA (InfiniBand/RoCE/EFA) device
  std::string rdma_rate;        // /sys/class/infiniband/X/ports/1/rate
  std::string rdma_state;       // ports/1/state, e.g. "4: ACTIVE"
  std::string rdma_link_layer;  // InfiniBand or Ethernet
  // Accelerators
  std::string uuid;
  std::uint64_t memory_bytes = 0;
  std::int32_t memory_numa_node = -1;  // NUMA node holding the device's own memory (POWER9), -1 if none
  std::optional<bool> mig_enabled;     // nullopt: not reported (no NVML, or not supported)
  std::vector<MigInstance> mig_instances;
  std::vector<NvLink> nvlinks;
  std::string compute_partition;           // AMD Instinct partition mode (sysfs current_compute_partition)
  bool lost = false;                       // NVML reported GPU_IS_LOST
  bool p2p_known = false;                  // NVML answered P2P status queries for this GPU
  std::vector<PciAddress> p2p_read_peers;  // GPUs this one can read from peer-to-peer (NVML P2P caps READ)
  std::int32_t nearest_nic = -1;  // index in Topology::devices of the closest RDMA NIC (else any NIC); -1: none
};

// Square matrix over `endpoints` (indices in Topology::devices): GPUs, then other accelerators, then RDMA NICs,
// each group in PCI order.
struct LinkMatrix {
  std::vector<std::int32_t> endpoints;
  std::vector<PathClass> pcie;         // row-major, size endpoints^2
  std::vector<std::uint32_t> nvlinks;  // NVLink count between the two (direct or through NVSwitches)
  std::vector<std::int8_t> p2p;        // NVML P2P read status: 1 ok, 0 not supported, -1 unknown

  std::size_t size() const { return endpoints.size(); }
  PathClass pcie_at(std::size_t row, std::size_t column) const { return pcie[row * size() + column]; }
  std::uint32_t nvlinks_at(std::size_t row, std::size_t column) const { return nvlinks[row * size() + column]; }
};

struct Topology {
  std::string source;  // "host", "xml:FILE" or "sysfs:DIR"
  std::string architecture;
  std::string nvml_driver_version;  // empty without NVML
  std::vector<std::uint32_t> cpus;  // online CPUs (OS indices)
  std::uint64_t memory_bytes = 0;
  std::vector<NumaNode> numa_nodes;  // ordered by OS index
  std::vector<PcieNode> pcie;
  std::vector<Device> devices;  // every classified PCI function, in PCI order
  LinkMatrix links;
  std::vector<std::string> warnings;  // each also logged once with spdlog::warn

  std::vector<const Device*> devices_of(DeviceKind kind) const;
  const Device* find(const PciAddress& address) const;
  const Device* find(std::string_view label) const;
  const NumaNode* numa_node(std::uint32_t os_index) const;
};

struct DiscoveryOptions {
  std::filesystem::path xml_file;    // non-empty: read this hwloc XML instead of the host
  std::filesystem::path sysfs_root;  // non-empty: a directory holding sys/ (and proc/) of a node
  // NVML library (path or soname). Unset: "libnvidia-ml.so.1" when discovering the host, no NVML for an XML or a
  // sysfs root (their GPUs are not this host's). Set: used whatever the source, joined by PCI address.
  std::optional<std::string> nvml_library;
  bool use_nvml = true;
};

inline constexpr std::string_view kDefaultNvmlLibrary = "libnvidia-ml.so.1";

// Discovers the topology. An error only when the chosen hwloc input cannot be loaded at all (an XML hwloc cannot
// read, a sysfs root that does not exist); everything else degrades into Topology::warnings.
Result<Topology> discover_topology(const DiscoveryOptions& options);

// The PCIe path class between two devices (indices in Topology::devices), derived from the PCIe tree and NUMA
// locality. Exposed for tests and for callers that need pairs outside the matrix.
PathClass classify_path(const Topology& topology, std::int32_t device_a, std::int32_t device_b);

// Text output of `tallyctl topo`: the matrix (NVLink-aware like `nvidia-smi topo -m`, or PCIe-only like
// `nvidia-smi topo -mp`), the legend, and a compact tree of NUMA nodes and devices.
std::string format_link_matrix(const Topology& topology, bool nvlink_aware);
std::string format_topology_tree(const Topology& topology);

}  // namespace tally::collectors
