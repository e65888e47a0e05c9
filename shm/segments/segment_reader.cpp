#include "shm/segments/segment_reader.hpp"

#include <cstddef>

#include "agent/base/text.hpp"
#include "shm/format/names.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace tally::shm {

using format::load_acquire;
using format::load_relaxed;
using format::store_release;

namespace {

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) { return a + b < a ? UINT64_MAX : a + b; }

std::string_view counter_label(std::uint32_t k) {
  return k < format::kBuiltinCounters ? format::kBuiltinCounterNames[k] : std::string_view("user");
}

}  // namespace

std::string LabelSet::value_of(std::string_view key) const {
  for (const auto& [k, v] : pairs) {
    if (k == key) return v;
  }
  return {};
}

Result<LabelSet> parse_label_text(std::string_view text) {
  LabelSet set;
  set.text = std::string(text);
  if (!valid_utf8(text)) return make_error(ErrorCode::invalid_argument, "label text is not valid UTF-8");
  if (text.empty()) return set;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view pair = text.substr(start, end - start);
    const std::size_t eq = pair.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return make_error(ErrorCode::invalid_argument, "label pair '{}' is not key=value", pair);
    }
    for (char c : pair) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        return make_error(ErrorCode::invalid_argument, "label pair contains a control character");
      }
    }
    set.pairs.emplace_back(std::string(pair.substr(0, eq)), std::string(pair.substr(eq + 1)));
    start = end + 1;
  }
  return set;
}

Result<SegmentReader> SegmentReader::attach(std::span<std::byte> bytes) {
  using format::Header;
  if (bytes.size() < sizeof(Header)) {
    return make_error(ErrorCode::invalid_argument, "{}", format::header_problem(Header{}, bytes.size()));
  }
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % 64 != 0) {
    return make_error(ErrorCode::invalid_argument, "segment mapping is not 64-byte aligned");
  }
  auto* h = reinterpret_cast<Header*>(bytes.data());
  // The layout comes from one private copy of the header, checked whole: the client can write its header at any
  // moment, and fields read twice (once to check, once to use) could disagree and point outside the mapping.
  Header layout_fields{};
  std::memcpy(&layout_fields, h, sizeof(Header));
  if (const std::string problem = format::header_problem(layout_fields, bytes.size()); !problem.empty()) {
    const std::uint32_t version = layout_fields.version;
    const bool unsupported = layout_fields.magic == format::kMagic &&
                             (version < format::kOldestVersion || version > format::kVersion);
    return make_error(unsupported ? ErrorCode::unsupported : ErrorCode::invalid_argument, "{}", problem);
  }
  const std::uint32_t labels = layout_fields.label_capacity;
  const std::uint32_t slots = layout_fields.slot_count;
  const std::uint32_t records = layout_fields.lane_records;
  const format::Layout layout = format::compute_layout(labels, slots, records, layout_fields.version);
  SegmentReader reader(bytes, layout);
  reader.header_ = h;
  reader.label_capacity_ = labels;
  reader.slot_count_ = slots;
  reader.lane_mask_ = records - 1;
  reader.slot_committed_ = (layout_fields.agent_features & format::kFeatureSlotCommitted) != 0;
  reader.tails_.resize(slots);
  // Only the slots ever taken can have a tail to resume from; the others start at 0 as made. Reading those alone
  // keeps an attached but idle segment from costing the agent a page per slot.
  const std::uint32_t used = std::min(load_acquire(h->slots_used), slots);
  for (std::uint32_t s = 0; s < used; ++s) {
    auto* slot = reader.at<format::SlotHeader>(layout.slot_header(s));
    const std::uint64_t head = load_acquire(slot->head);
    const std::uint64_t tail = load_relaxed(slot->tail);
    if (tail > head || head - tail > records) {
      return make_error(ErrorCode::invalid_argument, "lane {}: tail {} and head {} are inconsistent (capacity {})", s,
                        tail, head, records);
    }
    reader.tails_[s] = tail;  // resume where the previous agent instance stopped
  }
  return reader;
}

std::string SegmentReader::workload_name() const {
  char name[sizeof header_->workload_name];
  for (std::size_t i = 0; i < sizeof name; ++i) name[i] = load_relaxed(header_->workload_name[i]);
  return printable_ascii(std::string_view(name, sizeof name));
}

