// What a usage report costs the agent, on a node with 1,000 workloads x 16 label sets x 8 counters (target: under
// 5 ms per report), against a baseline measured in the same run: protobuf's own SerializeToString of the same report
// held in message objects (the cost of the encoding alone, without building them).
//
// Report/changed:N  N label sets of every workload changed since the last report (their counters grew): encode what
//                   changed, then mark the ledger reported. changed:16 is the worst case, every number moved.
// Report/snapshot   nothing changed, everything is sent (what a snapshot costs on a quiet node: cached bytes).
// Report/idle       nothing changed, a plain report: what an idle node pays per report.
// ProtobufSerialize the baseline.
// Checkpoint/workloads_changed:N  the checkpoint after a report, when every label set of N workloads changed since
//                   the last one; against CheckpointThroughProtobuf, protobuf's SerializeToString of the same state.
//
// The summary after the table prints each median with its ratio to the baseline (lower is better).

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "agent/checkpoint/checkpoint.hpp"
#include "agent/feed/usage_report.hpp"
#include "agent/ledger/ledger.hpp"
#include "bench/median_reporter.hpp"
#include "tally/v1/checkpoint.pb.h"
#include "tally/v1/feed.pb.h"

namespace {

using namespace tally;
using agent::UsageReportEncoder;
using ledger::Source;

constexpr int kWorkloads = 1000;
constexpr int kLabelSets = 16;
constexpr int kCounters = 8;

struct Node {
  ledger::Ledger ledger;
  std::vector<ledger::Contributor*> contributors;          // one per workload (its client segment)
  std::vector<std::vector<std::vector<ledger::CellRef>>> cells;  // [workload][label set][counter]
  std::vector<std::vector<ledger::LabelSet*>> label_sets;
  std::uint64_t tick = 0;

  Node() {
    std::vector<ledger::CounterId> counters;
    for (int k = 0; k < kCounters; ++k) counters.push_back(ledger.counter(fmt::format("counter_{}", k), Source::client));
    for (int w = 0; w < kWorkloads; ++w) {
      ledger::Workload& workload =
          ledger.workload(identify_cgroup(fmt::format("/kubepods.slice/kubepods-pod{:08x}-0000-0000-0000-000000000000.slice", w)));
      ledger.add_name(workload, "inference-server");
      contributors.push_back(&ledger.contributor(fmt::format("shm:{}", w), workload, Source::client));
      cells.emplace_back();
      label_sets.emplace_back();
      for (int l = 0; l < kLabelSets; ++l) {
        ledger::LabelSet& ls = ledger.label_set(
            workload, fmt::format("tenant=tenant-{}\nteam=team-{}\nmodel=model-{}\nuse_case=chat", w % 50, l, l % 4));
        label_sets.back().push_back(&ls);
        cells.back().emplace_back();
        for (ledger::CounterId c : counters) cells.back().back().push_back(ledger.cell(*contributors.back(), ls, c));
      }
    }
    grow(kLabelSets);
    ledger.mark_reported();
  }

  // Every label set of the first `n` workloads grows.
  void grow_workloads(int n) {
    ++tick;
    for (int w = 0; w < n; ++w) {
      for (int l = 0; l < kLabelSets; ++l) {
        for (int k = 0; k < kCounters; ++k) {
          ledger.update(*contributors[w], cells[w][l][k], tick * 1000 + static_cast<std::uint64_t>(k));
        }
      }
    }
  }

