// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint cgroup:cgroup_attach_task, BTF-typed (tp_btf), fired after a task was migrated to another
 * cgroup (a write to cgroup.procs or cgroup.threads, in any hierarchy):
 *
 *   DEFINE_EVENT(cgroup_migrate, cgroup_attach_task,
 *     TP_PROTO(struct cgroup *dst_cgrp, const char *path, struct task_struct *task, bool threadgroup), ...)
 *   (kernel/cgroup/cgroup.c cgroup_attach_task(): once per move, for the leader when a whole process moves)
 *
 * Settles `task`: the bytes it moved since it was last settled stay with the key it was in (its tally_threads
 * storage), and from now on its bytes count for its new key (tally_threads.bpf.h). The new key is read from the
 * task, not from dst_cgrp: a move in a v1 hierarchy leaves the v2 cgroup, and so the key, as it was, and settles
 * nothing. The other threads of a process moved as a whole fire nothing: they are settled when next seen. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_threads.bpf.h"

SEC("tp_btf/cgroup_attach_task")
int BPF_PROG(tally_cgroup_attach_task, const void* dst_cgrp, const char* path, struct task_struct___tally* task) {
  /* A task without storage predates the probes and was not seen by the iterator yet: its bytes so far go with it. */
  tally_thread_settle_if_moved(task, tally_key_of(task));
  return 0;
}
