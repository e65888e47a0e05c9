#include "agent/feed/usage_report.hpp"

#include "agent/feed/wire.hpp"
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
                        kWorkloadTotals = 21;
constexpr std::uint32_t kLabels = 1, kGauges = 4, kRefused = 5, kTtft = 6, kDuration = 7, kTokens = 8, kGpuTime = 9,
                        kTop1Tokens = 10, kTop1GpuTime = 11, kLabelSetTotals = 12;
constexpr std::uint32_t kMapKey = 1, kMapValue = 2;  // map entries, Label
constexpr std::uint32_t kQuarantineSegment = 1, kQuarantineReason = 2, kQuarantinePid = 3, kQuarantineUnixNs = 4;
constexpr std::uint32_t kTotalName = 1, kTotalTotal = 2, kTotalDelta = 3, kTotalKind = 4, kTotalSource = 5;
constexpr std::uint32_t kTailHistogram = 1, kTailP50 = 2, kTailP95 = 3, kTailP99 = 4, kTailMax = 5;
constexpr std::uint32_t kHistScale = 1, kHistCount = 2, kHistSum = 3, kHistZero = 4, kHistOffset = 5,
                        kHistBuckets = 6, kHistMin = 7, kHistMax = 8;
}  // namespace field

v1::ValueSource wire_source(ledger::Source source) {
  switch (source) {
    case ledger::Source::client: return v1::VALUE_SOURCE_CLIENT;
    case ledger::Source::kernel_probes: return v1::VALUE_SOURCE_KERNEL_PROBES;
    case ledger::Source::proc_sampling: return v1::VALUE_SOURCE_PROC_SAMPLING;
    case ledger::Source::nvml: return v1::VALUE_SOURCE_NVML;
  }
  return v1::VALUE_SOURCE_UNSPECIFIED;
}

v1::ValueKind wire_kind(ledger::Kind kind) {
  switch (kind) {
    case ledger::Kind::measured: return v1::VALUE_KIND_MEASURED;
    case ledger::Kind::apportioned: return v1::VALUE_KIND_APPORTIONED;
    case ledger::Kind::estimated: return v1::VALUE_KIND_ESTIMATED;
  }
  return v1::VALUE_KIND_UNSPECIFIED;
}

void put_pair(std::string& out, std::uint32_t field_number, std::string_view key, std::string_view value) {
  std::string entry;
  wire::put_string(entry, field::kMapKey, key);
  wire::put_string(entry, field::kMapValue, value);
  wire::put_message(out, field_number, entry);
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

}  // namespace

const std::string& UsageReportEncoder::counter_prefix(const ledger::Ledger& ledger, ledger::CounterId counter) {
  if (counter >= prefixes_.size()) prefixes_.resize(counter + 1);
  std::string& prefix = prefixes_[counter];
  if (prefix.empty()) {
    const ledger::CounterKey& key = ledger.key(counter);
    wire::put_string(prefix, field::kTotalName, key.name);
    wire::put_uint(prefix, field::kTotalKind, static_cast<std::uint64_t>(wire_kind(key.kind)));
    wire::put_uint(prefix, field::kTotalSource, static_cast<std::uint64_t>(wire_source(key.source)));
  }
  return prefix;
}

