// The eBPF probes against the kernel's own accounting: a real workload in a fresh test cgroup, the counters the
// probes keep for that cgroup, and /proc/PID/io or what the workload itself reports. Needs root and BPF; skips
// with the reason otherwise.

#include "collectors/kernel/bpf_probes.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>

#include <bpf/bpf.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "agent/base/proc.hpp"
#include "agent/base/unique_fd.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"
#include "ebpf/tally_abi.h"
#include "tests/support/test_cgroup.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::collectors {
namespace {

using namespace std::chrono_literals;
using test::CgroupProcess;
using test::TempDir;
using test::wait_until;

constexpr const char* kWorkload = TALLY_EBPF_WORKLOAD;

class KernelProbesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_BPF and write access to the cgroup v2 hierarchy)";
    if (auto support = check_bpf_support(); !support) GTEST_SKIP() << "no BPF here: " << support.error().message;
    const auto root = test::cgroup2_root();
    if (!root) GTEST_SKIP() << "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified";
    root_ = *root;
    parent_ = std::make_unique<test::TestCgroupParent>(root_);
    auto probes = KernelProbes::start(options());
    ASSERT_TRUE(probes) << probes.error().message;
    probes_ = std::move(*probes);
  }

  ProbeOptions options() const {
    ProbeOptions o;
    o.cgroup2_root = root_;
    o.accelerator_majors = accelerator_majors();
    return o;
  }

  // Replaces the probes with ones that count socket bytes through `hook`.
  void restart_probes(SocketHook hook) {
    probes_.reset();
    ProbeOptions with_hook = options();
    with_hook.socket_hook = hook;
    auto probes = KernelProbes::start(with_hook);
    ASSERT_TRUE(probes) << probes.error().message;
    probes_ = std::move(*probes);
  }

  // A receiver and a sender in two fresh cgroups move `bytes` over TCP on 127.0.0.1, with send/recv or, when
  // `read_write`, with write/read; returns the counters of (sender, receiver).
  std::pair<KernelCounters, KernelCounters> run_tcp(const std::string& name, std::size_t bytes, bool read_write) {
    const auto receiver_cgroup = parent_->make_child(name + "-receiver");
    const auto sender_cgroup = parent_->make_child(name + "-sender");
    std::vector<std::string> listen{kWorkload, "tcp-listen"};
    if (read_write) listen.emplace_back("read");
    CgroupProcess receiver(receiver_cgroup, listen);
    const auto port_line = receiver.read_line(20s);
    EXPECT_TRUE(port_line && port_line->starts_with("port ")) << port_line.value_or("(none)");
    if (!port_line || !port_line->starts_with("port ")) return {};
    std::vector<std::string> send{kWorkload, "tcp-send", port_line->substr(5), std::to_string(bytes)};
    if (read_write) send.emplace_back("write");
    CgroupProcess sender(sender_cgroup, send);
    EXPECT_EQ(sender.read_line(20s), "sent " + std::to_string(bytes));
    EXPECT_EQ(receiver.read_line(20s), "received " + std::to_string(bytes));

    const KernelCounters sent = counters_of(sender_cgroup);
    const KernelCounters received = counters_of(receiver_cgroup);
    RecordProperty(name + "-sender", fmt::format("socket tx {} net tx {} net rx {} io write {}", sent.socket_tx_bytes,
                                                 sent.net_tx_bytes, sent.net_rx_bytes, sent.io_write_bytes));
    RecordProperty(name + "-receiver",
                   fmt::format("socket rx {} net rx {} net tx {} io read {}", received.socket_rx_bytes,
                               received.net_rx_bytes, received.net_tx_bytes, received.io_read_bytes));
    return {sent, received};
  }

  void TearDown() override {
    probes_.reset();  // detaches every program: checked by ProgramsGoAwayWithTheOwner
    parent_.reset();
  }

  KernelCounters counters_of(const std::filesystem::path& cgroup) {
    auto id = cgroup_id_of(cgroup);
    EXPECT_TRUE(id) << id.error().message;
    if (!id) return {};
    return counters_of_key(*id);
  }

  KernelCounters counters_of_key(std::uint64_t key) { return read_all().emplace(key, KernelCounters{}).first->second; }

  std::map<std::uint64_t, KernelCounters> read_all() { return read_all(*probes_); }
  static std::map<std::uint64_t, KernelCounters> read_all(KernelProbes& probes) {
    auto all = probes.read_counters();
    EXPECT_TRUE(all) << all.error().message;
    return all ? *all : std::map<std::uint64_t, KernelCounters>{};
  }

  // Hands events to `handler` until it returns true for one of them... or until the deadline passes.
  static bool consume_until(KernelProbes& probes, const std::function<bool()>& done,
                            const std::function<void(const KernelEvent&)>& handler) {
    return wait_until([&] {
      EXPECT_TRUE(probes.consume_events(handler));
      return done();
    });
  }

  // The path of a cgroup as the kernel names it in cgroup events: relative to the v2 root, with a leading '/'.
  std::string relative(const std::filesystem::path& cgroup) const {
    return "/" + cgroup.lexically_relative(root_).generic_string();
  }

  // Runs the io workload in `cgroup` until it has exited; returns what /proc/PID/io said just before, when it was
  // idle, and its pid.
  std::pair<IoBytes, pid_t> run_io_to_exit(const std::filesystem::path& cgroup, std::size_t bytes) {
    TempDir dir;
    CgroupProcess workload(cgroup, {kWorkload, "io", (dir / "data").string(), std::to_string(bytes)});
    EXPECT_EQ(workload.read_line(20s), "io done");
    EXPECT_TRUE(workload.wait_reading_stdin(20s));
    const auto io = read_process_io(FsRoot(), workload.pid());
    EXPECT_TRUE(io);
    workload.close_stdin();
    const auto status = workload.wait(20s);
    EXPECT_TRUE(status && status->exited && status->code == 0);
    return {io.value_or(IoBytes{}), workload.pid()};
  }

  std::filesystem::path root_;
  std::unique_ptr<test::TestCgroupParent> parent_;
  std::unique_ptr<KernelProbes> probes_;
};

