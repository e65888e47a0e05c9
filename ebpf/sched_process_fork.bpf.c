// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint sched:sched_process_fork, BTF-typed (tp_btf), fired in the parent after a child (process or
 * thread) is created:
 *
 *   TRACE_EVENT(sched_process_fork, TP_PROTO(struct task_struct *parent, struct task_struct *child), ...)
 *
 * Gives every new thread its tally_threads storage {its key, 0, 0}: its rchar/wchar start at 0 and count for the
 * key it starts in, which is what a later move settles. Settles the parent if it moved since it was last seen
 * (tally_threads.bpf.h). Counts new processes (not threads) under the child's key: with clone3(CLONE_INTO_CGROUP)
 * that differs from the parent's, and the child's css_set is already final here (cgroup_post_fork runs before the
 * tracepoint). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"
#include "tally_threads.bpf.h"

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tally_sched_process_fork, struct task_struct___tally* parent, struct task_struct___tally* child) {
  const __u64 key = tally_key_of(child);
  tally_thread_make(child, key, 0, 0);
  tally_thread_settle_if_moved(parent, tally_key_of(parent));
  if (child->pid != child->tgid) return 0; /* a new thread, not a new process */
  struct tally_counters* counters = tally_counters_of(key);
  if (counters) __sync_fetch_and_add(&counters->processes_started, 1);
  return 0;
}
