#pragma once
// The shared-memory segment format, version 1: the one definition shared by the client library (writer) and the
// agent's reader. docs/shm-format.md describes it for humans; change both together and bump kVersion on any
// incompatible change.
//
// Who writes what (this is the whole concurrency contract):
//  - the agent writes the header's layout fields once, at creation, and each lane's `tail`;
//  - the client writes everything else: label sets, counter names, gauges, the overflow shard (atomic RMW),
//    and per-thread slots, where each slot has exactly one writer thread at a time (single-writer stores, no lock
//    prefix on the hot path);
//  - the agent trusts nothing it reads: every index, size and count is checked (shm/segment_reader.cpp).
//
// All fields are little-endian fixed-width integers accessed through std::atomic_ref; every region is 64-byte
// aligned so that no two writers share a cache line.

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tally::shm::format {

inline constexpr std::uint64_t kMagic = 0x314745534c4c4154ULL;  // "TALLYSG1" little-endian
// The segment version the agent creates, and the oldest both sides still read (a reader of version N reads every
// version from kOldestVersion: segments outlive agents, and clients outlive upgrades). 2: slot headers together
// after the header; 1: each slot header at the front of its slot.
inline constexpr std::uint32_t kVersion = 2;
inline constexpr std::uint32_t kOldestVersion = 1;
inline constexpr std::uint32_t kControlVersion = 1;
inline constexpr std::uint64_t kControlMagic = 0x314c5443594c4c54ULL;  // "TLLYCTL1"

inline constexpr std::uint32_t kCounterCount = 16;  // 8 built-in + 8 user-named (TALLY_COUNTER_LIMIT)
inline constexpr std::uint32_t kBuiltinCounters = 8;
// Built-in index 7 (reserved in tally/client.h: no caller can add to it) of every counter row, in each slot and the
// overflow shard, holds what tally_commit committed under an allowance (see BudgetEntry), in segments whose header
// has kFeatureSlotCommitted. Never usage: the reader reports it as committed(), and 0 in the counters.
inline constexpr std::uint32_t kCommittedCounter = 7;
inline constexpr std::uint32_t kGaugeCount = 8;
inline constexpr std::uint32_t kLabelTextBytes = 248;
inline constexpr std::uint32_t kCounterNameBytes = 32;

// Bounds the agent enforces on the layout (and so on the work one segment can cause per drain).
inline constexpr std::uint32_t kMaxLabelSets = 4096;
inline constexpr std::uint32_t kMaxSlots = 1024;
inline constexpr std::uint32_t kMinLaneRecords = 2;
inline constexpr std::uint32_t kMaxLaneRecords = 1u << 16;

// Segment header: 256 bytes at offset 0.
struct Header {
  // --- written by the agent at creation, read-only afterwards ---
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t header_size;      // sizeof(Header)
  std::uint64_t segment_size;     // whole file, bytes
  std::uint32_t label_capacity;   // label set table entries, index 0 unused (handle 0 = none)
  std::uint32_t counter_count;    // kCounterCount
  std::uint32_t gauge_count;      // kGaugeCount
  std::uint32_t slot_count;       // per-thread slots
  std::uint32_t lane_records;     // records per lane, a power of two
  std::uint32_t record_size;      // sizeof(Record)
  std::uint32_t producer_pid;     // from SO_PEERCRED
  std::uint32_t producer_uid;
  std::uint64_t producer_start_ticks;  // /proc/PID/stat field 22: tells a reused pid apart
  std::uint64_t created_unix_ns;
  std::uint64_t labels_offset;    // LabelEntry[label_capacity]
  std::uint64_t names_offset;     // char[kCounterCount - kBuiltinCounters][kCounterNameBytes]
  std::uint64_t gauges_offset;    // u64[label_capacity][kGaugeCount]
  std::uint64_t overflow_offset;  // u64[label_capacity][kCounterCount], atomic RMW by threads without a slot
  std::uint64_t slots_offset;     // Slot[slot_count], each slot_stride bytes
  std::uint64_t slot_stride;
  std::uint64_t budgets_offset;   // BudgetEntry[label_capacity], client-writable (atomic RMW): see BudgetEntry
  char workload_name[64];         // what the client called itself (display only)
  // --- written by the client ---
  std::uint32_t label_count;         // label sets committed so far (entries 1..label_count-1 may be in use)
  std::uint32_t user_counter_count;  // user-named counters registered
  std::uint32_t slots_used;          // high-water mark of slots ever taken
  std::uint32_t client_flags;
  std::uint64_t overflow_dropped;    // events dropped by threads that found no free slot (atomic RMW)
  // --- written by the agent at creation, read-only afterwards ---
  std::uint64_t slot_headers_offset;  // SlotHeader[slot_count], right after the header (version 2; 0 in version 1)
  // What the agent that made the segment reads from it (kFeature* bits); 0 in segments made before this field
  // existed. A client uses a feature only when its bit is set, so that an older agent is never misread.
  std::uint32_t agent_features;
  std::uint8_t reserved[256 - 228];
};
static_assert(sizeof(Header) == 256);
static_assert(offsetof(Header, workload_name) == 128);
static_assert(offsetof(Header, label_count) == 192);
static_assert(offsetof(Header, agent_features) == 224);
// The agent sums counter index kCommittedCounter of each slot and the overflow shard into what a label set
// committed (besides BudgetEntry::committed), and never counts it as usage.
inline constexpr std::uint32_t kFeatureSlotCommitted = 1;

// One interned label set: "key=value" pairs separated by '\n', `length` bytes, no NUL.
struct LabelEntry {
  std::uint32_t committed;  // 0 until text and length are written (release), then 1
  std::uint32_t length;
  char text[kLabelTextBytes];
};
static_assert(sizeof(LabelEntry) == 256);

// One event (a finished request) in a lane.
struct Record {
  std::uint32_t commit;  // low 32 bits of (sequence + 1), stored (release) after the fields
  std::uint32_t labels;
  std::uint32_t status;
  std::uint32_t tool_calls;
  std::uint64_t tokens_in;
  std::uint64_t tokens_out;
  std::uint64_t ttft_ns;
  std::uint64_t duration_ns;
  std::uint64_t gpu_time_ns;
  std::uint64_t reserved;
};
static_assert(sizeof(Record) == 64);

// Allowances (budgets, docs/budgets.md): per label set, what the client has claimed against the allowance the agent
// grants in the control file (read-only to the client), and what it has committed. The allowance word names the
// one counter it governs and the cumulative amount granted (allowance_word below); 0: no allowance governs the
// label set. Protocol, all in this shared memory (no system call, no lock shared with other processes):
//  - tally_reserve(amount) on the governed counter: a CAS loop raises `claimed` by `amount` only if
//    claimed + amount <= granted; otherwise it is refused. On any other counter it is granted and changes nothing.
//  - tally_commit(reserved, used): adds `used` to the counter first, then to what the label set committed (release:
//    the agent that sees it sees the counter), then `claimed` += used - reserved (never below 0; a locked write only
//    when used != reserved). A commit above what was reserved is counted in full and leaves `claimed` above
//    `granted` until the next grant.
// Where commits are added: with kFeatureSlotCommitted in the header, into counter index kCommittedCounter of the
// committing thread's own row, beside the counter it added to (a single-writer add in its slot; an atomic add in the
// overflow shard), and `committed` below stays 0; without it (a segment of an older agent), into `committed` below
// (atomic add). What the label set committed is `committed` plus that index summed over the slots and the overflow
// shard; the agent reads each part before the counters it covers.
// Concurrent requests of one client therefore cannot spend past the allowance; the agent meters the real usage
// from the counters, and trusts these fields only as the client's own bookkeeping (a hostile client can hold at
// most what it was granted, never spend another's). Zero until used.
struct BudgetEntry {
  std::uint64_t claimed;    // reserved and not yet released, plus committed
  std::uint64_t committed;  // what commits added to the governed counter (see above: with kFeatureSlotCommitted, 0)
};
static_assert(sizeof(BudgetEntry) == 16);

// One per-thread slot's header. The headers sit together right after the segment header, so that the agent's drain
// pass reads one page of an idle segment (slots_used and the heads of its first slots) and nothing else; each
// slot's counters (u64[label_capacity][kCounterCount]) and lane (Record[lane_records]) are in the slot region.
struct SlotHeader {
  // Ownership: 0 free, else the owning thread's tid. `generation` counts hand-overs, so a reader can tell a slot
  // that changed owner between two drains; counters and the lane simply continue across owners.
  std::uint32_t owner;
  std::uint32_t generation;
  std::uint8_t pad0[56];
  // Producer line: written only by the owning thread.
  std::uint64_t head;     // records published so far
  std::uint64_t dropped;  // events that found the lane full
  std::uint8_t pad1[48];
  // Consumer line: written only by the agent.
  std::uint64_t tail;  // records consumed so far
  std::uint8_t pad2[56];
};
static_assert(sizeof(SlotHeader) == 192);

// Control segment: written only by the agent, mapped read-only by the client (its fd is O_RDONLY), so that a
// client cannot change what the agent decided.
struct ControlHeader {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t label_capacity;
  std::uint64_t size;
  std::uint64_t decisions_offset;   // u32[label_capacity]: decision | reason << 8
  std::uint64_t allowances_offset;  // u64[label_capacity]: allowance_word() per label set (BudgetEntry)
  // What the agent thinks of the segment (kSegmentLive, kSegmentRetired), stored with release by the agent: a client
  // that reads kSegmentRetired stops writing into it and registers again (its totals so far are the agent's already).
  // Zero in files made before this field existed: live.
  std::uint32_t state;
  std::uint8_t reserved[64 - 44];
};
static_assert(sizeof(ControlHeader) == 64);
static_assert(offsetof(ControlHeader, state) == 40);
inline constexpr std::uint32_t kSegmentLive = 0;
inline constexpr std::uint32_t kSegmentRetired = 1;  // quarantined, or retired by the agent: register again

// Where each region starts for a given shape and version. Both sides compute it; the reader checks the header
// agrees.
struct Layout {
  std::uint64_t slot_headers_offset, slot_header_stride;
  std::uint64_t labels_offset, names_offset, gauges_offset, overflow_offset, budgets_offset, slots_offset, slot_stride;
  std::uint64_t counters_in_slot, records_in_slot;  // offsets inside a slot
  std::uint64_t segment_size;
  // Offsets of slot `s`'s parts: the one place that addresses them (client, reader, tests, benches).
  constexpr std::uint64_t slot_header(std::uint32_t s) const { return slot_headers_offset + s * slot_header_stride; }
  constexpr std::uint64_t slot_counters(std::uint32_t s) const { return slots_offset + s * slot_stride + counters_in_slot; }
  constexpr std::uint64_t slot_records(std::uint32_t s) const { return slots_offset + s * slot_stride + records_in_slot; }
};

constexpr std::uint64_t align64(std::uint64_t n) { return (n + 63) & ~std::uint64_t{63}; }

constexpr Layout compute_layout(std::uint32_t label_capacity, std::uint32_t slot_count, std::uint32_t lane_records,
                                std::uint32_t version = kVersion) {
  const bool headers_together = version >= 2;
  Layout l{};
  l.labels_offset = headers_together ? align64(sizeof(Header) + std::uint64_t{slot_count} * sizeof(SlotHeader))
                                     : sizeof(Header);
  l.names_offset = align64(l.labels_offset + std::uint64_t{label_capacity} * sizeof(LabelEntry));
  l.gauges_offset = align64(l.names_offset + (kCounterCount - kBuiltinCounters) * kCounterNameBytes);
  l.overflow_offset = align64(l.gauges_offset + std::uint64_t{label_capacity} * kGaugeCount * 8);
  l.budgets_offset = align64(l.overflow_offset + std::uint64_t{label_capacity} * kCounterCount * 8);
  l.slots_offset = align64(l.budgets_offset + std::uint64_t{label_capacity} * sizeof(BudgetEntry));
  l.counters_in_slot = headers_together ? 0 : sizeof(SlotHeader);
  l.records_in_slot = align64(l.counters_in_slot + std::uint64_t{label_capacity} * kCounterCount * 8);
  l.slot_stride = align64(l.records_in_slot + std::uint64_t{lane_records} * sizeof(Record));
  l.slot_headers_offset = headers_together ? sizeof(Header) : l.slots_offset;
  l.slot_header_stride = headers_together ? sizeof(SlotHeader) : l.slot_stride;
  l.segment_size = l.slots_offset + std::uint64_t{slot_count} * l.slot_stride;
  return l;
}

// Writes the agent's part of a new segment's header for this shape: version, sizes and every region offset, as
// compute_layout() gives them. The one place that does it: the agent, the fuzzer and the bench all build headers
// through it. `magic` is left to the caller, to be stored last (release), so a half-made header never reads valid.
inline Layout init_header(Header& h, std::uint32_t label_capacity, std::uint32_t slot_count,
                          std::uint32_t lane_records, std::uint32_t version = kVersion) {
  const Layout l = compute_layout(label_capacity, slot_count, lane_records, version);
  h.version = version;
  h.header_size = sizeof(Header);
  h.segment_size = l.segment_size;
  h.label_capacity = label_capacity;
  h.counter_count = kCounterCount;
  h.gauge_count = kGaugeCount;
  h.slot_count = slot_count;
  h.lane_records = lane_records;
  h.record_size = sizeof(Record);
  h.labels_offset = l.labels_offset;
  h.names_offset = l.names_offset;
  h.gauges_offset = l.gauges_offset;
  h.overflow_offset = l.overflow_offset;
  h.budgets_offset = l.budgets_offset;
  h.slots_offset = l.slots_offset;
  h.slot_stride = l.slot_stride;
  h.slot_headers_offset = version >= 2 ? l.slot_headers_offset : 0;  // reserved before version 2
  h.agent_features = kFeatureSlotCommitted;
  return l;
}

// An allowance word: the governed counter (+1) in the top byte, the cumulative amount granted below it. Granted
// amounts only grow while the segment lives (a new agent continues from the word it finds).
inline constexpr std::uint64_t kAllowanceAmountMask = (std::uint64_t{1} << 56) - 1;
constexpr std::uint64_t allowance_word(std::uint32_t counter, std::uint64_t granted) {
  return (std::uint64_t{counter + 1} << 56) | (granted & kAllowanceAmountMask);
}
constexpr std::uint32_t allowance_counter(std::uint64_t word) { return static_cast<std::uint32_t>(word >> 56) - 1; }
// A label set the agent has not looked at yet, while budgets govern reservations: every tally_reserve on it is
// refused until the agent's next pass says what governs it (a client must never spend before the agent can count
// it against a budget). The agent writes it into every handle of a new control file.
inline constexpr std::uint64_t kAllowancePending = std::uint64_t{0xff} << 56;
constexpr bool allowance_pending(std::uint64_t word) { return (word >> 56) == 0xff; }
constexpr std::uint64_t allowance_granted(std::uint64_t word) { return word & kAllowanceAmountMask; }

// A decision word: decision | reason << 8, where reason is a tally_reason in its low 8 bits and, for
// TALLY_DEGRADE, the hint (a max_tokens cap, 0: none) in the 16 above.
constexpr std::uint32_t decision_word(std::uint8_t decision, std::uint32_t reason) {
  return decision | (reason << 8);
}

constexpr std::uint64_t control_size(std::uint32_t label_capacity) {
  return align64(sizeof(ControlHeader) + std::uint64_t{label_capacity} * 4) + std::uint64_t{label_capacity} * 8;
}

template <typename T>
inline T load_relaxed(const T& field) {
  return std::atomic_ref<T>(const_cast<T&>(field)).load(std::memory_order_relaxed);
}
template <typename T>
inline T load_acquire(const T& field) {
  return std::atomic_ref<T>(const_cast<T&>(field)).load(std::memory_order_acquire);
}
template <typename T>
inline void store_relaxed(T& field, T value) {
  std::atomic_ref<T>(field).store(value, std::memory_order_relaxed);
}
template <typename T>
inline void store_release(T& field, T value) {
  std::atomic_ref<T>(field).store(value, std::memory_order_release);
}

}  // namespace tally::shm::format
