// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint cgroup:cgroup_mkdir, BTF-typed (tp_btf), fired when a cgroup directory was made:
 *
 *   DEFINE_EVENT(cgroup, cgroup_mkdir, TP_PROTO(struct cgroup *cgrp, const char *path), ...)
 *
 * Part of the GPU device policy (gpu_policy.bpf.c). A v2 cgroup made at a path the plan awaits (a unit, a pod, a
 * cgroup path an assignment names) is given its grants here, in the mkdir itself, before any task can be moved into
 * it, so that its first process opens its GPU. Every other new v2 cgroup is reported to the agent, which decides
 * by its identity rules (a workload whose cgroup path could not be foreseen). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_kernel_types.h"
#include "tally_policy.bpf.h"

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(tally_gpu_policy_mkdir, struct cgroup___tally* cgroup, const char* path) {
  if (cgroup->root->hierarchy_id != 0) return 0; /* a v1 hierarchy of a hybrid host */
  struct tally_policy_path key;
  __builtin_memset(&key, 0, sizeof key);
  if (bpf_probe_read_kernel_str(key.path, sizeof key.path, path) < 0) return 0;
  const __u64 cgroup_id = cgroup->kn->id;
  const __u64* grants = bpf_map_lookup_elem(&tally_policy_paths, &key);
  /* An awaited path's entry is written whatever it holds: 0 (a revoked workload's) denies what the cgroup would
   * otherwise inherit, the root's access to GPUs open to every workload included. */
  if (grants) bpf_map_update_elem(&tally_policy_cgroups, &cgroup_id, grants, BPF_ANY);

  struct tally_policy_event* event = bpf_ringbuf_reserve(&tally_policy_events, sizeof *event, 0);
  if (!event) return 0;
  __builtin_memset(event, 0, sizeof *event);
  event->type = grants ? TALLY_POLICY_EVENT_COVERED : TALLY_POLICY_EVENT_MKDIR;
  event->cgroup_id = cgroup_id;
  event->timestamp_ns = bpf_ktime_get_ns();
  event->count = grants ? *grants : 0;
  __builtin_memcpy(event->path, key.path, sizeof event->path);
  bpf_ringbuf_submit(event, 0);
  return 0;
}

