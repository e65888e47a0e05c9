#pragma once
// The agent's own cost, published in every Heartbeat so that its overhead is always visible.

#include <cstdint>

namespace tally::agent {

struct SelfUsage {
  std::uint64_t cpu_user_ns = 0;
  std::uint64_t cpu_system_ns = 0;
  std::uint64_t rss_bytes = 0;
};

SelfUsage read_self_usage();

}  // namespace tally::agent