TEST_F(KernelProbesTest, IoBytesMatchProcIoWithinOnePercent) {
  const auto cgroup = parent_->make_child("io");
  TempDir dir;
  constexpr std::size_t kBytes = 4 << 20;
  CgroupProcess workload(cgroup, {kWorkload, "io", (dir / "data").string(), std::to_string(kBytes)});
  ASSERT_EQ(workload.read_line(20s), "io done");
  // The workload now blocks in read(stdin): nothing more is counted on either side until we close it.
  const auto proc_io = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(proc_io);
  ASSERT_GE(proc_io->write_bytes, kBytes);
  ASSERT_GE(proc_io->read_bytes, kBytes);
  const KernelCounters counters = counters_of(cgroup);
  RecordProperty("traced", fmt::format("read {} write {}", counters.io_read_bytes, counters.io_write_bytes));
  RecordProperty("proc_io", fmt::format("rchar {} wchar {}", proc_io->read_bytes, proc_io->write_bytes));
  EXPECT_NEAR(static_cast<double>(counters.io_write_bytes), static_cast<double>(proc_io->write_bytes),
              0.01 * static_cast<double>(proc_io->write_bytes));
  EXPECT_NEAR(static_cast<double>(counters.io_read_bytes), static_cast<double>(proc_io->read_bytes),
              0.01 * static_cast<double>(proc_io->read_bytes));
  EXPECT_EQ(counters.socket_tx_bytes, 0u);

  // Once it has exited (its last read of stdin returns 0 bytes), its bytes are still counted, exactly: the exit
  // tracepoint added its rchar/wchar to the cgroup before the parent could reap it.
  workload.close_stdin();
  const auto status = workload.wait(20s);
  ASSERT_TRUE(status && status->exited && status->code == 0);
  const KernelCounters after_exit = counters_of(cgroup);
  EXPECT_EQ(after_exit.io_write_bytes, proc_io->write_bytes);
  EXPECT_EQ(after_exit.io_read_bytes, proc_io->read_bytes);
}

TEST_F(KernelProbesTest, IoBytesOfExitedThreadsAreCountedExactly) {
  const auto cgroup = parent_->make_child("io-threads");
  TempDir dir;
  constexpr std::size_t kBytes = 4 << 20;
  CgroupProcess workload(cgroup, {kWorkload, "io-threads", (dir / "data").string(), std::to_string(kBytes), "4"});
  ASSERT_EQ(workload.read_line(20s), "io done");
  // The four threads did the IO and are gone; /proc/PID/io keeps their bytes in the process's total.
  const auto proc_io = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(proc_io);
  ASSERT_GE(proc_io->write_bytes, kBytes);
  ASSERT_GE(proc_io->read_bytes, kBytes);
  // pthread_join returns when the thread has dropped its memory, a little before its exit tracepoint: poll.
  KernelCounters counters;
  EXPECT_TRUE(wait_until([&] {
    counters = counters_of(cgroup);
    return counters.io_write_bytes == proc_io->write_bytes && counters.io_read_bytes == proc_io->read_bytes;
  })) << "traced read " << counters.io_read_bytes << " write " << counters.io_write_bytes << ", /proc/PID/io rchar "
      << proc_io->read_bytes << " wchar " << proc_io->write_bytes;
}

