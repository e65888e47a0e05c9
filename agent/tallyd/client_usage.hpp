#pragma once
// Wiring: what the shared-memory metering source reads from client segments, written into the ledger. One segment
// is one contributor ("shm:<segment file>") of the workload the kernel says its producer belongs to.

#include <array>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/ledger/ledger.hpp"
#include "shm/segments/metering.hpp"

namespace tally::agent {

class ClientUsage final : public shm::MeteringSource::Listener {
 public:
  explicit ClientUsage(ledger::Ledger& ledger);

  static std::string contributor_key(const std::string& segment_name) { return "shm:" + segment_name; }

  void on_attached(const shm::Segment& segment) override;
  void on_drained(const shm::Segment& segment, std::span<const shm::RequestEvent> events) override;
  void on_retired(const shm::Segment& segment, const std::string& quarantine_reason) override;

  // The ledger's label set of each of a segment's handles (index 0 and handles not read yet: null).
  std::span<ledger::LabelSet* const> label_sets(const shm::Segment& segment) const {
    auto it = bindings_.find(&segment);
    if (it == bindings_.end()) return {};
    return it->second.label_sets;
  }

 private:
  static constexpr std::size_t kValues = shm::format::kCounterCount + shm::format::kGaugeCount;
  static constexpr std::uint32_t kNoCell = UINT32_MAX;
  struct Binding {
    ledger::Contributor* contributor = nullptr;
    std::vector<ledger::LabelSet*> label_sets{nullptr};             // by handle
    std::vector<std::array<std::uint32_t, kValues>> cells{{}};      // by handle: counters, then gauges
    std::uint32_t dropped = kNoCell;
  };
  ledger::CounterId counter_of(const shm::SegmentReader& reader, std::uint32_t index);

  ledger::Ledger& ledger_;
  std::array<ledger::CounterId, shm::format::kBuiltinCounters> builtin_{};
  std::array<ledger::CounterId, shm::format::kGaugeCount> gauges_{};
  ledger::CounterId events_dropped_;
  std::unordered_map<const shm::Segment*, Binding> bindings_;
};

}  // namespace tally::agent
