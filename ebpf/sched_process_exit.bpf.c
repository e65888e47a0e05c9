// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint sched:sched_process_exit, BTF-typed (tp_btf), fired in each exiting task (do_exit):
 *
 *   TRACE_EVENT(sched_process_exit, TP_PROTO(struct task_struct *p, bool group_dead), ...)
 *   (group_dead was added in 6.16; it is not read here so that older kernels load the same program)
 *
 * Fires once per exiting thread, after its last read or write syscall: settles the thread's bytes (rchar/wchar,
 * what /proc/PID/io sums, less what was settled before: tally_threads.bpf.h) into the counters of the key they
 * count for, so the bytes of exited threads and processes stay counted exactly (iter_task.bpf.c reads the live
 * ones). A thread that moved since it was last seen gives them all to the key it moved from. Counts the exit of a
 * process (its thread-group leader) against its key and sends an exit event. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"
#include "tally_threads.bpf.h"

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tally_sched_process_exit, struct task_struct___tally* task) {
  const __u64 cgroup_id = tally_cgroup_of(task);
  const __u64 key = tally_key_in(task, cgroup_id);
  /* Without storage every byte of the thread is unsettled and counts where it is. */
  struct tally_task_io io = {.key = key, .read_bytes = task->ioac.rchar, .write_bytes = task->ioac.wchar};
  struct tally_thread* thread = tally_thread_find(task);
  if (thread) tally_thread_settle(thread, task, key, 1, &io);
  tally_io_settle(&io);
  if (task->pid != task->tgid) return 0; /* a thread of a process that lives on */

  struct tally_counters* counters = tally_counters_of(key);
  if (counters) __sync_fetch_and_add(&counters->processes_exited, 1);
  struct tally_event* event = tally_event_reserve(TALLY_EVENT_EXIT, key, cgroup_id);
  if (!event) return 0;
  event->pid = task->tgid;
  event->ppid = task->real_parent->tgid;
  event->exit_code = (__u32)task->exit_code;
  bpf_get_current_comm(event->comm, sizeof(event->comm));
  bpf_ringbuf_submit(event, 0);
  return 0;
}
