#pragma once
// A subscriber's picture of a node's usage, built from the usage reports it receives, as docs/protocol.md tells
// any subscriber to build it: per workload, label set and counter (name and source), the latest total. A report
// carries only what changed, so the picture keeps what it was told before; a snapshot carries everything, so a
// workload missing from one is gone. Missing reports cost nothing but freshness: the next report that carries a
// counter carries its total. tallyctl top draws from it.

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

#include "tally/v1/feed.pb.h"

namespace tally::agent {

struct CounterView {
  std::uint64_t total = 0;
  std::uint64_t delta = 0;       // its increase in the last report that carried it
  std::uint64_t reported = 0;    // that report's number in this view (see UsageView::reports())
  v1::ValueKind kind = v1::VALUE_KIND_UNSPECIFIED;
};
// (name, source, kind) -> counter: a workload can have one name from two sources, or of two kinds (GPU energy
// apportioned on a whole GPU, estimated on a MIG slice).
using CounterViews = std::map<std::tuple<std::string, v1::ValueSource, v1::ValueKind>, CounterView>;

struct LabelSetView {
  v1::LabelSetUsage last;  // as last carried (its totals folded into `counters`)
  CounterViews counters;
};

struct WorkloadView {
  v1::WorkloadUsage last;  // identity, pids, names, liveness as last carried (label sets and totals folded below)
  CounterViews totals;     // the workload as a whole
  std::map<std::string, LabelSetView> label_sets;  // by label text ("k=v\nk=v")
};

class UsageView {
 public:
  // Folds one usage report in. A report of another agent instance of the same node is folded the same way: totals
  // are cumulative across restarts.
  void apply(const v1::UsageReport& report);

  const std::map<std::string, WorkloadView>& workloads() const { return workloads_; }
  // Reports applied so far; a counter whose `reported` equals it moved in the last one.
  std::uint64_t reports() const { return reports_; }
  // The last report's interval, in seconds.
  double interval_seconds() const { return interval_seconds_; }

 private:
  std::map<std::string, WorkloadView> workloads_;
  std::uint64_t reports_ = 0;
  double interval_seconds_ = 0;
};

// The label text of a label set as the feed carries it.
std::string label_text(const v1::LabelSetUsage& label_set);

}  // namespace tally::agent