TEST_F(KernelProbesTest, TcpBytesCountedForSenderAndReceiver) {
  constexpr std::size_t kBytes = 1 << 20;
  const auto [sent, received] = run_tcp("tcp", kBytes, false);
  EXPECT_GE(sent.socket_tx_bytes, kBytes);
  EXPECT_GE(received.socket_rx_bytes, kBytes);
  EXPECT_GE(sent.net_tx_bytes, kBytes);      // IP packets: payload plus headers
  EXPECT_GE(received.net_rx_bytes, kBytes);
  EXPECT_GT(sent.net_rx_bytes, 0u);          // the receiver's ACKs
  EXPECT_GT(received.net_tx_bytes, 0u);
}

TEST_F(KernelProbesTest, TcpBytesCountedThroughTheSysExitFallback) {
  // What kernels before 6.3 run: socket bytes from the send/recv family at sys_exit.
  restart_probes(SocketHook::sys_exit);
  constexpr std::size_t kBytes = 1 << 20;
  const auto [sent, received] = run_tcp("tcp-fallback", kBytes, false);
  EXPECT_GE(sent.socket_tx_bytes, kBytes);
  EXPECT_GE(received.socket_rx_bytes, kBytes);
  EXPECT_GE(sent.net_tx_bytes, kBytes);
  EXPECT_GE(received.net_rx_bytes, kBytes);
}

TEST_F(KernelProbesTest, SocketReadAndWriteCountAsSocketAndIoBytes) {
  if (!kernel_has_socket_length_tracepoints()) GTEST_SKIP() << "needs the sock_send_length tracepoints (6.3+)";
  constexpr std::size_t kBytes = 1 << 20;
  const auto [sent, received] = run_tcp("tcp-rw", kBytes, true);
  EXPECT_GE(sent.socket_tx_bytes, kBytes);  // write() on a socket goes through sock_sendmsg
  EXPECT_GE(received.socket_rx_bytes, kBytes);
  EXPECT_GE(sent.io_write_bytes, kBytes);   // and is in wchar, as /proc/PID/io counts it
  EXPECT_GE(received.io_read_bytes, kBytes);
}

TEST_F(KernelProbesTest, ExecAndExitSeenWithTheRightCgroup) {
  const auto cgroup = parent_->make_child("exec");
  const auto id = cgroup_id_of(cgroup);
  ASSERT_TRUE(id);
  CgroupProcess workload(cgroup, {kWorkload, "exec"});
  const auto status = workload.wait(20s);
  ASSERT_TRUE(status);
  ASSERT_TRUE(status->exited);
  ASSERT_EQ(status->code, 7);

  int execs = 0;
  std::optional<KernelEvent> exit_event;
  const auto handle = [&](const KernelEvent& event) {
    if (event.pid != workload.pid()) return;
    EXPECT_EQ(event.cgroup_id, *id) << "event of type " << static_cast<int>(event.type);
    EXPECT_EQ(event.key, *id) << "a task outside the root cgroup is counted under its cgroup";
    if (event.type == KernelEvent::Type::exec) ++execs;
    if (event.type == KernelEvent::Type::exit) exit_event = event;
  };
  EXPECT_TRUE(wait_until([&] {
    EXPECT_TRUE(probes_->consume_events(handle));
    return execs == 2 && exit_event;
  })) << "execs seen " << execs << ", exit seen " << exit_event.has_value();
  ASSERT_TRUE(exit_event);
  EXPECT_EQ(exit_event->exit_code, 7 << 8);
  EXPECT_EQ(exit_event->comm, std::string(kWorkload).substr(std::string(kWorkload).rfind('/') + 1, 15));

  const KernelCounters counters = counters_of(cgroup);
  EXPECT_EQ(counters.processes_started, 1u);  // clone3(CLONE_INTO_CGROUP): born in the cgroup
  EXPECT_EQ(counters.execs, 2u);              // the test's execv, then the workload's own
  EXPECT_EQ(counters.processes_exited, 1u);
}

