#include "agent/feed/usage_report.hpp"

#include <cstring>

#include "agent/base/protobuf_wire.hpp"
#include "agent/ledger/value_wire.hpp"
#include "tally/v1/usage.pb.h"

namespace tally::agent {
namespace {

using ledger::LabelSet;
using ledger::Workload;

// Field numbers of proto/tally/v1/feed.proto and usage.proto.
namespace field {
constexpr std::uint32_t kReportStart = 1, kReportEnd = 2, kReportFinal = 3, kReportWorkloads = 4,
                        kReportSnapshot = 5;
constexpr std::uint32_t kWorkloadId = 1, kWorkloadKind = 2, kCgroupPath = 3, kAttributes = 4, kNames = 5, kPids = 6,
                        kExited = 7, kExitedUnixNs = 8, kLabelSets = 11, kQuarantined = 12, kLiveSegments = 13,
                        kWorkloadTotals = 21, kWorkloadGauges = 22;
constexpr std::uint32_t kLabels = 1, kGauges = 4, kRefused = 5, kTtft = 6, kDuration = 7, kTokens = 8, kGpuTime = 9,
                        kTop1Tokens = 10, kTop1GpuTime = 11, kLabelSetTotals = 12;
constexpr std::uint32_t kMapKey = 1, kMapValue = 2;  // map entries, Label
constexpr std::uint32_t kQuarantineSegment = 1, kQuarantineReason = 2, kQuarantinePid = 3, kQuarantineUnixNs = 4;
constexpr std::uint32_t kTotalName = 1, kTotalTotal = 2, kTotalDelta = 3, kTotalKind = 4, kTotalSource = 5;
constexpr std::uint32_t kTailHistogram = 1, kTailP50 = 2, kTailP95 = 3, kTailP99 = 4, kTailMax = 5;
constexpr std::uint32_t kHistScale = 1, kHistCount = 2, kHistSum = 3, kHistZero = 4, kHistOffset = 5,
                        kHistBuckets = 6, kHistMin = 7, kHistMax = 8;
}  // namespace field

// A Label or a map<string, string> entry.
void put_pair(std::string& out, std::uint32_t field_number, std::string_view key, std::string_view value) {
  const auto string_size = [](std::uint32_t f, std::string_view v) {
    return v.empty() ? 0 : wire::message_header_size(f, v.size()) + v.size();
  };
  wire::put_message_header(out, field_number, string_size(field::kMapKey, key) + string_size(field::kMapValue, value));
  wire::put_string(out, field::kMapKey, key);
  wire::put_string(out, field::kMapValue, value);
}

void put_tail(std::string& out, std::uint32_t field_number, const ExponentialHistogram& h) {
  std::string histogram;
  wire::put_sint(histogram, field::kHistScale, ExponentialHistogram::kScale);
  wire::put_uint(histogram, field::kHistCount, h.count());
  wire::put_uint(histogram, field::kHistSum, h.sum());
  wire::put_uint(histogram, field::kHistZero, h.zero_count());
  wire::put_sint(histogram, field::kHistOffset, h.offset());
  if (!h.counts().empty()) {
    std::string packed;
    for (std::uint64_t c : h.counts()) wire::put_varint(packed, c);
    wire::put_message(histogram, field::kHistBuckets, packed);
  }
  wire::put_uint(histogram, field::kHistMin, h.min());
  wire::put_uint(histogram, field::kHistMax, h.max());
  std::string tail;
  wire::put_message(tail, field::kTailHistogram, histogram);
  wire::put_double(tail, field::kTailP50, h.quantile(0.50));
  wire::put_double(tail, field::kTailP95, h.quantile(0.95));
  wire::put_double(tail, field::kTailP99, h.quantile(0.99));
  wire::put_uint(tail, field::kTailMax, h.max());
  wire::put_message(out, field_number, tail);
}

// The label set's gauges as map<string, uint64> entries of `field_number`; a gauge at 0 is left out.
void put_gauges(const ledger::Ledger& ledger, const LabelSet& label_set, std::uint32_t field_number,
                std::string& out) {
  for (const ledger::Gauge& gauge : label_set.gauges) {
    if (gauge.value == 0) continue;
    const std::string& name = ledger.key(gauge.id).name;
    wire::put_message_header(out, field_number,
                             wire::message_header_size(field::kMapKey, name.size()) + name.size() + 1 +
                                 wire::varint_size(gauge.value));
    wire::put_string(out, field::kMapKey, name);
    wire::put_uint(out, field::kMapValue, gauge.value);
  }
}

}  // namespace

const std::string& UsageReportEncoder::counter_prefix(const ledger::Ledger& ledger, ledger::CounterId counter) {
  if (counter >= prefixes_.size()) prefixes_.resize(counter + 1);
  std::string& prefix = prefixes_[counter];
  if (prefix.empty()) {
    const ledger::CounterKey& key = ledger.key(counter);
    wire::put_string(prefix, field::kTotalName, key.name);
    wire::put_uint(prefix, field::kTotalKind, static_cast<std::uint64_t>(ledger::to_wire(key.kind)));
    wire::put_uint(prefix, field::kTotalSource, static_cast<std::uint64_t>(ledger::to_wire(key.source)));
  }
  return prefix;
}

UsageReportEncoder::LabelSetCache& UsageReportEncoder::cache_of(const LabelSet& label_set) {
  if (label_set.slot >= label_sets_.size()) label_sets_.resize(label_set.slot + 1);
  LabelSetCache& cache = label_sets_[label_set.slot];
  if (cache.serial != label_set.serial) {  // a new label set in a reused slot
    cache = LabelSetCache{};
    cache.serial = label_set.serial;
    for (const auto& [key, value] : label_set.labels) put_pair(cache.head, field::kLabels, key, value);
  }
  return cache;
}

void UsageReportEncoder::write_label_set(const ledger::Ledger& ledger, const LabelSet& label_set,
                                         LabelSetCache& cache, std::string& out) {
  // The workload as a whole: its counters are WorkloadUsage.totals entries. A label set: one LabelSetUsage.
  const bool whole_workload = label_set.text.empty();
  std::size_t begun = 0;
  if (!whole_workload) {
    begun = wire::begin_message(out, field::kLabelSets);
    out += cache.head;
    put_gauges(ledger, label_set, field::kGauges, out);
    wire::put_bool(out, field::kRefused, label_set.refused);
    if (label_set.tails && label_set.tails->tokens.count() > 0) {
      // Tails change only with requests: re-encoded when more came (quantiles walk the buckets).
      const ledger::RequestTails& tails = *label_set.tails;
      if (cache.tails_count != tails.tokens.count()) {
        cache.tails.clear();
        put_tail(cache.tails, field::kTtft, tails.ttft_ns);
        put_tail(cache.tails, field::kDuration, tails.duration_ns);
        put_tail(cache.tails, field::kTokens, tails.tokens);
        put_tail(cache.tails, field::kGpuTime, tails.gpu_time_ns);
        wire::put_double(cache.tails, field::kTop1Tokens, tails.tokens.top_share(0.01));
        wire::put_double(cache.tails, field::kTop1GpuTime, tails.gpu_time_ns.top_share(0.01));
        cache.tails_count = tails.tokens.count();
      }
      out += cache.tails;
    }
  }
  if (whole_workload) put_gauges(ledger, label_set, field::kWorkloadGauges, out);
  // One CounterTotal per counter: tag, length, the fixed prefix, total, delta. Written in place: room for the largest
  // each can be is made once, the rest given back after.
  const std::uint32_t totals_field = whole_workload ? field::kWorkloadTotals : field::kLabelSetTotals;
  const std::uint64_t tag = (std::uint64_t{totals_field} << 3) | static_cast<std::uint32_t>(wire::WireType::length_delimited);
  std::size_t room = 0;
  for (const ledger::Counter& counter : label_set.counters) room += counter_prefix(ledger, counter.id).size() + 32;
  const std::size_t start = out.size();
  out.resize(start + room);
  char* at = out.data() + start;
  for (const ledger::Counter& counter : label_set.counters) {
    const std::string& prefix = prefixes_[counter.id];
    const std::uint64_t delta = counter.delta();
    const std::size_t size = prefix.size() + (counter.total ? 1 + wire::varint_size(counter.total) : 0) +
                             (delta ? 1 + wire::varint_size(delta) : 0);
    at = wire::write_varint(at, tag);
    at = wire::write_varint(at, size);
    std::memcpy(at, prefix.data(), prefix.size());
    at += prefix.size();
    if (counter.total != 0) {
      *at++ = static_cast<char>(field::kTotalTotal << 3);
      at = wire::write_varint(at, counter.total);
    }
    if (delta != 0) {
      *at++ = static_cast<char>(field::kTotalDelta << 3);
      at = wire::write_varint(at, delta);
    }
  }
  out.resize(static_cast<std::size_t>(at - out.data()));
  if (!whole_workload) wire::end_message(out, begun);
}

void UsageReportEncoder::append_label_set(const ledger::Ledger& ledger, const LabelSet& label_set) {
  LabelSetCache& cache = cache_of(label_set);
  if (label_set.changed) {
    // Its deltas are this report's alone: written straight into it, nothing kept.
    cache.stable_valid = false;
    write_label_set(ledger, label_set, cache, report_);
    return;
  }
  // Unchanged since the last report (a snapshot): every delta is 0, and the bytes stay right until it changes.
  if (!cache.stable_valid || cache.version != label_set.version) {
    cache.stable.clear();
    write_label_set(ledger, label_set, cache, cache.stable);
    cache.version = label_set.version;
    cache.stable_valid = true;
  }
  report_ += cache.stable;
}

const std::string& UsageReportEncoder::workload_header(const Workload& workload) {
  if (workload.slot >= workloads_.size()) workloads_.resize(workload.slot + 1);
  WorkloadCache& cached = workloads_[workload.slot];
  if (cached.valid && cached.serial == workload.serial && cached.version == workload.version) return cached.header;
  std::string& out = cached.header;
  out.clear();
  const WorkloadIdentity& identity = workload.identity;
  wire::put_string(out, field::kWorkloadId, identity.id);
  wire::put_string(out, field::kWorkloadKind, to_string(identity.kind));
  wire::put_string(out, field::kCgroupPath, identity.cgroup_path);
  for (const auto& [key, value] : identity.attributes) put_pair(out, field::kAttributes, key, value);
  for (const auto& name : workload.names) wire::put_string(out, field::kNames, name);
  if (!workload.pids.empty()) {
    std::string packed;
    for (const auto& [pid, segments] : workload.pids) wire::put_varint(packed, static_cast<std::uint32_t>(pid));
    wire::put_message(out, field::kPids, packed);
  }
  wire::put_bool(out, field::kExited, workload.exited());
  wire::put_uint(out, field::kExitedUnixNs, workload.exited() ? workload.exited_unix_ns : 0);
  for (const ledger::Quarantine& q : workload.quarantined) {
    std::string entry;
    wire::put_string(entry, field::kQuarantineSegment, q.what);
    wire::put_string(entry, field::kQuarantineReason, q.reason);
    wire::put_uint(entry, field::kQuarantinePid, static_cast<std::uint32_t>(q.pid));
    wire::put_uint(entry, field::kQuarantineUnixNs, q.unix_ns);
    wire::put_message(out, field::kQuarantined, entry);
  }
  wire::put_uint(out, field::kLiveSegments, workload.live[static_cast<std::size_t>(ledger::Source::client)]);
  cached.serial = workload.serial;
  cached.version = workload.version;
  cached.valid = true;
  return out;
}

void UsageReportEncoder::append_workload(const ledger::Ledger& ledger, const Workload& workload, bool snapshot) {
  if (snapshot && !workload.changed) {
    if (workload.slot >= workloads_.size()) workloads_.resize(workload.slot + 1);
    WorkloadCache& cache = workloads_[workload.slot];
    if (cache.whole_valid && cache.serial == workload.serial && cache.content_version == workload.content_version) {
      report_ += cache.whole;
      return;
    }
    const std::size_t from = report_.size();
    append_whole(ledger, workload);
    WorkloadCache& made = workloads_[workload.slot];
    made.whole.assign(report_, from);
    made.content_version = workload.content_version;
    made.whole_valid = true;
    return;
  }
  if (workload.slot < workloads_.size()) workloads_[workload.slot].whole_valid = false;
  if (snapshot) {
    append_whole(ledger, workload);
    return;
  }
  const std::size_t begun = wire::begin_message(report_, field::kReportWorkloads);
  report_ += workload_header(workload);
  // The workload's own gauges come with every entry of it, so a reader replaces them whole: an unchanged whole
  // label set writes only those.
  if (const auto whole = workload.label_sets.find(""); whole != workload.label_sets.end() && !whole->second->changed) {
    put_gauges(ledger, *whole->second, field::kWorkloadGauges, report_);
  }
  // Memory-bound: each label set and its counters live apart on the heap. Fetching a few ahead hides the misses.
  const auto& changed = workload.changed_label_sets;
  for (std::size_t i = 0; i < changed.size(); ++i) {
    if (i + 4 < changed.size()) __builtin_prefetch(changed[i + 4]);
    if (i + 2 < changed.size()) __builtin_prefetch(changed[i + 2]->counters.data());
    append_label_set(ledger, *changed[i]);
  }
  wire::end_message(report_, begun);
}

void UsageReportEncoder::append_whole(const ledger::Ledger& ledger, const Workload& workload) {
  const std::size_t begun = wire::begin_message(report_, field::kReportWorkloads);
  report_ += workload_header(workload);
  for (const auto& [text, label_set] : workload.label_sets) append_label_set(ledger, *label_set);
  wire::end_message(report_, begun);
}

const std::string& UsageReportEncoder::encode(const ledger::Ledger& ledger, const Report& report) {
  const bool snapshot = report.snapshot || report.final;
  report_.clear();
  wire::put_uint(report_, field::kReportStart, report.interval_start_unix_ns);
  wire::put_uint(report_, field::kReportEnd, report.interval_end_unix_ns);
  wire::put_bool(report_, field::kReportFinal, report.final);
  wire::put_bool(report_, field::kReportSnapshot, snapshot);
  if (snapshot) {
    for (const auto& [id, workload] : ledger.workloads()) append_workload(ledger, *workload, true);
  } else {
    for (const Workload* workload : ledger.changed_workloads()) append_workload(ledger, *workload, false);
  }
  // Slots above the ledger's bound belonged to nothing live any more.
  if (label_sets_.size() > ledger.label_set_slots()) label_sets_.resize(ledger.label_set_slots());
  if (workloads_.size() > ledger.workload_slots()) workloads_.resize(ledger.workload_slots());
  return report_;
}

std::size_t UsageReportEncoder::cached_bytes() const {
  std::size_t bytes = 0;
  for (const auto& c : label_sets_) bytes += c.head.size() + c.tails.size() + c.stable.size();
  for (const auto& c : workloads_) bytes += c.header.size() + c.whole.size();
  return bytes;
}

}  // namespace tally::agent