  // The first `n` label sets of every workload grow.
  void grow(int n) {
    ++tick;
    for (int w = 0; w < kWorkloads; ++w) {
      for (int l = 0; l < n; ++l) {
        for (int k = 0; k < kCounters; ++k) {
          ledger.update(*contributors[w], cells[w][l][k], tick * 1000 + static_cast<std::uint64_t>(k));
        }
      }
    }
  }
};

Node& node() {
  static Node n;
  return n;
}

void BM_Report(benchmark::State& state, int changed, bool snapshot) {
  Node& n = node();
  UsageReportEncoder encoder;
  encoder.encode(n.ledger, {0, 1, true, false});  // warm: every label set's bytes cached once
  std::size_t bytes = 0;
  for (auto _ : state) {
    state.PauseTiming();
    if (changed > 0) n.grow(changed);  // the sources' part, not the report's
    state.ResumeTiming();
    bytes = encoder.encode(n.ledger, {0, 1, snapshot, false}).size();
    n.ledger.mark_reported();
  }
  state.counters["report_bytes"] = static_cast<double>(bytes);
}
BENCHMARK_CAPTURE(BM_Report, changed_16, 16, false)->Unit(benchmark::kMillisecond);

// The checkpoint that follows a report: the ledger's whole durable state, encoded (written by another thread). Its
// cost follows what changed: a quiet node re-encodes little.
void BM_Checkpoint(benchmark::State& state, int changed_workloads) {
  Node& n = node();
  agent::CheckpointEncoder encoder;
  encoder.encode(n.ledger, 1);  // warm: every workload's bytes kept once
  std::size_t bytes = 0;
  for (auto _ : state) {
    state.PauseTiming();
    n.grow_workloads(changed_workloads);
    n.ledger.mark_reported();
    state.ResumeTiming();
    bytes = encoder.encode(n.ledger, 1).size();
  }
  state.counters["checkpoint_bytes"] = static_cast<double>(bytes);
}
BENCHMARK_CAPTURE(BM_Checkpoint, workloads_changed_10, 10)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Checkpoint, workloads_changed_1000, 1000)->Unit(benchmark::kMillisecond);

// The baseline for the checkpoint: protobuf's own encoding of the same state, built in its message classes.
void BM_CheckpointThroughProtobuf(benchmark::State& state) {
  Node& n = node();
  v1::LedgerCheckpoint checkpoint;
  checkpoint.ParseFromString(agent::save_checkpoint(n.ledger));
  std::string out;
  for (auto _ : state) {
    checkpoint.SerializeToString(&out);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(BM_CheckpointThroughProtobuf)->Unit(benchmark::kMillisecond);

// The encoding alone of a report where everything changed (no source work, no mark_reported).
void BM_EncodeChanged(benchmark::State& state) {
  Node& n = node();
  UsageReportEncoder encoder;
  n.grow(16);
  for (auto _ : state) benchmark::DoNotOptimize(encoder.encode(n.ledger, {0, 1, false, false}).data());
  n.ledger.mark_reported();
}
BENCHMARK(BM_EncodeChanged)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Report, changed_4, 4, false)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Report, snapshot, 0, true)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Report, idle, 0, false)->Unit(benchmark::kMillisecond);

void BM_ProtobufSerialize(benchmark::State& state) {
  Node& n = node();
  UsageReportEncoder encoder;
  v1::UsageReport report;
  report.ParseFromString(encoder.encode(n.ledger, {0, 1, true, false}));  // the same report, as message objects
  std::string out;
  for (auto _ : state) {
    report.SerializeToString(&out);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["report_bytes"] = static_cast<double>(out.size());
}
BENCHMARK(BM_ProtobufSerialize)->Unit(benchmark::kMillisecond);

// Prints each benchmark's median and its ratio to the baseline.
class Summary : public bench::MedianReporter {
 public:
  void Finalize() override {
    MedianReporter::Finalize();
    std::printf("\nreport path, %d workloads x %d label sets x %d counters (target: under 5 ms per report)\n",
                kWorkloads, kLabelSets, kCounters);
    print("BM_Report", "BM_ProtobufSerialize", "protobuf's own serialization of the report");
    print("BM_EncodeChanged", "BM_ProtobufSerialize", "protobuf's own serialization of the report");
    print("BM_Checkpoint/", "BM_CheckpointThroughProtobuf", "protobuf's own serialization of the checkpoint");
  }

 private:
  void print(std::string_view prefix, std::string_view baseline, const char* what) {
    const bench::Median* base = find(baseline);
    if (base != nullptr && printed_.insert(std::string(baseline)).second) {
      std::printf("  %-36s %8.3f ms (baseline)\n", std::string(baseline).c_str(), base->real_ns / 1e6);
    }
    for (const auto& [name, median] : medians()) {
      if (!name.starts_with(prefix)) continue;
      std::printf("  %-36s %8.3f ms", name.c_str(), median.real_ns / 1e6);
      if (base != nullptr) std::printf("   %.2fx %s", median.real_ns / base->real_ns, what);
      std::printf("\n");
    }
  }
  std::set<std::string> printed_;
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  Summary summary;
  benchmark::RunSpecifiedBenchmarks(&summary);
  benchmark::Shutdown();
  return 0;
}
