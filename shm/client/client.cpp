// The workload-side client library behind tally/client.h: registration with the agent, label interning, and the
// hot path (per-thread slots written with single-writer stores). See docs/shm-format.md for the format and the
// concurrency contract, and shm/README.md for the design.
//
// Hot path shape: each thread caches (client, attach epoch) -> its slot in a thread_local; a call compares two
// words, then does plain loads and stores into memory only this thread writes. Everything else (attaching,
// taking a slot, interning) is off the hot path, and attaching is off the caller's thread altogether: each client
// owns a background thread that registers, re-registers (after a quarantine, in a forked child) and hands over
// what was counted meanwhile.
//
// Process ownership: the attach epoch lives in a page of the client that the kernel zeroes in a forked child
// (MADV_WIPEONFORK), so the check the hot path already makes sends a child to the slow path, which counts in the
// child's own memory and re-registers the child as its own process; the segment mappings are MADV_DONTFORK, so a
// child cannot even reach its parent's slots.

#include "tally/client.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "agent/base/clock.hpp"
#include "agent/base/unique_fd.hpp"
#include "agent/base/unix_socket.hpp"
#include "shm/format/names.hpp"
#include "shm/format/registration_protocol.hpp"
#include "shm/format/segment_format.hpp"

namespace fmt_ns = tally::shm::format;
namespace proto_ns = tally::shm::protocol;

namespace tally_client_detail {

inline constexpr std::size_t kPageBytes = 4096;
// Events recorded while not attached that are kept for the agent; the rest count as dropped (their counters are
// kept whole either way).
inline constexpr std::uint32_t kPendingRecords = 1024;

// Settings from the environment, read once per tally_open (the background thread never calls getenv).
struct Settings {
  std::string socket_path{fmt_ns::kDefaultSocketPath};
  int open_timeout_ms = 100;
  std::int64_t retry_ns = 2'000'000'000;  // longest wait between attempts while no agent listens
  std::uint32_t lane_records = 0, slots = 0, label_sets = 0;  // 0: agent default
};

struct PendingRecord {
  std::uint32_t ready;  // 0 until the fields are written (release), then 1
  std::uint32_t labels;
  tally_request request;
  std::uint8_t pad[8];
};
static_assert(sizeof(PendingRecord) == 64);

// What a client counts while it is not attached (no agent yet, agent restarting, quarantined, a forked child not
// registered yet), kept in its own memory and handed over to the segment when it attaches, so totals are exact
// from the first call. Private anonymous memory, zeroed in a forked child: a child starts from nothing. Its
// pages are touched only for the label sets used. Every field is accessed through std::atomic_ref.
struct Pending {
  alignas(64) std::uint32_t dirty;  // set after a write; cleared by the hand-over before it reads
  alignas(64) std::uint64_t record_next;  // records reserved (past kPendingRecords: dropped)
  std::uint64_t records_dropped;
  std::uint64_t records_swept;  // background thread only
  alignas(64) std::uint64_t counters[fmt_ns::kMaxLabelSets][fmt_ns::kCounterCount];
  std::uint64_t gauges[fmt_ns::kMaxLabelSets][fmt_ns::kGaugeCount];
  std::uint8_t gauge_set[fmt_ns::kMaxLabelSets][fmt_ns::kGaugeCount];
  PendingRecord records[kPendingRecords];
};

// The page the kernel zeroes in a forked child (MADV_WIPEONFORK; pthread_atfork does it where the kernel cannot).
struct alignas(kPageBytes) ProcessPage {
  // Read on every hot-path call by every thread: alone on its line, written once per attach and detach.
  std::atomic<std::uint64_t> epoch;  // 0: not attached; else a process-unique attach id
  // 1 once this process has taken the client over; 0 in a child that has not yet (the child's first call does).
  alignas(64) std::uint32_t owned_here;
};
static_assert(sizeof(ProcessPage) == kPageBytes);

}  // namespace tally_client_detail

namespace detail = tally_client_detail;

// The page a forked child gets zeroed, then one page of state the process inherits: the hot path reads
// `process.epoch` at the handle itself, exactly as it read a plain member before.
struct tally_client {
  detail::ProcessPage process{};

  // --- immutable after tally_open ---
  bool inert = false;  // the static out-of-memory client: never attaches
  bool wiped_by_kernel = false;  // MADV_WIPEONFORK took: else the atfork child handler zeroes what it would have
  detail::Pending* pending = nullptr;
  detail::Settings settings;
  std::string name;

  // --- published with the epoch (release), under `mutex`; the hot path reads gauges, decisions, allowances,
  // budgets and header only after seeing the epoch, through relaxed atomic loads (a re-attach replaces them, never
  // unmaps the old ones) ---
  std::byte* segment = nullptr;
  std::size_t segment_size = 0;
  const std::byte* control = nullptr;
  std::size_t control_size = 0;
  bool mappings_kept_from_children = false;  // MADV_DONTFORK took on the segment and control mappings
  fmt_ns::Header* header = nullptr;
  fmt_ns::Layout layout{};
  std::uint32_t label_capacity = 0;
  std::uint32_t slot_count = 0;
  std::uint32_t lane_records = 0;
  std::uint64_t* gauges = nullptr;
  std::uint64_t* overflow = nullptr;
  const std::uint32_t* decisions = nullptr;
  const std::uint64_t* allowances = nullptr;  // allowance_word() per label set, in the control file
  fmt_ns::BudgetEntry* budgets = nullptr;     // what this client claimed and committed per label set
  bool slot_committed = false;  // the header's kFeatureSlotCommitted: commits go into each thread's own row
  // Segments given up (quarantined or retired by the agent): threads may still be finishing a write into them,
  // so they stay mapped until tally_close.
  struct Mapping {
    void* address;
    std::size_t size;
    bool kept_from_children;
  };
  std::vector<Mapping> retired_mappings;

  // --- under `mutex` ---
  std::mutex mutex;  // attach, intern, register, close; never held while waiting
  std::uint32_t published_labels = 1;  // labels.size(), for the hot path (atomic_ref)
  std::vector<std::string> labels{std::string()};  // index = handle; 0 unused
  std::unordered_map<std::string, std::uint32_t> label_index;
  std::vector<std::string> counter_names;
  std::string last_error;
  // The background thread and its exchange with the agent.
  pthread_t thread{};
  bool thread_running = false;
  bool stopping = false;
  int wake_fd = -1;     // eventfd: tally_close wakes the thread
  int pending_fd = -1;  // connected socket waiting for the agent's reply
  std::int64_t request_sent_ns = 0;
  std::int64_t next_attempt_ns = 0;
  std::uint32_t failures = 0;  // attempts in a row that did not attach: the backoff exponent
};
// `process` is first and one page long (aligned to a page): everything else fits in the second page.
static_assert(sizeof(tally_client) == 2 * detail::kPageBytes);

namespace {

using tally::shm::format::load_acquire;
using tally::shm::format::load_relaxed;
using tally::shm::format::store_relaxed;
using tally::shm::format::store_release;
using tally::monotonic_ns;
using detail::Pending;
using detail::PendingRecord;
using detail::Settings;

constexpr std::int64_t kFirstBackoffNs = 100'000'000;     // 100 ms, doubling
constexpr std::int64_t kLongestBackoffNs = 30'000'000'000;  // when the agent refused or did not answer
constexpr std::int64_t kReplyTimeoutNs = 10'000'000'000;  // a registration the agent never answers
constexpr int kWatchIntervalMs = 250;  // while attached: is the segment still live? anything left to hand over?

std::uint32_t env_uint(const char* name, std::uint32_t fallback, std::uint32_t maximum) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const unsigned long value = std::strtoul(text, &end, 10);
  if (end == nullptr || *end != '\0' || value > maximum) return fallback;
  return static_cast<std::uint32_t>(value);
}