TEST_F(KernelProbesTest, NvidiaDeviceOpenSeenWithItsMinor) {
  const auto cgroup = parent_->make_child("device");
  const auto id = cgroup_id_of(cgroup);
  ASSERT_TRUE(id);
  TempDir dir;
  const auto node = dir / "nvidia7";
  ASSERT_EQ(::mknod(node.c_str(), S_IFCHR | 0666, makedev(195, 7)), 0) << std::strerror(errno);
  CgroupProcess workload(cgroup, {kWorkload, "open", node.string()});
  // No NVIDIA driver here: the open fails (ENXIO), but the device hook saw the attempt first.
  const auto line = workload.read_line(20s);
  ASSERT_TRUE(line && line->starts_with("open errno ")) << line.value_or("(none)");

  std::optional<KernelEvent> open_event;
  EXPECT_TRUE(wait_until([&] {
    EXPECT_TRUE(probes_->consume_events([&](const KernelEvent& event) {
      if (event.type == KernelEvent::Type::device_open && event.pid == workload.pid()) open_event = event;
    }));
    return open_event.has_value();
  }));
  ASSERT_TRUE(open_event);
  EXPECT_EQ(open_event->cgroup_id, *id);
  EXPECT_EQ(open_event->key, *id);
  EXPECT_EQ(open_event->major, 195u);
  EXPECT_EQ(open_event->minor, 7u);
  EXPECT_TRUE(open_event->read && open_event->write);
  EXPECT_EQ(counters_of(cgroup).gpu_device_opens, 1u);
}

TEST_F(KernelProbesTest, CgroupLivingLessThanOneReportIsNamedAndKeepsItsBytes) {
  ASSERT_FALSE(read_all().empty());  // the report before the cgroup exists
  const auto cgroup = parent_->make_child("short-lived");
  const auto id = cgroup_id_of(cgroup);
  ASSERT_TRUE(id);
  const auto [io, pid] = run_io_to_exit(cgroup, 1 << 20);
  ASSERT_GE(io.write_bytes, 1u << 20);
  // A cgroup whose last process has just exited may be busy for a moment: poll.
  ASSERT_TRUE(wait_until([&] { return ::rmdir(cgroup.c_str()) == 0; })) << std::strerror(errno);

  std::optional<KernelEvent> created, removed;
  EXPECT_TRUE(consume_until(*probes_, [&] { return created && removed; }, [&](const KernelEvent& event) {
    if (event.cgroup_id != *id) return;
    if (event.type == KernelEvent::Type::cgroup_created) created = event;
    if (event.type == KernelEvent::Type::cgroup_removed) removed = event;
  })) << "created seen " << created.has_value() << ", removed seen " << removed.has_value();
  ASSERT_TRUE(created && removed);
  EXPECT_EQ(created->path, relative(cgroup));
  EXPECT_EQ(removed->path, relative(cgroup));
  EXPECT_EQ(created->key, *id);

  // The report after: the directory is gone, its counters are not.
  const KernelCounters counters = counters_of_key(*id);
  EXPECT_EQ(counters.io_write_bytes, io.write_bytes);
  EXPECT_EQ(counters.io_read_bytes, io.read_bytes);
  EXPECT_EQ(counters.processes_started, 1u);
  EXPECT_EQ(counters.processes_exited, 1u);
}

TEST_F(KernelProbesTest, ProcessThatMovesLeavesItsBytesBehind) {
  const auto from = parent_->make_child("move-from");
  const auto to = parent_->make_child("move-to");
  const auto from_id = cgroup_id_of(from), to_id = cgroup_id_of(to);
  ASSERT_TRUE(from_id && to_id);
  TempDir dir;
  constexpr std::size_t kBefore = 3 << 20, kAfter = 1 << 20;
  CgroupProcess workload(from, {kWorkload, "move-io", (dir / "data").string(), std::to_string(kBefore),
                                (to / "cgroup.procs").string(), std::to_string(kAfter)});
  ASSERT_EQ(workload.read_line(20s), "wrote " + std::to_string(kBefore));
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto before = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(before);
  ASSERT_GE(before->write_bytes, kBefore);
  EXPECT_EQ(counters_of(from).io_write_bytes, before->write_bytes);

  // It reads the line, moves itself (the write to cgroup.procs and everything after counts where it moved to),
  // then writes the rest.
  workload.write_stdin("move\n");
  ASSERT_EQ(workload.read_line(20s), "io done");
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  EXPECT_EQ(read_process_cgroup(FsRoot(), workload.pid()), relative(to));
  const auto after = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(after);
  ASSERT_GE(after->write_bytes - before->write_bytes, kAfter);

  auto check = [&](const char* when) {
    const auto all = read_all();
    const KernelCounters old_cgroup = all.contains(*from_id) ? all.at(*from_id) : KernelCounters{};
    const KernelCounters new_cgroup = all.contains(*to_id) ? all.at(*to_id) : KernelCounters{};
    EXPECT_EQ(old_cgroup.io_write_bytes, before->write_bytes) << when;
    EXPECT_EQ(new_cgroup.io_write_bytes, after->write_bytes - before->write_bytes) << when;
    // The line it read was read before the move, at a moment /proc/PID/io cannot show: the two add up.
    EXPECT_EQ(old_cgroup.io_read_bytes + new_cgroup.io_read_bytes, after->read_bytes) << when;
    EXPECT_GE(old_cgroup.io_read_bytes, before->read_bytes) << when;
  };
  check("while it lives in the new cgroup");
  workload.close_stdin();
  const auto status = workload.wait(20s);
  ASSERT_TRUE(status && status->exited && status->code == 0);
  check("once it has exited");
}

