#include "agent/tallyd/client_usage.hpp"

#include <fmt/format.h>

#include "agent/base/clock.hpp"
#include "shm/format/names.hpp"

namespace tally::agent {

using ledger::Kind;
using ledger::Source;

ClientUsage::ClientUsage(ledger::Ledger& ledger)
    : ledger_(ledger), events_dropped_(ledger.counter("events_dropped", Source::client)) {
  for (std::size_t k = 0; k < builtin_.size(); ++k) {
    builtin_[k] = ledger.counter(shm::format::kBuiltinCounterNames[k], Source::client);
  }
  for (std::size_t g = 0; g < gauges_.size(); ++g) {
    gauges_[g] = ledger.counter(shm::format::kGaugeNames[g], Source::client, Kind::measured, /*gauge=*/true);
  }
}

ledger::CounterId ClientUsage::counter_of(const shm::SegmentReader& reader, std::uint32_t index) {
  if (index < shm::format::kBuiltinCounters) return builtin_[index];
  const std::uint32_t user = index - shm::format::kBuiltinCounters;
  const auto& names = reader.counter_names();
  return ledger_.counter(user < names.size() ? names[user] : fmt::format("user_{}", user), Source::client);
}

void ClientUsage::on_attached(const shm::Segment& segment) {
  const shm::Registration& r = segment.registration;
  ledger::Workload& workload = ledger_.workload(r.identity);
  if (!r.workload_name.empty()) ledger_.add_name(workload, r.workload_name);
  ledger_.add_pid(workload, r.producer.pid);
  Binding& binding = bindings_[&segment];
  binding.contributor = &ledger_.contributor(contributor_key(segment.name), workload, Source::client);
  binding.cells[0].fill(kNoCell);
}

void ClientUsage::on_drained(const shm::Segment& segment, std::span<const shm::RequestEvent> events) {
  Binding& b = bindings_.at(&segment);
  ledger::Contributor& contributor = *b.contributor;
  ledger::Workload& workload = contributor.workload();
  const shm::SegmentReader& reader = *segment.reader;
  while (b.label_sets.size() < segment.label_sets.size()) {
    const std::size_t handle = b.label_sets.size();
    ledger::LabelSet& label_set = ledger_.label_set(workload, segment.label_sets[handle].text);
    ledger_.set_refused(label_set, segment.refused[handle]);
    b.label_sets.push_back(&label_set);
    b.cells.emplace_back().fill(kNoCell);
  }
  for (std::uint32_t handle : segment.changed) {
    if (handle >= b.label_sets.size()) continue;
    auto& cells = b.cells[handle];
    const shm::CounterArray& counters = reader.counters(handle);
    const shm::GaugeArray& gauges = reader.gauges(handle);
    for (std::uint32_t i = 0; i < kValues; ++i) {
      if (i == shm::format::kCommittedCounter) continue;  // allowance bookkeeping (the reader's committed()), not usage
      const bool gauge = i >= shm::format::kCounterCount;
      const std::uint64_t value = gauge ? gauges[i - shm::format::kCounterCount] : counters[i];
      if (cells[i] == kNoCell) {
        if (value == 0) continue;  // a counter this label set never used is not shown
        cells[i] = ledger_.cell(contributor, *b.label_sets[handle],
                                gauge ? gauges_[i - shm::format::kCounterCount] : counter_of(reader, i));
      }
      ledger_.update(contributor, cells[i], value);
    }
  }
  for (const shm::RequestEvent& e : events) {
    if (e.labels >= b.label_sets.size()) continue;
    ledger_.record_request(*b.label_sets[e.labels], e.ttft_ns, e.duration_ns, e.tokens_in + e.tokens_out,
                           e.gpu_time_ns);
  }
  if (reader.dropped() != 0) {
    if (b.dropped == kNoCell) b.dropped = ledger_.cell(contributor, ledger_.label_set(workload, ""), events_dropped_);
    ledger_.update(contributor, b.dropped, reader.dropped());
  }
}

void ClientUsage::on_retired(const shm::Segment& segment, const std::string& quarantine_reason) {
  auto it = bindings_.find(&segment);
  if (it == bindings_.end()) return;
  ledger::Workload& workload = it->second.contributor->workload();
  if (!quarantine_reason.empty()) {
    ledger_.quarantine(workload, {segment.registration.segment_path.string(), quarantine_reason,
                                  segment.registration.producer.pid, unix_time_ns()});
  }
  ledger_.remove_pid(workload, segment.registration.producer.pid);
  ledger_.retire(*it->second.contributor);
  bindings_.erase(it);
}

}  // namespace tally::agent