Result<void> SegmentReader::read_labels() {
  const std::uint32_t count = load_acquire(header_->label_count);
  if (count > label_capacity_) {
    return make_error(ErrorCode::invalid_argument, "label count {} exceeds capacity {}", count, label_capacity_);
  }
  auto* entries = at<format::LabelEntry>(layout_.labels_offset);
  while (labels_.size() < count) {
    const auto handle = static_cast<std::uint32_t>(labels_.size());
    format::LabelEntry& e = entries[handle];
    if (load_acquire(e.committed) != 1) break;  // being written: next tick
    const std::uint32_t length = load_relaxed(e.length);
    if (length > format::kLabelTextBytes) {
      return make_error(ErrorCode::invalid_argument, "label set {}: length {} exceeds {}", handle, length,
                        format::kLabelTextBytes);
    }
    std::string text(length, '\0');
    for (std::uint32_t i = 0; i < length; ++i) text[i] = load_relaxed(e.text[i]);
    auto parsed = parse_label_text(text);
    if (!parsed) return make_error(ErrorCode::invalid_argument, "label set {}: {}", handle, parsed.error().message);
    labels_.push_back(std::move(*parsed));
    counters_.emplace_back();
    committed_.push_back(0);
    gauges_.emplace_back();
  }
  const std::uint32_t names = load_acquire(header_->user_counter_count);
  if (names > format::kCounterCount - format::kBuiltinCounters) {
    return make_error(ErrorCode::invalid_argument, "user counter count {} exceeds {}", names,
                      format::kCounterCount - format::kBuiltinCounters);
  }
  const char* table = at<const char>(layout_.names_offset);
  while (counter_names_.size() < names) {
    const char* entry = table + counter_names_.size() * format::kCounterNameBytes;
    std::string name;
    for (std::uint32_t i = 0; i < format::kCounterNameBytes; ++i) {
      const char c = load_relaxed(entry[i]);
      if (c == '\0') break;
      const bool ok = format::counter_name_char(c);
      if (!ok || i + 1 == format::kCounterNameBytes) {
        return make_error(ErrorCode::invalid_argument, "user counter {}: malformed name", counter_names_.size());
      }
      name += c;
    }
    if (name.empty()) return make_error(ErrorCode::invalid_argument, "user counter {}: empty name", counter_names_.size());
    counter_names_.push_back(std::move(name));
  }
  return {};
}

Result<void> SegmentReader::read_counters() {
  changed_.clear();
  const std::uint32_t used = load_acquire(header_->slots_used);
  if (used > slot_count_) {
    return make_error(ErrorCode::invalid_argument, "slots used {} exceeds slot count {}", used, slot_count_);
  }
  const auto* overflow = at<const std::uint64_t>(layout_.overflow_offset);
  const auto* gauges = at<const std::uint64_t>(layout_.gauges_offset);
  // A thread takes the overflow shard only when every slot is owned: until then it holds nothing to read.
  const bool overflow_used = used == slot_count_;
  const auto* budgets = at<const format::BudgetEntry>(layout_.budgets_offset);
  constexpr std::uint32_t kCommitted = format::kCommittedCounter;
  for (std::uint32_t handle = 1; handle < labels_.size(); ++handle) {
    // What was committed, each part before the counters it covers (acquire, paired with the client's release after
    // its add): see committed(). The client may write anything here: the sum saturates, and the caller bounds it.
    std::uint64_t committed = load_acquire(budgets[handle].committed);
    CounterArray& sum = scratch_;
    const auto* shard = overflow + std::size_t{handle} * format::kCounterCount;
    if (overflow_used && slot_committed_) committed = saturating_add(committed, load_acquire(shard[kCommitted]));
    for (std::uint32_t k = 0; k < format::kCounterCount; ++k) sum[k] = overflow_used ? load_relaxed(shard[k]) : 0;
    for (std::uint32_t s = 0; s < used; ++s) {
      const auto* cells = at<const std::uint64_t>(layout_.slot_counters(s)) + std::size_t{handle} * format::kCounterCount;
      if (slot_committed_) committed = saturating_add(committed, load_acquire(cells[kCommitted]));
      for (std::uint32_t k = 0; k < format::kCounterCount; ++k) sum[k] += load_relaxed(cells[k]);
    }
    committed_[handle] = committed;
    sum[kCommitted] = 0;  // reserved: bookkeeping (above) or nothing, never usage
    for (std::uint32_t k = 0; k < format::kCounterCount; ++k) {
      if (sum[k] < counters_[handle][k]) {
        return make_error(ErrorCode::invalid_argument, "label set {}: counter {} went backwards from {} to {}", handle,
                          counter_label(k), counters_[handle][k], sum[k]);
      }
    }
    GaugeArray levels;
    for (std::uint32_t g = 0; g < format::kGaugeCount; ++g) {
      levels[g] = load_relaxed(gauges[std::size_t{handle} * format::kGaugeCount + g]);
    }
    if (sum != counters_[handle] || levels != gauges_[handle]) {
      counters_[handle] = sum;
      gauges_[handle] = levels;
      changed_.push_back(handle);
    }
  }
  return {};
}

