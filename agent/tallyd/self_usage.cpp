#include "agent/tallyd/self_usage.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>

namespace tally::agent {
namespace {
std::uint64_t to_ns(const timeval& tv) {
  return static_cast<std::uint64_t>(tv.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(tv.tv_usec) * 1000ULL;
}
}  // namespace

SelfUsage read_self_usage() {
  SelfUsage usage;
  rusage ru{};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    usage.cpu_user_ns = to_ns(ru.ru_utime);
    usage.cpu_system_ns = to_ns(ru.ru_stime);
  }
  // Current RSS (getrusage only gives the peak): second field of /proc/self/statm, in pages.
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size_pages = 0, resident_pages = 0;
  if (statm >> size_pages >> resident_pages) {
    usage.rss_bytes = resident_pages * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  }
  return usage;
}

}  // namespace tally::agent
