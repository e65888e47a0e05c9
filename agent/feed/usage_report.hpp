#pragma once
// The ledger as a tally.v1.UsageReport: every workload and label set that changed since the last report, or all of
// them for a snapshot, each counter with its cumulative total, its delta, its kind and its source.
//
// Encoded by hand (agent/feed/wire.hpp), not through protobuf's message classes, so that a report costs what
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

  // Label sets and workloads whose bytes are kept (pruned at every snapshot).
  std::size_t cached() const { return label_sets_.size() + workloads_.size(); }

 private:
  struct Cached {
    std::uint64_t version = 0;
    bool stable = false;    // encoded with every delta 0: valid for as long as the version holds
    std::uint64_t seen = 0;  // the last snapshot that included it
    std::string bytes;
  };
  const std::string& label_set_bytes(const ledger::Ledger& ledger, const ledger::LabelSet& label_set);
  const std::string& workload_header(const ledger::Workload& workload);
  const std::string& counter_prefix(const ledger::Ledger& ledger, ledger::CounterId counter);
  void append_workload(const ledger::Ledger& ledger, const ledger::Workload& workload, bool snapshot);

  std::unordered_map<std::uint64_t, Cached> label_sets_, workloads_;  // by serial
  std::vector<std::string> prefixes_;  // by counter id: the CounterTotal fields that never change
  std::vector<const std::string*> pieces_;
  std::string scratch_;
  std::string report_;
  std::uint64_t snapshots_ = 0;
};

}  // namespace tally::agent
