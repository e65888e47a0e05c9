#pragma once
// The ledger as a tally.v1.UsageReport: every workload and label set that changed since the last report, or all of
// them for a snapshot, each counter with its cumulative total, its delta, its kind and its source.
//
// Encoded by hand (agent/base/protobuf_wire.hpp), not through protobuf's message classes, so that a report costs what
// changed: each label set's bytes are kept between reports and an unchanged one is copied, not rebuilt. A node with
// 1,000 workloads x 16 label sets reports in a few milliseconds (bench/report_bench.cpp). Whatever reads the feed
// parses these bytes with protobuf, as it parses every other message.

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/ledger/ledger.hpp"

namespace tally::agent {

class UsageReportEncoder {
 public:
  struct Report {
    std::uint64_t interval_start_unix_ns = 0;
    std::uint64_t interval_end_unix_ns = 0;
    bool snapshot = false;  // every workload, not only the changed ones
    bool final = false;     // the agent's last report (a snapshot)
  };

  // The bytes of the UsageReport for the ledger as it is now. After publishing them, the caller marks the ledger
  // reported (Ledger::mark_reported), so the next deltas start from these totals.
  const std::string& encode(const ledger::Ledger& ledger, const Report& report);

  // Bytes kept between reports (bounded by the live label sets: slots are reused).
  std::size_t cached_bytes() const;

 private:
  // What the encoder keeps per label set between reports, indexed by LabelSet::slot.
  struct LabelSetCache {
    std::uint64_t serial = 0;   // whose: a slot is reused after its label set expired
    std::string head;           // its labels: fixed for its lifetime
    std::uint64_t tails_count = UINT64_MAX;  // requests the cached tails bytes cover
    std::string tails;
    std::uint64_t version = 0;  // of `stable`
    bool stable_valid = false;
    std::string stable;         // the whole entry with every delta 0: valid while the version holds
  };
  struct WorkloadCache {
    std::uint64_t serial = 0;
    std::uint64_t version = 0;
    bool valid = false;
    std::string header;
    // The whole WorkloadUsage as a snapshot carries it, valid while nothing of the workload changes: a quiet
    // workload costs a snapshot one copy.
    std::uint64_t content_version = 0;
    bool whole_valid = false;
    std::string whole;
  };
  LabelSetCache& cache_of(const ledger::LabelSet& label_set);
  const std::string& workload_header(const ledger::Workload& workload);
  const std::string& counter_prefix(const ledger::Ledger& ledger, ledger::CounterId counter);
  // Appends one label set (LabelSetUsage, or the workload's own totals for the label set "") to `out`.
  void write_label_set(const ledger::Ledger& ledger, const ledger::LabelSet& label_set, LabelSetCache& cache,
                       std::string& out);
  void append_label_set(const ledger::Ledger& ledger, const ledger::LabelSet& label_set);
  void append_workload(const ledger::Ledger& ledger, const ledger::Workload& workload, bool snapshot);
  void append_whole(const ledger::Ledger& ledger, const ledger::Workload& workload);  // every label set

  std::vector<LabelSetCache> label_sets_;
  std::vector<WorkloadCache> workloads_;
  std::vector<std::string> prefixes_;  // by counter id: the CounterTotal fields that never change
  std::string report_;
};

}  // namespace tally::agent
