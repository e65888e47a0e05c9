// The eBPF probes against the kernel's own accounting: a real workload in a fresh test cgroup, the counters the
// probes keep for that cgroup, and /proc/PID/io or what the workload itself reports. Needs root and BPF; skips
// with the reason otherwise.

#include "collectors/kernel/bpf_probes.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>

#include <bpf/bpf.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "collectors/kernel/kernel_cgroups.hpp"
#include "tests/ebpf/test_cgroup.hpp"
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
    auto all = probes_->read_counters();
    EXPECT_TRUE(all) << all.error().message;
    if (!id || !all) return {};
    auto it = all->find(*id);
    return it == all->end() ? KernelCounters{} : it->second;
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
  EXPECT_EQ(open_event->major, 195u);
  EXPECT_EQ(open_event->minor, 7u);
  EXPECT_TRUE(open_event->read && open_event->write);
  EXPECT_EQ(counters_of(cgroup).gpu_device_opens, 1u);
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
