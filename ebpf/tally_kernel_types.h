/* The few kernel types the tally BPF programs read, declared by hand for CO-RE instead of a generated vmlinux.h.
 *
 * Why: the build then needs no BTF on the build host (CI containers, packaging chroots) and no bpftool btf dump;
 * preserve_access_index makes every field access a CO-RE relocation that libbpf resolves against the running
 * kernel's BTF at load time, so the field offsets written here do not matter, only the names and types.
 * The "___tally" suffix keeps these apart from any uapi definition; libbpf ignores it when matching.
 * Only the fields used are declared: add a field here when a program needs one. */
#ifndef TALLY_EBPF_KERNEL_TYPES_H
#define TALLY_EBPF_KERNEL_TYPES_H

#include <linux/types.h>

#if defined(__TARGET_ARCH_x86)
/* arch/x86/include/asm/ptrace.h: syscall arguments stay in the saved registers until the syscall returns. */
struct pt_regs___tally {
  unsigned long dx;
  unsigned long si;
  unsigned long di;
  unsigned long orig_ax; /* the syscall number */
} __attribute__((preserve_access_index));
#define TALLY_SYSCALL_NR(regs) ((long)(regs)->orig_ax)
#define TALLY_SYSCALL_ARG1(regs) ((regs)->si)
#define TALLY_SYSCALL_ARG2(regs) ((regs)->dx)
#elif defined(__TARGET_ARCH_arm64)
/* arch/arm64/include/asm/ptrace.h: x0 holds the return value at exit, orig_x0 the first argument. */
struct pt_regs___tally {
  __u64 regs[31];
  __u64 orig_x0;
  __s32 syscallno;
} __attribute__((preserve_access_index));
#define TALLY_SYSCALL_NR(regs) ((long)(regs)->syscallno)
#define TALLY_SYSCALL_ARG1(regs) ((regs)->regs[1])
#define TALLY_SYSCALL_ARG2(regs) ((regs)->regs[2])
#else
#error "tally BPF programs support x86_64 and arm64: define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64"
#endif

struct kernfs_node___tally {
  __u64 id; /* the cgroup id: the inode number of the cgroup directory */
} __attribute__((preserve_access_index));

/* include/linux/cgroup-defs.h: one hierarchy. The v2 (default) hierarchy, cgrp_dfl_root, is the first one the
 * kernel sets up, so its hierarchy_id is 0; v1 hierarchies (hybrid hosts) get 1 and up. */
struct cgroup_root___tally {
  int hierarchy_id;
} __attribute__((preserve_access_index));

struct cgroup___tally {
  struct kernfs_node___tally* kn;
  struct cgroup_root___tally* root;
  int level; /* depth below the root (0) */
  /* Linux 6.1+: the cgroup's ancestors, root first, itself at [level] (ancestor_ids before). */
  struct cgroup___tally* ancestors[];
} __attribute__((preserve_access_index));

struct css_set___tally {
  struct cgroup___tally* dfl_cgrp; /* the task's cgroup in the v2 (default) hierarchy */
} __attribute__((preserve_access_index));

/* include/linux/task_io_accounting.h: what /proc/PID/io reports for one thread. rchar and wchar are the bytes
 * read and written through read/write-family syscalls, sendfile, copy_file_range and kernel_read/kernel_write
 * (fs/read_write.c add_rchar/add_wchar), on any file, sockets included. */
struct task_io_accounting___tally {
  __u64 rchar;
  __u64 wchar;
} __attribute__((preserve_access_index));

/* include/linux/sched.h: task->flags bit set by exit_signals() at the start of do_exit(). */
#define TALLY_PF_EXITING 0x00000004U

struct task_struct___tally {
  unsigned int flags;
  int pid;
  int tgid;
  int exit_code;
  char comm[16];
  struct task_struct___tally* real_parent;
  struct task_struct___tally* group_leader;
  /* Boot-based start time in ns (5.5+); /proc/PID/stat field 22 is the leader's, in USER_HZ ticks. exec by a
   * non-leader thread copies the leader's into it (de_thread), so a process keeps it for life. */
  __u64 start_boottime;
  struct css_set___tally* cgroups;
  struct task_io_accounting___tally ioac; /* per thread: /proc/PID/io sums the threads */
} __attribute__((preserve_access_index));

/* include/linux/bpf.h DEFINE_BPF_ITER_FUNC(task, ...): the context of an iter/task program; task is NULL on the
 * last call of a pass. */
struct bpf_iter_meta___tally {
  void* seq; /* struct seq_file*, only passed to bpf_seq_write() */
} __attribute__((preserve_access_index));

struct bpf_iter__task___tally {
  struct bpf_iter_meta___tally* meta;
  struct task_struct___tally* task;
} __attribute__((preserve_access_index));

#endif /* TALLY_EBPF_KERNEL_TYPES_H */