const std::string& UsageReportEncoder::label_set_bytes(const ledger::Ledger& ledger, const LabelSet& label_set) {
  Cached& cached = label_sets_[label_set.serial];
  // Unchanged since it was last encoded with no delta: those bytes are still exact.
  if (cached.stable && cached.version == label_set.version && !label_set.changed) return cached.bytes;
  cached.bytes.clear();
  cached.version = label_set.version;
  cached.stable = true;
  // The workload as a whole: its counters are WorkloadUsage.totals entries. A label set: one LabelSetUsage.
  const bool whole_workload = label_set.text.empty();
  std::string& out = whole_workload ? cached.bytes : scratch_;
  out.clear();
  if (!whole_workload) {
    for (const auto& [key, value] : label_set.labels) put_pair(out, field::kLabels, key, value);
    for (const ledger::Gauge& gauge : label_set.gauges) {
      if (gauge.value == 0) continue;
      std::string entry;
      wire::put_string(entry, field::kMapKey, ledger.key(gauge.id).name);
      wire::put_uint(entry, field::kMapValue, gauge.value);
      wire::put_message(out, field::kGauges, entry);
    }
    wire::put_bool(out, field::kRefused, label_set.refused);
    if (label_set.tails && label_set.tails->tokens.count() > 0) {
      const ledger::RequestTails& tails = *label_set.tails;
      put_tail(out, field::kTtft, tails.ttft_ns);
      put_tail(out, field::kDuration, tails.duration_ns);
      put_tail(out, field::kTokens, tails.tokens);
      put_tail(out, field::kGpuTime, tails.gpu_time_ns);
      wire::put_double(out, field::kTop1Tokens, tails.tokens.top_share(0.01));
      wire::put_double(out, field::kTop1GpuTime, tails.gpu_time_ns.top_share(0.01));
    }
  }
  const std::uint32_t totals_field = whole_workload ? field::kWorkloadTotals : field::kLabelSetTotals;
  for (const ledger::Counter& counter : label_set.counters) {
    const std::string& prefix = counter_prefix(ledger, counter.id);
    const std::uint64_t delta = counter.delta();
    const std::size_t size = prefix.size() + (counter.total ? 1 + wire::varint_size(counter.total) : 0) +
                             (delta ? 1 + wire::varint_size(delta) : 0);
    wire::put_message_header(out, totals_field, size);
    out += prefix;
    wire::put_uint(out, field::kTotalTotal, counter.total);
    wire::put_uint(out, field::kTotalDelta, delta);
    cached.stable = cached.stable && delta == 0;
  }
  if (!whole_workload) wire::put_message(cached.bytes, field::kLabelSets, scratch_);
  return cached.bytes;
}

const std::string& UsageReportEncoder::workload_header(const Workload& workload) {
  Cached& cached = workloads_[workload.serial];
  if (cached.stable && cached.version == workload.version) return cached.bytes;
  std::string& out = cached.bytes;
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
  cached.version = workload.version;
  cached.stable = true;
  return out;
}

void UsageReportEncoder::append_workload(const ledger::Ledger& ledger, const Workload& workload, bool snapshot) {
  pieces_.clear();
  pieces_.push_back(&workload_header(workload));
  if (snapshot) {
    workloads_[workload.serial].seen = snapshots_;
    for (const auto& [text, label_set] : workload.label_sets) {
      pieces_.push_back(&label_set_bytes(ledger, *label_set));
      label_sets_[label_set->serial].seen = snapshots_;
    }
  } else {
    for (const LabelSet* label_set : workload.changed_label_sets) pieces_.push_back(&label_set_bytes(ledger, *label_set));
  }
  std::size_t size = 0;
  for (const std::string* piece : pieces_) size += piece->size();
  wire::put_message_header(report_, field::kReportWorkloads, size);
  for (const std::string* piece : pieces_) report_ += *piece;
}

const std::string& UsageReportEncoder::encode(const ledger::Ledger& ledger, const Report& report) {
  const bool snapshot = report.snapshot || report.final;
  report_.clear();
  wire::put_uint(report_, field::kReportStart, report.interval_start_unix_ns);
  wire::put_uint(report_, field::kReportEnd, report.interval_end_unix_ns);
  wire::put_bool(report_, field::kReportFinal, report.final);
  wire::put_bool(report_, field::kReportSnapshot, snapshot);
  if (snapshot) {
    ++snapshots_;
    for (const auto& [id, workload] : ledger.workloads()) append_workload(ledger, *workload, true);
    // What no snapshot includes any more (expired) is forgotten here too.
    std::erase_if(label_sets_, [this](const auto& entry) { return entry.second.seen != snapshots_; });
    std::erase_if(workloads_, [this](const auto& entry) { return entry.second.seen != snapshots_; });
  } else {
    for (const Workload* workload : ledger.changed_workloads()) append_workload(ledger, *workload, false);
  }
  return report_;
}

}  // namespace tally::agent
