/* Per-thread io bookkeeping, so that a thread that moves to another key leaves the bytes it moved before with the
 * old one. The kernel counts rchar/wchar per thread for its whole life; tally_threads (task-local storage) keeps
 * per thread the key those bytes count for and the rchar/wchar already settled into tally_counters:
 *
 *   bytes of a key = tally_counters[key] (settled: exited threads, moved-out threads up to their move)
 *                  + sum over its live threads of (rchar - read_base, wchar - write_base)   (the iterator's pass)
 *
 * Settling a thread (it moved, or it exits) adds its unsettled bytes to the old key's counters and moves the bases
 * up to rchar/wchar, under the storage's spin lock, so that a reader sees either the old key and bases or the new
 * ones, never a mix. A byte is then, at any moment, unsettled (seen by the iterator), in transit (between the
 * unlock and the add to tally_counters: in neither), or settled: never in both, because the agent reads
 * tally_counters before it runs the iterator (a byte settled before that read was unsettled earlier still).
 *
 * Who keeps the storage: sched_process_fork creates it for every new thread {its key, 0, 0} (rchar/wchar start at
 * 0); the loader's first iterator pass (the baseline) creates it for every thread that predates the probes
 * {current key, rchar, wchar}: what a thread did before the probes saw it is not theirs to report, so the first
 * report after a fresh load carries what happened since, not the node's history. A thread the iterator finds
 * without storage later (storage could not be made for it) gets {current key, 0, 0}. cgroup_attach_task settles
 * the task it reports; the iterator, exit and fork (for the parent)
 * settle any thread they see whose key is not the one in its storage: the other threads of a process moved as a
 * whole have no tracepoint of their own. A thread without storage counts all its bytes for its current key. */
#ifndef TALLY_EBPF_TALLY_THREADS_BPF_H
#define TALLY_EBPF_TALLY_THREADS_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "tally_abi.h"
#include "tally_kernel_types.h"
#include "tally_maps.bpf.h"

struct {
  __uint(type, BPF_MAP_TYPE_TASK_STORAGE);
  __uint(map_flags, BPF_F_NO_PREALLOC);
  __type(key, int);
  __type(value, struct tally_thread);
} tally_threads SEC(".maps");

/* The storage of `task`, or NULL if it has none. */
static __always_inline struct tally_thread* tally_thread_find(struct task_struct___tally* task) {
  return bpf_task_storage_get(&tally_threads, (void*)task, 0, 0);
}

/* The storage of `task`, created as {key, read_base, write_base} if it has none; NULL only if it cannot be made. */
static __always_inline struct tally_thread* tally_thread_make(struct task_struct___tally* task, __u64 key,
                                                              __u64 read_base, __u64 write_base) {
  struct tally_thread initial = {.key = key, .read_base = read_base, .write_base = write_base};
  struct tally_thread* thread = bpf_task_storage_get(&tally_threads, (void*)task, &initial,
                                                     BPF_LOCAL_STORAGE_GET_F_CREATE);
  /* Made meanwhile by another program (creation fails with EEXIST then): use that one. */
  return thread ? thread : tally_thread_find(task);
}

/* Under the lock: the bytes `task` has not settled yet, for the key they count for (into *io). When the thread is
 * no longer in that key (it moved), or when `all` (it exits), settles them: the storage moves on to `key` and
 * rchar/wchar, and the caller adds *io to tally_counters. Returns whether it settled. */
static __always_inline int tally_thread_settle(struct tally_thread* thread, struct task_struct___tally* task,
                                               __u64 key, int all, struct tally_task_io* io) {
  int settled = 0;
  bpf_spin_lock(&thread->lock);
  /* Read under the lock: rchar only grows, so no base set by an earlier settlement is above what we read. */
  const __u64 rchar = task->ioac.rchar;
  const __u64 wchar = task->ioac.wchar;
  io->key = thread->key;
  io->read_bytes = rchar > thread->read_base ? rchar - thread->read_base : 0;
  io->write_bytes = wchar > thread->write_base ? wchar - thread->write_base : 0;
  if (all || thread->key != key) {
    thread->key = key;
    thread->read_base = rchar;
    thread->write_base = wchar;
    settled = 1;
  }
  bpf_spin_unlock(&thread->lock);
  return settled;
}

/* Adds settled io bytes to their key's counters. */
static __always_inline void tally_io_settle(const struct tally_task_io* io) {
  if (io->read_bytes == 0 && io->write_bytes == 0) return;
  struct tally_counters* counters = tally_counters_of(io->key);
  if (!counters) return;
  __sync_fetch_and_add(&counters->io_read_bytes, io->read_bytes);
  __sync_fetch_and_add(&counters->io_write_bytes, io->write_bytes);
}

/* Settles `task` if it has moved away from the key in its storage (the lazy path for threads moved with their
 * process). */
static __always_inline void tally_thread_settle_if_moved(struct task_struct___tally* task, __u64 key) {
  struct tally_thread* thread = tally_thread_find(task);
  if (!thread) return;
  struct tally_task_io io;
  if (tally_thread_settle(thread, task, key, 0, &io)) tally_io_settle(&io);
}

#endif /* TALLY_EBPF_TALLY_THREADS_BPF_H */