// What a thread did before the probes were loaded is not theirs to report: a fresh load takes every live thread's
// rchar/wchar as its baseline, and only what follows is counted.
TEST_F(KernelProbesTest, ThreadsThatPredateTheProbesCountOnlyWhatFollows) {
  probes_.reset();
  const auto cgroup = parent_->make_child("predate");
  TempDir dir;
  constexpr std::size_t kBefore = 2 << 20, kAfter = 1 << 20;
  // The "move" is into the cgroup it is in already: a way to make it write, wait, then write again.
  CgroupProcess workload(cgroup, {kWorkload, "move-io", (dir / "data").string(), std::to_string(kBefore),
                                  (cgroup / "cgroup.procs").string(), std::to_string(kAfter)});
  ASSERT_EQ(workload.read_line(20s), "wrote " + std::to_string(kBefore));
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto before = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(before);
  auto probes = KernelProbes::start(options());
  ASSERT_TRUE(probes) << probes.error().message;
  probes_ = std::move(*probes);
  workload.write_stdin("go\n");
  ASSERT_EQ(workload.read_line(20s), "io done");
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto after = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(after);
  const KernelCounters counted = counters_of(cgroup);
  EXPECT_EQ(counted.io_write_bytes, after->write_bytes - before->write_bytes);
  EXPECT_EQ(counted.io_read_bytes, after->read_bytes - before->read_bytes);
  EXPECT_GE(counted.io_write_bytes, kAfter);
}

TEST_F(KernelProbesTest, ThreadMovedWithItsProcessIsSettledWhenNextSeen) {
  const auto from = parent_->make_child("thread-from");
  const auto to = parent_->make_child("thread-to");
  const auto from_id = cgroup_id_of(from), to_id = cgroup_id_of(to);
  ASSERT_TRUE(from_id && to_id);
  TempDir dir;
  constexpr std::size_t kBefore = 2 << 20, kAfter = 1 << 20;
  CgroupProcess workload(from, {kWorkload, "move-thread-io", (dir / "data").string(), std::to_string(kBefore),
                                (to / "cgroup.procs").string(), std::to_string(kAfter)});
  ASSERT_EQ(workload.read_line(20s), "wrote " + std::to_string(kBefore));
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto before = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(before);

  // The main thread moves the process: its tracepoint settles the main thread; the writer thread moved too and is
  // settled by the next iterator pass, which also reports what it settled (the map was read before the pass).
  workload.write_stdin("move\n");
  ASSERT_EQ(workload.read_line(20s), "moved");
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto moved = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(moved);
  auto all = read_all();
  EXPECT_EQ(all[*from_id].io_write_bytes, before->write_bytes);
  EXPECT_EQ(all[*to_id].io_write_bytes, moved->write_bytes - before->write_bytes);

  // Now the writer thread's bytes count where it is.
  workload.write_stdin("write\n");
  ASSERT_EQ(workload.read_line(20s), "io done");
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  const auto after = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(after);
  ASSERT_GE(after->write_bytes - moved->write_bytes, kAfter);
  all = read_all();
  EXPECT_EQ(all[*from_id].io_write_bytes, before->write_bytes);
  EXPECT_EQ(all[*to_id].io_write_bytes, after->write_bytes - before->write_bytes);
  workload.close_stdin();
  const auto status = workload.wait(20s);
  ASSERT_TRUE(status && status->exited && status->code == 0);
  all = read_all();
  EXPECT_EQ(all[*from_id].io_write_bytes, before->write_bytes);
  EXPECT_EQ(all[*to_id].io_write_bytes, after->write_bytes - before->write_bytes);
  EXPECT_EQ(all[*from_id].io_read_bytes + all[*to_id].io_read_bytes, after->read_bytes);
}

