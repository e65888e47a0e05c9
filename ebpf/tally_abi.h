/* The one ABI shared by the BPF programs in ebpf/ and the userspace loader in collectors/: map keys and values,
 * ring buffer records, and the constants both sides agree on. Plain C with fixed-width kernel types so that clang
 * -target bpf and the C++ agent compile the same layout; sizes are checked with static asserts on both sides.
 * Change a layout only together with the loader, and never reorder fields.
 *
 * Pinned maps outlive the agent that created them, so a layout is also shared with the next agent, which may be a
 * newer build: bump TALLY_ABI_VERSION with any change to a map key or value, a record, the set of shared maps or
 * what a key means. An agent adopts pinned probes only of its own version and replaces the others. */
#ifndef TALLY_EBPF_TALLY_ABI_H
#define TALLY_EBPF_TALLY_ABI_H

#include <linux/bpf.h> /* struct bpf_spin_lock */
#include <linux/types.h>

/* Version of everything in this file, stored in the tally_meta map (see struct tally_meta). */
#define TALLY_ABI_VERSION 1

/* Size of the syscall → kind table in .rodata: syscall numbers at or above it are ignored. */
#define TALLY_MAX_SYSCALLS 512
/* Character-device majors that count as accelerators, filled by the loader from /proc/devices (0 = unused). */
#define TALLY_MAX_ACCEL_MAJORS 8
#define TALLY_COMM_LEN 16
/* At most this many entries of a sendmmsg/recvmmsg vector are summed (the kernel caps vlen at 1024). */
#define TALLY_MAX_MMSG 64
/* Room for a cgroup path in a cgroup event, NUL included; a longer path is sent empty. The kernel formats at most
 * 1024 bytes for these tracepoints (TRACE_CGROUP_PATH_LEN); systemd and Kubernetes paths stay far under 512. */
#define TALLY_CGROUP_PATH_LEN 512

/* Counter keys. A task is counted under its cgroup v2 id (the inode number of the cgroup directory), except in the
 * root cgroup, where it is counted under its process: TALLY_PROCESS_KEY_BIT | start_ticks << TALLY_PID_BITS | tgid,
 * start_ticks being the thread-group leader's start_boottime in USER_HZ (100) clock ticks, exactly /proc/PID/stat
 * field 22, and tgid < 2^22 (PID_MAX_LIMIT). Key 0 is the overflow entry: what could not get an entry of its own
 * because the counters map was full (the loader creates it). process_key() in bpf_probes.hpp is the C++ twin. */
#define TALLY_OVERFLOW_KEY 0ULL
#define TALLY_PROCESS_KEY_BIT (1ULL << 63)
#define TALLY_PID_BITS 22
#define TALLY_NSEC_PER_TICK 10000000ULL /* ns per USER_HZ tick: what the kernel's nsec_to_clock_t() divides by */

/* What one syscall's return value counts towards, in the fallback sys_exit program (kernels without the
 * sock_send_length/sock_recv_length tracepoints); the loader fills tally_syscall_kind[nr] per architecture.
 * Only the send/recv family: io bytes come from the kernel's own rchar/wchar on every kernel. */
enum tally_syscall_kind {
  TALLY_SYSCALL_NONE = 0,
  TALLY_SYSCALL_SOCK_RECV = 4,     /* recv, recvfrom, recvmsg: bytes received */
  TALLY_SYSCALL_SOCK_SEND = 5,     /* send, sendto, sendmsg: bytes sent */
  TALLY_SYSCALL_SOCK_RECVMMSG = 6, /* recvmmsg: return value is a message count; bytes are summed from msg_len */
  TALLY_SYSCALL_SOCK_SENDMMSG = 7, /* sendmmsg: likewise */
};

/* Value of tally_counters (BPF_MAP_TYPE_PERCPU_HASH keyed by counter key, see above). Cumulative since the maps
 * were created; userspace sums the per-CPU copies and takes deltas. KernelCounters in bpf_probes.hpp has the same
 * fields in the same order (checked there). */
struct tally_counters {
  /* rchar and wchar settled for the key: of its threads that have exited (sched_process_exit) and of threads that
   * moved to another key, up to the move. The agent adds the live threads' bytes since they were last settled,
   * read with the tally_iter_task iterator. */
  __u64 io_read_bytes;
  __u64 io_write_bytes;
  __u64 socket_rx_bytes;
  __u64 socket_tx_bytes;
  __u64 net_rx_bytes;
  __u64 net_tx_bytes;
  __u64 processes_started; /* new processes (not threads) born in the cgroup: sched_process_fork */
  __u64 processes_exited;  /* thread-group leaders exiting: sched_process_exit */
  __u64 execs;             /* successful execve/execveat: sched_process_exec */
  __u64 gpu_device_opens;  /* read/write access checks on accelerator char devices: cgroup device hook */
  __u64 events_dropped;    /* ring buffer full: an event of this cgroup was not delivered */
};

/* Value of tally_stats (BPF_MAP_TYPE_PERCPU_ARRAY, one entry): the probes' own health, summed over CPUs. */
struct tally_stats {
  __u64 map_full;  /* an entry could not be created in tally_counters: that usage went to TALLY_OVERFLOW_KEY */
  __u64 ring_full; /* a record was lost because tally_events was full (also counted per key: events_dropped) */
};