Result<void> SegmentReader::drain_lanes(std::vector<RequestEvent>& events, std::uint64_t budget) {
  const std::uint32_t used = load_acquire(header_->slots_used);  // checked in read_counters
  auto known = static_cast<std::uint32_t>(labels_.size());
  std::uint64_t dropped = std::atomic_ref<std::uint64_t>(header_->overflow_dropped).load(std::memory_order_relaxed);
  backlog_ = false;
  const std::uint32_t first = next_lane_ < used ? next_lane_ : 0;
  for (std::uint32_t n = 0; n < used; ++n) {
    const std::uint32_t s = first + n < used ? first + n : first + n - used;
    auto* slot = at<format::SlotHeader>(layout_.slot_header(s));
    auto* records = at<const format::Record>(layout_.slot_records(s));
    dropped += load_relaxed(slot->dropped);
    const std::uint64_t published = load_acquire(slot->head);
    const std::uint64_t tail = tails_[s];
    if (published < tail) {
      return make_error(ErrorCode::invalid_argument, "lane {}: head went backwards from {} to {}", s, tail, published);
    }
    if (published - tail > std::uint64_t{lane_mask_} + 1) {
      return make_error(ErrorCode::invalid_argument, "lane {}: head {} overran tail {} (capacity {})", s, published,
                        tail, lane_mask_ + 1);
    }
    // Past the budget, this lane keeps the rest, and the next drain starts with it.
    const std::uint64_t head = tail + std::min(published - tail, budget);
    budget -= head - tail;
    if (head != published && !backlog_) {
      backlog_ = true;
      next_lane_ = s;
    }
    for (std::uint64_t i = tail; i < head; ++i) {
      const format::Record& r = records[i & lane_mask_];
      const std::uint32_t commit = load_acquire(r.commit);
      RequestEvent e{load_relaxed(r.labels),     load_relaxed(r.status),      load_relaxed(r.tool_calls),
                     load_relaxed(r.tokens_in),  load_relaxed(r.tokens_out),  load_relaxed(r.ttft_ns),
                     load_relaxed(r.duration_ns), load_relaxed(r.gpu_time_ns)};
      // A writer stores the record, commit word included, then the head (release); it only rewrites this record
      // after our tail passed it. So after the acquire load of the head the fields are whole; the commit checks
      // before and after catch a hostile writer scribbling meanwhile (its data is then skipped).
      const std::uint32_t again = load_acquire(r.commit);
      if (commit != static_cast<std::uint32_t>(i + 1) || again != commit) {
        ++torn_;  // never published completely: skipped, never read as valid
        continue;
      }
      if (e.labels >= known && e.labels < label_capacity_) {
        TALLY_TRY(read_labels());  // interned after we looked: legitimate
        known = static_cast<std::uint32_t>(labels_.size());
      }
      if (e.labels == 0 || e.labels >= known) {
        return make_error(ErrorCode::invalid_argument, "lane {} record {}: label set {} out of range [1, {})", s, i,
                          e.labels, known);
      }
      events.push_back(e);
    }
    if (head == tail) continue;  // nothing new: the writer's line is left alone
    tails_[s] = head;
    store_release(slot->tail, head);
  }
  if (dropped < dropped_) {
    return make_error(ErrorCode::invalid_argument, "dropped count went backwards from {} to {}", dropped_, dropped);
  }
  dropped_ = dropped;
  return {};
}

Result<void> SegmentReader::drain(std::vector<RequestEvent>& events) {
  TALLY_TRY(read_totals());
  return drain_events(events);
}

Result<void> SegmentReader::read_totals() {
  TALLY_TRY(read_labels());
  return read_counters();
}

format::BudgetEntry SegmentReader::budget_entry(std::uint32_t handle) const {
  if (handle == 0 || handle >= label_capacity_) return {};  // handle 0 is no label set: the client never uses it
  const auto& entry = at<const format::BudgetEntry>(layout_.budgets_offset)[handle];
  std::uint64_t committed = load_acquire(entry.committed);
  if (slot_committed_) {
    // As read_counters() sums it (a hostile slots_used is only bounded here: read_counters() reports it).
    const std::uint32_t used = std::min(load_acquire(header_->slots_used), slot_count_);
    const std::size_t cell = std::size_t{handle} * format::kCounterCount + format::kCommittedCounter;
    if (used == slot_count_) {
      committed = saturating_add(committed, load_acquire(at<const std::uint64_t>(layout_.overflow_offset)[cell]));
    }
    for (std::uint32_t s = 0; s < used; ++s) {
      committed = saturating_add(committed, load_acquire(at<const std::uint64_t>(layout_.slot_counters(s))[cell]));
    }
  }
  return {load_relaxed(entry.claimed), committed};
}

SegmentReader::LaneHeads SegmentReader::lane_heads() const {
  return {&header_->slots_used, bytes_.data() + layout_.slot_header(0) + offsetof(format::SlotHeader, head),
          layout_.slot_header_stride, slot_count_};
}

Result<void> SegmentReader::drain_events(std::vector<RequestEvent>& events, std::uint64_t budget) {
  return drain_lanes(events, budget);
}

}  // namespace tally::shm
