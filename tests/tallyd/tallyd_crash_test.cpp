// Exact through any crash: tallyd is killed with SIGKILL 20 times, at random moments, while 4 writer processes of 4
// threads report through the client and an IO workload runs in a cgroup of its own, and restarted each time on the
// same state, segments and pinned probes. At the end the feed's totals equal what the writers wrote, exactly, and
// the workload's io totals equal its own /proc/PID/io, exactly (its threads have exited: the kernel's counters).
// Needs root, BPF and cgroup v2; skips with the reason otherwise.

#include <signal.h>
#include <unistd.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <random>

#include "agent/base/proc.hpp"
#include "agent/base/workload_identity.hpp"
#include "collectors/kernel/bpf_probes.hpp"
#include "tests/support/test_cgroup.hpp"
#include "tests/support/workload_gen.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;
using Totals = std::map<std::string, std::map<std::string, std::uint64_t>>;  // label text -> counter -> total

// Writer p runs for about 3 (p + 1) seconds: some exit while the agent is still being killed, so their totals live
// only in the checkpoint by the end (their segment files are removed once it is durable).
constexpr std::uint32_t kWriters = 4, kThreads = 4, kLabels = 3, kPerSecond = 500;
constexpr std::uint64_t iterations_of(std::uint32_t writer) { return 1500 * (writer + 1); }
constexpr std::uint64_t kSeed = 99;
constexpr int kKills = 20;

Totals expected_totals() {
  Totals totals;
  for (std::uint32_t p = 0; p < kWriters; ++p) {
    for (std::uint32_t t = 0; t < kThreads; ++t) {
      for (std::uint64_t i = 0; i < iterations_of(p); ++i) {
        const auto g = generate(kSeed, p, t, i, kLabels);
        add_written_counters(g, totals[label_text(g.label_index)]);
      }
    }
  }
  for (auto& [text, counters] : totals) std::erase_if(counters, [](const auto& c) { return c.second == 0; });
  return totals;
}

// The writers' client totals and the io totals of one workload, from a snapshot report.
struct Seen {
  Totals writers;
  std::uint64_t io_write = 0, io_read = 0;
};

Seen seen_in(const v1::UsageReport& report, const std::string& io_workload) {
  Seen seen;
  for (const auto& w : report.workloads()) {
    if (w.workload_id() == io_workload) {
      for (const auto& t : w.totals()) {
        if (t.source() != v1::VALUE_SOURCE_KERNEL_PROBES) continue;
        if (t.name() == "io_write_bytes") seen.io_write = t.total();
        if (t.name() == "io_read_bytes") seen.io_read = t.total();
      }
    }
    if (std::find(w.names().begin(), w.names().end(), "shm-test-writer") == w.names().end()) continue;
    for (const auto& ls : w.label_sets()) {
      std::string text;
      for (const auto& l : ls.labels()) text += (text.empty() ? "" : "\n") + l.key() + "=" + l.value();
      for (const auto& t : ls.totals()) {
        if (t.source() == v1::VALUE_SOURCE_CLIENT && t.total() != 0) seen.writers[text][t.name()] += t.total();
      }
    }
  }
  return seen;
}

TEST(TallydCrash, KilledTwentyTimesAtRandomMomentsTotalsStayExact) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_BPF, cgroups, a BPF filesystem)";
  if (auto support = collectors::check_bpf_support(); !support) GTEST_SKIP() << "no BPF here: " << support.error().message;
  const auto root = cgroup2_root();
  if (!root) GTEST_SKIP() << "no cgroup v2 hierarchy";
  PrivateBpffs bpffs;  // before any thread of ours starts: it makes this process a mount namespace of its own
  if (!bpffs.error().empty()) GTEST_SKIP() << bpffs.error();
  TestCgroupParent parent(*root);
  TempDir dir;
  const auto pin_dir = bpffs.path() / "tally";
  const std::string config = test_config(
      1000, 100,
      fmt::format("[probes]\npin_dir = \"{}\"\n\n[metering]\nsocket = \"{}/tally.sock\"\nruntime_dir = \"{}/run\"\n"
                  "state_dir = \"{}/state\"\ndrain_interval_ms = 20\n",
                  pin_dir.string(), dir.path().string(), dir.path().string(), dir.path().string()),
      300);
  auto agent = std::make_unique<TallydProcess>(config);
  auto endpoint = agent->wait_ready();
  ASSERT_TRUE(endpoint) << agent->process().stderr_text();

  // The IO workload, in its own cgroup: 60 rounds of 256 KiB written and read, 150 ms apart.
  const auto cgroup = parent.make_child("crash-io");
  const std::string io_workload = identify_cgroup("/" + cgroup.lexically_relative(*root).generic_string()).id;
  CgroupProcess io(cgroup, {TALLY_EBPF_WORKLOAD, "io-rounds", (dir / "data").string(), std::to_string(256 << 10),
                            "60", "150"});
  std::vector<std::unique_ptr<Process>> writers;
  for (std::uint32_t p = 0; p < kWriters; ++p) {
    writers.push_back(std::make_unique<Process>(
        std::vector<std::string>{SHM_TEST_WRITER_PATH, "--process", std::to_string(p), "--threads",
                                 std::to_string(kThreads), "--iterations", std::to_string(iterations_of(p)), "--labels",
                                 std::to_string(kLabels), "--seed", std::to_string(kSeed), "--per-second",
                                 std::to_string(kPerSecond)},
        std::map<std::string, std::string>{{"TALLY_SOCKET", (dir / "tally.sock").string()},
                                           {"TALLY_OPEN_TIMEOUT_MS", "5000"}}));
  }
  for (auto& w : writers) ASSERT_EQ(w->wait_for_stdout_lines(1, 30s).size(), 1u) << w->stderr_text();

  // Random moments: anywhere from right after READY to well into the next report.
  std::mt19937 random(std::random_device{}());
  for (int kill = 0; kill < kKills; ++kill) {
    std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 400)(random)));
    agent->process().signal(SIGKILL);
    ASSERT_TRUE(agent->process().wait(20s));
    agent = std::make_unique<TallydProcess>(config);
    endpoint = agent->wait_ready();
    ASSERT_TRUE(endpoint) << "restart " << kill << ": " << agent->process().stderr_text();
  }
  for (auto& w : writers) {
    const auto status = w->wait(120s);
    ASSERT_TRUE(status && status->exited && status->code == 0) << w->stderr_text();
  }
  ASSERT_EQ(io.read_line(60s), "io done");
  ASSERT_TRUE(io.wait_reading_stdin(20s));
  const auto io_bytes = read_process_io(FsRoot(), io.pid());
  ASSERT_TRUE(io_bytes);
  io.close_stdin();
  ASSERT_TRUE(io.wait(20s));

  const Totals expected = expected_totals();
  FeedSubscriber feed(*endpoint, "usage");
  Seen last;
  feed.receive_until(
      [&](const FeedMessage& m) {
        if (!m.envelope.usage().snapshot()) return false;
        last = seen_in(m.envelope.usage(), io_workload);
        return last.writers == expected && last.io_write == io_bytes->write_bytes &&
               last.io_read == io_bytes->read_bytes;
      },
      60s);
  EXPECT_EQ(last.writers, expected) << agent->process().stderr_text();
  EXPECT_EQ(last.io_write, io_bytes->write_bytes);
  EXPECT_EQ(last.io_read, io_bytes->read_bytes);

  agent.reset();
  auto removed = collectors::KernelProbes::remove_pinned(pin_dir);
  EXPECT_TRUE(removed && *removed);
}

}  // namespace
}  // namespace tally::test
