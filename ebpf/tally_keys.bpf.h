/* The counter key of a task (tally_abi.h): its cgroup v2 id, or in the root cgroup its process key, so that the
 * processes of the root cgroup (no workload of their own on a bare host, but many processes) are told apart the way
 * the shm path tells them apart. Included by every object whose programs charge a task. */
#ifndef TALLY_EBPF_TALLY_KEYS_BPF_H
#define TALLY_EBPF_TALLY_KEYS_BPF_H

#include <linux/types.h>

#include "tally_abi.h"
#include "tally_kernel_types.h"

/* The root cgroup's id (the inode number of the v2 root directory), set by the loader before load. */
const volatile __u64 tally_root_cgroup_id = 0;

/* The task's cgroup v2 id. */
static __always_inline __u64 tally_cgroup_of(struct task_struct___tally* task) {
  return task->cgroups->dfl_cgrp->kn->id;
}

/* The key of `task`, whose cgroup v2 id is `cgroup_id`. */
static __always_inline __u64 tally_key_in(struct task_struct___tally* task, __u64 cgroup_id) {
  if (cgroup_id != tally_root_cgroup_id) return cgroup_id;
  const __u64 start_ticks = task->group_leader->start_boottime / TALLY_NSEC_PER_TICK;
  return TALLY_PROCESS_KEY_BIT | start_ticks << TALLY_PID_BITS |
         ((__u64)task->tgid & ((1ULL << TALLY_PID_BITS) - 1));
}

static __always_inline __u64 tally_key_of(struct task_struct___tally* task) {
  return tally_key_in(task, tally_cgroup_of(task));
}

#endif /* TALLY_EBPF_TALLY_KEYS_BPF_H */
