// SPDX-License-Identifier: GPL-2.0
/* Hook: the cgroup device controller's BPF hook (BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE), attached with
 * BPF_F_ALLOW_MULTI to the root of the cgroup v2 hierarchy. The kernel asks it about every access to a device
 * node (devcgroup_check_permission: open for read/write, mknod) by a task of any cgroup, before the driver runs:
 *
 *   int prog(struct bpf_cgroup_dev_ctx *ctx)   -- access_type = (access << 16) | type; major; minor
 *                                                 returns 1 to allow; tally only observes and always allows
 *
 * Counts and reports read/write accesses to character devices whose major is an accelerator's (NVIDIA 195,
 * nvidia-uvm, nvidia-caps, DRI 226, kfd, accel: the loader fills the list from /proc/devices), under the key of
 * the task asking (bpf_get_current_task_btf is a base helper for CAP_PERFMON since 5.15). The same hook is what a
 * partitioning policy would use to deny. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_abi.h"
#include "tally_keys.bpf.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

/* Accelerator majors, set by the loader; 0 ends the list. */
const volatile __u32 tally_accel_majors[TALLY_MAX_ACCEL_MAJORS] = {};

static __always_inline int is_accelerator(__u32 major) {
  for (int i = 0; i < TALLY_MAX_ACCEL_MAJORS; ++i) {
    if (tally_accel_majors[i] == 0) return 0;
    if (tally_accel_majors[i] == major) return 1;
  }
  return 0;
}

SEC("cgroup/dev")
int tally_cgroup_device(struct bpf_cgroup_dev_ctx* ctx) {
  const __u32 type = ctx->access_type & 0xFFFF;
  const __u32 access = ctx->access_type >> 16;
  if (type != BPF_DEVCG_DEV_CHAR) return 1;
  if (!(access & (BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE))) return 1; /* mknod is not use */
  if (!is_accelerator(ctx->major)) return 1;

  struct task_struct___tally* task = (void*)bpf_get_current_task_btf();
  const __u64 cgroup_id = tally_cgroup_of(task);
  const __u64 key = tally_key_in(task, cgroup_id);
  struct tally_counters* counters = tally_counters_of(key);
  if (counters) __sync_fetch_and_add(&counters->gpu_device_opens, 1);

  struct tally_event* event = tally_event_reserve(TALLY_EVENT_DEVICE_OPEN, key, cgroup_id);
  if (!event) return 1;
  event->pid = task->tgid;
  event->major = ctx->major;
  event->minor = ctx->minor;
  event->access = access;
  bpf_get_current_comm(event->comm, sizeof(event->comm));
  bpf_ringbuf_submit(event, 0);
  return 1;
}
