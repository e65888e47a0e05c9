// tallyd with its eBPF probes, end to end: kernel usage of a workload in a test cgroup reaches the feed under the
// workload's identity; the Heartbeat says whether probes run; without BPF privileges the agent warns once and
// samples /proc instead; and whether tallyd stops (SIGTERM) or is killed (SIGKILL), no program or link of its
// stays in the kernel. Needs root and BPF; skips with the reason otherwise.

#include <signal.h>
#include <unistd.h>

#include <set>
#include <string>

#include <bpf/bpf.h>
#include <gtest/gtest.h>

#include "collectors/kernel/bpf_probes.hpp"
#include "agent/base/workload_identity.hpp"
#include "tests/support/test_cgroup.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/temp_dir.hpp"
#include "agent/base/proc.hpp"
#include "agent/feed/usage_view.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

constexpr const char* kWorkload = TALLY_EBPF_WORKLOAD;

std::string skip_reason() {
  if (::geteuid() != 0) return "needs root (CAP_BPF and write access to the cgroup v2 hierarchy)";
  if (auto support = collectors::check_bpf_support(); !support) return "no BPF here: " + support.error().message;
  if (!cgroup2_root()) return "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified";
  return "";
}

// The programs tallyd attaches: the task iterator, fork, exec, exit, cgroup attach_task, mkdir and rmdir, skb
// ingress and egress, device, and socket bytes through sock_send_length and sock_recv_length (Linux 6.3+) or the
// one sys_exit fallback.
std::size_t expected_programs() { return collectors::kernel_has_socket_length_tracepoints() ? 12 : 11; }

class TallydProbesTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (const auto reason = skip_reason(); !reason.empty()) GTEST_SKIP() << reason;
  }
};

TEST_P(TallydProbesTest, NothingStaysAttachedAfterTheAgentGoes) {
  TallydProcess tallyd(test_config());
  ASSERT_TRUE(tallyd.wait_ready()) << tallyd.process().stderr_text();
  const BpfObjects held = bpf_objects_of(tallyd.process().pid());
  // Each program through its own link, the task iterator's included.
  ASSERT_EQ(held.links.size(), expected_programs()) << tallyd.process().stderr_text();
  ASSERT_GE(held.programs.size(), expected_programs());
  for (std::uint32_t id : held.programs) EXPECT_TRUE(bpf_program_exists(id));

  tallyd.process().signal(GetParam());
  ASSERT_TRUE(tallyd.process().wait(20s));
  // The kernel frees links and programs once the last fd is gone, after an RCU grace period: poll.
  EXPECT_TRUE(wait_until([&] {
    for (std::uint32_t id : held.links) {
      if (bpf_link_exists(id)) return false;
    }
    for (std::uint32_t id : held.programs) {
      if (bpf_program_exists(id)) return false;
    }
    return true;
  })) << "a BPF link or program of tallyd outlived it";
}

INSTANTIATE_TEST_SUITE_P(Signals, TallydProbesTest, ::testing::Values(SIGTERM, SIGKILL),
                         [](const auto& signal_info) { return signal_info.param == SIGTERM ? "SIGTERM" : "SIGKILL"; });

class TallydKernelUsageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const auto reason = skip_reason(); !reason.empty()) GTEST_SKIP() << reason;
    root_ = *cgroup2_root();
    parent_ = std::make_unique<TestCgroupParent>(root_);
  }

  struct KernelIo {
    v1::ValueSource source = v1::VALUE_SOURCE_UNSPECIFIED;
    std::uint64_t read_bytes = 0, write_bytes = 0;
  };

  // Runs the io workload in a fresh cgroup and waits for the feed to carry its workload's io totals covering the
  // bytes written (read: whichever of the kernel's sources counted them).
  std::optional<KernelIo> run_io_workload(const std::string& endpoint, std::uint64_t bytes) {
    FeedSubscriber feed(endpoint, "usage");
    const auto cgroup = parent_->make_child("feed-io");
    const std::string workload_id = identify_cgroup("/" + cgroup.lexically_relative(root_).string()).id;
    TempDir dir;
    CgroupProcess workload(cgroup, {kWorkload, "io", (dir / "data").string(), std::to_string(bytes)});
    EXPECT_EQ(workload.read_line(20s), "io done");
    KernelIo io;
    const auto found = feed.receive_until(
        [&](const FeedMessage& message) {
          for (const auto& w : message.envelope.usage().workloads()) {
            if (w.workload_id() != workload_id) continue;
            for (const auto& t : w.totals()) {
              if (t.name() == "io_read_bytes") io.read_bytes = t.total(), io.source = t.source();
              if (t.name() == "io_write_bytes") io.write_bytes = t.total(), io.source = t.source();
            }
          }
          return io.write_bytes >= bytes && io.read_bytes >= bytes;
        },
        20s);
    if (!found) return std::nullopt;
    return io;
  }

  std::filesystem::path root_;
  std::unique_ptr<TestCgroupParent> parent_;
};