TEST_F(KernelProbesTest, RootCgroupProcessIsCountedUnderItsProcessKey) {
  TempDir dir;
  constexpr std::size_t kBytes = 1 << 20;
  CgroupProcess workload(root_, {kWorkload, "io", (dir / "data").string(), std::to_string(kBytes)});
  ASSERT_EQ(workload.read_line(20s), "io done");
  ASSERT_TRUE(workload.wait_reading_stdin(20s));
  ASSERT_EQ(read_process_cgroup(FsRoot(), workload.pid()), "/");
  const auto ticks = read_process_start_ticks(FsRoot(), workload.pid());
  ASSERT_TRUE(ticks);
  const std::uint64_t key = process_key(workload.pid(), *ticks);
  const auto io = read_process_io(FsRoot(), workload.pid());
  ASSERT_TRUE(io);
  const KernelCounters live = counters_of_key(key);
  EXPECT_EQ(live.io_write_bytes, io->write_bytes) << fmt::format("no counters under key {:#x}", key);
  EXPECT_EQ(live.io_read_bytes, io->read_bytes);

  workload.close_stdin();
  const auto status = workload.wait(20s);
  ASSERT_TRUE(status && status->exited && status->code == 0);
  std::optional<KernelEvent> exec_event, exit_event;
  EXPECT_TRUE(consume_until(*probes_, [&] { return exec_event && exit_event; }, [&](const KernelEvent& event) {
    if (event.pid != workload.pid()) return;
    if (event.type == KernelEvent::Type::exec) exec_event = event;
    if (event.type == KernelEvent::Type::exit) exit_event = event;
  }));
  ASSERT_TRUE(exec_event && exit_event);
  const auto root_id = cgroup_id_of(root_);
  ASSERT_TRUE(root_id);
  EXPECT_EQ(exit_event->key, key) << fmt::format("{:#x} vs {:#x}", exit_event->key, key);
  EXPECT_EQ(exit_event->cgroup_id, *root_id);
  EXPECT_EQ(exec_event->key, key);
  const KernelCounters exited = counters_of_key(key);
  EXPECT_EQ(exited.io_write_bytes, io->write_bytes);
  EXPECT_EQ(exited.io_read_bytes, io->read_bytes);
  EXPECT_EQ(exited.processes_started, 1u);
  EXPECT_EQ(exited.processes_exited, 1u);
}

TEST_F(KernelProbesTest, FullCountersMapChargesTheOverflowEntry) {
  // Device opens of a major only this test uses (60-63 are for local or experimental use): the one counter no
  // other process of the node can move, so it must add up exactly.
  constexpr std::uint32_t kTestMajor = 61;
  probes_.reset();
  ProbeOptions small = options();
  small.counters_capacity = 8;
  small.accelerator_majors = {kTestMajor};
  auto probes = KernelProbes::start(small);
  ASSERT_TRUE(probes) << probes.error().message;
  probes_ = std::move(*probes);
  TempDir dir;
  const auto node = dir / "device";
  ASSERT_EQ(::mknod(node.c_str(), S_IFCHR | 0666, makedev(kTestMajor, 0)), 0) << std::strerror(errno);
  const KernelCounters overflow_before = counters_of_key(kOverflowKey);

  // More cgroups than entries, each with a process that writes and exits and one that opens the device: the
  // cgroups that find no entry left give what they did to the overflow entry.
  constexpr int kCgroups = 12;
  std::vector<std::uint64_t> ids;
  std::uint64_t written = 0, read = 0;
  for (int i = 0; i < kCgroups; ++i) {
    const auto cgroup = parent_->make_child("full-" + std::to_string(i));
    const auto id = cgroup_id_of(cgroup);
    ASSERT_TRUE(id);
    ids.push_back(*id);
    const auto [io, pid] = run_io_to_exit(cgroup, 256 << 10);
    written += io.write_bytes;
    read += io.read_bytes;
    CgroupProcess opener(cgroup, {kWorkload, "open", node.string()});
    ASSERT_TRUE(opener.read_line(20s));
    ASSERT_TRUE(opener.wait_reading_stdin(20s));
    const auto opener_io = read_process_io(FsRoot(), opener.pid());
    ASSERT_TRUE(opener_io);
    written += opener_io->write_bytes;
    read += opener_io->read_bytes;
    opener.close_stdin();
    ASSERT_TRUE(opener.wait(20s));
  }
  const auto all = read_all();
  const ProbeStats stats = probes_->stats();
  EXPECT_GT(stats.map_full, 0u);
  EXPECT_EQ(stats.capacity, 8u);
  EXPECT_LE(stats.entries, 8u);
  KernelCounters in_cgroups;
  int without_entry = 0;
  for (std::uint64_t id : ids) {
    const auto it = all.find(id);
    if (it == all.end()) {
      ++without_entry;
      continue;
    }
    in_cgroups.io_write_bytes += it->second.io_write_bytes;
    in_cgroups.io_read_bytes += it->second.io_read_bytes;
    in_cgroups.gpu_device_opens += it->second.gpu_device_opens;
  }
  ASSERT_TRUE(all.contains(kOverflowKey));
  const KernelCounters& overflow = all.at(kOverflowKey);
  RecordProperty("cgroups_without_entry", without_entry);
  EXPECT_GT(without_entry, 0);
  EXPECT_EQ(in_cgroups.gpu_device_opens + overflow.gpu_device_opens - overflow_before.gpu_device_opens,
            static_cast<std::uint64_t>(kCgroups));
  // Nothing lost. The overflow entry also takes the bytes of any other process of the node that exits while the
  // map is full (process keys of the root cgroup's processes, say), so its io can only be checked from below.
  EXPECT_GE(in_cgroups.io_write_bytes + overflow.io_write_bytes - overflow_before.io_write_bytes, written);
  EXPECT_GE(in_cgroups.io_read_bytes + overflow.io_read_bytes - overflow_before.io_read_bytes, read);
  EXPECT_GT(overflow.io_write_bytes, overflow_before.io_write_bytes);
}

