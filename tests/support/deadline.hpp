#pragma once
// Synchronisation for tests: poll a condition until it holds or a deadline passes. Never a fixed sleep.
#include <chrono>
#include <thread>

namespace tally::test {

using namespace std::chrono_literals;

// Generous: deadlines guard against hangs; they are not timing assertions.
inline constexpr std::chrono::milliseconds kDefaultDeadline = 20s;

template <typename Predicate>
bool wait_until(Predicate&& predicate, std::chrono::milliseconds deadline = kDefaultDeadline,
                std::chrono::milliseconds poll = 5ms) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (true) {
    if (predicate()) return true;
    if (std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(poll);
  }
}

}  // namespace tally::test
