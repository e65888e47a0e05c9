/* Maps shared by every tally BPF object. Each object declares them identically; the loader creates each once (with
 * the first object it loads that has it) and hands the same fd to the others with bpf_map__reuse_fd(), so all
 * programs count into one tally_counters, write into one tally_events and keep one tally_stats. With a pin
 * directory the loader pins them, and a later agent adopts them (docs/ebpf.md). */
#ifndef TALLY_EBPF_TALLY_MAPS_BPF_H
#define TALLY_EBPF_TALLY_MAPS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_abi.h"

/* Counters per key (tally_abi.h). Per-CPU: the hot paths never share a cache line across CPUs. Not preallocated,
 * so memory follows the keys in use; max_entries is a placeholder the loader replaces with counters_capacity. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __uint(max_entries, 1);
  __type(key, __u64);
  __type(value, struct tally_counters);
} tally_counters SEC(".maps");

/* Process, device and cgroup events for the agent's event loop: rare, so one shared ring. Records are
 * struct tally_event or struct tally_cgroup_event, told apart by their first __u32. */
struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 256 * 1024);
} tally_events SEC(".maps");

/* The probes' own health (struct tally_stats), one entry per CPU. */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct tally_stats);
} tally_stats SEC(".maps");

static __always_inline struct tally_stats* tally_stats_here(void) {
  const __u32 zero = 0;
  return bpf_map_lookup_elem(&tally_stats, &zero);
}

/* The counters of `key` on this CPU, created zeroed on first use. When the map is full the entry cannot be made:
 * the usage goes to the overflow entry (key 0, made by the loader, never deleted) and map_full says so, so
 * nothing is lost silently. NULL only if the overflow entry itself is missing. */
static __always_inline struct tally_counters* tally_counters_of(__u64 key) {
  struct tally_counters* counters = bpf_map_lookup_elem(&tally_counters, &key);
  if (counters) return counters;
  static const struct tally_counters zero;
  /* Fails with E2BIG when full (or EEXIST when another CPU made it meanwhile: the lookup below finds that one). */
  bpf_map_update_elem(&tally_counters, &key, &zero, BPF_NOEXIST);
  counters = bpf_map_lookup_elem(&tally_counters, &key);
  if (counters) return counters;
  struct tally_stats* stats = tally_stats_here();
  if (stats) __sync_fetch_and_add(&stats->map_full, 1);
  const __u64 overflow = TALLY_OVERFLOW_KEY;
  return bpf_map_lookup_elem(&tally_counters, &overflow);
}

/* A ring record could not be reserved: counted in the stats and against the key it was about. */
static __always_inline void tally_event_lost(__u64 key) {
  struct tally_stats* stats = tally_stats_here();
  if (stats) __sync_fetch_and_add(&stats->ring_full, 1);
  struct tally_counters* counters = tally_counters_of(key);
  if (counters) __sync_fetch_and_add(&counters->events_dropped, 1);
}

/* Reserves a process or device event about a task counted under `key` in cgroup `cgroup_id`. */
static __always_inline struct tally_event* tally_event_reserve(__u32 type, __u64 key, __u64 cgroup_id) {
  struct tally_event* event = bpf_ringbuf_reserve(&tally_events, sizeof(*event), 0);
  if (!event) {
    tally_event_lost(key);
    return 0;
  }
  __builtin_memset(event, 0, sizeof(*event));
  event->type = type;
  event->cgroup_id = cgroup_id;
  event->key = key;
  event->timestamp_ns = bpf_ktime_get_ns();
  return event;
}

/* Sends a cgroup event with the cgroup's path as the tracepoint formatted it. A path that does not fit is sent
 * empty rather than cut, so that a prefix of a path is never taken for another cgroup. */
static __always_inline void tally_cgroup_event_send(__u32 type, __u64 cgroup_id, const char* path) {
  struct tally_cgroup_event* event = bpf_ringbuf_reserve(&tally_events, sizeof(*event), 0);
  if (!event) {
    tally_event_lost(cgroup_id);
    return;
  }
  event->type = type;
  event->reserved = 0;
  event->cgroup_id = cgroup_id;
  event->timestamp_ns = bpf_ktime_get_ns();
  const long copied = bpf_probe_read_kernel_str(event->path, sizeof(event->path), path);
  if (copied == sizeof(event->path)) {
    /* Full buffer: the path fit only if the source ends exactly there. */
    char last = 1;
    bpf_probe_read_kernel(&last, 1, path + sizeof(event->path) - 1);
    if (last != 0) event->path[0] = 0;
  } else if (copied < 0) {
    event->path[0] = 0;
  }
  bpf_ringbuf_submit(event, 0);
}

char LICENSE[] SEC("license") = "GPL";

#endif /* TALLY_EBPF_TALLY_MAPS_BPF_H */
