// GpuUsageRecorder: GPU passes into the ledger and events. Passes are built by hand; the ledger is real.
#include "agent/tallyd/gpu_usage.hpp"

#include <gtest/gtest.h>

namespace tally::agent {
namespace {

using collectors::gpu::GpuFailure;
using collectors::gpu::GpuPass;
using collectors::gpu::GpuUsage;
using collectors::gpu::HolderUsage;

class GpuUsageTest : public ::testing::Test {
 protected:
  GpuUsageRecorder recorder_{ledger_, {}, [this](const v1::Event& e) { events_.push_back(e); }};

  GpuPass pass(std::vector<HolderUsage> holders = {}, std::vector<GpuFailure> failures = {}, bool lost = false) {
    GpuPass p;
    GpuUsage& gpu = p.gpus.emplace_back();
    gpu.uuid = "GPU-1";
    gpu.elapsed_ns = 1'000'000'000;
    gpu.lost = lost;
    gpu.failures = std::move(failures);
    gpu.holders = std::move(holders);
    for (const auto& h : gpu.holders) {  // "systemd:a.service": the unit's cgroup
      p.identities.try_emplace(h.workload, identify_cgroup("/system.slice/" + h.workload.substr(h.workload.find(':') + 1)));
    }
    return p;
  }
  static HolderUsage holder(const std::string& unit, std::uint64_t memory, std::uint64_t peak = 0) {
    HolderUsage h;
    h.workload = "systemd:" + unit;
    h.memory_bytes = memory;
    h.peak_memory_bytes = peak;
    h.holds_memory = memory > 0;
    h.allocated_ns = memory > 0 ? 1'000'000'000 : 0;  // as accounting gives a holder of a whole GPU
    return h;
  }
  // The workload's own counter or gauge `name` (0 when it has none).
  std::uint64_t value(const std::string& workload, const std::string& name) {
    ledger::Workload* w = ledger_.find_workload(workload);
    if (w == nullptr || !w->label_sets.contains("")) return 0;
    const ledger::LabelSet& whole = *w->label_sets.at("");
    for (const auto& c : whole.counters) {
      if (ledger_.key(c.id).name == name) return c.total;
    }
    for (const auto& g : whole.gauges) {
      if (ledger_.key(g.id).name == name) return g.value;
    }
    return 0;
  }

  ledger::Ledger ledger_;
  std::vector<v1::Event> events_;
};

TEST_F(GpuUsageTest, AFailureIsReportedOnceUntilTheGpuOrTheNodeAnswersAgain) {
  const GpuFailure lost{"nvmlDeviceGetUUID", "GPU is lost"};
  recorder_.record(pass({}, {lost}, true));
  recorder_.record(pass({}, {lost}, true));
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].gpu_failure().gpu().uuid(), "GPU-1");
  EXPECT_TRUE(events_[0].gpu_failure().lost());
  EXPECT_EQ(value("gpu:GPU-1", "gpu_lost"), 1u);
  recorder_.record(pass());  // answers again
  EXPECT_EQ(value("gpu:GPU-1", "gpu_lost"), 0u);
  recorder_.record(pass({}, {lost}, true));
  EXPECT_EQ(events_.size(), 2u) << "failing again after answering is news";

  GpuPass node;
  node.failures = {{"nvmlDeviceGetCount_v2", "Unknown Error"}};
  recorder_.record(node);
  recorder_.record(node);
  EXPECT_EQ(events_.size(), 3u);
  EXPECT_FALSE(events_.back().gpu_failure().has_gpu()) << "node-wide";
  recorder_.record(pass());
  recorder_.record(node);
  EXPECT_EQ(events_.size(), 4u) << "the node answered in between";
}

TEST_F(GpuUsageTest, MemoryIsAGaugeWhileHeldAndItsPeakACounterThatNeverCountsTwice) {
  recorder_.record(pass({holder("a.service", 5000)}));
  recorder_.record(pass({holder("a.service", 3000)}));
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_bytes"), 3000u);
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_bytes:GPU-1"), 3000u);
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_peak_bytes"), 5000u);
  recorder_.record(pass({holder("a.service", 3000, 8000)}));  // the driver's lifetime peak, seen by no pass
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_peak_bytes"), 8000u);
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_peak_bytes:GPU-1"), 8000u);
  EXPECT_EQ(value("systemd:a.service", "gpu_allocated_ns"), 3'000'000'000u);
  recorder_.record(pass());  // let go
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_bytes"), 0u);
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_peak_bytes"), 8000u);
}

// A workload that expired from the ledger and comes back starts from nothing: its peak too.
TEST_F(GpuUsageTest, AnExpiredWorkloadsPeakStartsAgain) {
  recorder_.record(pass({holder("a.service", 5000)}));
  recorder_.record(pass());  // lets go: nothing reports for it any more
  ledger_.mark_reported();
  ASSERT_EQ(ledger_.expire(UINT64_MAX, 0), 1u);
  ASSERT_EQ(ledger_.find_workload("systemd:a.service"), nullptr);
  recorder_.record(pass({holder("a.service", 3000)}));
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_peak_bytes"), 3000u);
  EXPECT_EQ(value("systemd:a.service", "gpu_memory_peak_bytes:GPU-1"), 3000u);
}

}  // namespace
}  // namespace tally::agent
