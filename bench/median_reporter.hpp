#pragma once
// The console report plus each benchmark's median, kept by name, for the summary a bench prints last: its ratios
// against the baseline measured in the same run. With repetitions the median aggregate is kept; without, the one
// run stands for it.

#include <benchmark/benchmark.h>

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace tally::bench {

struct Median {
  double real_ns = 0;  // per iteration
  double cpu_ns = 0;
  std::map<std::string, double> counters;
};

class MedianReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      const bool aggregate = run.run_type == Run::RT_Aggregate;
      if (aggregate ? run.aggregate_name != "median" : run.repetitions > 1) continue;
      const double to_ns = 1e9 / benchmark::GetTimeUnitMultiplier(run.time_unit);
      Median median{run.GetAdjustedRealTime() * to_ns, run.GetAdjustedCPUTime() * to_ns, {}};
      for (const auto& [name, counter] : run.counters) median.counters[name] = counter.value;
      medians_[run.run_name.str()] = std::move(median);
    }
  }

  // The first benchmark, in name order, whose name starts with `prefix` (names carry their arguments and options,
  // e.g. "BM_TallyAdd/real_time/threads:1"); nullptr when none ran.
  const Median* find(std::string_view prefix) const {
    for (const auto& [name, median] : medians_) {
      if (name.starts_with(prefix)) return &median;
    }
    return nullptr;
  }

  const std::map<std::string, Median>& medians() const { return medians_; }

 private:
  std::map<std::string, Median> medians_;
};

}  // namespace tally::bench
