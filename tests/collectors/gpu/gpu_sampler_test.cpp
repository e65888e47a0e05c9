// The sampler and the GPU source against the fake libnvidia-ml.so.1 (tests/fake_nvml), loaded through the production
// dlopen path: which process-list layout a driver writes is detected, the versioned detail list is preferred where
// the driver has it, a lost GPU keeps its name while the others go on, and a sample is taken once.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "collectors/gpu/gpu_sampler.hpp"
#include "collectors/gpu/gpu_source.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::collectors::gpu {
namespace {

using namespace std::chrono_literals;

// Points the fake at a scenario (and its step file) for the life of the test.
class Scenario {
 public:
  explicit Scenario(const nlohmann::json& scenario) {
    setenv("TALLY_FAKE_NVML_SCENARIO", dir_.write("scenario.json", scenario.dump()).c_str(), 1);
    setenv("TALLY_FAKE_NVML_STEP", (dir_.path() / "step").c_str(), 1);
    step(0);
  }
  ~Scenario() {
    unsetenv("TALLY_FAKE_NVML_SCENARIO");
    unsetenv("TALLY_FAKE_NVML_STEP");
  }
  Scenario(const Scenario&) = delete;
  Scenario& operator=(const Scenario&) = delete;
  void step(int n) const { dir_.write("step", std::to_string(n)); }

