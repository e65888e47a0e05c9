// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint cgroup:cgroup_mkdir, BTF-typed (tp_btf), fired when a cgroup directory was made, in any
 * hierarchy:
 *
 *   DEFINE_EVENT(cgroup, cgroup_mkdir, TP_PROTO(struct cgroup *cgrp, const char *path), ...)
 *   (path: the cgroup's path from its hierarchy's root, formatted by the kernel for the tracepoint)
 *
 * Sends a cgroup event (id, path) for the v2 hierarchy only, so that the agent can name a cgroup that lives for
 * less than one report: its counters stay keyed by an id whose directory may be gone by the time they are read. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(tally_cgroup_mkdir, struct cgroup___tally* cgroup, const char* path) {
  if (cgroup->root->hierarchy_id != 0) return 0; /* a v1 hierarchy of a hybrid host */
  tally_cgroup_event_send(TALLY_EVENT_CGROUP_MKDIR, cgroup->kn->id, path);
  return 0;
}
