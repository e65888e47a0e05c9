// fork() after tally_open: a parent, its child (through the inherited client) and a grandchild that execs a fresh
// client all report at once; every process's totals are exact, read by the agent's reader from one segment per
// process, and on the real tallyd's feed. Before
// the fix the child wrote into its parent's slots (load + store on the same cells from two processes: lost
// counts, or a quarantined segment) and the parent's exit retired the segment the child still wrote into.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "tally/client.h"
#include "tests/shm/client/segment_probe.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/in_process_agent.hpp"
#include "tests/support/tallyd_process.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;
using Totals = std::map<std::string, std::map<std::string, std::uint64_t>>;  // label text -> counter -> total

// The fork writers' client totals in a snapshot report, summed by label set over their workloads (each process
// may be a workload of its own, or share its cgroup's).
Totals writer_totals(const v1::UsageReport& report) {
  Totals totals;
  for (const auto& w : report.workloads()) {
    if (std::find(w.names().begin(), w.names().end(), "fork-writer") == w.names().end()) continue;
    for (const auto& ls : w.label_sets()) {
      std::string text;
      for (const auto& l : ls.labels()) text += (text.empty() ? "" : "\n") + l.key() + "=" + l.value();
      for (const auto& t : ls.totals()) {
        if (t.source() == v1::VALUE_SOURCE_CLIENT && t.total() != 0) totals[text][t.name()] += t.total();
      }
    }
  }
  return totals;
}

constexpr std::uint64_t kSteps = 200000;  // calls per step; parent and child make two steps each, the grandchild one

// What fork_writer reports, by label set (each process has its own role; all three share scope=all).
Totals expected_totals(std::uint64_t n) {
  return {
      {"scope=all", {{"tokens_in", 5 * n}}},
      {"role=parent", {{"widgets", 6 * n}, {"tokens_out", 4 * n}, {"requests", 2 * n}}},
      {"role=child", {{"widgets", 6 * n}, {"tokens_out", 4 * n}, {"requests", 2 * n}}},
      {"role=grandchild", {{"widgets", 3 * n}, {"tokens_out", 2 * n}, {"requests", n}}},
  };
}

void run_writer(const std::filesystem::path& socket) {
  Process writer({FORK_WRITER_PATH, "--iterations", std::to_string(kSteps)},
                 {{"TALLY_SOCKET", socket.string()}, {"TALLY_OPEN_TIMEOUT_MS", "5000"}});
  const auto status = writer.wait(120s);
  ASSERT_TRUE(status && status->exited && status->code == 0) << writer.stderr_text();
}

// The same through the registration server and the agent's reader, without tallyd: one segment per process,
// each read whole after the writers exited.
TEST(Fork, EveryProcessGetsItsOwnSegmentWithExactTotals) {
  InProcessAgent agent;
  run_writer(agent.socket_path());
  const auto registrations = agent.registrations();
  EXPECT_EQ(registrations.size(), 3u);  // parent, child, grandchild: one segment each
  Totals totals;
  for (const auto& r : registrations) {
    SegmentProbe probe(r);
    probe.drain();
    const auto& names = probe.reader->counter_names();
    for (std::uint32_t h = 1; h < probe.reader->label_count(); ++h) {
      auto& row = totals[probe.reader->label_set(h).text];
      const auto* counters = probe.reader->counters(h).data();
      for (const auto& [name, index] : {std::pair<std::string, std::uint32_t>{"tokens_in", TALLY_TOKENS_IN},
                                        {"tokens_out", TALLY_TOKENS_OUT}, {"requests", TALLY_REQUESTS}}) {
        if (counters[index] != 0) row[name] += counters[index];
      }
      for (std::size_t i = 0; i < names.size(); ++i) {
        if (counters[TALLY_USER_COUNTER_0 + i] != 0) row[names[i]] += counters[TALLY_USER_COUNTER_0 + i];
      }
    }
  }
  EXPECT_EQ(totals, expected_totals(kSteps));
}

TEST(Fork, ParentChildAndExecedGrandchildReportAtOnceAndEveryTotalIsExact) {
  TempDir dir;
  const auto socket = dir / "tally.sock";
  TallydProcess agent(test_config(1000, 100,
                                  fmt::format("[metering]\nsocket = \"{}\"\nruntime_dir = \"{}\"\nstate_dir = \"{}\"\n"
                                              "drain_interval_ms = 10\n",
                                              socket.string(), (dir / "run").string(), (dir / "state").string()),
                                  300));
  const auto endpoint = agent.wait_ready();
  ASSERT_TRUE(endpoint) << agent.process().stderr_text();
  FeedSubscriber feed(*endpoint, "usage");

  run_writer(socket);
  const Totals expected = expected_totals(kSteps);
  Totals last;
  feed.receive_until(
      [&](const FeedMessage& m) {
        if (!m.envelope.usage().snapshot()) return false;
        last = writer_totals(m.envelope.usage());
        return last == expected;
      },
      30s);
  EXPECT_EQ(last, expected) << agent.process().stderr_text();
}

}  // namespace
}  // namespace tally::test
