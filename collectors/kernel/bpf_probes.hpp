#pragma once
// The eBPF probes (ebpf/*.bpf.c) seen from userspace: a runtime support check, and KernelProbes, the one owner of
// the loaded programs, their links and the shared maps. Loading is a short visible chain: check support → adopt
// what a previous agent pinned, or open each skeleton → set rodata → share the maps → load → attach → pin.
//
// IO bytes are the kernel's own rchar/wchar (/proc/PID/io): exited threads are added up in the kernel at
// sched_process_exit, live threads are read with a BPF task iterator on each read_counters(). Nothing runs per
// syscall. A thread that moves to another cgroup leaves the bytes it moved before with the old one (the
// cgroup_attach_task tracepoint settles them). Socket bytes come from the sock_send_length/sock_recv_length
// tracepoints (6.3+), or on older kernels from a fallback program on sys_exit (docs/ebpf.md).
//
// Counters are kept per key: a cgroup v2 id, or, for a task in the root cgroup, its process (process_key()), so a
// process in the root cgroup is the same workload on the kernel path as on the shm path. Key 0 takes what could
// not be given an entry of its own because the map was full: counted, never lost.
//
// With a pin directory, the maps and links are pinned there: they outlive the agent, keep counting while it is
// down (processes that start and exit meanwhile included), and the next agent adopts them. Without one, every
// attachment is held only by this process's fds and goes away with it. remove_pinned() removes pinned probes for
// good. Programs and maps are named tally_* so that `bpftool prog` and tests can find them.

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"

namespace tally::collectors {

// Keys (cgroups, root-cgroup processes) the counters map holds unless configured otherwise: a busy node's live
// cgroups and root-cgroup processes with room to spare, while a read's walk over the buckets stays ~0.1 ms.
inline constexpr std::uint32_t kDefaultCountersCapacity = 16384;

// Cumulative counts for one key (tally_abi.h's struct tally_counters, summed over CPUs), since the maps were
// created: across agent restarts when they are pinned (KernelProbes::epoch() names that lifetime).
struct KernelCounters {
  std::uint64_t io_read_bytes = 0;   // rchar of the key's threads: exited, moved out (up to the move), and live
  std::uint64_t io_write_bytes = 0;  // wchar, likewise
  std::uint64_t socket_rx_bytes = 0;
  std::uint64_t socket_tx_bytes = 0;
  std::uint64_t net_rx_bytes = 0;
  std::uint64_t net_tx_bytes = 0;
  std::uint64_t processes_started = 0;
  std::uint64_t processes_exited = 0;
  std::uint64_t execs = 0;
  std::uint64_t gpu_device_opens = 0;
  std::uint64_t events_dropped = 0;
  bool operator==(const KernelCounters&) const = default;
};

// The one list of the counters above, with the names they carry on the feed: everything that walks the fields
// (summing per-CPU copies, writing the ledger) walks this table.
struct KernelCounterField {
  std::string_view name;
  std::uint64_t KernelCounters::*member;
};
inline constexpr std::array<KernelCounterField, 11> kKernelCounterFields{{
    {"io_read_bytes", &KernelCounters::io_read_bytes},
    {"io_write_bytes", &KernelCounters::io_write_bytes},
    {"socket_rx_bytes", &KernelCounters::socket_rx_bytes},
    {"socket_tx_bytes", &KernelCounters::socket_tx_bytes},
    {"net_rx_bytes", &KernelCounters::net_rx_bytes},
    {"net_tx_bytes", &KernelCounters::net_tx_bytes},
    {"processes_started", &KernelCounters::processes_started},
    {"processes_exited", &KernelCounters::processes_exited},
    {"execs", &KernelCounters::execs},
    {"gpu_device_opens", &KernelCounters::gpu_device_opens},
    {"events_dropped", &KernelCounters::events_dropped},
}};

// Counter keys. A cgroup v2 id (the inode number of the cgroup directory) keys the tasks of that cgroup; a task in
// the root cgroup is keyed by its process instead: bit 63, the process's start time in clock ticks (/proc/PID/stat
// field 22, USER_HZ) and its pid (below PID_MAX_LIMIT = 2^22). Key 0 is the overflow entry.
inline constexpr std::uint64_t kOverflowKey = 0;
inline constexpr std::uint64_t kProcessKeyBit = std::uint64_t{1} << 63;
constexpr std::uint64_t process_key(pid_t pid, std::uint64_t start_ticks) {
  return kProcessKeyBit | (start_ticks << 22) | (static_cast<std::uint64_t>(pid) & ((1u << 22) - 1));
}
constexpr bool is_process_key(std::uint64_t key) { return (key & kProcessKeyBit) != 0; }
constexpr pid_t process_key_pid(std::uint64_t key) { return static_cast<pid_t>(key & ((1u << 22) - 1)); }
constexpr std::uint64_t process_key_start_ticks(std::uint64_t key) { return (key & ~kProcessKeyBit) >> 22; }

struct KernelEvent {
  enum class Type {
    exec,            // a process exec'ed (pid, ppid, key, comm)
    exit,            // a process (thread-group leader) exited (pid, ppid, key, exit_code, comm)
    device_open,     // read/write access to an accelerator device node (pid, key, major, minor, read, write)
    cgroup_created,  // a cgroup v2 directory appeared (cgroup_id, path)
    cgroup_removed,  // a cgroup v2 directory was removed (cgroup_id, path): its counters are final
  };
  Type type = Type::exec;
  pid_t pid = 0;
  pid_t ppid = 0;
  int exit_code = 0;                 // exit: wait status (code << 8 | signal)
  std::uint64_t key = 0;             // the counter key the task is counted under (cgroup id or process key)
  std::uint64_t cgroup_id = 0;       // cgroup v2 id of the task, or of the cgroup for cgroup events
  std::uint64_t timestamp_ns = 0;    // CLOCK_MONOTONIC
  std::uint32_t major = 0;           // device_open
  std::uint32_t minor = 0;
  bool read = false, write = false;  // device_open: access asked for
  std::string comm;
  std::string path;                  // cgroup events: path relative to the v2 root ("/a/b"); "" when it did not fit
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
  // A directory on a BPF filesystem (bpffs) to pin the maps and links in, created if needed; empty: nothing is
  // pinned. tallyd's default is /sys/fs/bpf/tally.
  std::filesystem::path pin_dir;
  // Entries of the counters map. Entry memory follows the entries in use (no preallocation); the hash's bucket
  // array (16 bytes a bucket) and each read's walk over it follow this capacity.
  std::uint32_t counters_capacity = kDefaultCountersCapacity;
};

// The probes' own health, for the Heartbeat.
struct ProbeStats {
  std::uint64_t entries = 0;      // keys in the counters map, as of the last read_counters()
  std::uint64_t capacity = 0;     // counters_capacity
  std::uint64_t map_full = 0;     // times an entry could not be created: that usage went to kOverflowKey instead
  std::uint64_t ring_full = 0;    // events lost because the ring buffer was full (also per key: events_dropped)
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
  // Runs the whole chain; on error nothing stays loaded or attached (and nothing pinned is touched). With a pin
  // directory holding probes of this build's ABI, adopts them instead of loading new ones (adopted() is true), so
  // their counters continue; pinned probes of another ABI are removed and replaced (a new epoch).
  static Result<std::unique_ptr<KernelProbes>> start(const ProbeOptions& options);
  // Detaches everything that is not pinned. Pinned probes stay attached and keep counting.
  ~KernelProbes();
  KernelProbes(const KernelProbes&) = delete;
  KernelProbes& operator=(const KernelProbes&) = delete;

