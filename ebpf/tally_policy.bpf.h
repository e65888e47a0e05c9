/* Maps of the GPU device policy, declared identically by gpu_policy.bpf.c and gpu_policy_mkdir.bpf.c; the loader
 * (agent/partitioning/device_policy.cpp) creates each once and hands the fd to the other object, and pins them
 * with the links so that the policy stays in force while no agent runs. Layouts: tally_policy_abi.h. */
#ifndef TALLY_EBPF_TALLY_POLICY_BPF_H
#define TALLY_EBPF_TALLY_POLICY_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_policy_abi.h"

/* Restricted device nodes → the grants that may open them. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, TALLY_POLICY_MAX_DEVICES);
  __type(key, struct tally_policy_device_key);
  __type(value, __u64);
} tally_policy_devices SEC(".maps");

/* Cgroup v2 id → the grants its tasks (and its descendants' without an entry of their own) hold. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, TALLY_POLICY_MAX_CGROUPS);
  __type(key, __u64);
  __type(value, __u64);
} tally_policy_cgroups SEC(".maps");

/* Cgroup paths awaited → their grants: a cgroup made at such a path holds them from its mkdir on. */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, TALLY_POLICY_MAX_PATHS);
  __type(key, struct tally_policy_path);
  __type(value, __u64);
} tally_policy_paths SEC(".maps");

/* Denials per (cgroup, node): LRU, so a hostile stream of distinct cgroups costs old counts, never memory. */
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, TALLY_POLICY_MAX_DENIALS);
  __type(key, struct tally_policy_denial_key);
  __type(value, __u64);
} tally_policy_denials SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct tally_policy_state);
} tally_policy_state SEC(".maps");

/* Denials (sampled) and new cgroups, for the agent's audit. */
struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 256 * 1024);
} tally_policy_events SEC(".maps");

char LICENSE[] SEC("license") = "GPL";

#endif /* TALLY_EBPF_TALLY_POLICY_BPF_H */
