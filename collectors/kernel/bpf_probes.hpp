#pragma once
// The eBPF probes (ebpf/*.bpf.c) seen from userspace: a runtime support check, and KernelProbes, the one owner of
// the loaded programs, their links and the shared maps. Loading is a short visible chain: check support → open
// each skeleton → set rodata (syscall table, accelerator majors) → share the maps → load → attach.
//
// IO bytes are the kernel's own rchar/wchar (/proc/PID/io), per cgroup: exited threads are added up in the kernel
// at sched_process_exit, live threads are read with a BPF task iterator on each read_counters(). Nothing runs per
// syscall. Socket bytes come from the sock_send_length/sock_recv_length tracepoints (6.3+), or on older kernels
// from a fallback program on sys_exit (which makes every syscall take the tracing slow path: docs/ebpf.md).
//
// Every attachment is a BPF link held only by this process's fds: when KernelProbes is destroyed, or the process
// dies in any way (SIGKILL included), the kernel detaches and frees everything. Nothing is pinned.
// Programs and maps are named tally_* so that `bpftool prog` and tests can find them.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"

namespace tally::collectors {

// Cumulative counts for one cgroup (tally_abi.h's struct tally_counters, summed over CPUs): since the probes were
// loaded, except io_read_bytes/io_write_bytes, which are rchar/wchar of the cgroup's threads, live ones since they
// were created (take a baseline at start) and exited ones since the probes were loaded.
struct KernelCounters {
  std::uint64_t io_read_bytes = 0;
  std::uint64_t io_write_bytes = 0;
  std::uint64_t socket_rx_bytes = 0;
  std::uint64_t socket_tx_bytes = 0;
  std::uint64_t net_rx_bytes = 0;
  std::uint64_t net_tx_bytes = 0;
  std::uint64_t processes_started = 0;
  std::uint64_t processes_exited = 0;
  std::uint64_t execs = 0;
  std::uint64_t gpu_device_opens = 0;
  std::uint64_t events_dropped = 0;

  KernelCounters& operator+=(const KernelCounters& other);
  // Field-wise `*this - earlier`, 0 where a counter went backwards (a cgroup id reused after the entry was freed).
  KernelCounters since(const KernelCounters& earlier) const;
  bool operator==(const KernelCounters&) const = default;
};

struct KernelEvent {
  enum class Type { exec, exit, device_open };
  Type type = Type::exec;
  pid_t pid = 0;
  pid_t ppid = 0;
  int exit_code = 0;                 // exit: wait status (code << 8 | signal)
  std::uint64_t cgroup_id = 0;       // cgroup v2 id (inode of the cgroup directory)
  std::uint64_t timestamp_ns = 0;    // CLOCK_MONOTONIC
  std::uint32_t major = 0;           // device_open
  std::uint32_t minor = 0;
  bool read = false, write = false;  // device_open: access asked for
  std::string comm;
};

// Where socket bytes are counted.
enum class SocketHook {
  automatic,    // the tracepoints where the kernel has them, else sys_exit
  tracepoints,  // sock:sock_send_length / sock:sock_recv_length (Linux 6.3+)
  sys_exit,     // the fallback for older kernels: a program on every syscall exit (tests and benchmarks force it)
};

struct ProbeOptions {
  // Root of the cgroup v2 hierarchy (find_cgroup2_mount()): cgroup_skb and cgroup device programs attach here.
  std::filesystem::path cgroup2_root;
  // Character-device majors that count as accelerator opens (accelerator_majors()).
  std::vector<std::uint32_t> accelerator_majors;
  SocketHook socket_hook = SocketHook::automatic;
};

// Whether the running kernel has the sock:sock_send_length and sock:sock_recv_length tracepoints (from its BTF).
bool kernel_has_socket_length_tracepoints();

// Accelerator majors on this node: NVIDIA (195), DRI (226), and the dynamic ones /proc/devices names
// (nvidia-uvm, nvidia-caps, nvidia-nvswitch, nvidia-caps-imex-channels, kfd, accel). At most 8, deduplicated.
std::vector<std::uint32_t> accelerator_majors(const FsRoot& fs = FsRoot());

// Whether this kernel and this process can run the probes, decided at run time: kernel BTF present, kernel not
// locked down for confidentiality, BPF program/map types available and loadable with our privileges. The error
// says which, with ErrorCode::unsupported or ErrorCode::permission.
Result<void> check_bpf_support(const FsRoot& fs = FsRoot());

// Routes libbpf's own diagnostics into the agent's logger (debug level: the caller logs the one clear warning).
void route_libbpf_logs();

class KernelProbes {
 public:
  // Runs the whole chain; on error nothing stays loaded or attached.
  static Result<std::unique_ptr<KernelProbes>> start(const ProbeOptions& options);
  ~KernelProbes();
  KernelProbes(const KernelProbes&) = delete;
  KernelProbes& operator=(const KernelProbes&) = delete;

  // Cumulative counters per cgroup id. Runs the task iterator for the live threads' io bytes (so it costs a walk
  // over the node's threads: call it once per report), and never returns less io than before for a cgroup.
  Result<std::map<std::uint64_t, KernelCounters>> read_counters();
  // Drops the counters of cgroups that no longer exist, so the map does not fill up.
  void forget_cgroup(std::uint64_t cgroup_id);

  // An fd that polls readable when events are waiting (the ring buffer's epoll fd), for the event loop.
  int events_fd() const;
  // Hands every pending event to `handler` without blocking; returns how many were handled.
  Result<int> consume_events(const std::function<void(const KernelEvent&)>& handler);

  // Names of the attached programs (tally_*), for logs and the feed.
  const std::vector<std::string>& attached() const { return attached_; }

  struct Impl;

 private:
  explicit KernelProbes(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> attached_;
};

}  // namespace tally::collectors
