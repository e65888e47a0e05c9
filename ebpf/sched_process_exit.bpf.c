// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint sched:sched_process_exit, BTF-typed (tp_btf), fired in each exiting task (do_exit):
 *
 *   TRACE_EVENT(sched_process_exit, TP_PROTO(struct task_struct *p, bool group_dead), ...)
 *   (group_dead was added in 6.16; it is not read here so that older kernels load the same program)
 *
 * Fires once per exiting thread, after its last read or write syscall: adds the thread's own rchar/wchar
 * (task->ioac, what /proc/PID/io sums) to its cgroup's io bytes, so the bytes of exited threads and processes stay
 * counted exactly (iter_task.bpf.c reads the live ones). Counts the exit of a process (its thread-group leader)
 * against its cgroup and sends an exit event. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tally_sched_process_exit, struct task_struct___tally* task) {
  /* The exiting task is current: its cgroup is the one its bytes were moved in (unless it was migrated). */
  const __u64 cgroup_id = bpf_get_current_cgroup_id();
  struct tally_counters* counters = tally_counters_of(cgroup_id);
  if (counters) {
    __sync_fetch_and_add(&counters->io_read_bytes, task->ioac.rchar);
    __sync_fetch_and_add(&counters->io_write_bytes, task->ioac.wchar);
  }
  if (task->pid != task->tgid) return 0; /* a thread of a process that lives on */
  if (counters) __sync_fetch_and_add(&counters->processes_exited, 1);

  struct tally_event* event = tally_event_reserve(TALLY_EVENT_EXIT, cgroup_id);
  if (!event) return 0;
  event->pid = task->tgid;
  event->ppid = task->real_parent->tgid;
  event->exit_code = (__u32)task->exit_code;
  bpf_get_current_comm(event->comm, sizeof(event->comm));
  bpf_ringbuf_submit(event, 0);
  return 0;
}
