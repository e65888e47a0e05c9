// GpuAccounting: readings to conserved usage. Pure: readings are built by hand, pids resolved by a table.
#include "collectors/gpu/gpu_accounting.hpp"

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace tally::collectors::gpu {
namespace {

constexpr std::int64_t kSecond = 1'000'000'000;

struct Node {
  std::map<pid_t, std::string> workloads{{10, "a"}, {11, "a"}, {20, "b"}, {30, "c"}};
  GpuAccounting accounting{IdleOptions{10, 5 * kSecond, 3, 2}};
  std::int64_t now = 100 * kSecond;
  std::vector<GpuUsage> pass(GpuReading gpu, std::int64_t step = kSecond) {
    NodeReading reading;
    now += step;
    reading.monotonic_ns = now;
    reading.gpus.push_back(std::move(gpu));
    return accounting.account(reading, [&](pid_t pid) {
      auto it = workloads.find(pid);
      return it == workloads.end() ? std::string() : it->second;
    });
  }
};

GpuReading whole(std::uint64_t energy, std::uint32_t utilization, std::vector<UtilizationSample> samples = {},
                 std::vector<ProcessOnGpu> processes = {}) {
  GpuReading gpu;
  gpu.uuid = "GPU-0";
  gpu.energy_mj = energy;
  gpu.utilization_percent = utilization;
  gpu.samples = std::move(samples);
  gpu.processes = std::move(processes);
  return gpu;
}

const HolderUsage* holder(const GpuUsage& usage, const std::string& workload) {
  for (const auto& h : usage.holders) {
    if (h.workload == workload) return &h;
  }
  return nullptr;
}

std::uint64_t energy_sum(const GpuUsage& u) {
  std::uint64_t sum = u.idle_energy_mj + u.unattributed_energy_mj;
  for (const auto& h : u.holders) sum += h.energy_mj;
  return sum;
}

TEST(GpuAccounting, SamplesCoverTheTimeSinceTheProcessesPreviousSampleOnce) {
  Node node;
  node.pass(whole(1000, 50));  // baseline
  // Samples one second apart: the first covers the default period (1 s), each later one the second since the last.
  auto u = node.pass(whole(1000, 100, {{10, 1'000'000, 50}, {10, 2'000'000, 20}, {20, 2'000'000, 30}}))[0];
  EXPECT_EQ(holder(u, "a")->sm_ns, 500'000'000u + 200'000'000u);
  EXPECT_EQ(holder(u, "b")->sm_ns, 300'000'000u);
  // The same samples again (a driver that ignores lastSeenTimeStamp) and an older one: nothing more.
  u = node.pass(whole(1000, 100, {{10, 1'500'000, 90}, {10, 2'000'000, 20}}))[0];
  EXPECT_EQ(holder(u, "a"), nullptr);
  // A gap longer than the driver's period: only the period is covered (the process was idle before).
  u = node.pass(whole(1000, 100, {{10, 9'000'000, 10}}))[0];
  EXPECT_EQ(holder(u, "a")->sm_ns, 100'000'000u);
}

TEST(GpuAccounting, TheDriversPeriodIsLearnedFromTheShortestGap) {
  Node node;
  node.pass(whole(0, 100, {{10, 1'000'000, 100}}));
  node.pass(whole(0, 100, {{10, 1'166'667, 100}}));  // 1/6 s: the driver's period
  const auto u = node.pass(whole(0, 100, {{20, 2'000'000, 60}}))[0];  // a new process: one period
  EXPECT_EQ(holder(u, "b")->sm_ns, 60u * 166'667 * 10);
}

TEST(GpuAccounting, SamplesOfOnePeriodAreScaledToTheDevicesUtilization) {
  Node node;
  node.pass(whole(0, 80, {{10, 1'000'000, 1}, {20, 1'000'000, 1}}));
  // Two MPS clients claim 70 % + 50 % of a period in which the device was 80 % busy: 80 % shared 7:5.
  const auto u = node.pass(whole(0, 80, {{10, 2'000'000, 70}, {20, 2'000'000, 50}}))[0];
  const std::uint64_t a = holder(u, "a")->sm_ns, b = holder(u, "b")->sm_ns;
  EXPECT_EQ(a, 70ull * 1'000'000 * 10 * 80 / 120);
  EXPECT_EQ(b, 50ull * 1'000'000 * 10 * 80 / 120);
  EXPECT_LE(a + b, 800'000'000u);
  EXPECT_EQ(a + b + u.sm_scaled_off_ns, 1'200'000'000u);
}

TEST(GpuAccounting, EnergySplitsIntoBusySharedBySmTimeAndIdle) {
  Node node;
  node.pass(whole(10'000, 40));
  const auto u = node.pass(whole(20'000, 40, {{10, 1'000'000, 30}, {20, 1'000'000, 10}}, {{10, 1 << 20, 5 << 20}}))[0];
  EXPECT_EQ(u.energy_mj, 10'000u);
  EXPECT_EQ(u.idle_energy_mj, 6'000u);                  // 60 % idle
  EXPECT_EQ(holder(u, "a")->energy_mj, 3'000u);         // 4,000 busy shared 3:1
  EXPECT_EQ(holder(u, "b")->energy_mj, 1'000u);
  EXPECT_EQ(u.unattributed_energy_mj, 0u);
  EXPECT_EQ(holder(u, "a")->memory_bytes, 1u << 20);
  EXPECT_EQ(holder(u, "a")->peak_memory_bytes, 5u << 20) << "the driver's accounting stats, where it keeps them";
  EXPECT_EQ(holder(u, "a")->allocated_ns, static_cast<std::uint64_t>(kSecond));
  EXPECT_EQ(holder(u, "b")->allocated_ns, 0u);  // ran, held no memory the driver listed
}

TEST(GpuAccounting, ProcessesWhoseWorkloadIsGoneAreUnattributedNotDropped) {
  Node node;
  node.pass(whole(0, 100));
  const auto u = node.pass(whole(900, 100, {{10, 1'000'000, 20}, {99, 1'000'000, 10}}))[0];
  EXPECT_EQ(u.unattributed_sm_ns, 100'000'000u);
  EXPECT_EQ(holder(u, "a")->energy_mj, 600u);
  EXPECT_EQ(u.unattributed_energy_mj, 300u);
  EXPECT_EQ(energy_sum(u), 900u);
}

TEST(GpuAccounting, AnEnergyCounterThatWentDownIsADriverReloadNotANegativeDelta) {
  Node node;
  node.pass(whole(50'000, 0));
  const auto u = node.pass(whole(700, 0))[0];
  EXPECT_TRUE(u.energy_reset);
  EXPECT_EQ(u.energy_mj, 700u);
  EXPECT_EQ(u.idle_energy_mj, 700u);
}

TEST(GpuAccounting, EveryPassIsConservedWhateverTheReadings) {
  Node node;
  std::mt19937_64 random(42);
  std::uint64_t energy = 0, timestamp = 1'000'000;
  for (int i = 0; i < 2000; ++i) {
    energy += random() % 100'000;
    timestamp += 1 + random() % 2'000'000;
    std::vector<UtilizationSample> samples;
    for (pid_t pid : {10, 11, 20, 30, 99}) {
      if (random() % 2) samples.push_back({pid, timestamp, static_cast<std::uint32_t>(random() % 101)});
    }
    const auto utilization = static_cast<std::uint32_t>(random() % 101);
    const auto u = node.pass(whole(energy, utilization, samples, {{10, 5, 0}, {30, 7, 0}}),
                             static_cast<std::int64_t>(1 + random() % kSecond))[0];
    ASSERT_EQ(energy_sum(u), u.energy_mj) << "pass " << i;
    std::uint64_t sm = u.unattributed_sm_ns;
    for (const auto& h : u.holders) sm += h.sm_ns;
    ASSERT_LE(sm, 2'000'000ull * 10 * utilization) << "pass " << i;  // never more than the device was busy
  }
}

TEST(GpuAccounting, MigSlicesAreAllocatedByTheirShareAndEmptySlicesEnergyIsIdle) {
  Node node;
  GpuReading gpu;
  gpu.uuid = "GPU-M";
  gpu.mig = true;
  gpu.memory_total = 80;
  gpu.energy_mj = 1000;
  gpu.slices = {{"MIG-1", 1, 0, 40, {{10, 5, 0}, {20, 6, 0}}}, {"MIG-2", 2, 0, 20, {{11, 7, 0}}}, {"MIG-3", 3, 0, 20, {}}};
  node.pass(gpu);
  gpu.energy_mj = 9000;
  const auto u = node.pass(gpu, 4 * kSecond)[0];
  // MIG-1 (half the GPU) is shared by a and b; MIG-2 (a quarter) is a's; MIG-3 is empty.
  EXPECT_EQ(holder(u, "a")->allocated_ns, 1'000'000'000u + 1'000'000'000u);
  EXPECT_EQ(holder(u, "b")->allocated_ns, 1'000'000'000u);
  EXPECT_EQ(holder(u, "a")->energy_mj, 2000u + 2000u);
  EXPECT_EQ(holder(u, "b")->energy_mj, 2000u);
  EXPECT_EQ(u.idle_energy_mj, 2000u);
  EXPECT_EQ(holder(u, "a")->memory_bytes, 12u);
  EXPECT_EQ(holder(u, "a")->sm_ns, 0u);  // NVML has no utilization on MIG
  EXPECT_EQ(energy_sum(u), 8000u);
}

TEST(GpuAccounting, ALostGpuCountsNothingAndItsReturnDoesNotCountTheGap) {
  Node node;
  node.pass(whole(100, 50, {}, {{10, 1, 0}}));
  GpuReading lost;
  lost.uuid = "GPU-0";
  lost.lost = true;
  EXPECT_TRUE(node.pass(lost)[0].lost);
  const auto u = node.pass(whole(400, 50, {}, {{10, 1, 0}}))[0];
  EXPECT_EQ(u.elapsed_ns, 0u);  // the time it was lost was not observed
  EXPECT_EQ(u.energy_mj, 300u);  // the counter kept counting: its difference is real energy
}

TEST(GpuAccounting, IdleNeedsTheWholeWindowAndEndsOnlyAfterBusyReadingsInARow) {
  Node node;  // window 5 s, 3 readings, 2 busy readings in a row end it
  std::vector<bool> idle;
  for (std::uint32_t utilization : {5, 5, 5, 5, 5, 5, 90, 5, 90, 90, 5}) {
    idle.push_back(node.pass(whole(0, utilization, {}, {{10, 1, 0}}))[0].idle);
  }
  EXPECT_EQ(idle, (std::vector<bool>{false, false, false, false, false, true, true, true, true, false, false}));
}

TEST(GpuAccounting, AWorkloadHoldingMemoryWithoutRunningIsFlaggedAfterTheWindow) {
  Node node;
  GpuUsage u;
  for (int i = 0; i < 7; ++i) {
    u = node.pass(whole(0, 50, {{20, static_cast<std::uint64_t>(1'000'000 * (i + 1)), 50}}, {{10, 1, 0}, {20, 1, 0}}))[0];
  }
  EXPECT_EQ(u.idle_holders, std::vector<std::string>{"a"});
  u = node.pass(whole(0, 50, {{10, 9'000'000, 5}}, {{10, 1, 0}, {20, 1, 0}}))[0];
  EXPECT_TRUE(u.idle_holders.empty());
  EXPECT_TRUE(u.idle_holders_changed);
}

}  // namespace
}  // namespace tally::collectors::gpu