 private:
  test::TempDir dir_;
};

nlohmann::json three_processes() {
  return {{{"pid", 101}, {"used_gpu_memory", 1000}},
          {{"pid", 102}, {"used_gpu_memory", 2000}},
          {{"pid", 103}, {"used_gpu_memory", 3000}}};
}

std::unique_ptr<NvmlLibrary> open_fake(const char* path = FAKE_NVML_PATH) {
  auto nvml = NvmlLibrary::open(path);
  EXPECT_TRUE(nvml) << nvml.error().message;
  return nvml ? std::move(*nvml) : nullptr;
}

std::vector<std::pair<pid_t, std::uint64_t>> listed(const GpuReading& gpu) {
  std::vector<std::pair<pid_t, std::uint64_t>> out;
  for (const auto& p : gpu.processes) out.emplace_back(p.pid, p.memory_bytes);
  return out;
}

const std::vector<std::pair<pid_t, std::uint64_t>> kThree = {{101, 1000}, {102, 2000}, {103, 3000}};

TEST(GpuSampler, ReadsThe32ByteEntriesOfTheR535DriversThatWroteThem) {
  Scenario scenario(nlohmann::json{{"driver_version", "535.54.03"}, {"gpus", {{{"uuid", "GPU-A"}, {"processes", three_processes()}}}}});
  auto nvml = open_fake();
  ASSERT_NE(nvml, nullptr);
  GpuSampler sampler(*nvml);
  const NodeReading reading = sampler.sample();
  ASSERT_EQ(reading.gpus.size(), 1u);
  EXPECT_EQ(listed(reading.gpus[0]), kThree);
  EXPECT_EQ(sampler.process_listing(), GpuSampler::ProcessListing::v3_32);
}

TEST(GpuSampler, ReadsThe24ByteEntriesOfOtherDrivers) {
  Scenario scenario(nlohmann::json{{"driver_version", "535.104.05"}, {"gpus", {{{"uuid", "GPU-A"}, {"processes", three_processes()}}}}});
  auto nvml = open_fake();
  ASSERT_NE(nvml, nullptr);
  GpuSampler sampler(*nvml);
  EXPECT_EQ(listed(sampler.sample().gpus.at(0)), kThree);
  EXPECT_EQ(sampler.process_listing(), GpuSampler::ProcessListing::v3_24);
}

TEST(GpuSampler, PrefersTheDetailListAndListsAProcessInTwoListsOnce) {
  const nlohmann::json gpu = {{"uuid", "GPU-A"},
                              {"processes", three_processes()},
                              {"graphics_processes", {{{"pid", 104}, {"used_gpu_memory", 4000}}}},
                              {"mps_processes", {{{"pid", 101}, {"used_gpu_memory", 1500}}}}};
  Scenario scenario(nlohmann::json{{"driver_version", "550.54.15"}, {"detail_list", true}, {"gpus", {gpu}}});
  auto nvml = open_fake();
  ASSERT_NE(nvml, nullptr);
  GpuSampler sampler(*nvml);
  EXPECT_EQ(listed(sampler.sample().gpus.at(0)),
            (std::vector<std::pair<pid_t, std::uint64_t>>{{101, 1500}, {102, 2000}, {103, 3000}, {104, 4000}}));
  EXPECT_EQ(sampler.process_listing(), GpuSampler::ProcessListing::detail_list);
}

TEST(GpuSampler, ADriverWithoutTheDetailListIsReadThroughTheV3Calls) {
  Scenario scenario(nlohmann::json{{"detail_list", true}, {"gpus", {{{"uuid", "GPU-A"}, {"processes", three_processes()}}}}});
  auto nvml = open_fake(FAKE_NVML_MISSING_SYMBOL_PATH);
  ASSERT_NE(nvml, nullptr);
  GpuSampler sampler(*nvml);
  EXPECT_EQ(listed(sampler.sample().gpus.at(0)), kThree);
  EXPECT_EQ(sampler.process_listing(), GpuSampler::ProcessListing::v3_24);
}

TEST(GpuSampler, ReadsEachProcesssLifetimePeakWhereAccountingModeIsOn) {
  nlohmann::json processes = three_processes();
  processes[1]["max_memory"] = 9000;
  const nlohmann::json on = {{"uuid", "GPU-A"}, {"accounting_mode", true}, {"processes", processes}};
  const nlohmann::json off = {{"uuid", "GPU-B"}, {"processes", processes}};
  Scenario scenario(nlohmann::json{{"gpus", {on, off}}});
  auto nvml = open_fake();
  ASSERT_NE(nvml, nullptr);
  GpuSampler sampler(*nvml);
  const NodeReading reading = sampler.sample();
  ASSERT_EQ(reading.gpus.size(), 2u);
  std::vector<std::uint64_t> peaks_on, peaks_off;
  for (const auto& p : reading.gpus[0].processes) peaks_on.push_back(p.peak_memory_bytes);
  for (const auto& p : reading.gpus[1].processes) peaks_off.push_back(p.peak_memory_bytes);
  EXPECT_EQ(peaks_on, (std::vector<std::uint64_t>{1000, 9000, 3000}));
  EXPECT_EQ(peaks_off, (std::vector<std::uint64_t>{0, 0, 0})) << "accounting mode off: not known";
  EXPECT_TRUE(reading.gpus[1].failures.empty()) << "off is not a failure";
}

// NOT_SUPPORTED is a capability the GPU lacks, unless the call answered on it before: then the GPU is failing.
TEST(GpuSampler, NotSupportedIsAFailureOnlyFromACallThatAnsweredBefore) {
  const nlohmann::json answering = {
      {"uuid", "GPU-A"}, {"energy_mj", 5},
      {"steps", {nlohmann::json::object(), {{"errors", {{"nvmlDeviceGetTotalEnergyConsumption", "NOT_SUPPORTED"}}}}}}};
  const nlohmann::json never = {{"uuid", "GPU-B"}};  // no energy counter: NOT_SUPPORTED from the start
  Scenario scenario(nlohmann::json{{"gpus", {answering, never}}});
  auto nvml = open_fake();
  ASSERT_NE(nvml, nullptr);
  GpuSampler sampler(*nvml);
  const NodeReading first = sampler.sample();
  EXPECT_EQ(first.gpus.at(0).energy_mj, 5u);
  EXPECT_TRUE(first.gpus[0].failures.empty());
  EXPECT_TRUE(first.gpus.at(1).failures.empty()) << "a capability it lacks";
  scenario.step(1);
  const NodeReading second = sampler.sample();
  EXPECT_FALSE(second.gpus.at(0).energy_mj.has_value());
  EXPECT_EQ(second.gpus[0].failures,
            (std::vector<GpuFailure>{{"nvmlDeviceGetTotalEnergyConsumption", "Not Supported"}}));
  EXPECT_TRUE(second.gpus.at(1).failures.empty());
}

TEST(GpuSampler, ASampleIsTakenOnceAndALostGpuKeepsItsNameWhileTheOthersGoOn) {
  const nlohmann::json a = {{"uuid", "GPU-A"},
                            {"utilization_gpu", 40},
                            {"energy_mj", 1000},
                            {"samples", {{{"pid", 101}, {"t_us", 100}, {"sm", 40}}}},
                            {"steps", {nlohmann::json::object(), {{"lost", true}}}}};
  const nlohmann::json b = {{"uuid", "GPU-B"}, {"energy_mj", 7000}};
  Scenario scenario(nlohmann::json{{"gpus", {a, b}}});
  auto nvml = open_fake();
  ASSERT_NE(nvml, nullptr);
  GpuSampler sampler(*nvml);
  const NodeReading first = sampler.sample();
  ASSERT_EQ(first.gpus.size(), 2u);
  ASSERT_EQ(first.gpus[0].samples.size(), 1u);
  EXPECT_EQ(first.gpus[0].samples[0].sm_percent, 40u);
  EXPECT_EQ(first.gpus[0].utilization_percent, 40u);
  EXPECT_TRUE(sampler.sample().gpus[0].samples.empty()) << "the same sample again";

  scenario.step(1);
  const NodeReading lost = sampler.sample();
  ASSERT_EQ(lost.gpus.size(), 2u);
  EXPECT_TRUE(lost.gpus[0].lost);
  EXPECT_EQ(lost.gpus[0].uuid, "GPU-A") << "a lost GPU is still the GPU it was";
  ASSERT_FALSE(lost.gpus[0].failures.empty());
  EXPECT_EQ(lost.gpus[0].failures[0], (GpuFailure{"nvmlDeviceGetUUID", "GPU is lost"}));
  EXPECT_FALSE(lost.gpus[1].lost);
  EXPECT_EQ(lost.gpus[1].energy_mj, 7000u);
}

// When the event loop falls behind, older passes are folded into newer ones: every count survives, also of a GPU
// the newer pass could not read and of a workload that has left since.
TEST(GpuSource, FoldingPassesLosesNothingCounted) {
  auto gpu = [](const char* uuid, std::uint64_t elapsed_ns, std::uint64_t energy_mj, std::uint64_t idle_mj) {
    GpuUsage usage;
    usage.uuid = uuid;
    usage.elapsed_ns = elapsed_ns;
    usage.energy_mj = energy_mj;
    usage.idle_energy_mj = idle_mj;
    return usage;
  };
  auto holder = [](const char* workload, std::uint64_t sm_ns, std::uint64_t energy_mj, std::uint64_t memory) {
    HolderUsage h;
    h.workload = workload;
    h.sm_ns = sm_ns;
    h.energy_mj = energy_mj;
    h.memory_bytes = memory;
    h.holds_memory = memory > 0;
    return h;
  };
  GpuPass older, newer;
  older.gpus = {gpu("GPU-A", 10, 100, 40), gpu("GPU-B", 10, 30, 30)};
  older.gpus[0].holders = {holder("w1", 5, 60, 9)};
  newer.gpus = {gpu("GPU-A", 20, 70, 70)};
  newer.gpus[0].memory_used = 1;
  newer.gpus[0].holders = {holder("w2", 0, 0, 7)};
  fold_pass(older, newer);
  ASSERT_EQ(newer.gpus.size(), 2u) << "GPU-B, which only the older pass read, is kept";
  const GpuUsage& a = newer.gpus[0];
  EXPECT_EQ(a.elapsed_ns, 30u);
  EXPECT_EQ(a.energy_mj, 170u);
  EXPECT_EQ(a.idle_energy_mj, 110u);
  EXPECT_EQ(a.memory_used, 1u) << "levels are the newer pass's";
  ASSERT_EQ(a.holders.size(), 2u);
  EXPECT_EQ(a.holders[0].workload, "w2");
  EXPECT_EQ(a.holders[1].workload, "w1");
  EXPECT_EQ(a.holders[1].sm_ns, 5u);
  EXPECT_EQ(a.holders[1].energy_mj, 60u);
  EXPECT_FALSE(a.holders[1].holds_memory) << "it left: it holds nothing now";
  EXPECT_EQ(newer.gpus[1].uuid, "GPU-B");
  EXPECT_EQ(newer.gpus[1].energy_mj, 30u);

  // Lost in the newer pass: the older's counts stay, recorded before the loss.
  GpuPass good, lost;
  good.gpus = {gpu("GPU-A", 10, 100, 40)};
  lost.gpus = {gpu("GPU-A", 0, 0, 0)};
  lost.gpus[0].lost = true;
  fold_pass(good, lost);
  ASSERT_EQ(lost.gpus.size(), 2u);
  EXPECT_FALSE(lost.gpus[0].lost);
  EXPECT_EQ(lost.gpus[0].energy_mj, 100u);
  EXPECT_TRUE(lost.gpus[1].lost);
}

// A pid's workload is kept between passes while its process lives: once it has exited, its pid is not billed to
// the workload it had (its share is unattributed), whatever the cache held.
TEST(GpuPasses, AnExitedProcessIsNotBilledToTheWorkloadItsPidHad) {
  const pid_t child = ::fork();
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  ASSERT_GT(child, 0);
  const nlohmann::json gpu = {{"uuid", "GPU-A"},
                              {"utilization_gpu", 50},
                              {"processes", {{{"pid", child}, {"used_gpu_memory", 4096}}}},
                              {"synthetic_samples", {{"count", 1}, {"sm", 50}}}};
  Scenario scenario(nlohmann::json{{"gpus", {gpu}}});
  auto nvml = open_fake();
  ASSERT_NE(nvml, nullptr);
  GpuPasses passes(*nvml, {}, FsRoot{}, IdentityRules{});
  for (int i = 0; i < 3; ++i) {
    const GpuPass pass = passes.next();
    ASSERT_EQ(pass.gpus.at(0).holders.size(), 1u) << "pass " << i;
    EXPECT_EQ(pass.gpus[0].holders[0].memory_bytes, 4096u);
    EXPECT_TRUE(pass.identities.contains(pass.gpus[0].holders[0].workload));
  }
  ::kill(child, SIGKILL);
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const GpuPass after = passes.next();  // the driver still lists the pid (it lags): nobody is billed for it
  EXPECT_TRUE(after.gpus.at(0).holders.empty());
  EXPECT_GT(after.gpus[0].unattributed_sm_ns, 0u);
  EXPECT_TRUE(after.identities.empty());
}

// The source's thread samples, accounts and wakes the event loop: this process, in its own cgroup, holds memory on
// a GPU whose energy advances; the passes taken add up to the energy the scenario spent.
TEST(GpuSource, PassesArriveOnItsFdAndAddUpToTheDevicesEnergy) {
  const auto self = static_cast<unsigned>(::getpid());
  const nlohmann::json gpu = {{"uuid", "GPU-A"},
                              {"utilization_gpu", 0},
                              {"energy_mj", 1000},
                              {"processes", {{{"pid", self}, {"used_gpu_memory", 4096}}}},
                              {"steps", {nlohmann::json::object(), {{"energy_mj", 1600}}}}};
  Scenario scenario(nlohmann::json{{"gpus", {gpu}}});
  GpuSource::Options options;
  options.library = FAKE_NVML_PATH;
  options.interval = 10ms;
  auto source = GpuSource::start(options);
  ASSERT_TRUE(source) << source.error().message;
  std::uint64_t energy = 0, idle = 0;
  bool held = false;
  auto take = [&] {
    pollfd pfd{(*source)->fd(), POLLIN, 0};
    if (::poll(&pfd, 1, 100) <= 0) return;
    for (const GpuPass& pass : (*source)->take()) {
      for (const GpuUsage& usage : pass.gpus) {
        energy += usage.energy_mj;
        idle += usage.idle_energy_mj;
        for (const HolderUsage& h : usage.holders) held = held || (h.memory_bytes == 4096 && pass.identities.contains(h.workload));
      }
    }
  };
  ASSERT_TRUE(test::wait_until([&] { return take(), held; }, 10s)) << "this process, resolved to its workload";
  scenario.step(1);
  ASSERT_TRUE(test::wait_until([&] { return take(), energy == 600; }, 10s)) << energy;
  EXPECT_EQ(idle, 600u) << "0 % utilization: all of it idle";
}

}  // namespace
}  // namespace tally::collectors::gpu