TEST_F(TallydKernelUsageTest, TracedIoOfAWorkloadReachesTheFeed) {
  TallydProcess tallyd(test_config());
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedSubscriber heartbeats(*endpoint, "heartbeat");
  const auto heartbeat = heartbeats.receive(20s);
  ASSERT_TRUE(heartbeat);
  EXPECT_EQ(heartbeat->envelope.heartbeat().probes().state(), v1::ProbeState::STATE_ATTACHED);
  EXPECT_EQ(static_cast<std::size_t>(heartbeat->envelope.heartbeat().probes().programs_size()), expected_programs());

  const auto usage = run_io_workload(*endpoint, 1 << 20);
  ASSERT_TRUE(usage) << tallyd.process().stderr_text();
  EXPECT_EQ(usage->source, v1::VALUE_SOURCE_KERNEL_PROBES);
}

TEST_F(TallydKernelUsageTest, WithoutBpfPrivilegesTheAgentWarnsOnceAndSamples) {
  // Root, but without CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN and CAP_NET_ADMIN: as under a too-strict unit file.
  const std::string setpriv = "/usr/bin/setpriv";
  if (!std::filesystem::exists(setpriv)) GTEST_SKIP() << "needs setpriv (util-linux) to drop capabilities";
  TempDir dir;
  dir.write("tally.toml", test_config());
  Process tallyd({setpriv, "--inh-caps=-bpf,-perfmon,-sys_admin,-net_admin",
                  "--bounding-set=-bpf,-perfmon,-sys_admin,-net_admin", "--", TALLYD_PATH, "--config",
                  (dir / "tally.toml").string()},
                 {{"JOURNAL_STREAM", ""}});
  ASSERT_TRUE(tallyd.wait_for_stderr("feed bound to ", 20s)) << tallyd.stderr_text();
  const std::string log = tallyd.stderr_text();
  const auto warning = log.find("probes off: ");
  ASSERT_NE(warning, std::string::npos) << log;
  EXPECT_EQ(log.find("probes off: ", warning + 1), std::string::npos) << "warned more than once:\n" << log;
  EXPECT_NE(log.find("CAP_BPF", warning), std::string::npos) << log;

  const auto bound = log.find("feed bound to ");
  const std::string endpoint = log.substr(bound + 14, log.find_first_of(";, \n", bound + 14) - bound - 14);
  FeedSubscriber heartbeats(endpoint, "heartbeat");
  const auto heartbeat = heartbeats.receive(20s);
  ASSERT_TRUE(heartbeat);
  EXPECT_EQ(heartbeat->envelope.heartbeat().probes().state(), v1::ProbeState::STATE_OFF);
  EXPECT_NE(heartbeat->envelope.heartbeat().probes().reason().find("CAP_BPF"), std::string::npos);

  const auto usage = run_io_workload(endpoint, 1 << 20);
  ASSERT_TRUE(usage) << tallyd.stderr_text();
  EXPECT_EQ(usage->source, v1::VALUE_SOURCE_PROC_SAMPLING);
}

// What a workload's io totals are on the feed, folded the way docs/protocol.md says: the latest total per counter.
class FeedIo {
 public:
  explicit FeedIo(const std::string& endpoint) : feed_(endpoint, "usage") {}
  // Waits until `workload_id`'s io totals (probes) reach at least `write_bytes` written and `read_bytes` read, or
  // the deadline; returns them as last seen.
  std::pair<std::uint64_t, std::uint64_t> wait_for(const std::string& workload_id, std::uint64_t write_bytes,
                                                   std::uint64_t read_bytes) {
    fold_until([&] {
      const auto io = totals(workload_id);
      return io.first >= write_bytes && io.second >= read_bytes;
    });
    return totals(workload_id);
  }
  // Folds reports in until `done()` holds (true) or the deadline passes (false).
  template <typename Done>
  bool fold_until(Done&& done) {
    return feed_.receive_until(
               [&](const FeedMessage& m) {
                 view_.apply(m.envelope.usage());
                 return done();
               },
               20s)
        .has_value();
  }
  std::pair<std::uint64_t, std::uint64_t> totals(const std::string& workload_id) const {
    const auto it = view_.workloads().find(workload_id);
    if (it == view_.workloads().end()) return {0, 0};
    auto total = [&](const char* name) {
      const auto c = it->second.totals.find({name, v1::VALUE_SOURCE_KERNEL_PROBES, v1::VALUE_KIND_MEASURED});
      return c == it->second.totals.end() ? std::uint64_t{0} : c->second.total;
    };
    return {total("io_write_bytes"), total("io_read_bytes")};
  }
  const agent::UsageView& view() const { return view_; }

 private:
  FeedSubscriber feed_;
  agent::UsageView view_;
};