  // Removes probes pinned in `pin_dir` for good (tallyctl probes remove): unpins every map and link, so the kernel
  // detaches and frees them once no agent holds them. True when something was pinned there.
  static Result<bool> remove_pinned(const std::filesystem::path& pin_dir);

  // Whether the maps were adopted from a previous agent (counters continue) rather than created now.
  bool adopted() const;
  // A random id drawn when the maps were created, pinned with them: equal epochs mean the same counters.
  const std::string& epoch() const;

  // Cumulative counters per key. Runs the task iterator for the live threads' io bytes (so it costs a walk over
  // the node's threads: call it once per report), and never returns less io than before for a key.
  Result<std::map<std::uint64_t, KernelCounters>> read_counters();
  // Deletes a key's entry (a removed cgroup, an exited root-cgroup process) once its final counters are safe
  // elsewhere, so the map does not fill up. kOverflowKey keeps its entry: programs charge it when the map is full.
  void forget(std::uint64_t key);
  ProbeStats stats() const;

  // An fd that polls readable when events are waiting (the ring buffer's epoll fd), for the event loop.
  int events_fd() const;
  // Hands every pending event to `handler` without blocking; returns how many were handled.
  Result<int> consume_events(const std::function<void(const KernelEvent&)>& handler);

  // Names of the attached programs (tally_*), for logs and the feed; for adopted probes, their pinned links.
  const std::vector<std::string>& attached() const { return attached_; }

  struct Impl;

 private:
  explicit KernelProbes(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> attached_;
};

}  // namespace tally::collectors
