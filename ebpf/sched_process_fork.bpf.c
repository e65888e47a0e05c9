// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint sched:sched_process_fork, BTF-typed (tp_btf), fired in the parent after a child is created:
 *
 *   TRACE_EVENT(sched_process_fork, TP_PROTO(struct task_struct *parent, struct task_struct *child), ...)
 *
 * Counts new processes (not threads) in the child's cgroup: with clone3(CLONE_INTO_CGROUP) that differs from the
 * parent's, and the child's css_set is already final here (cgroup_post_fork runs before the tracepoint). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tally_sched_process_fork, struct task_struct___tally* parent, struct task_struct___tally* child) {
  if (child->pid != child->tgid) return 0; /* a new thread, not a new process */
  struct tally_counters* counters = tally_counters_of(child->cgroups->dfl_cgrp->kn->id);
  if (counters) __sync_fetch_and_add(&counters->processes_started, 1);
  return 0;
}