Settings read_settings() {
  Settings s;
  if (const char* socket = std::getenv("TALLY_SOCKET"); socket != nullptr && *socket != '\0') s.socket_path = socket;
  s.open_timeout_ms = static_cast<int>(env_uint("TALLY_OPEN_TIMEOUT_MS", 100, 10'000));
  s.retry_ns = std::int64_t{env_uint("TALLY_RETRY_MS", 2000, 3'600'000)} * 1'000'000;
  s.retry_ns = std::max<std::int64_t>(s.retry_ns, 10'000'000);
  s.lane_records = env_uint("TALLY_LANE_RECORDS", 0, fmt_ns::kMaxLaneRecords);
  s.slots = env_uint("TALLY_SLOTS", 0, fmt_ns::kMaxSlots);
  s.label_sets = env_uint("TALLY_LABEL_SETS", 0, fmt_ns::kMaxLabelSets);
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// Process-wide state, by necessity: thread-exit destructors and fork handlers have nothing else to consult. Lock
// order: g_clients_mutex, then a client's mutex, then g_live_mutex. Locked only off the hot path.

// Every open client, for the fork handlers (which hold every client's lock across fork()).
std::mutex g_clients_mutex;
std::unordered_set<tally_client*>& open_clients() {
  static auto* clients = new std::unordered_set<tally_client*>();  // never destroyed: threads may exit after main
  return *clients;
}

// Attached clients and their epoch, so that a thread exiting after tally_close (or after a re-attach) does not
// touch a segment that is gone.
std::mutex g_live_mutex;
std::unordered_map<const tally_client*, std::uint64_t>& live_clients() {
  static auto* live = new std::unordered_map<const tally_client*, std::uint64_t>();
  return *live;
}
std::atomic<std::uint64_t> g_next_epoch{1};

bool owned_here(const tally_client* c) { return load_acquire(c->process.owned_here) != 0; }

// ---------------------------------------------------------------------------------------------------------------
// Per-thread state. Fixed-size, so that no call after a thread's first one allocates (an allocation may be a
// system call).

struct SlotView {
  fmt_ns::SlotHeader* slot = nullptr;  // nullptr: no free slot, this thread uses the overflow shard
  std::uint64_t* counters = nullptr;
  fmt_ns::Record* records = nullptr;
};

// Hands a slot back: its counters and lane continue with the next owner.
void release_slot(fmt_ns::SlotHeader* slot) {
  store_relaxed(slot->generation, load_relaxed(slot->generation) + 1);
  store_release(slot->owner, std::uint32_t{0});
}

// The slots this thread owns, released when the thread exits.
struct OwnedSlots {
  struct Entry {
    tally_client* client;
    std::uint64_t epoch;
    fmt_ns::SlotHeader* slot;
  };
  static constexpr std::uint32_t kEntries = 16;  // beyond this (many clients, many re-attaches) the oldest is
  Entry entries[kEntries]{};                      // forgotten: its slot stays taken until the segment goes
  std::uint32_t count = 0;
  void add(const Entry& e) { entries[count++ % kEntries] = e; }
  void forget() { count = 0; }
  ~OwnedSlots() {
    std::lock_guard lock(g_live_mutex);
    for (std::uint32_t i = 0; i < std::min(count, kEntries); ++i) {
      const Entry& e = entries[i];
      auto it = live_clients().find(e.client);
      // Closed or re-attached since, or a forked child's copy of its parent's entries: not ours to touch.
      if (it == live_clients().end() || it->second != e.epoch || !owned_here(e.client)) continue;
      release_slot(e.slot);
    }
  }
};

tally_client g_inert_client;  // returned only when allocation fails

// What the fast path reads (client, epoch, fast_labels, counters) shares one cache line: the struct is aligned.
struct alignas(64) ThreadCache {
  // Starts on a client no caller holds and an epoch no attach has, so the fast path's first comparison never
  // matches a fresh thread (nor a NULL client) and refresh() decides.
  const tally_client* client = &g_inert_client;
  std::uint64_t epoch = UINT64_MAX;
  // Label indexes 1..fast_labels take the fast path: label_capacity - 1 on a slot of our own, 0 on the overflow
  // shard, so that one range check also sends shared (atomic) updates to the slow path.
  std::uint32_t fast_labels = 0;
  std::uint32_t lane_mask = 0;
  std::uint64_t* counters = nullptr;
  fmt_ns::SlotHeader* slot = nullptr;
  fmt_ns::Record* records = nullptr;
  std::uint64_t cached_tail = 0;  // last tail read from the agent's line
  std::uint32_t label_capacity = 0;
  bool shared = false;  // overflow shard: atomic RMW
  bool slot_committed = false;  // commits go into counter index kCommittedCounter of `counters` (else BudgetEntry)
  std::uint32_t tid = 0;  // 0 until this thread's first call
  // tally_reserve and tally_commit: the tables of the epoch above, taken in the same refresh as label_capacity, so
  // that they are never paired with another segment's bounds (as reading them through the client after a re-attach
  // could).
  const std::uint64_t* allowances = nullptr;  // nullptr: a control file without them, nothing is enforced
  fmt_ns::BudgetEntry* budgets = nullptr;
};

// Slots of other clients (or earlier epochs) this thread used, when it alternates between clients (rare).
struct ParkedSlots {
  static constexpr std::uint32_t kEntries = 8;
  std::pair<std::uint64_t, SlotView> entries[kEntries]{};
  std::uint32_t count = 0, next = 0;
  void park(std::uint64_t epoch, SlotView view) {
    if (count < kEntries) entries[count++] = {epoch, view};
    else entries[next++ % kEntries] = {epoch, view};
  }
  bool take(std::uint64_t epoch, SlotView& view) {
    for (std::uint32_t i = 0; i < count; ++i) {
      if (entries[i].first != epoch) continue;
      view = entries[i].second;
      entries[i] = entries[--count];
      return true;
    }
    return false;
  }
};

thread_local ThreadCache t_cache;
thread_local OwnedSlots t_owned;
thread_local ParkedSlots t_parked;

// The counters a caller may add to: every index below kCounterCount but the one that holds commits (index 7,
// reserved in tally/client.h), which only tally_commit writes. (k ^ 7) - 1 < 15 is k < 16 && k != 7 in one compare.
static_assert(fmt_ns::kCounterCount == 16 && fmt_ns::kCommittedCounter == 7);
inline bool countable(tally_counter counter) {
  return (static_cast<std::uint32_t>(counter) ^ fmt_ns::kCommittedCounter) - 1 < fmt_ns::kCounterCount - 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Counting while not attached: into the client's own memory (Pending), lock-free, no system call.

// The last store of every pending write. Sequentially consistent, with the hand-over's exchange of `dirty` and of
// each cell, so that a write the hand-over did not see always leaves `dirty` set for the next one.
void mark_dirty(Pending& p) {
  std::atomic_ref<std::uint32_t> dirty(p.dirty);
  if (dirty.load() == 0) dirty.store(1);
}

bool pending_handle(const tally_client* c, std::uint32_t labels) {
  return c != nullptr && c->pending != nullptr && labels - 1 < load_acquire(c->published_labels) - 1;
}

void pending_add(tally_client* c, std::uint32_t labels, tally_counter counter, std::uint64_t value) {
  if (!pending_handle(c, labels) || !countable(counter)) return;
  std::atomic_ref<std::uint64_t>(c->pending->counters[labels][counter]).fetch_add(value);
  mark_dirty(*c->pending);
}

void pending_set(tally_client* c, std::uint32_t labels, tally_gauge gauge, std::uint64_t value) {
  if (!pending_handle(c, labels) || static_cast<std::uint32_t>(gauge) >= fmt_ns::kGaugeCount) return;
  store_relaxed(c->pending->gauges[labels][gauge], value);
  store_release(c->pending->gauge_set[labels][gauge], std::uint8_t{1});
  mark_dirty(*c->pending);
}

// What tally_record adds to a label set's counters, through `add` (a plain or an atomic add).
// Errors and tool calls are usually none: a well-predicted branch skips their load and store.
template <class Add>
inline void add_request_counters(std::uint64_t* cells, const tally_request& r, Add add) {
  add(cells + TALLY_TOKENS_IN, r.tokens_in);
  add(cells + TALLY_TOKENS_OUT, r.tokens_out);
  add(cells + TALLY_REQUESTS, 1);
  add(cells + TALLY_GPU_TIME_NS, r.gpu_time_ns);
  if (r.status != 0) add(cells + TALLY_ERRORS, 1);
  if (r.tool_calls != 0) add(cells + TALLY_TOOL_CALLS, r.tool_calls);
}

// A cell of our own slot has one writer: a plain load and store, no lock prefix.
inline void add_owned(std::uint64_t* cell, std::uint64_t value) { store_relaxed(*cell, load_relaxed(*cell) + value); }

// A cell several threads share (the overflow shard, pending counts): an atomic add.
void add_shared(std::uint64_t* cell, std::uint64_t value) {
  std::atomic_ref<std::uint64_t>(*cell).fetch_add(value);
}

void pending_record(tally_client* c, std::uint32_t labels, const tally_request& r) {
  if (!pending_handle(c, labels)) return;
  Pending& p = *c->pending;
  add_request_counters(p.counters[labels], r, add_shared);
  const std::uint64_t index = std::atomic_ref<std::uint64_t>(p.record_next).fetch_add(1, std::memory_order_relaxed);
  if (index < detail::kPendingRecords) {
    PendingRecord& rec = p.records[index];
    store_relaxed(rec.labels, labels);
    store_relaxed(rec.request.tokens_in, r.tokens_in);
    store_relaxed(rec.request.tokens_out, r.tokens_out);
    store_relaxed(rec.request.ttft_ns, r.ttft_ns);
    store_relaxed(rec.request.duration_ns, r.duration_ns);
    store_relaxed(rec.request.gpu_time_ns, r.gpu_time_ns);
    store_relaxed(rec.request.tool_calls, r.tool_calls);
    store_relaxed(rec.request.status, r.status);
    store_release(rec.ready, std::uint32_t{1});
  } else {
    std::atomic_ref<std::uint64_t>(p.records_dropped).fetch_add(1, std::memory_order_relaxed);
  }
  mark_dirty(p);
}

// ---------------------------------------------------------------------------------------------------------------
// Slots.

SlotView slot_view(tally_client* c, std::uint32_t index) {
  return {reinterpret_cast<fmt_ns::SlotHeader*>(c->segment + c->layout.slot_header(index)),
          reinterpret_cast<std::uint64_t*>(c->segment + c->layout.slot_counters(index)),
          reinterpret_cast<fmt_ns::Record*>(c->segment + c->layout.slot_records(index))};
}

// Takes a free slot for thread `tid`; a view with no slot (the overflow shard) when every slot is taken.
SlotView claim_slot(tally_client* c, std::uint32_t tid) {
  for (std::uint32_t i = 0; i < c->slot_count; ++i) {
    SlotView view = slot_view(c, i);
    std::uint32_t expected = 0;
    if (load_relaxed(view.slot->owner) != 0) continue;
    if (!std::atomic_ref<std::uint32_t>(view.slot->owner).compare_exchange_strong(expected, tid,
                                                                                 std::memory_order_acquire)) {
      continue;
    }
    store_relaxed(view.slot->generation, load_relaxed(view.slot->generation) + 1);
    std::atomic_ref<std::uint32_t> used(c->header->slots_used);
    for (std::uint32_t seen = used.load(); seen < i + 1 && !used.compare_exchange_weak(seen, i + 1);) {
    }
    return view;
  }
  return {nullptr, c->overflow, nullptr};
}

// Writes one event at lane position `head` and publishes it (the head: release). The record is one plain 64-byte
// copy, which the compiler makes a few wide stores, its commit word included: no reader looks at this record until
// the head passes it, and we rewrite it only after the agent's tail passed it (acquire), so no access to it is
// concurrent; the release store of the head orders all of it before the head. (The commit word lets the reader
// tell a record a hostile writer rewrote under it.)
inline void write_record(fmt_ns::SlotHeader* slot, fmt_ns::Record& rec, std::uint64_t head, std::uint32_t labels,
                         const tally_request& r) {
  rec = fmt_ns::Record{static_cast<std::uint32_t>(head + 1), labels, r.status, r.tool_calls, r.tokens_in,
                       r.tokens_out, r.ttft_ns, r.duration_ns, r.gpu_time_ns, 0};
  store_release(slot->head, head + 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Handing over what was counted while not attached. Background thread (or tally_open), under c->mutex, attached.

void hand_over_pending(tally_client* c, bool with_gauges) {
  Pending& p = *c->pending;
  if (std::atomic_ref<std::uint32_t>(p.dirty).exchange(0) == 0) return;
  const std::uint32_t labels = std::min<std::uint32_t>(static_cast<std::uint32_t>(c->labels.size()), c->label_capacity);
  if (with_gauges) {
    for (std::uint32_t h = 1; h < labels; ++h) {
      for (std::uint32_t g = 0; g < fmt_ns::kGaugeCount; ++g) {
        if (std::atomic_ref<std::uint8_t>(p.gauge_set[h][g]).exchange(0, std::memory_order_acquire) == 0) continue;
        store_relaxed(c->gauges[std::size_t{h} * fmt_ns::kGaugeCount + g], load_relaxed(p.gauges[h][g]));
      }
    }
  }
  // A slot of our own for the hand-over (single-writer stores), given back at the end; the overflow shard when
  // every slot is taken (the agent reads it then).
  const SlotView view = claim_slot(c, static_cast<std::uint32_t>(::syscall(SYS_gettid)));
  for (std::uint32_t h = 1; h < labels; ++h) {
    for (std::uint32_t k = 0; k < fmt_ns::kCounterCount; ++k) {
      if (k == fmt_ns::kCommittedCounter) continue;  // nothing counts it while not attached (countable())
      const std::uint64_t value = std::atomic_ref<std::uint64_t>(p.counters[h][k]).exchange(0);
      if (value == 0) continue;
      std::uint64_t* cell = view.counters + std::size_t{h} * fmt_ns::kCounterCount + k;
      view.slot != nullptr ? add_owned(cell, value) : add_shared(cell, value);
    }
  }
  std::uint64_t dropped = std::atomic_ref<std::uint64_t>(p.records_dropped).exchange(0);
  const std::uint64_t reserved = std::min<std::uint64_t>(load_relaxed(p.record_next), detail::kPendingRecords);
  for (; p.records_swept < reserved; ++p.records_swept) {
    const PendingRecord& rec = p.records[p.records_swept];
    if (load_acquire(rec.ready) == 0) break;  // still being written: the next hand-over takes it
    const std::uint32_t handle = load_relaxed(rec.labels);
    tally_request r{};
    r.tokens_in = load_relaxed(rec.request.tokens_in);
    r.tokens_out = load_relaxed(rec.request.tokens_out);
    r.ttft_ns = load_relaxed(rec.request.ttft_ns);
    r.duration_ns = load_relaxed(rec.request.duration_ns);
    r.gpu_time_ns = load_relaxed(rec.request.gpu_time_ns);
    r.tool_calls = load_relaxed(rec.request.tool_calls);
    r.status = load_relaxed(rec.request.status);
    if (view.slot == nullptr || handle >= c->label_capacity) {
      ++dropped;
      continue;
    }
    const std::uint64_t head = load_relaxed(view.slot->head);
    if (head - load_acquire(view.slot->tail) >= c->lane_records) {
      ++dropped;
      continue;
    }
    write_record(view.slot, view.records[head & (c->lane_records - 1)], head, handle, r);
  }
  if (dropped != 0) {
    if (view.slot != nullptr) {
      store_relaxed(view.slot->dropped, load_relaxed(view.slot->dropped) + dropped);
    } else {
      std::atomic_ref<std::uint64_t>(c->header->overflow_dropped).fetch_add(dropped, std::memory_order_relaxed);
    }
  }
  if (view.slot != nullptr) release_slot(view.slot);
}

// Forgets what was pending for a segment being given up (records and gauges are for the next attach to start
// afresh; counters are kept: they were never handed over).
void reset_pending_events(tally_client* c) {
  Pending& p = *c->pending;
  const std::uint64_t reserved = std::min<std::uint64_t>(load_relaxed(p.record_next), detail::kPendingRecords);
  for (std::uint64_t i = p.records_swept; i < reserved; ++i) {
    if (load_acquire(p.records[i].ready) != 0) std::atomic_ref<std::uint64_t>(p.records_dropped).fetch_add(1);
  }
  for (std::uint64_t i = 0; i < reserved; ++i) store_relaxed(p.records[i].ready, std::uint32_t{0});
  p.records_swept = 0;
  store_relaxed(p.record_next, std::uint64_t{0});
}

// ---------------------------------------------------------------------------------------------------------------
// Attaching. Under c->mutex, on the background thread (or in tally_open's bounded wait).

void set_error(tally_client* c, std::string message) { c->last_error = std::move(message); }

// Copies what was interned before the attach (or between two label writes) into the segment.
void publish_label(tally_client* c, std::uint32_t handle) {
  if (handle == 0 || handle >= c->label_capacity) return;
  auto* entries = reinterpret_cast<fmt_ns::LabelEntry*>(c->segment + c->layout.labels_offset);
  fmt_ns::LabelEntry& e = entries[handle];
  const std::string& text = c->labels[handle];
  std::memcpy(e.text, text.data(), text.size());
  store_relaxed(e.length, static_cast<std::uint32_t>(text.size()));
  store_release(e.committed, std::uint32_t{1});
  if (load_relaxed(c->header->label_count) < handle + 1) store_release(c->header->label_count, handle + 1);
}

void publish_counter_name(tally_client* c, std::size_t index) {
  char* names = reinterpret_cast<char*>(c->segment + c->layout.names_offset);
  char* slot = names + index * fmt_ns::kCounterNameBytes;
  std::memset(slot, 0, fmt_ns::kCounterNameBytes);
  std::memcpy(slot, c->counter_names[index].data(), c->counter_names[index].size());
  store_release(c->header->user_counter_count, static_cast<std::uint32_t>(index + 1));
}

bool attached(const tally_client* c) { return c->process.epoch.load(std::memory_order_acquire) != 0; }

// One entry per label set at `offset` in the mapped control file, or nullptr when the file does not hold the table
// whole (not a control file of this format): the hot path then enforces nothing from it.
template <class T>
const T* control_table(const tally_client* c, std::uint64_t offset) {
  const auto* control = reinterpret_cast<const fmt_ns::ControlHeader*>(c->control);
  const bool whole = control->magic == fmt_ns::kControlMagic && offset % alignof(T) == 0 &&
                     offset + std::uint64_t{sizeof(T)} * c->label_capacity <= c->control_size;
  return whole ? reinterpret_cast<const T*>(c->control + offset) : nullptr;
}

// Maps the agent's segment and control file (kept from forked children), carries over what was interned and
// counted before, then publishes the attach.
bool map_reply_fds(tally_client* c, int segment_fd, int control_fd) {
  struct stat st {};
  if (::fstat(segment_fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(fmt_ns::Header))) {
    set_error(c, "tally: the agent's segment is too small");
    return false;
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* seg = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, segment_fd, 0);
  if (seg == MAP_FAILED) {
    set_error(c, std::string("tally: mmap of the segment failed: ") + std::strerror(errno));
    return false;
  }
  auto* header = static_cast<fmt_ns::Header*>(seg);
  if (const std::string problem = fmt_ns::header_problem(*header, size); !problem.empty()) {
    ::munmap(seg, size);
    set_error(c, "tally: the agent's segment is not one this library reads: " + problem);
    return false;
  }
  const fmt_ns::Layout layout = fmt_ns::compute_layout(header->label_capacity, header->slot_count,
                                                       header->lane_records, header->version);
  struct stat cst {};
  const std::uint64_t want_control = fmt_ns::control_size(header->label_capacity);
  if (::fstat(control_fd, &cst) != 0 || static_cast<std::uint64_t>(cst.st_size) < want_control) {
    ::munmap(seg, size);
    set_error(c, "tally: the agent's control segment is too small");
    return false;
  }
  void* ctl = ::mmap(nullptr, want_control, PROT_READ, MAP_SHARED, control_fd, 0);
  if (ctl == MAP_FAILED) {
    ::munmap(seg, size);
    set_error(c, std::string("tally: mmap of the control segment failed: ") + std::strerror(errno));
    return false;
  }
  // A forked child must not even reach these pages: it registers as its own process. Both or neither, so that a
  // child knows whether it has copies to unmap.
  c->mappings_kept_from_children =
      ::madvise(seg, size, MADV_DONTFORK) == 0 && ::madvise(ctl, want_control, MADV_DONTFORK) == 0;
  if (!c->mappings_kept_from_children) {
    ::madvise(seg, size, MADV_DOFORK);
    ::madvise(ctl, want_control, MADV_DOFORK);
  }
  const auto* control = static_cast<const fmt_ns::ControlHeader*>(ctl);
  c->segment = static_cast<std::byte*>(seg);
  c->segment_size = size;
  c->control = static_cast<const std::byte*>(ctl);
  c->control_size = want_control;
  store_relaxed(c->header, header);
  c->layout = layout;
  c->label_capacity = header->label_capacity;
  c->slot_count = header->slot_count;
  c->lane_records = header->lane_records;
  store_relaxed(c->gauges, reinterpret_cast<std::uint64_t*>(c->segment + layout.gauges_offset));
  c->overflow = reinterpret_cast<std::uint64_t*>(c->segment + layout.overflow_offset);
  store_relaxed(c->decisions, control_table<std::uint32_t>(c, control->decisions_offset));
  store_relaxed(c->allowances, control_table<std::uint64_t>(c, control->allowances_offset));
  store_relaxed(c->budgets, reinterpret_cast<fmt_ns::BudgetEntry*>(c->segment + layout.budgets_offset));
  // Read once: what the agent that made the segment reads (the header's agent part is not written after creation).
  c->slot_committed = (load_relaxed(header->agent_features) & fmt_ns::kFeatureSlotCommitted) != 0;
  for (std::uint32_t h = 1; h < c->labels.size(); ++h) publish_label(c, h);
  for (std::size_t i = 0; i < c->counter_names.size(); ++i) publish_counter_name(c, i);
  hand_over_pending(c, true);  // before the epoch: no thread writes the segment's gauges yet
  const std::uint64_t epoch = g_next_epoch.fetch_add(1);
  {
    std::lock_guard lock(g_live_mutex);
    live_clients()[c] = epoch;
  }
  c->process.epoch.store(epoch, std::memory_order_release);
  hand_over_pending(c, false);  // what threads added while the epoch was on its way
  c->failures = 0;
  c->last_error.clear();
  return true;
}

enum class Exchange { waiting, attached, failed };

// Reads the agent's reply if it is there (waiting at most `timeout_ms`); closes the socket when the exchange is
// over, successful or not.
Exchange receive_reply(tally_client* c, int timeout_ms) {
  pollfd p{c->pending_fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return Exchange::waiting;
  tally::UniqueFd socket(c->pending_fd);
  c->pending_fd = -1;
  proto_ns::Reply reply{};
  tally::UniqueFd fds[2];
  const ssize_t n = tally::receive_with_fds(socket.get(), &reply, sizeof reply, MSG_DONTWAIT, fds);
  if (n != static_cast<ssize_t>(sizeof reply) || reply.magic != proto_ns::kReplyMagic) {
    set_error(c, "tally: malformed reply from the agent");
    return Exchange::failed;
  }
  if (reply.status != proto_ns::Status::ok) {
    reply.message[sizeof reply.message - 1] = '\0';
    set_error(c, std::string("tally: the agent refused this client: ") + reply.message);
    return Exchange::failed;
  }
  if (!fds[0] || !fds[1]) {
    set_error(c, "tally: the agent's reply carried no segment");
    return Exchange::failed;
  }
  return map_reply_fds(c, fds[0].get(), fds[1].get()) ? Exchange::attached : Exchange::failed;
}

// Starts an exchange: connect and send the request. Non-blocking; an absent agent fails at once.
bool send_request(tally_client* c) {
  const Settings& s = c->settings;
  const auto address = tally::unix_socket_address(s.socket_path);
  if (!address) {
    set_error(c, "tally: TALLY_SOCKET path is empty or too long");
    return false;
  }
  tally::UniqueFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!socket) {
    set_error(c, std::string("tally: socket() failed: ") + std::strerror(errno));
    return false;
  }
  if (::connect(socket.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof *address) != 0) {
    set_error(c, std::string("tally: no agent at ") + s.socket_path + ": " + std::strerror(errno));
    return false;
  }
  proto_ns::Request request{};
  request.magic = proto_ns::kRequestMagic;
  request.version = proto_ns::kVersion;
  request.lane_records = s.lane_records;
  request.slot_count = s.slots;
  request.label_capacity = s.label_sets;
  std::memcpy(request.workload_name, c->name.data(), std::min(c->name.size(), sizeof request.workload_name - 1));
  if (::send(socket.get(), &request, sizeof request, MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof request) {
    set_error(c, std::string("tally: sending the registration failed: ") + std::strerror(errno));
    return false;
  }
  c->pending_fd = socket.release();
  c->request_sent_ns = monotonic_ns();
  return true;
}

// After an attempt that did not attach: the next one waits 100 ms, doubling per failure, up to `longest`.
void back_off(tally_client* c, std::int64_t longest) {
  const std::uint32_t doublings = std::min<std::uint32_t>(c->failures, 20);
  c->next_attempt_ns = monotonic_ns() + std::min(longest, kFirstBackoffNs << doublings);
  ++c->failures;
}

// Gives the segment up (the agent quarantined or retired it): calls count in the client's own memory again
// until the next attach. The mappings stay until tally_close: a thread may still be finishing a write.
void detach(tally_client* c, std::string why) {
  reset_pending_events(c);  // before the epoch: no thread writes pending records while attached
  {
    std::lock_guard lock(g_live_mutex);
    live_clients()[c] = 0;  // exiting threads leave that segment's slots alone
  }
  c->process.epoch.store(0, std::memory_order_release);
  c->retired_mappings.push_back({c->segment, c->segment_size, c->mappings_kept_from_children});
  c->retired_mappings.push_back({const_cast<std::byte*>(c->control), c->control_size, c->mappings_kept_from_children});
  c->segment = nullptr;
  c->control = nullptr;
  set_error(c, std::move(why));
  c->failures = 0;
  c->next_attempt_ns = 0;  // at once
}

bool segment_retired(const tally_client* c) {
  const auto* control = reinterpret_cast<const fmt_ns::ControlHeader*>(c->control);
  return control != nullptr && load_acquire(control->state) != fmt_ns::kSegmentLive;
}

// One step of the background thread; returns how long it may sleep (ms) before the next, unless woken.
int attach_step(tally_client* c) {
  if (attached(c)) {
    if (!segment_retired(c)) {
      hand_over_pending(c, false);  // stragglers that saw "not attached" just before the attach
      return kWatchIntervalMs;
    }
    detach(c, "tally: the agent quarantined or retired this client's segment; registering again");
  }
  std::int64_t now = monotonic_ns();
  if (c->pending_fd >= 0) {
    switch (receive_reply(c, 0)) {
      case Exchange::attached:
        return kWatchIntervalMs;
      case Exchange::failed:
        back_off(c, kLongestBackoffNs);  // refused or garbled: do not hammer the agent
        break;
      case Exchange::waiting:
        if (now - c->request_sent_ns < kReplyTimeoutNs) {
          return static_cast<int>((kReplyTimeoutNs - (now - c->request_sent_ns)) / 1'000'000 + 1);
        }
        ::close(c->pending_fd);
        c->pending_fd = -1;
        set_error(c, "tally: the agent did not answer the registration");
        back_off(c, kLongestBackoffNs);
        break;
    }
    now = monotonic_ns();
  }
  if (now >= c->next_attempt_ns) {
    if (send_request(c)) return static_cast<int>(kReplyTimeoutNs / 1'000'000);  // woken by the reply
    back_off(c, c->settings.retry_ns);
  }
  return static_cast<int>((c->next_attempt_ns - now) / 1'000'000 + 1);
}

void* background_main(void* arg) {
  auto* c = static_cast<tally_client*>(arg);
  std::unique_lock lock(c->mutex);
  while (!c->stopping) {
    int timeout_ms = kWatchIntervalMs;
    try {
      timeout_ms = attach_step(c);
    } catch (...) {  // std::bad_alloc: try again later
    }
    pollfd fds[2] = {{c->wake_fd, POLLIN, 0}, {c->pending_fd, POLLIN, 0}};
    const nfds_t count = c->pending_fd >= 0 ? 2 : 1;
    lock.unlock();  // the fds are this thread's until it exits; nobody else closes them meanwhile
    if (::poll(fds, count, std::max(timeout_ms, 1)) > 0 && (fds[0].revents & POLLIN) != 0) {
      std::uint64_t drained = 0;
      [[maybe_unused]] const ssize_t n = ::read(c->wake_fd, &drained, sizeof drained);
    }
    lock.lock();
  }
  return nullptr;
}

// Starts the client's background thread (under c->mutex). Signals stay with the workload's own threads.
void start_background(tally_client* c) {
  if (c->wake_fd < 0) c->wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->wake_fd < 0) {
    set_error(c, std::string("tally: eventfd failed, no re-attaching: ") + std::strerror(errno));
    return;
  }
  pthread_attr_t attr;
  ::pthread_attr_init(&attr);
  ::pthread_attr_setstacksize(&attr, 256 * 1024);
  sigset_t all, previous;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &previous);
  const int rc = ::pthread_create(&c->thread, &attr, background_main, c);
  ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  ::pthread_attr_destroy(&attr);
  c->thread_running = rc == 0;
  c->stopping = false;
  if (rc != 0) set_error(c, std::string("tally: no background thread, no re-attaching: ") + std::strerror(rc));
}

// ---------------------------------------------------------------------------------------------------------------
// fork(). The child's copy of a client points at its parent's segment (not mapped in the child: MADV_DONTFORK),
// socket and thread (absent): it forgets them, keeps its label sets and counter names (so handles and counter ids
// stay valid: they are published in the same order into its own segment) and registers as its own process.

void adopt_after_fork(tally_client* c) {
  std::lock_guard lock(c->mutex);
  if (c->inert || owned_here(c)) return;
  auto forget = [](void* address, std::size_t size, bool kept_from_children) {
    if (address != nullptr && !kept_from_children) ::munmap(address, size);  // our copy, if any
  };
  forget(c->segment, c->segment_size, c->mappings_kept_from_children);
  forget(const_cast<std::byte*>(c->control), c->control_size, c->mappings_kept_from_children);
  for (const auto& m : c->retired_mappings) forget(m.address, m.size, m.kept_from_children);
  c->retired_mappings.clear();
  c->segment = nullptr;
  c->control = nullptr;
  if (c->pending_fd >= 0) ::close(c->pending_fd);  // our copy: the parent's exchange goes on
  if (c->wake_fd >= 0) ::close(c->wake_fd);
  c->pending_fd = c->wake_fd = -1;
  c->failures = 0;
  c->next_attempt_ns = 0;
  c->last_error.clear();
  {
    std::lock_guard live_lock(g_live_mutex);
    live_clients()[c] = 0;
  }
  store_release(c->process.owned_here, std::uint32_t{1});
  start_background(c);
}

void adopt_if_forked(tally_client* c) {
  if (!owned_here(c)) [[unlikely]] adopt_after_fork(c);
}

// Held across fork() so that the child never inherits a lock held by a thread it does not have.
void before_fork() {
  g_clients_mutex.lock();
  for (tally_client* c : open_clients()) c->mutex.lock();
  g_live_mutex.lock();
}

void after_fork_in_parent() {
  g_live_mutex.unlock();
  for (tally_client* c : open_clients()) c->mutex.unlock();
  g_clients_mutex.unlock();
}

void after_fork_in_child() {
  for (tally_client* c : open_clients()) {
    if (!c->wiped_by_kernel) {  // what MADV_WIPEONFORK would have done
      std::memset(static_cast<void*>(&c->process), 0, sizeof c->process);
      std::memset(static_cast<void*>(c->pending), 0, sizeof *c->pending);
    }
  }
  // The forking thread is the child's only one: its slots are its parent's.
  t_cache = ThreadCache{};
  t_owned.forget();
  t_parked = ParkedSlots{};
  after_fork_in_parent();
}

tally_client* allocate_client() {
  static std::once_flag fork_handlers;
  std::call_once(fork_handlers, [] { ::pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child); });
  void* memory = ::mmap(nullptr, sizeof(tally_client), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return nullptr;
  void* pending = ::mmap(nullptr, sizeof(Pending), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (pending == MAP_FAILED) {
    ::munmap(memory, sizeof(tally_client));
    return nullptr;
  }
  tally_client* c = nullptr;
  try {
    c = new (memory) tally_client();
  } catch (...) {
    ::munmap(pending, sizeof(Pending));
    ::munmap(memory, sizeof(tally_client));
    return nullptr;
  }
  c->pending = static_cast<Pending*>(pending);  // zero-filled: an empty Pending
  c->wiped_by_kernel = ::madvise(&c->process, sizeof c->process, MADV_WIPEONFORK) == 0 &&
                       ::madvise(pending, sizeof(Pending), MADV_WIPEONFORK) == 0;
  store_release(c->process.owned_here, std::uint32_t{1});
  return c;
}

void free_client(tally_client* c) {
  void* pending = c->pending;
  c->~tally_client();
  ::munmap(pending, sizeof(Pending));
  ::munmap(static_cast<void*>(c), sizeof(tally_client));
}

// ---------------------------------------------------------------------------------------------------------------
// The hot path's slow side.

// A thread's first call: its tid (the one system call it makes) and its exit hook (registered on first use of
// t_owned, which may allocate), so that no later call makes either.
[[gnu::noinline]] void init_thread(ThreadCache& tc) {
  tc.tid = static_cast<std::uint32_t>(::syscall(SYS_gettid));
  t_owned.count += 0;
}

// Fills the thread cache for `c`. Returns false when not attached: the caller counts in pending memory.
[[gnu::noinline]] bool refresh(ThreadCache& tc, tally_client* c) {
  if (c == nullptr) return false;
  if (tc.tid == 0) [[unlikely]] init_thread(tc);
  const std::uint64_t epoch = c->process.epoch.load(std::memory_order_acquire);
  if (epoch == 0) {
    if (!owned_here(c)) [[unlikely]] adopt_after_fork(c);  // a forked child's first call
    return false;
  }
  // Park the current entry, then look for one for `c` (head and cached tail live in the slot itself).
  if (tc.epoch != UINT64_MAX) t_parked.park(tc.epoch, {tc.shared ? nullptr : tc.slot, tc.counters, tc.records});
  SlotView view{};
  if (!t_parked.take(epoch, view)) {
    view = claim_slot(c, tc.tid);
    if (view.slot != nullptr) t_owned.add({c, epoch, view.slot});
  }
  tc.client = c;
  tc.epoch = epoch;
  tc.label_capacity = c->label_capacity;
  tc.lane_mask = c->lane_records - 1;
  tc.shared = view.slot == nullptr;
  tc.fast_labels = tc.shared ? 0 : c->label_capacity - 1;
  tc.counters = view.counters;
  tc.slot = view.slot;
  tc.records = view.records;
  tc.cached_tail = view.slot ? load_acquire(view.slot->tail) : 0;
  tc.allowances = load_relaxed(c->allowances);
  tc.budgets = load_relaxed(c->budgets);
  tc.slot_committed = c->slot_committed;
  return true;
}

inline bool cache_is_for(const ThreadCache& tc, const tally_client* c) {
  return tc.client == c && tc.epoch == c->process.epoch.load(std::memory_order_acquire);
}

inline bool cache_for(ThreadCache& tc, tally_client* c) {
  if (cache_is_for(tc, c)) [[likely]] return true;
  return refresh(tc, c);
}

// Appends the request to this thread's lane, or counts it dropped when the agent has not kept up.
[[gnu::always_inline]] inline void append_record(ThreadCache& tc, std::uint32_t labels, const tally_request& r) {
  const std::uint64_t head = load_relaxed(tc.slot->head);  // we are its only writer: no copy to keep in step
  if (head - tc.cached_tail > tc.lane_mask) [[unlikely]] {
    tc.cached_tail = load_acquire(tc.slot->tail);  // the agent's line: read only when we look full
    if (head - tc.cached_tail > tc.lane_mask) {
      store_relaxed(tc.slot->dropped, load_relaxed(tc.slot->dropped) + 1);
      return;
    }
  }
  write_record(tc.slot, tc.records[head & tc.lane_mask], head, labels, r);
}

// The slow paths: a thread's first call, a re-attach, not attached, the overflow shard (atomic adds) and bad
// arguments.
[[gnu::noinline]] void add_slow(tally_client* c, std::uint32_t labels, tally_counter counter, std::uint64_t value) {
  ThreadCache& tc = t_cache;
  if (!cache_for(tc, c)) return pending_add(c, labels, counter, value);
  if (labels - 1 >= tc.label_capacity - 1 || !countable(counter)) return;
  std::uint64_t* cell = tc.counters + std::size_t{labels} * fmt_ns::kCounterCount + counter;
  tc.shared ? add_shared(cell, value) : add_owned(cell, value);
}

[[gnu::noinline]] void record_slow(tally_client* c, std::uint32_t labels, const tally_request* r) {
  ThreadCache& tc = t_cache;
  if (r == nullptr) return;
  const tally_request request = *r;
  if (!cache_for(tc, c)) return pending_record(c, labels, request);
  if (labels - 1 >= tc.label_capacity - 1) return;
  std::uint64_t* cells = tc.counters + std::size_t{labels} * fmt_ns::kCounterCount;
  if (tc.shared) {
    add_request_counters(cells, request, add_shared);
    std::atomic_ref<std::uint64_t>(load_relaxed(c->header)->overflow_dropped).fetch_add(1, std::memory_order_relaxed);
    return;
  }
  add_request_counters(cells, request, add_owned);
  append_record(tc, labels, request);
}

// tally_add's fast path, shared with tally_commit: a plain add into this thread's own slot. False when the slow
// path must count it (see add_slow).
[[gnu::always_inline]] inline bool add_fast(const ThreadCache& tc, const tally_client* c, std::uint32_t labels,
                                            tally_counter counter, std::uint64_t value) {
  if (!cache_is_for(tc, c) || labels - 1 >= tc.fast_labels || !countable(counter)) return false;
  add_owned(tc.counters + std::size_t{labels} * fmt_ns::kCounterCount + counter, value);
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Allowances (segment_format.hpp, BudgetEntry): claimed against what the agent granted, in the segment; every
// thread of the process shares `claimed`, so every change to it is an atomic read-modify-write. What was committed
// is kept per thread, beside its counters (kFeatureSlotCommitted), so that a commit adds to it with a plain store.

// The allowance word that governs `counter` of label set `labels` in the thread cache's segment: one naming that
// counter, or kAllowancePending (the agent has not decided yet, so it holds every counter back); 0 when none does
// (no allowance, one for another counter, a bad handle or counter, a control file without allowances).
// allowance_in: the same for a label set and counter already checked (labels in [1, label_capacity), countable).
inline std::uint64_t allowance_in(const ThreadCache& tc, std::uint32_t labels, tally_counter counter) {
  if (tc.allowances == nullptr) return 0;
  const std::uint64_t word = load_relaxed(tc.allowances[labels]);
  const bool governs =
      fmt_ns::allowance_pending(word) || fmt_ns::allowance_counter(word) == static_cast<std::uint32_t>(counter);
  return word != 0 && governs ? word : 0;
}
inline std::uint64_t governing_allowance(const ThreadCache& tc, std::uint32_t labels, tally_counter counter) {
  if (labels - 1 >= tc.label_capacity - 1 || !countable(counter)) return 0;
  return allowance_in(tc, labels, counter);
}

// Raises `claimed` by `amount` unless it would pass `granted` (compared so that nothing can wrap around).
inline bool claim(std::uint64_t& claimed, std::uint64_t granted, std::uint64_t amount) {
  std::atomic_ref<std::uint64_t> cell(claimed);
  std::uint64_t seen = cell.load(std::memory_order_relaxed);
  do {
    if (amount > granted || seen > granted - amount) return false;
  } while (!cell.compare_exchange_weak(seen, seen + amount, std::memory_order_acq_rel, std::memory_order_relaxed));
  return true;
}

// claimed += used - reserved, never below 0: a commit whose reservation this segment never held (taken before a
// re-attach, or never taken) must not wrap `claimed` around, which would refuse every reservation after it.
inline void settle(std::uint64_t& claimed, std::uint64_t reserved, std::uint64_t used) {
  if (used == reserved) return;  // nothing to give back, no overshoot: spare the shared line a locked write
  std::atomic_ref<std::uint64_t> cell(claimed);
  std::uint64_t seen = cell.load(std::memory_order_relaxed);
  std::uint64_t next = 0;
  do {
    next = used >= reserved ? seen + (used - reserved) : seen - std::min(seen, reserved - used);
  } while (!cell.compare_exchange_weak(seen, next, std::memory_order_acq_rel, std::memory_order_relaxed));
}

// tally_reserve once this thread's cache is for the client's current segment.
inline int reserve_in(const ThreadCache& tc, std::uint32_t labels, tally_counter counter, std::uint64_t amount) {
  const std::uint64_t word = governing_allowance(tc, labels, counter);
  if (word == 0) return 1;
  if (fmt_ns::allowance_pending(word)) return 0;  // the agent has not looked at this label set yet
  return claim(tc.budgets[labels].claimed, fmt_ns::allowance_granted(word), amount) ? 1 : 0;
}

// tally_commit's bookkeeping once the counter is counted through this thread's cache (its current segment), into
// `counters` (this thread's slot; the overflow shard when `shared`). `checked`: labels and counter are known good
// (add_fast took them, so the row is this thread's own).
template <bool checked>
[[gnu::always_inline]] inline void commit_in(const ThreadCache& tc, std::uint32_t labels, tally_counter counter,
                                             std::uint64_t reserved, std::uint64_t used) {
  if ((checked ? allowance_in(tc, labels, counter) : governing_allowance(tc, labels, counter)) == 0) return;
  fmt_ns::BudgetEntry& entry = tc.budgets[labels];
  // Release: an agent that reads what was committed (acquire) sees the counter it was added to. With the feature,
  // into the same row as the counter (this thread's slot, or the overflow shard when the counter went there): the
  // agent reads each row's committed cell before that row's counters.
  if (tc.slot_committed) [[likely]] {
    std::uint64_t* cell = tc.counters + std::size_t{labels} * fmt_ns::kCounterCount + fmt_ns::kCommittedCounter;
    if (!checked && tc.shared) {
      std::atomic_ref<std::uint64_t>(*cell).fetch_add(used, std::memory_order_release);
    } else {
      store_release(*cell, load_relaxed(*cell) + used);  // our own slot: one writer, no lock prefix
    }
  } else {
    std::atomic_ref<std::uint64_t>(entry.committed).fetch_add(used, std::memory_order_release);
  }
  settle(entry.claimed, reserved, used);
}

// tally_commit off its fast path: a thread's first call, a re-attach, not attached, the overflow shard.
[[gnu::noinline]] void commit_slow(tally_client* c, std::uint32_t labels, tally_counter counter,
                                   std::uint64_t reserved, std::uint64_t used) {
  ThreadCache& tc = t_cache;
  add_slow(c, labels, counter, used);
  if (!cache_is_for(tc, c)) return;  // not attached (add_slow refreshed the cache if it is): nothing is enforced
  commit_in<false>(tc, labels, counter, reserved, used);
}

// A thread's first call, a re-attach, not attached: off the fast path, so that it saves no registers.
[[gnu::noinline]] int reserve_slow(tally_client* c, std::uint32_t labels, tally_counter counter, std::uint64_t amount) {
  ThreadCache& tc = t_cache;
  if (!refresh(tc, c)) return 1;  // not attached: nothing is enforced
  return reserve_in(tc, labels, counter, amount);
}

}  // namespace

extern "C" {

tally_client* tally_open(const char* workload_name) {
  tally_client* c = allocate_client();
  if (c == nullptr) {
    g_inert_client.inert = true;
    store_release(g_inert_client.process.owned_here, std::uint32_t{1});
    return &g_inert_client;
  }
  try {
    c->name = workload_name != nullptr ? workload_name : "";
    if (c->name.size() > 63) c->name.resize(63);
    c->settings = read_settings();
    {
      std::lock_guard lock(g_clients_mutex);
      open_clients().insert(c);
    }
    std::lock_guard lock(c->mutex);
    // The bounded wait, on the caller's thread: a workload that reports right after opening loses nothing.
    if (send_request(c)) {
      if (receive_reply(c, c->settings.open_timeout_ms) == Exchange::failed) back_off(c, kLongestBackoffNs);
    } else {
      back_off(c, c->settings.retry_ns);
    }
    start_background(c);  // re-attaches, watches the segment, hands over what was counted meanwhile
  } catch (...) {  // std::bad_alloc: stay unattached
  }
  return c;
}

void tally_close(tally_client* c) {
  if (c == nullptr || c == &g_inert_client) return;
  {
    std::lock_guard lock(g_clients_mutex);
    open_clients().erase(c);
  }
  // A forked child that never used its copy: the thread and the mappings are its parent's.
  const bool ours = owned_here(c);
  {
    std::lock_guard lock(c->mutex);
    c->stopping = true;
  }
  if (ours && c->thread_running) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(c->wake_fd, &one, sizeof one);
    ::pthread_join(c->thread, nullptr);
  }
  {
    std::lock_guard lock(g_live_mutex);
    live_clients().erase(c);
  }
  if (c->pending_fd >= 0) ::close(c->pending_fd);
  if (c->wake_fd >= 0) ::close(c->wake_fd);

  if (c->segment != nullptr && ours) {
    {
      // A call that saw "not attached" just before the attach may have left part of its counts pending after the
      // background thread's last hand-over (it stopped above): they go into the segment now, not into the void.
      std::lock_guard lock(c->mutex);
      if (attached(c)) hand_over_pending(c, false);
    }
    // Hand this process's slots back so a later client (or a reader) sees them free.
    for (std::uint32_t i = 0; i < c->slot_count; ++i) {
      fmt_ns::SlotHeader* slot = slot_view(c, i).slot;
      if (load_relaxed(slot->owner) != 0) release_slot(slot);
    }
  }
  auto unmap = [ours](void* address, std::size_t size, bool kept_from_children) {
    if (address != nullptr && (ours || !kept_from_children)) ::munmap(address, size);
  };
  unmap(c->segment, c->segment_size, c->mappings_kept_from_children);
  unmap(const_cast<std::byte*>(c->control), c->control_size, c->mappings_kept_from_children);
  for (const auto& m : c->retired_mappings) unmap(m.address, m.size, m.kept_from_children);
  if (t_cache.client == c) {  // other threads' caches never match a new client's epoch
    const std::uint32_t tid = t_cache.tid;
    t_cache = ThreadCache{};
    t_cache.tid = tid;
  }
  free_client(c);
}

uint32_t tally_intern(tally_client* c, const tally_label* labels, size_t n) {
  if (c == nullptr || c->inert || (labels == nullptr && n != 0)) return 0;
  try {
    std::string text;
    for (size_t i = 0; i < n; ++i) {
      if (labels[i].key == nullptr || labels[i].value == nullptr) return 0;
      if (!fmt_ns::append_label_pair(text, labels[i].key, labels[i].value)) return 0;
    }
    if (text.size() > fmt_ns::kLabelTextBytes) return 0;
    adopt_if_forked(c);
    std::lock_guard lock(c->mutex);
    if (auto it = c->label_index.find(text); it != c->label_index.end()) return it->second;
    if (c->labels.size() >= fmt_ns::kMaxLabelSets) return 0;
    const auto handle = static_cast<std::uint32_t>(c->labels.size());
    c->labels.push_back(text);
    c->label_index.emplace(std::move(text), handle);
    store_release(c->published_labels, static_cast<std::uint32_t>(c->labels.size()));
    if (attached(c)) publish_label(c, handle);
    return handle;
  } catch (...) {
    return 0;
  }
}

tally_counter tally_register_counter(tally_client* c, const char* name) {
  if (c == nullptr || c->inert || name == nullptr) return TALLY_COUNTER_INVALID;
  if (!fmt_ns::valid_counter_name(name)) return TALLY_COUNTER_INVALID;
  try {
    adopt_if_forked(c);
    std::lock_guard lock(c->mutex);
    for (std::size_t i = 0; i < c->counter_names.size(); ++i) {
      if (c->counter_names[i] == name) return static_cast<tally_counter>(TALLY_USER_COUNTER_0 + i);
    }
    if (c->counter_names.size() >= fmt_ns::kCounterCount - fmt_ns::kBuiltinCounters) return TALLY_COUNTER_INVALID;
    c->counter_names.emplace_back(name);
    if (attached(c)) publish_counter_name(c, c->counter_names.size() - 1);
    return static_cast<tally_counter>(TALLY_USER_COUNTER_0 + c->counter_names.size() - 1);
  } catch (...) {
    return TALLY_COUNTER_INVALID;
  }
}

void tally_add(tally_client* c, uint32_t labels, tally_counter counter, uint64_t value) {
  ThreadCache& tc = t_cache;
  if (!add_fast(tc, c, labels, counter, value)) [[unlikely]] {
    return add_slow(c, labels, counter, value);  // a tail call: the fast path saves no registers
  }
}

void tally_set(tally_client* c, uint32_t labels, tally_gauge gauge, uint64_t value) {
  ThreadCache& tc = t_cache;
  if (!cache_for(tc, c)) return pending_set(c, labels, gauge, value);
  if (labels - 1 >= tc.label_capacity - 1 || static_cast<std::uint32_t>(gauge) >= fmt_ns::kGaugeCount) return;
  store_relaxed(load_relaxed(c->gauges)[std::size_t{labels} * fmt_ns::kGaugeCount + gauge], value);
}

void tally_record(tally_client* c, uint32_t labels, const tally_request* r) {
  ThreadCache& tc = t_cache;
  if (r == nullptr || !cache_is_for(tc, c) || labels - 1 >= tc.fast_labels) [[unlikely]] {
    return record_slow(c, labels, r);
  }
  const tally_request request = *r;  // loaded once: the stores below might otherwise alias it, forcing reloads
  std::uint64_t* cells = tc.counters + std::size_t{labels} * fmt_ns::kCounterCount;
  add_request_counters(cells, request, add_owned);
  append_record(tc, labels, request);
}

tally_admission tally_admit(tally_client* c, uint32_t labels) {
  ThreadCache& tc = t_cache;
  if (!cache_for(tc, c)) return {TALLY_ALLOW, TALLY_REASON_NO_AGENT};
  const std::uint32_t* decisions = load_relaxed(c->decisions);
  if (decisions == nullptr) return {TALLY_ALLOW, TALLY_REASON_NO_AGENT};
  if (labels - 1 >= tc.label_capacity - 1) return {TALLY_ALLOW, TALLY_REASON_NONE};
  const std::uint32_t word = load_relaxed(decisions[labels]);
  const std::uint32_t decision = word & 0xff;
  // A decision newer than this library: the safe side. (TALLY_DEGRADE's hint rides in the reason word.)
  if (decision > TALLY_DEGRADE) return {TALLY_DENY, TALLY_REASON_POLICY};
  return {static_cast<tally_decision>(decision), word >> 8};
}

int tally_reserve(tally_client* c, uint32_t labels, tally_counter counter, uint64_t amount) {
  ThreadCache& tc = t_cache;
  if (!cache_is_for(tc, c)) [[unlikely]] return reserve_slow(c, labels, counter, amount);
  return reserve_in(tc, labels, counter, amount);
}

void tally_commit(tally_client* c, uint32_t labels, tally_counter counter, uint64_t reserved, uint64_t used) {
  // The counter first, exactly as tally_add counts it, in every state: the bookkeeping only follows it.
  ThreadCache& tc = t_cache;
  if (!add_fast(tc, c, labels, counter, used)) [[unlikely]] {
    return commit_slow(c, labels, counter, reserved, used);  // a tail call: the fast path saves no registers
  }
  commit_in<true>(tc, labels, counter, reserved, used);
}

int tally_attached(tally_client* c) {
  if (c == nullptr || c->inert) return 0;
  adopt_if_forked(c);
  std::lock_guard lock(c->mutex);
  if (!attached(c)) return 0;
  if (segment_retired(c)) {  // give it up at once (this thread's next calls count in our memory), register again
    detach(c, "tally: the agent quarantined or retired this client's segment; registering again");
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(c->wake_fd, &one, sizeof one);
    return 0;
  }
  return 1;
}

uint64_t tally_dropped(tally_client* c) {
  if (c == nullptr || c->inert) return 0;
  std::lock_guard lock(c->mutex);
  std::uint64_t total = c->pending != nullptr && owned_here(c)
                            ? std::atomic_ref<std::uint64_t>(c->pending->records_dropped).load(std::memory_order_relaxed)
                            : 0;
  if (!attached(c)) return total;
  total += std::atomic_ref<std::uint64_t>(c->header->overflow_dropped).load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < c->slot_count; ++i) total += load_relaxed(slot_view(c, i).slot->dropped);
  return total;
}

const char* tally_last_error(tally_client* c) {
  if (c == nullptr) return "";
  std::lock_guard lock(c->mutex);
  thread_local std::string copy;
  copy = c->last_error;
  return copy.c_str();
}

}  // extern "C"
