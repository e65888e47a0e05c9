#pragma once
// The clocks, once: wall-clock time as the feed, the checkpoint and segment headers carry it, and the monotonic
// clock for intervals and deadlines. Header-only and dependency-free (the client library uses it too).

#include <chrono>
#include <cstdint>

namespace tally {

// Nanoseconds since the Unix epoch (CLOCK_REALTIME): timestamps that leave the process.
inline std::uint64_t unix_time_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

// Nanoseconds of CLOCK_MONOTONIC: durations and deadlines, immune to clock steps.
inline std::int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace tally
