/* The one ABI shared by the BPF programs in ebpf/ and the userspace loader in collectors/: map keys and values,
 * ring buffer events, and the constants both sides agree on. Plain C with fixed-width kernel types so that clang
 * -target bpf and the C++ agent compile the same layout; sizes are checked with static asserts on both sides.
 * Change a layout only together with the loader, and never reorder fields. */
#ifndef TALLY_EBPF_TALLY_ABI_H
#define TALLY_EBPF_TALLY_ABI_H

#include <linux/types.h>

/* Size of the syscall → kind table in .rodata: syscall numbers at or above it are ignored. */
#define TALLY_MAX_SYSCALLS 512
/* Character-device majors that count as accelerators, filled by the loader from /proc/devices (0 = unused). */
#define TALLY_MAX_ACCEL_MAJORS 8
#define TALLY_COMM_LEN 16
/* At most this many entries of a sendmmsg/recvmmsg vector are summed (the kernel caps vlen at 1024). */
#define TALLY_MAX_MMSG 64

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

/* Value of tally_counters (BPF_MAP_TYPE_PERCPU_HASH keyed by cgroup v2 id = the cgroup directory's inode).
 * Cumulative since the probes were loaded; userspace sums the per-CPU copies and takes deltas. */
struct tally_counters {
  /* rchar and wchar of the cgroup's threads that have exited (sched_process_exit); the agent adds the live
   * threads' own counts, read with the tally_iter_task iterator. */
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

/* One record the tally_iter_task iterator writes per live thread that has read or written anything. */
struct tally_task_io {
  __u64 cgroup_id; /* the thread's cgroup v2 id */
  __u64 rchar;     /* task->ioac.rchar: bytes read since the thread was created */
  __u64 wchar;     /* task->ioac.wchar: bytes written */
};

enum tally_event_type {
  TALLY_EVENT_EXEC = 1,
  TALLY_EVENT_EXIT = 2,
  TALLY_EVENT_DEVICE_OPEN = 3,
};

/* Access bits of a device event, as in the kernel's BPF_DEVCG_ACC_* (uapi linux/bpf.h). */
#define TALLY_DEVICE_ACCESS_MKNOD (1U << 0)
#define TALLY_DEVICE_ACCESS_READ (1U << 1)
#define TALLY_DEVICE_ACCESS_WRITE (1U << 2)

/* One record in the tally_events ring buffer. Fixed size: every event type uses the same layout. */
struct tally_event {
  __u32 type;      /* enum tally_event_type */
  __u32 pid;       /* thread-group id (the userspace "pid") */
  __u32 ppid;      /* parent's thread-group id (exec, exit) */
  __u32 exit_code; /* exit: the wait status (code << 8 | signal) */
  __u64 cgroup_id; /* cgroup v2 id of the process at the time of the event */
  __u64 timestamp_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
  __u32 major;     /* device open */
  __u32 minor;
  __u32 access;    /* device open: TALLY_DEVICE_ACCESS_* */
  __u32 reserved;
  char comm[TALLY_COMM_LEN];
};

#ifdef __cplusplus
static_assert(sizeof(struct tally_counters) == 88, "tally_counters layout is ABI");
static_assert(sizeof(struct tally_event) == 64, "tally_event layout is ABI");
static_assert(sizeof(struct tally_task_io) == 24, "tally_task_io layout is ABI");
#else
_Static_assert(sizeof(struct tally_counters) == 88, "tally_counters layout is ABI");
_Static_assert(sizeof(struct tally_event) == 64, "tally_event layout is ABI");
_Static_assert(sizeof(struct tally_task_io) == 24, "tally_task_io layout is ABI");
#endif

#endif /* TALLY_EBPF_TALLY_ABI_H */
