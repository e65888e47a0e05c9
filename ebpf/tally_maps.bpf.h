/* Maps shared by every tally BPF object. Each object declares them identically; the loader creates them once
 * (with the first object it loads) and hands the same fds to the others with bpf_map__reuse_fd(), so all
 * programs count into one tally_counters and write into one tally_events. */
#ifndef TALLY_EBPF_TALLY_MAPS_BPF_H
#define TALLY_EBPF_TALLY_MAPS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_abi.h"

/* Counters per cgroup v2 id. Per-CPU: the hot paths (every read/write) never share a cache line across CPUs. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(max_entries, 16384);
  __type(key, __u64);
  __type(value, struct tally_counters);
} tally_counters SEC(".maps");

/* Process and device events for the agent's event loop (exec, exit, device open): rare, so one shared ring. */
struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 256 * 1024);
} tally_events SEC(".maps");

/* The counters of `cgroup_id` on this CPU, created zeroed on first use; NULL only when the map is full. */
static __always_inline struct tally_counters* tally_counters_of(__u64 cgroup_id) {
  struct tally_counters* counters = bpf_map_lookup_elem(&tally_counters, &cgroup_id);
  if (counters) return counters;
  static const struct tally_counters zero;
  bpf_map_update_elem(&tally_counters, &cgroup_id, &zero, BPF_NOEXIST);
  return bpf_map_lookup_elem(&tally_counters, &cgroup_id);
}

/* Reserves an event; when the ring is full the loss is counted against the cgroup instead. */
static __always_inline struct tally_event* tally_event_reserve(__u32 type, __u64 cgroup_id) {
  struct tally_event* event = bpf_ringbuf_reserve(&tally_events, sizeof(*event), 0);
  if (!event) {
    struct tally_counters* counters = tally_counters_of(cgroup_id);
    if (counters) __sync_fetch_and_add(&counters->events_dropped, 1);
    return 0;
  }
  __builtin_memset(event, 0, sizeof(*event));
  event->type = type;
  event->cgroup_id = cgroup_id;
  event->timestamp_ns = bpf_ktime_get_ns();
  return event;
}

char LICENSE[] SEC("license") = "GPL";

#endif /* TALLY_EBPF_TALLY_MAPS_BPF_H */
