#include "collectors/node_summary.hpp"

#include <numa.h>
#include <unistd.h>

namespace tally::collectors {

NodeSummary read_node_summary() {
  NodeSummary summary;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  summary.cpu_count = cpus > 0 ? static_cast<std::uint32_t>(cpus) : 0;
  summary.numa_node_count = numa_available() < 0 ? 1 : static_cast<std::uint32_t>(numa_num_configured_nodes());
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) {
    summary.memory_bytes = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size);
  }
  return summary;
}

}  // namespace tally::collectors