TEST_F(KernelProbesTest, PinDirOutsideBpffsIsRefusedWithTheFix) {
  TempDir dir;
  ProbeOptions pinned = options();
  pinned.pin_dir = dir / "tally";
  const auto probes = KernelProbes::start(pinned);
  ASSERT_FALSE(probes);
  EXPECT_NE(probes.error().message.find(pinned.pin_dir.string()), std::string::npos) << probes.error().message;
  EXPECT_NE(probes.error().message.find("mount -t bpf bpf /sys/fs/bpf"), std::string::npos) << probes.error().message;
  EXPECT_FALSE(std::filesystem::exists(pinned.pin_dir));
}

TEST_F(KernelProbesTest, PinnedProbesOutliveTheirOwnerAndAreAdopted) {
  test::PrivateBpffs bpffs;
  if (!bpffs.error().empty()) GTEST_SKIP() << bpffs.error();
  probes_.reset();  // this test's probes are pinned ones
  ProbeOptions pinned = options();
  pinned.pin_dir = bpffs.path() / "tally";

  auto first = KernelProbes::start(pinned);
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_FALSE((*first)->adopted());
  const std::string epoch = (*first)->epoch();
  EXPECT_EQ(epoch.size(), 32u);
  const auto a = parent_->make_child("pinned-a");
  const auto a_id = cgroup_id_of(a);
  ASSERT_TRUE(a_id);
  const auto [a_io, a_pid] = run_io_to_exit(a, 1 << 20);
  EXPECT_EQ(read_all(**first)[*a_id].io_write_bytes, a_io.write_bytes);
  const test::BpfObjects held = test::bpf_objects_of(::getpid());
  ASSERT_EQ(held.links.size(), (*first)->attached().size());
  auto names = (*first)->attached();
  first->reset();

  // Nobody holds them now, and they stay attached.
  EXPECT_TRUE(test::bpf_objects_of(::getpid()).links.empty());
  for (std::uint32_t id : held.links) EXPECT_TRUE(test::bpf_link_exists(id)) << "link " << id << " went away";

  // Meanwhile a cgroup is made, a process does IO there and exits, and the cgroup is removed.
  const auto b = parent_->make_child("pinned-b");
  const auto b_id = cgroup_id_of(b);
  ASSERT_TRUE(b_id);
  const auto [b_io, b_pid] = run_io_to_exit(b, 1 << 20);
  ASSERT_TRUE(wait_until([&] { return ::rmdir(b.c_str()) == 0; })) << std::strerror(errno);

  auto second = KernelProbes::start(pinned);
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_TRUE((*second)->adopted());
  EXPECT_EQ((*second)->epoch(), epoch);
  auto adopted_names = (*second)->attached();
  std::sort(names.begin(), names.end());
  std::sort(adopted_names.begin(), adopted_names.end());
  EXPECT_EQ(adopted_names, names);
  const auto all = read_all(**second);
  ASSERT_TRUE(all.contains(*b_id) && all.contains(*a_id));
  EXPECT_EQ(all.at(*b_id).io_write_bytes, b_io.write_bytes);
  EXPECT_EQ(all.at(*b_id).io_read_bytes, b_io.read_bytes);
  EXPECT_EQ(all.at(*a_id).io_write_bytes, a_io.write_bytes);

  bool created = false, exec = false, exit = false, removed = false;
  EXPECT_TRUE(consume_until(**second, [&] { return created && exec && exit && removed; },
                            [&](const KernelEvent& event) {
                              if (event.type == KernelEvent::Type::cgroup_created && event.cgroup_id == *b_id) {
                                created = event.path == relative(b);
                              }
                              if (event.type == KernelEvent::Type::cgroup_removed && event.cgroup_id == *b_id) {
                                removed = event.path == relative(b);
                              }
                              if (event.pid == b_pid && event.key == *b_id) {
                                exec = exec || event.type == KernelEvent::Type::exec;
                                exit = exit || event.type == KernelEvent::Type::exit;
                              }
                            }))
      << "created " << created << " exec " << exec << " exit " << exit << " removed " << removed;

  // Removal: once unpinned and no agent holds them, the kernel detaches and frees them.
  const test::BpfObjects adopted = test::bpf_objects_of(::getpid());
  EXPECT_EQ(adopted.links, held.links);
  second->reset();
  const auto removed_pins = KernelProbes::remove_pinned(pinned.pin_dir);
  ASSERT_TRUE(removed_pins) << removed_pins.error().message;
  EXPECT_TRUE(*removed_pins);
  EXPECT_TRUE(wait_until([&] {
    return std::none_of(held.links.begin(), held.links.end(), test::bpf_link_exists) &&
           std::none_of(held.programs.begin(), held.programs.end(), test::bpf_program_exists);
  })) << "a tally_* link or program stayed in the kernel after remove_pinned()";
  const auto again = KernelProbes::remove_pinned(pinned.pin_dir);
  ASSERT_TRUE(again);
  EXPECT_FALSE(*again) << "nothing is left to remove";
}

