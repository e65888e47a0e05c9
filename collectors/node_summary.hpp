#pragma once
// The smallest view of the node: CPU, NUMA and memory counts. Full topology discovery extends this.

#include <cstdint>

namespace tally::collectors {

struct NodeSummary {
  std::uint32_t cpu_count = 0;        // online CPUs
  std::uint32_t numa_node_count = 0;  // configured NUMA nodes (1 when libnuma reports no NUMA support)
  std::uint64_t memory_bytes = 0;     // physical memory
};

NodeSummary read_node_summary();

}  // namespace tally::collectors