/* Value of tally_threads (BPF_MAP_TYPE_TASK_STORAGE): per thread, the key its bytes count for and its rchar/wchar
 * when they were last settled. Its bytes that count for `key` are rchar - read_base and wchar - write_base; what
 * it moved before was added to tally_counters (of the key it was in then). The lock makes a settlement (key and
 * bases changed together) and a reading of all three atomic: see tally_threads.bpf.h. */
struct tally_thread {
  struct bpf_spin_lock lock;
  __u32 reserved;
  __u64 key;
  __u64 read_base;
  __u64 write_base;
};

/* One record the tally_iter_task iterator writes: io bytes that count for `key` and are not in tally_counters as
 * the agent read it just before the pass (a live thread's bytes since its last settlement, or what the pass itself
 * settled for a thread that moved). The agent sums them per key. */
struct tally_task_io {
  __u64 key;
  __u64 read_bytes;
  __u64 write_bytes;
};

/* Value of tally_meta (BPF_MAP_TYPE_ARRAY, one entry), written by the loader when it creates the maps and pinned
 * last, so a pin directory with a readable tally_meta of this version holds a complete set. */
struct tally_meta {
  __u32 abi_version; /* TALLY_ABI_VERSION of the agent that created the maps */
  __u32 links;       /* how many links it pinned */
  __u8 epoch[16];    /* random, drawn when the maps were created: equal epochs mean the same counters */
};

/* The first __u32 of every record in the tally_events ring buffer: it says which struct follows. */
enum tally_event_type {
  TALLY_EVENT_EXEC = 1,          /* struct tally_event */
  TALLY_EVENT_EXIT = 2,          /* struct tally_event */
  TALLY_EVENT_DEVICE_OPEN = 3,   /* struct tally_event */
  TALLY_EVENT_CGROUP_MKDIR = 4,  /* struct tally_cgroup_event */
  TALLY_EVENT_CGROUP_RMDIR = 5,  /* struct tally_cgroup_event */
};

/* Access bits of a device event, as in the kernel's BPF_DEVCG_ACC_* (uapi linux/bpf.h). */
#define TALLY_DEVICE_ACCESS_MKNOD (1U << 0)
#define TALLY_DEVICE_ACCESS_READ (1U << 1)
#define TALLY_DEVICE_ACCESS_WRITE (1U << 2)

/* A process or device event in the tally_events ring buffer (exec, exit, device open). */
struct tally_event {
  __u32 type;      /* enum tally_event_type */
  __u32 pid;       /* thread-group id (the userspace "pid") */
  __u32 ppid;      /* parent's thread-group id (exec, exit) */
  __u32 exit_code; /* exit: the wait status (code << 8 | signal) */
  __u64 cgroup_id; /* cgroup v2 id of the process at the time of the event */
  __u64 key;       /* the counter key the process is counted under: cgroup_id, or its process key in the root */
  __u64 timestamp_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
  __u32 major;     /* device open */
  __u32 minor;
  __u32 access;    /* device open: TALLY_DEVICE_ACCESS_* */
  __u32 reserved;
  char comm[TALLY_COMM_LEN];
};

/* A cgroup v2 directory made or removed (cgroup_mkdir/cgroup_rmdir tracepoints), in the same ring buffer. A
 * record of its own rather than a longer tally_event: the path would quadruple every process event. */
struct tally_cgroup_event {
  __u32 type;      /* TALLY_EVENT_CGROUP_MKDIR or TALLY_EVENT_CGROUP_RMDIR */
  __u32 reserved;
  __u64 cgroup_id; /* the cgroup's id (its directory's inode number) */
  __u64 timestamp_ns;
  char path[TALLY_CGROUP_PATH_LEN]; /* relative to the v2 root ("/a/b"), NUL-terminated; empty if it did not fit */
};

#ifdef __cplusplus
#define TALLY_ABI_ASSERT static_assert
#else
#define TALLY_ABI_ASSERT _Static_assert
#endif
TALLY_ABI_ASSERT(sizeof(struct tally_counters) == 88, "tally_counters layout is ABI");
TALLY_ABI_ASSERT(sizeof(struct tally_stats) == 16, "tally_stats layout is ABI");
TALLY_ABI_ASSERT(sizeof(struct tally_thread) == 32, "tally_thread layout is ABI");
TALLY_ABI_ASSERT(sizeof(struct tally_task_io) == 24, "tally_task_io layout is ABI");
TALLY_ABI_ASSERT(sizeof(struct tally_meta) == 24, "tally_meta layout is ABI");
TALLY_ABI_ASSERT(sizeof(struct tally_event) == 72, "tally_event layout is ABI");
TALLY_ABI_ASSERT(sizeof(struct tally_cgroup_event) == 24 + TALLY_CGROUP_PATH_LEN, "tally_cgroup_event layout is ABI");
#undef TALLY_ABI_ASSERT

#endif /* TALLY_EBPF_TALLY_ABI_H */
