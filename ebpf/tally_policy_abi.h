/* The GPU device policy's ABI: what ebpf/gpu_policy*.bpf.c and agent/partitioning/device_policy.cpp share.
 * Pinned policy maps outlive the agent (that is how a policy stays in force while no agent runs), so
 * **bump TALLY_POLICY_ABI_VERSION with any change to a layout here**: an agent adopts a pinned policy of its own
 * version only. Kept apart from tally_abi.h: the probes and the policy are pinned, adopted and removed apart.
 *
 * Model (docs/partitioning.md): each GPU or MIG slice an assignment names is a *grant*, one bit of a 64-bit mask.
 * A restricted device node (major, minor) carries the grants that may open it; a cgroup carries the grants it
 * holds; a task may open a restricted node when its cgroup, or the nearest ancestor that has an entry, holds one of
 * the node's grants. Nodes without an entry are not restricted. */
#ifndef TALLY_EBPF_TALLY_POLICY_ABI_H
#define TALLY_EBPF_TALLY_POLICY_ABI_H

#include <linux/types.h>

#define TALLY_POLICY_ABI_VERSION 1

/* Map sizes: restricted nodes (8 GPUs x (1 + 7 slices x 2 caps) fit many times), cgroups holding grants,
 * cgroup paths awaited, (cgroup, node) pairs with denials counted. */
#define TALLY_POLICY_MAX_DEVICES 1024
#define TALLY_POLICY_MAX_CGROUPS 16384
#define TALLY_POLICY_MAX_PATHS 4096
#define TALLY_POLICY_MAX_DENIALS 16384
/* Cgroup paths, as the cgroup_mkdir tracepoint formats them ("/a/b", from the v2 root), NUL-padded. */
#define TALLY_POLICY_PATH_MAX 256
/* How many levels of a task's cgroup ancestry the device program looks at, deepest first. */
#define TALLY_POLICY_MAX_DEPTH 32

struct tally_policy_device_key {
  __u32 major;
  __u32 minor;
};

struct tally_policy_path {
  char path[TALLY_POLICY_PATH_MAX];
};

/* One entry (key 0): the ABI, the plan generation in force and a random id of these maps' lifetime. */
struct tally_policy_state {
  __u32 abi_version;
  __u32 reserved;
  __u64 generation;
  __u8 epoch[16];
};

struct tally_policy_denial_key {
  __u64 cgroup_id;
  __u32 major;
  __u32 minor;
};

enum tally_policy_event_type {
  TALLY_POLICY_EVENT_DENIED = 1,  /* an open was denied (sampled: the 1st, 2nd, 4th, 8th... per cgroup and node) */
  TALLY_POLICY_EVENT_COVERED = 2, /* a new cgroup's path was awaited: it holds its grants from its mkdir on */
  TALLY_POLICY_EVENT_MKDIR = 3,   /* a new v2 cgroup no path awaited: the agent decides (identity rules) */
};

struct tally_policy_event {
  __u32 type;
  __u32 pid;
  __u64 cgroup_id;
  __u64 timestamp_ns; /* CLOCK_MONOTONIC */
  __u64 count;        /* DENIED: denials of this cgroup and node so far; COVERED: the grants */
  __u32 major;
  __u32 minor;
  __u32 access; /* BPF_DEVCG_ACC_* */
  __u32 reserved;
  char comm[16];
  char path[TALLY_POLICY_PATH_MAX]; /* COVERED, MKDIR */
};

#ifdef __cplusplus
#define TALLY_POLICY_ABI_ASSERT static_assert
#else
#define TALLY_POLICY_ABI_ASSERT _Static_assert
#endif
TALLY_POLICY_ABI_ASSERT(sizeof(struct tally_policy_device_key) == 8, "tally_policy_device_key layout is ABI");
TALLY_POLICY_ABI_ASSERT(sizeof(struct tally_policy_state) == 32, "tally_policy_state layout is ABI");
TALLY_POLICY_ABI_ASSERT(sizeof(struct tally_policy_denial_key) == 16, "tally_policy_denial_key layout is ABI");
TALLY_POLICY_ABI_ASSERT(sizeof(struct tally_policy_event) == 64 + TALLY_POLICY_PATH_MAX, "tally_policy_event layout is ABI");
#undef TALLY_POLICY_ABI_ASSERT

#endif /* TALLY_EBPF_TALLY_POLICY_ABI_H */
