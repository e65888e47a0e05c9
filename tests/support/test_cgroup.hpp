#pragma once
// Test cgroups and processes started inside them, for the eBPF tests. Every cgroup a test makes lives under one
// parent, <cgroup2 root>/tally-test-<pid>, made by TestCgroupParent and removed with everything in it.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::test {

// Where cgroup v2 is mounted: /sys/fs/cgroup (pure v2) or /sys/fs/cgroup/unified (hybrid); nullopt if neither.
std::optional<std::filesystem::path> cgroup2_root();

// CPU time used so far by every process of `cgroup`, in microseconds (cpu.stat's usage_usec, there without any
// controller); 0 when unreadable. The freeze tests use another cgroup's CPU time as their clock.
std::uint64_t cgroup_cpu_usec(const std::filesystem::path& cgroup);
// Whether the kernel says `cgroup` is frozen (cgroup.events "frozen 1").
bool cgroup_frozen(const std::filesystem::path& cgroup);

// <root>/tally-test-<pid>: made on construction, removed (with every cgroup below it) on destruction.
class TestCgroupParent {
 public:
  explicit TestCgroupParent(const std::filesystem::path& root);
  ~TestCgroupParent();
  TestCgroupParent(const TestCgroupParent&) = delete;
  TestCgroupParent& operator=(const TestCgroupParent&) = delete;
  // Makes the child cgroup `name` and returns its path.
  std::filesystem::path make_child(const std::string& name) const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A process started with clone3(CLONE_INTO_CGROUP): in `cgroup` from its first instruction, so its /proc/PID/io
// and the cgroup's counters cover exactly the same work. stdin and stdout are pipes; closing stdin tells the
// workload to exit. Killed (by its pid) and reaped on destruction.
class CgroupProcess {
 public:
  CgroupProcess(const std::filesystem::path& cgroup, std::vector<std::string> argv);
  ~CgroupProcess();
  CgroupProcess(const CgroupProcess&) = delete;
  CgroupProcess& operator=(const CgroupProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The next complete stdout line, or nullopt when the deadline passes or the process closed stdout first.
  std::optional<std::string> read_line(std::chrono::milliseconds deadline);
  void write_stdin(const std::string& text);
  void close_stdin();
  // Waits until the process sits in read() on its stdin: the workload's pause between steps, where its
  // /proc/PID/io stands still (the counts of its last write() are added after the reader could see the bytes).
  bool wait_reading_stdin(std::chrono::milliseconds deadline);
  std::optional<ExitStatus> wait(std::chrono::milliseconds deadline);

 private:
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string buffered_;
  std::optional<ExitStatus> status_;
};

// A BPF filesystem mounted on a fresh temporary directory, for tests that pin probes (bpffs need not be mounted
// at /sys/fs/bpf here). Unmounted (MNT_DETACH) on destruction, which releases every pin made in it. It is mounted
// in a mount namespace of this process's own (made on first use, every mount private), so that even a test that
// dies before its destructor leaves no pin, hence no attached program, behind: the namespace goes with the process.
class PrivateBpffs {
 public:
  PrivateBpffs();
  ~PrivateBpffs();
  PrivateBpffs(const PrivateBpffs&) = delete;
  PrivateBpffs& operator=(const PrivateBpffs&) = delete;
  // Why it could not be mounted; empty when it is.
  const std::string& error() const { return error_; }
  const std::filesystem::path& path() const { return dir_.path(); }

 private:
  TempDir dir_;
  std::string error_;
};

struct BpfObjects {
  std::set<std::uint32_t> programs;
  std::set<std::uint32_t> links;
};

// The BPF programs and links a process holds through its fds, from /proc/PID/fdinfo (prog_id, link_id lines):
// unlike a walk over all programs, this never confuses ours with those of another test running at the same time.
BpfObjects bpf_objects_of(pid_t pid);
bool bpf_program_exists(std::uint32_t id);
bool bpf_link_exists(std::uint32_t id);

}  // namespace tally::test
