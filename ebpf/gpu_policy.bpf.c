// SPDX-License-Identifier: GPL-2.0
/* Hook: the cgroup device controller's BPF hook (BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE), attached as a
 * link (always multi-attach) to the root of the cgroup v2 hierarchy, so that it runs for every task's access to a
 * device node, beside (never instead of) the device programs systemd, kubelet or runtimes attach lower down: the
 * kernel allows an access only when every program on the path allows it.
 *
 *   int prog(struct bpf_cgroup_dev_ctx *ctx)   -- access_type = (access << 16) | type; major; minor
 *                                                 returns 1 to allow, 0 to deny (the open fails with EPERM)
 *
 * Enforces the GPU partitioning plan (tally_policy_abi.h): a restricted node opens only for a task whose cgroup,
 * or its nearest ancestor with an entry, holds one of the node's grants. Denials are counted per cgroup and node
 * and sampled to the agent. Needs Linux 6.1+ (struct cgroup's ancestors[]). */
#include <linux/bpf.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "tally_kernel_types.h"
#include "tally_policy.bpf.h"

/* The grants held by the nearest of `cgroup` and its ancestors that has an entry (0: none has one). */
static __always_inline __u64 tally_grants_of(struct cgroup___tally* cgroup) {
  const int level = cgroup->level;
  const __u64 ancestors = __builtin_preserve_field_info(cgroup->ancestors, BPF_FIELD_BYTE_OFFSET);
  for (int i = 0; i < TALLY_POLICY_MAX_DEPTH; ++i) {
    const int at = level - i;
    if (at < 0) break;
    struct cgroup___tally* ancestor = 0;
    if (bpf_probe_read_kernel(&ancestor, sizeof ancestor, (void*)cgroup + ancestors + (__u64)at * sizeof ancestor)) break;
    if (!ancestor) break;
    const __u64 id = BPF_CORE_READ(ancestor, kn, id);
    const __u64* held = bpf_map_lookup_elem(&tally_policy_cgroups, &id);
    if (held) return *held;
  }
  return 0;
}

static __always_inline void tally_report_denial(struct bpf_cgroup_dev_ctx* ctx, __u64 cgroup_id, __u32 access,
                                                __u32 pid) {
  struct tally_policy_denial_key key = {.cgroup_id = cgroup_id, .major = ctx->major, .minor = ctx->minor};
  __u64* count = bpf_map_lookup_elem(&tally_policy_denials, &key);
  if (!count) {
    const __u64 zero = 0;
    bpf_map_update_elem(&tally_policy_denials, &key, &zero, BPF_NOEXIST);
    count = bpf_map_lookup_elem(&tally_policy_denials, &key);
    if (!count) return;
  }
  __sync_fetch_and_add(count, 1);
  const __u64 n = *count;
  if (n & (n - 1)) return; /* sampled: the 1st, 2nd, 4th, 8th... denial of this cgroup and node */
  struct tally_policy_event* event = bpf_ringbuf_reserve(&tally_policy_events, sizeof *event, 0);
  if (!event) return; /* the count above still has it */
  __builtin_memset(event, 0, sizeof *event);
  event->type = TALLY_POLICY_EVENT_DENIED;
  event->pid = pid;
  event->cgroup_id = cgroup_id;
  event->timestamp_ns = bpf_ktime_get_ns();
  event->count = n;
  event->major = ctx->major;
  event->minor = ctx->minor;
  event->access = access;
  bpf_get_current_comm(event->comm, sizeof(event->comm));
  bpf_ringbuf_submit(event, 0);
}

SEC("cgroup/dev")
int tally_gpu_policy(struct bpf_cgroup_dev_ctx* ctx) {
  const __u32 type = ctx->access_type & 0xFFFF;
  const __u32 access = ctx->access_type >> 16;
  if (type != BPF_DEVCG_DEV_CHAR) return 1;
  /* mknod only makes a node: opening it is what is checked. */
  if (!(access & (BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE))) return 1;
  const struct tally_policy_device_key device = {.major = ctx->major, .minor = ctx->minor};
  const __u64* grants = bpf_map_lookup_elem(&tally_policy_devices, &device);
  if (!grants) return 1; /* not restricted */
  struct task_struct___tally* task = (void*)bpf_get_current_task_btf();
  struct cgroup___tally* cgroup = task->cgroups->dfl_cgrp;
  if (tally_grants_of(cgroup) & *grants) return 1;
  tally_report_denial(ctx, cgroup->kn->id, access, task->tgid);
  return 0;
}

