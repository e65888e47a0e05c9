#pragma once
// The agent's view of one client segment: validates the layout once, then drains it each tick (new label sets,
// exact cumulative counters, gauges, events from every lane). It trusts nothing it reads: an inconsistency is an
// Error naming what is wrong, after which the caller quarantines the segment. Works on plain bytes so that the
// fuzzer and tests can hand it anything; SegmentFile (segment_file.hpp) supplies the bytes of a real file.

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "agent/base/result.hpp"
#include "shm/format/segment_format.hpp"

namespace tally::shm {

using CounterArray = std::array<std::uint64_t, format::kCounterCount>;
using GaugeArray = std::array<std::uint64_t, format::kGaugeCount>;

struct LabelSet {
  std::string text;  // "key=value" pairs separated by '\n', as the client sent them
  std::vector<std::pair<std::string, std::string>> pairs;
  std::string value_of(std::string_view key) const;
};

// One finished request as the client recorded it.
struct RequestEvent {
  std::uint32_t labels;
  std::uint32_t status;
  std::uint32_t tool_calls;
  std::uint64_t tokens_in;
  std::uint64_t tokens_out;
  std::uint64_t ttft_ns;
  std::uint64_t duration_ns;
  std::uint64_t gpu_time_ns;
};

// Parses label text; an Error names what is wrong.
Result<LabelSet> parse_label_text(std::string_view text);

class SegmentReader {
 public:
  // Validates the header and layout against `bytes` (which must stay mapped while the reader lives).
  static Result<SegmentReader> attach(std::span<std::byte> bytes);

  // Reads everything new: label sets, counters (checked never to go backwards), gauges, dropped counts, and the
  // events committed in every lane (appended to `events`; tails advanced). Any inconsistency is an Error.
  Result<void> drain(std::vector<RequestEvent>& events);
  // The two halves of drain(), for callers that need them at different rates: the lanes must be drained often so
  // they never fill (a load per slot in use when they are empty); the counters are exact whenever they are read
  // (a sum over label sets and slots), so once per report is enough.
  // Lanes, dropped counts (and labels events need). At most `budget` events are taken, lanes in turn from where
  // the last call stopped, so one client cannot make a drain as long as it likes; the rest stay in the lanes for
  // the next call (backlog()), never dropped by the agent.
  Result<void> drain_events(std::vector<RequestEvent>& events, std::uint64_t budget = UINT64_MAX);
  bool backlog() const { return backlog_; }
  Result<void> read_totals();                                     // labels, counters, gauges
  // The label sets whose counters or gauges changed in the last read of the totals (handles, ascending).
  const std::vector<std::uint32_t>& changed() const { return changed_; }

  // Where the lanes' heads are, for a caller that polls many segments often and drains only those whose heads
  // moved: a few loads in the segment, none in the reader. The client writes these words: trust nothing (bound
  // `slots_used` by `slot_count`; a lying head only delays its own lane's drain).
  struct LaneHeads {
    const std::uint32_t* slots_used = nullptr;
    const std::byte* first_head = nullptr;  // slot 0's head
    std::uint64_t stride = 0;               // from one slot's head to the next
    std::uint32_t slot_count = 0;
  };
  LaneHeads lane_heads() const;

  const format::Header& header() const { return *header_; }
  std::string workload_name() const;
  // Label sets by handle; entry 0 and not-yet-committed handles are empty (check `known`).
  std::uint32_t label_count() const { return static_cast<std::uint32_t>(labels_.size()); }
  const LabelSet& label_set(std::uint32_t handle) const { return labels_[handle]; }
  const CounterArray& counters(std::uint32_t handle) const { return counters_[handle]; }
  const GaugeArray& gauges(std::uint32_t handle) const { return gauges_[handle]; }
  const std::vector<std::string>& counter_names() const { return counter_names_; }
  // What the client claimed and committed against label set `handle`'s allowance, read now (committed first,
  // acquire: the counters it was added to are then visible; with kFeatureSlotCommitted, BudgetEntry::committed plus
  // the committed cell of each slot and of the overflow shard, as read_counters() sums it); zeros out of range. The
  // client's own bookkeeping: the agent meters usage from the counters, and uses these only to see how much of a
  // grant is still held.
  format::BudgetEntry budget_entry(std::uint32_t handle) const;
  // What that label set committed as the last read of the totals loaded it, each part (the entry, each slot's and the
  // overflow shard's committed cell) just before the counters it covers: every commit it holds is in those counters.
  // What lets the agent count a grant as spent only once its usage is counted. (counters()[kCommittedCounter] is
  // always 0: that index is this bookkeeping, never usage.)
  std::uint64_t committed(std::uint32_t handle) const { return committed_[handle]; }
  std::uint64_t dropped() const { return dropped_; }
  std::uint64_t torn() const { return torn_; }  // records whose commit word did not match: skipped, never read

 private:
  SegmentReader(std::span<std::byte> bytes, format::Layout layout) : bytes_(bytes), layout_(layout) {}
  Result<void> read_labels();
  Result<void> read_counters();
  Result<void> drain_lanes(std::vector<RequestEvent>& events, std::uint64_t budget);
  template <typename T>
  T* at(std::uint64_t offset) const {
    return reinterpret_cast<T*>(bytes_.data() + offset);
  }

  std::span<std::byte> bytes_;
  format::Layout layout_;
  format::Header* header_ = nullptr;
  std::uint32_t label_capacity_ = 0, slot_count_ = 0, lane_mask_ = 0;
  bool slot_committed_ = false;  // the header's kFeatureSlotCommitted, from the copy checked at attach
  std::vector<LabelSet> labels_{LabelSet{}};
  std::vector<CounterArray> counters_{CounterArray{}};
  std::vector<std::uint64_t> committed_{0};
  std::vector<GaugeArray> gauges_{GaugeArray{}};
  std::vector<std::string> counter_names_;
  std::vector<std::uint64_t> tails_;  // our own copy per lane: the client could scribble on the shared one
  std::vector<std::uint32_t> changed_;
  std::uint64_t dropped_ = 0, torn_ = 0;
  std::uint32_t next_lane_ = 0;  // where a drain cut short by its budget resumes
  bool backlog_ = false;
  CounterArray scratch_{};
};

}  // namespace tally::shm
