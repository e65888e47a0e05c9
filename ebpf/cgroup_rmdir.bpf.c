// SPDX-License-Identifier: GPL-2.0
/* Hook: tracepoint cgroup:cgroup_rmdir, BTF-typed (tp_btf), fired when a cgroup directory was removed, in any
 * hierarchy:
 *
 *   DEFINE_EVENT(cgroup, cgroup_rmdir, TP_PROTO(struct cgroup *cgrp, const char *path), ...)
 *
 * Sends a cgroup event (id, path) for the v2 hierarchy only. A cgroup can only be removed once it holds no task:
 * its threads have exited (settled at their exit tracepoint, which runs before they leave the cgroup) or moved out
 * (settled at the move, except the non-leader threads of a process moved as a whole, settled when next seen), so
 * its counters are final, or nearly: the agent can report them once more and then forget the key. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "tally_abi.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(tally_cgroup_rmdir, struct cgroup___tally* cgroup, const char* path) {
  if (cgroup->root->hierarchy_id != 0) return 0; /* a v1 hierarchy of a hybrid host */
  tally_cgroup_event_send(TALLY_EVENT_CGROUP_RMDIR, cgroup->kn->id, path);
  return 0;
}