class TallydAttributionTest : public TallydKernelUsageTest {
 protected:
  std::string id_of(const std::filesystem::path& cgroup) const {
    return identify_cgroup("/" + cgroup.lexically_relative(root_).generic_string()).id;
  }
};

// A cgroup made, used and removed within one report interval: the probes name it when it is made (its path comes
// with the event), so its bytes reach the feed under its own workload although it is gone by the next report.
TEST_F(TallydAttributionTest, ACgroupThatLivesLessThanOneIntervalIsOnTheFeed) {
  TallydProcess tallyd(test_config(1000, 1000));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedIo feed(*endpoint);
  const auto cgroup = parent_->make_child("short-lived");
  const std::string id = id_of(cgroup);
  TempDir dir;
  std::optional<IoBytes> io;
  {
    CgroupProcess workload(cgroup, {kWorkload, "io", (dir / "data").string(), std::to_string(1 << 20)});
    ASSERT_EQ(workload.read_line(20s), "io done");
    ASSERT_TRUE(workload.wait_reading_stdin(20s));
    io = read_process_io(FsRoot(), workload.pid());
    ASSERT_TRUE(io);
    workload.close_stdin();
    ASSERT_TRUE(workload.wait(20s));
  }
  ASSERT_TRUE(wait_until([&] { return ::rmdir(cgroup.c_str()) == 0; })) << "the cgroup stays busy";
  // Its totals are exact: the bytes of its one process, which had exited before the cgroup went.
  const auto [written, read] = feed.wait_for(id, io->write_bytes, io->read_bytes);
  EXPECT_EQ(written, io->write_bytes) << tallyd.process().stderr_text();
  EXPECT_EQ(read, io->read_bytes);
}

// A process that writes A bytes, moves itself to another cgroup, then writes B: A stays with the first workload,
// B (and what came after the move) goes to the second.
TEST_F(TallydAttributionTest, BytesBeforeAMoveStayWithTheOldWorkload) {
  TallydProcess tallyd(test_config(1000, 200));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedIo feed(*endpoint);
  const auto from = parent_->make_child("feed-move-from");
  const auto to = parent_->make_child("feed-move-to");
  TempDir dir;
  constexpr std::size_t kBefore = 3 << 20, kAfter = 1 << 20;
  CgroupProcess workload(from, {kWorkload, "move-io", (dir / "data").string(), std::to_string(kBefore),
                                (to / "cgroup.procs").string(), std::to_string(kAfter)});
  ASSERT_EQ(workload.read_line(20s), "wrote " + std::to_string(kBefore));
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto before = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(before);
  workload.write_stdin("move\n");
  ASSERT_EQ(workload.read_line(20s), "io done");
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto after = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(after);
  const auto moved = feed.wait_for(id_of(to), after->write_bytes - before->write_bytes, 0);
  EXPECT_EQ(moved.first, after->write_bytes - before->write_bytes);
  EXPECT_EQ(feed.totals(id_of(from)).first, before->write_bytes);
}

// A process in the root cgroup is one workload, "process:<pid>:<start>", for its client segment and its kernel
// counters alike: its tokens and its io are on one row.
TEST_F(TallydAttributionTest, ARootCgroupProcessIsOneWorkloadOnEveryPath) {
  TempDir dir;
  TallydProcess tallyd(test_config(1000, 200,
                                   fmt::format("[metering]\nsocket = \"{0}/tally.sock\"\nruntime_dir = \"{0}/run\"\n",
                                               dir.path().string())));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedIo feed(*endpoint);
  // The test runner's own cgroup holds the writer; it must be the root for this test.
  const auto own = read_process_cgroup(FsRoot(), ::getpid());
  if (own != "/") GTEST_SKIP() << "this test runs in cgroup " << own.value_or("?") << ", not the root";
  Process writer({SHM_TEST_WRITER_PATH, "--threads", "1", "--iterations", "100", "--labels", "1"},
                 {{"TALLY_SOCKET", (dir / "tally.sock").string()}, {"TALLY_OPEN_TIMEOUT_MS", "5000"}});
  ASSERT_TRUE(writer.wait(30s));
  const std::string id = "process:" + std::to_string(writer.pid()) + ":";
  std::string kind;
  ASSERT_TRUE(feed.fold_until([&] {
    for (const auto& [workload_id, w] : feed.view().workloads()) {
      if (workload_id.rfind(id, 0) != 0) continue;
      kind = w.last.kind();
      return !w.label_sets.empty() && w.totals.contains({"io_write_bytes", v1::VALUE_SOURCE_KERNEL_PROBES, v1::VALUE_KIND_MEASURED});
    }
    return false;
  })) << "no row with both the client's counters and the kernel's for pid " << writer.pid();
  EXPECT_EQ(kind, "process");
}

}  // namespace
}  // namespace tally::test
