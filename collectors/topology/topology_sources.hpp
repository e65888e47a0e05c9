#pragma once
// Internal to tally::collectors: the steps of discover_topology(), one per source, each filling in what its
// source knows and adding one warning per thing it finds missing.

#include <string>

#include "collectors/nvml/nvml.hpp"
#include "agent/base/fs_root.hpp"
#include "collectors/topology/topology.hpp"

namespace tally::collectors {

// Logs `message` once (spdlog::warn) and keeps it in topology.warnings.
void add_warning(Topology& topology, std::string message);

// PCI attributes, NICs (/sys/class/net, /sys/class/infiniband), /proc/driver/nvidia and AMD partitions.
void enrich_from_sysfs(Topology& topology, const FsRoot& sysfs);
// libnuma: memory and distances per node (host only).
void enrich_from_libnuma(Topology& topology);
// NVML, joined by PCI address: UUID, name, memory, MIG, NVLink peers, P2P status.
void enrich_from_nvml(Topology& topology, const NvmlLibrary& nvml);
// Labels, nearest NUMA/NIC and the link matrix: the last step, after every source.
void derive_links(Topology& topology);

}  // namespace tally::collectors
