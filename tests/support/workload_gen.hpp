#pragma once
// The deterministic workload the writer helper produces and the tests re-compute: request i of thread t of
// process p under seed s is a pure function of (s, p, t, i), so a test knows every value written, exactly.

#include <cstdint>
#include <map>
#include <string>

#include "tally/client.h"

namespace tally::test {

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

struct GeneratedRequest {
  std::uint32_t label_index;  // 0 .. label_sets-1
  tally_request request;
  std::uint64_t widgets;      // a user-named counter
};

inline GeneratedRequest generate(std::uint64_t seed, std::uint32_t process, std::uint32_t thread, std::uint64_t i,
                                 std::uint32_t label_sets) {
  const std::uint64_t r = splitmix64(seed ^ splitmix64((std::uint64_t{process} << 40) ^ (std::uint64_t{thread} << 32) ^ i));
  const std::uint64_t r2 = splitmix64(r);
  GeneratedRequest g{};
  g.label_index = static_cast<std::uint32_t>(r % label_sets);
  g.request.tokens_in = 1 + (r >> 8) % 4000;
  g.request.tokens_out = 1 + (r >> 20) % 1500;
  // Heavy tails: 1 in 50 requests is 20-100x slower, the way real inference latencies look.
  const std::uint64_t slow = (r2 % 50 == 0) ? 20 + (r2 >> 8) % 80 : 1;
  g.request.ttft_ns = (50'000 + (r2 >> 16) % 5'000'000) * slow;
  g.request.duration_ns = g.request.ttft_ns + g.request.tokens_out * (10'000 + (r2 >> 40) % 20'000);
  g.request.gpu_time_ns = g.request.duration_ns / 2 + (r >> 40) % 1000;
  g.request.tool_calls = static_cast<std::uint32_t>((r >> 50) % 3);
  g.request.status = (r2 >> 60) == 0 ? 1u : 0u;  // 1 in 16 fails
  g.widgets = (r >> 30) % 7;
  return g;
}

// What the writer helper (shm_test_writer) adds to a label set's counters for one generated request: tally_record
// of the request, half its input tokens as cached, and the user-named counter "widgets".
inline void add_written_counters(const GeneratedRequest& g, std::map<std::string, std::uint64_t>& counters) {
  counters["tokens_in"] += g.request.tokens_in;
  counters["tokens_out"] += g.request.tokens_out;
  counters["requests"] += 1;
  counters["errors"] += g.request.status != 0 ? 1 : 0;
  counters["gpu_time_ns"] += g.request.gpu_time_ns;
  counters["tool_calls"] += g.request.tool_calls;
  counters["cached_tokens"] += g.request.tokens_in / 2;
  counters["widgets"] += g.widgets;
}

inline std::string label_text(std::uint32_t label_index) {
  return "tenant=t" + std::to_string(label_index % 3) + "\nmodel=m" + std::to_string(label_index);
}

// The `i`-th request of writer thread `thread` when records are checked for tearing: every field derives from
// tokens_in = (i << 8) | thread, so a reader can tell a torn record from a whole one (torn_record_test).
inline tally_request self_checking_request(std::uint64_t i, std::uint64_t thread) {
  tally_request r{};
  r.tokens_in = (i << 8) | thread;
  r.tokens_out = r.tokens_in * 3;
  r.ttft_ns = r.tokens_in * 5;
  r.duration_ns = r.tokens_in * 7;
  r.gpu_time_ns = r.tokens_in * 11;
  r.tool_calls = static_cast<std::uint32_t>(r.tokens_in & 0xffff);
  r.status = static_cast<std::uint32_t>(r.tokens_in >> 16);
  return r;
}

}  // namespace tally::test
