// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint sched:sched_process_exec, BTF-typed (tp_btf), fired in the task after a successful exec:
 *
 *   TRACE_EVENT(sched_process_exec,
 *     TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm), ...)
 *
 * Counts the exec against the task's key and sends an exec event (pid, parent, cgroup, key, new comm) so that the
 * agent keeps its pid → cgroup table current without scanning /proc. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tally_sched_process_exec, struct task_struct___tally* task) {
  const __u64 cgroup_id = tally_cgroup_of(task);
  const __u64 key = tally_key_in(task, cgroup_id);
  struct tally_counters* counters = tally_counters_of(key);
  if (counters) __sync_fetch_and_add(&counters->execs, 1);

  struct tally_event* event = tally_event_reserve(TALLY_EVENT_EXEC, key, cgroup_id);
  if (!event) return 0;
  event->pid = task->tgid;
  event->ppid = task->real_parent->tgid;
  bpf_get_current_comm(event->comm, sizeof(event->comm));
  bpf_ringbuf_submit(event, 0);
  return 0;
}