TEST_F(KernelProbesTest, PinnedProbesOfAnotherAbiAreReplaced) {
  test::PrivateBpffs bpffs;
  if (!bpffs.error().empty()) GTEST_SKIP() << bpffs.error();
  probes_.reset();
  ProbeOptions pinned = options();
  pinned.pin_dir = bpffs.path() / "tally";
  auto first = KernelProbes::start(pinned);
  ASSERT_TRUE(first) << first.error().message;
  const std::string epoch = (*first)->epoch();
  const test::BpfObjects held = test::bpf_objects_of(::getpid());
  first->reset();

  {  // What an agent of another ABI version would have pinned.
    const UniqueFd meta(bpf_obj_get((pinned.pin_dir / "maps" / "tally_meta").c_str()));
    ASSERT_TRUE(meta) << std::strerror(errno);
    tally_meta value{};
    const std::uint32_t zero = 0;
    ASSERT_EQ(bpf_map_lookup_elem(meta.get(), &zero, &value), 0);
    EXPECT_EQ(value.abi_version, static_cast<std::uint32_t>(TALLY_ABI_VERSION));
    value.abi_version = TALLY_ABI_VERSION + 1;
    ASSERT_EQ(bpf_map_update_elem(meta.get(), &zero, &value, BPF_ANY), 0);
  }

  auto second = KernelProbes::start(pinned);
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_FALSE((*second)->adopted());
  EXPECT_NE((*second)->epoch(), epoch);
  EXPECT_TRUE(wait_until([&] {
    return std::none_of(held.links.begin(), held.links.end(), test::bpf_link_exists);
  })) << "the replaced probes stayed attached";
  second->reset();
  const auto removed = KernelProbes::remove_pinned(pinned.pin_dir);
  ASSERT_TRUE(removed) << removed.error().message;
  EXPECT_TRUE(*removed);
}

TEST_F(KernelProbesTest, ProgramsGoAwayWithTheOwner) {
  // This process held no BPF fds before SetUp: whatever it holds now is the probes'.
  const test::BpfObjects ours = test::bpf_objects_of(::getpid());
  EXPECT_EQ(ours.links.size(), probes_->attached().size());
  EXPECT_GE(ours.programs.size(), probes_->attached().size());
  probes_.reset();
  // Freeing a program after its last link closes may take an RCU grace period: poll, never sleep.
  EXPECT_TRUE(wait_until([&] {
    for (std::uint32_t id : ours.links) {
      if (test::bpf_link_exists(id)) return false;
    }
    for (std::uint32_t id : ours.programs) {
      if (test::bpf_program_exists(id)) return false;
    }
    return true;
  })) << "a tally_* link or program stayed in the kernel after its owner went away";
  EXPECT_TRUE(test::bpf_objects_of(::getpid()).programs.empty());
}

TEST(AcceleratorMajorsTest, ReadsDynamicMajorsFromProcDevices) {
  TempDir dir;
  std::filesystem::create_directories(dir / "proc");
  dir.write("proc/devices",
                                 "Character devices:\n  1 mem\n195 nvidia\n226 drm\n234 nvidia-uvm\n235 nvidia-caps\n"
                                 "236 kfd\n261 accel\n\nBlock devices:\n237 nvidia-uvm\n");
  EXPECT_EQ(accelerator_majors(FsRoot(dir.path())), (std::vector<std::uint32_t>{195, 226, 234, 235, 236, 261}));
  EXPECT_EQ(accelerator_majors(FsRoot(dir / "missing")), (std::vector<std::uint32_t>{195, 226}));
}

}  // namespace
}  // namespace tally::collectors
