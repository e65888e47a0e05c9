// SPDX-License-Identifier: GPL-2.0
/* Hook: the BPF task iterator (iter/task), run when the agent reads the iterator, once per usage report:
 *
 *   DEFINE_BPF_ITER_FUNC(task, struct bpf_iter_meta *meta, struct task_struct *task)   (kernel/bpf/task_iter.c)
 *
 * Called once per live task (thread) in the agent's pid namespace, then once with task == NULL. Writes one
 * struct tally_task_io per thread with unsettled bytes: its key and what it read and wrote since it was last
 * settled (task->ioac rchar/wchar, the kernel's own per-thread counts that /proc/PID/io sums, less the bases in its
 * tally_threads storage). The agent adds them up per key, plus tally_counters (exited and moved-out threads),
 * which it reads just before the pass. tally_threads.bpf.h has the bookkeeping.
 *
 * A thread whose key is no longer the one in its storage moved with its process (only the leader's move has a
 * tracepoint): it is settled here, and since the agent read tally_counters before this pass, the settled bytes are
 * also written as a record for the old key. Threads that predate the probes get their storage here.
 *
 * Why an iterator and not a program on every read/write: a program on raw_syscalls:sys_exit sets
 * TIF_SYSCALL_TRACEPOINT on every task, so every syscall of the node takes the tracing slow path (1.20x on a 64-byte
 * write with an empty program). Here nothing runs per syscall: the kernel already counts, we only read.
 *
 * Exiting threads (PF_EXITING, set by exit_signals() at the start of do_exit()) are skipped: the exit program
 * settles them, and once it has, a thread without storage would be counted again from 0. A thread between
 * PF_EXITING and its exit tracepoint is briefly in neither; the agent never reports less than before for a key, so
 * the next pass makes it whole. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"
#include "tally_threads.bpf.h"

/* Set by the loader for one pass right after a fresh load (the baseline): every live thread gets storage with its
 * current rchar/wchar as bases, and nothing is reported. */
__u32 tally_baseline_pass = 0;

SEC("iter/task")
int tally_iter_task(struct bpf_iter__task___tally* ctx) {
  struct task_struct___tally* task = ctx->task;
  if (!task) return 0; /* end of the pass */
  if (task->flags & TALLY_PF_EXITING) return 0;
  const __u64 key = tally_key_of(task);
  struct tally_thread* thread = tally_thread_find(task);
  if (tally_baseline_pass) {
    if (!thread) tally_thread_make(task, key, task->ioac.rchar, task->ioac.wchar);
    return 0;
  }
  if (!thread) {
    /* Kernel threads and idle helpers have nothing to count: no storage for them. */
    if (task->ioac.rchar == 0 && task->ioac.wchar == 0) return 0;
    thread = tally_thread_make(task, key, 0, 0);
  }
  /* Without storage (it could not be made) every byte of the thread is unsettled and counts where it is. */
  struct tally_task_io io = {.key = key, .read_bytes = task->ioac.rchar, .write_bytes = task->ioac.wchar};
  if (thread && tally_thread_settle(thread, task, key, 0, &io)) tally_io_settle(&io);
  if (io.read_bytes == 0 && io.write_bytes == 0) return 0;
  bpf_seq_write(ctx->meta->seq, &io, sizeof(io));
  return 0;
}
