// SPDX-License-Identifier: GPL-2.0
/* Hook: the BPF task iterator (iter/task), run when the agent reads the iterator, once per usage report:
 *
 *   DEFINE_BPF_ITER_FUNC(task, struct bpf_iter_meta *meta, struct task_struct *task)   (kernel/bpf/task_iter.c)
 *
 * Called once per live task (thread) in the agent's pid namespace, then once with task == NULL. Writes one
 * struct tally_task_io per thread that has read or written anything: its cgroup v2 id and its task->ioac rchar and
 * wchar, the kernel's own per-thread counts that /proc/PID/io sums over a process's threads. The agent adds them
 * up per cgroup, plus what sched_process_exit.bpf.c kept of the threads that have exited.
 *
 * Why an iterator and not a program on every read/write: a program on raw_syscalls:sys_exit sets
 * TIF_SYSCALL_TRACEPOINT on every task, so every syscall of the node takes the tracing slow path (1.20x on a 64-byte
 * write with an empty program). Here nothing runs per syscall: the kernel already counts, we only read.
 *
 * Exiting threads (PF_EXITING, set by exit_signals() at the start of do_exit()) are skipped: their bytes are
 * counted once, by the exit program. A thread between PF_EXITING and its exit tracepoint is briefly in neither;
 * the agent never reports less than before for a cgroup, so the next pass makes it whole. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_abi.h"
#include "tally_kernel_types.h"

SEC("iter/task")
int tally_iter_task(struct bpf_iter__task___tally* ctx) {
  struct task_struct___tally* task = ctx->task;
  if (!task) return 0; /* end of the pass */
  if (task->flags & TALLY_PF_EXITING) return 0;
  struct tally_task_io record = {.rchar = task->ioac.rchar, .wchar = task->ioac.wchar};
  if (record.rchar == 0 && record.wchar == 0) return 0; /* kernel threads, idle helpers: nothing to add */
  record.cgroup_id = task->cgroups->dfl_cgrp->kn->id;
  bpf_seq_write(ctx->meta->seq, &record, sizeof(record));
  return 0;
}

char LICENSE[] SEC("license") = "GPL"; /* bpf_seq_write is GPL-only */
