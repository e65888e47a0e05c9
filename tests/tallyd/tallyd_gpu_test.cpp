// GPU accounting end to end: the real tallyd loads the fake NVML (tests/fake_nvml) through the production dlopen
// path; real processes in test cgroups hold memory and run on two GPUs (one whole, one in MIG mode) as the scenario
// says, step by step; a subscriber reads the feed. The expected SM time, memory and joules are computed from the
// scenario here, independently, and the conservation identity is checked on every report.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>

#include "agent/base/workload_identity.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/test_cgroup.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;
using Totals = std::map<std::string, std::map<std::string, std::uint64_t>>;  // workload -> "name/kind" -> value

constexpr std::uint64_t kGiB = 1ull << 30;

std::string key(const v1::CounterTotal& t) { return t.name() + "/" + v1::ValueKind_Name(t.kind()); }

class TallydGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to make test cgroups";
    auto root = cgroup2_root();
    if (!root) GTEST_SKIP() << "needs cgroup v2 (pure or hybrid)";
    root_ = *root;
    parent_ = std::make_unique<TestCgroupParent>(root_);
  }

  std::string workload_id(const std::filesystem::path& cgroup) const {
    return identify_cgroup("/" + cgroup.lexically_relative(root_).string()).id;
  }

  void set_step(int step) const {
    dir_.write("step.tmp", std::to_string(step));
    std::filesystem::rename(dir_ / "step.tmp", dir_ / "step");  // a pass reads one step or the next, never half
  }

  // Folds a usage report into the latest totals (and gauges) per workload.
  static void fold(const v1::UsageReport& report, Totals& totals) {
    for (const auto& w : report.workloads()) {
      auto& mine = totals[w.workload_id()];
      for (const auto& t : w.totals()) {
        if (t.source() == v1::VALUE_SOURCE_NVML) mine[key(t)] = t.total();
      }
      // Every entry of a workload carries all its gauges; one at 0 is left out.
      std::erase_if(mine, [](const auto& entry) { return entry.first.starts_with("gauge:"); });
      for (const auto& [name, value] : w.gauges()) mine["gauge:" + name] = value;
    }
  }

  // The latest total (or gauge) `key` of `workload`; 0 when the feed never carried it.
  static std::uint64_t total_of(const Totals& totals, const std::string& workload, const std::string& key) {
    const auto w = totals.find(workload);
    if (w == totals.end()) return 0;
    const auto it = w->second.find(key);
    return it == w->second.end() ? 0 : it->second;
  }

  // Folds usage reports into `totals` until `done()` holds (false at the deadline); with `broken`, checks the
  // conservation identity on every report and keeps the first violation.
  template <typename Done>
  static bool fold_until(FeedSubscriber& feed, Totals& totals, Done&& done, std::string* broken = nullptr) {
    return feed
        .receive_until(
            [&](const FeedMessage& m) {
              fold(m.envelope.usage(), totals);
              if (broken != nullptr && broken->empty()) *broken = conservation_broken(totals);
              return done();
            },
            20s)
        .has_value();
  }

  // On every GPU: the workloads' energy + idle + unattributed = the device's own. Returns the first violation.
  static std::string conservation_broken(const Totals& totals) {
    for (const auto& [id, counters] : totals) {
      if (!id.starts_with("gpu:")) continue;
      const std::string uuid = id.substr(4);
      std::uint64_t parts = total_of(totals, id, "gpu_idle_energy_mj/VALUE_KIND_APPORTIONED") +
                            total_of(totals, id, "gpu_unattributed_energy_mj/VALUE_KIND_APPORTIONED");
      for (const auto& [other, c] : totals) {
        parts += total_of(totals, other, "gpu_energy_mj:" + uuid + "/VALUE_KIND_APPORTIONED") +
                 total_of(totals, other, "gpu_energy_mj:" + uuid + "/VALUE_KIND_ESTIMATED");
      }
      const std::uint64_t device = total_of(totals, id, "gpu_energy_mj/VALUE_KIND_MEASURED");
      if (parts != device) {
        return id + ": parts " + std::to_string(parts) + " != device " + std::to_string(device);
      }
    }
    return {};
  }

  std::filesystem::path root_;
  std::unique_ptr<TestCgroupParent> parent_;
  TempDir dir_;
};

TEST_F(TallydGpuTest, GpuTimeMemoryAndEnergyPerWorkloadMatchTheScenarioAndAreConserved) {
  const auto cgroup_a = parent_->make_child("gpu-a"), cgroup_b = parent_->make_child("gpu-b"),
             cgroup_c = parent_->make_child("gpu-c");
  CgroupProcess a(cgroup_a, {"/bin/cat"}), b(cgroup_b, {"/bin/cat"}), c(cgroup_c, {"/bin/cat"});
  const auto pa = static_cast<unsigned>(a.pid()), pb = static_cast<unsigned>(b.pid()),
             pc = static_cast<unsigned>(c.pid());
  const unsigned gone = 4'000'000;  // a pid that is no process: its share is unattributed

  // GPU-W, whole: 50 % busy, then 100 %. Samples 100 ms apart: the first of a process covers the default period
  // (1 s), later ones the 100 ms since its previous one.
  nlohmann::json whole = {
      {"uuid", "GPU-W"}, {"bus_id", "00000000:34:00.0"}, {"memory_total", 80 * kGiB},
      {"energy_mj", 1'000'000}, {"utilization_gpu", 50}, {"power_mw", 300'000},
      {"accounting_mode", true},  // a's lifetime peak, 3 GiB, is the driver's: no pass saw it
      {"processes",
       {{{"pid", pa}, {"used_gpu_memory", 1 * kGiB}, {"max_memory", 3 * kGiB}},
        {{"pid", pb}, {"used_gpu_memory", 2 * kGiB}}}},
      {"steps",
       {nlohmann::json::object(),
        {{"energy_mj", 1'010'000},
         {"samples", {{{"pid", pa}, {"t_us", 100'000}, {"sm", 30}}, {{"pid", pb}, {"t_us", 100'000}, {"sm", 10}}}}},
        {{"energy_mj", 1'030'000},
         {"utilization_gpu", 100},
         {"samples",
          {{{"pid", pa}, {"t_us", 100'000}, {"sm", 30}},
           {{"pid", pb}, {"t_us", 100'000}, {"sm", 10}},
           {{"pid", pa}, {"t_us", 200'000}, {"sm", 60}},
           {{"pid", pb}, {"t_us", 200'000}, {"sm", 60}},
           {{"pid", gone}, {"t_us", 200'000}, {"sm", 0}}}}},
        {{"lost", true}}}}};
  // GPU-M, MIG: a 40 GiB slice (half the GPU) held by c, an empty 20 GiB one.
  nlohmann::json mig = {
      {"uuid", "GPU-M"}, {"bus_id", "00000000:36:00.0"}, {"memory_total", 80 * kGiB}, {"mig_mode", 1},
      {"energy_mj", 500'000},
      {"mig_instances",
       {{{"gpu_instance_id", 1}, {"compute_instance_id", 0}, {"uuid", "MIG-1"}, {"memory_total", 40 * kGiB}},
        {{"gpu_instance_id", 2}, {"compute_instance_id", 0}, {"uuid", "MIG-2"}, {"memory_total", 20 * kGiB}}}},
      {"mig_processes", {{{{"pid", pc}, {"used_gpu_memory", 1 * kGiB}}}, nlohmann::json::array()}},
      {"steps",
       {nlohmann::json::object(), {{"energy_mj", 510'000}}, {{"energy_mj", 530'000}}, {{"energy_mj", 560'000}}}}};
  dir_.write("scenario.json", nlohmann::json{{"driver_version", "550.54.15"}, {"gpus", {whole, mig}}}.dump());
  set_step(0);

  TallydProcess tallyd(test_config(1000, 30, "[topology]\nnvml_library = \"" FAKE_NVML_PATH "\"\n"
                                             "[gpu]\ninterval_ms = 20\n[probes]\nenabled = false\n"),
                       {}, {{"TALLY_FAKE_NVML_SCENARIO", (dir_ / "scenario.json").string()},
                            {"TALLY_FAKE_NVML_STEP", (dir_ / "step").string()}});
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedSubscriber feed(*endpoint, "usage");
  FeedSubscriber events(*endpoint, "event");
  Totals totals;
  std::string broken;
  auto until = [&](auto&& done) { return fold_until(feed, totals, done, &broken); };
  auto total = [&](const std::string& workload, const std::string& k) { return total_of(totals, workload, k); };
  const std::string wa = workload_id(cgroup_a), wb = workload_id(cgroup_b), wc = workload_id(cgroup_c);
  // Step 0: the baseline is read (the processes' memory shows), nothing is counted yet.
  ASSERT_TRUE(until([&] { return total(wb, "gauge:gpu_memory_bytes") == 2 * kGiB; })) << tallyd.process().stderr_text();
  set_step(1);
  ASSERT_TRUE(until([&] { return total("gpu:GPU-W", "gpu_energy_mj/VALUE_KIND_MEASURED") == 10'000; }));
  set_step(2);
  ASSERT_TRUE(until([&] { return total("gpu:GPU-W", "gpu_energy_mj/VALUE_KIND_MEASURED") == 30'000; }));
  set_step(3);
  ASSERT_TRUE(until([&] {
    return total("gpu:GPU-W", "gauge:gpu_lost") == 1 && total("gpu:GPU-M", "gpu_energy_mj/VALUE_KIND_MEASURED") == 60'000;
  }));
  EXPECT_EQ(broken, "");

  // Expected, from the scenario. Step 1 (50 % busy, 10 J): a 30 % and b 10 % of 1 s; busy energy 5 J shared 3:1.
  // Step 2 (100 %, 20 J): a and b claim 60 % + 60 % of 100 ms: scaled to 100 %, 50 ms each; busy 20 J shared 1:1.
  const std::uint64_t sm_a = 300'000'000 + 50'000'000, sm_b = 100'000'000 + 50'000'000;
  EXPECT_EQ(total(wa, "gpu_sm_ns/VALUE_KIND_MEASURED"), sm_a);
  EXPECT_EQ(total(wa, "gpu_sm_ns:GPU-W/VALUE_KIND_MEASURED"), sm_a);
  EXPECT_EQ(total(wb, "gpu_sm_ns/VALUE_KIND_MEASURED"), sm_b);
  EXPECT_EQ(total("gpu:GPU-W", "gpu_sm_scaled_off_ns/VALUE_KIND_MEASURED"), 20'000'000u);
  EXPECT_EQ(total(wa, "gpu_energy_mj:GPU-W/VALUE_KIND_APPORTIONED"), 3'750u + 10'000u);
  EXPECT_EQ(total(wb, "gpu_energy_mj:GPU-W/VALUE_KIND_APPORTIONED"), 1'250u + 10'000u);
  EXPECT_EQ(total("gpu:GPU-W", "gpu_idle_energy_mj/VALUE_KIND_APPORTIONED"), 5'000u);
  EXPECT_EQ(total(wa, "gauge:gpu_memory_bytes"), 1 * kGiB);
  EXPECT_EQ(total(wa, "gpu_memory_peak_bytes/VALUE_KIND_MEASURED"), 3 * kGiB);
  EXPECT_EQ(total(wa, "gpu_memory_peak_bytes:GPU-W/VALUE_KIND_MEASURED"), 3 * kGiB);
  EXPECT_EQ(total(wb, "gpu_memory_peak_bytes/VALUE_KIND_MEASURED"), 2 * kGiB);
  EXPECT_GT(total(wa, "gpu_allocated_ns:GPU-W/VALUE_KIND_APPORTIONED"), 0u);
  // MIG: c holds half the GPU: half of its 60 J, estimated; the empty slice's and the rest are idle.
  EXPECT_EQ(total(wc, "gpu_energy_mj:GPU-M/VALUE_KIND_ESTIMATED"), 30'000u);
  EXPECT_EQ(total("gpu:GPU-M", "gpu_idle_energy_mj/VALUE_KIND_APPORTIONED"), 30'000u);
  EXPECT_EQ(total(wc, "gauge:gpu_memory_bytes:GPU-M"), 1 * kGiB);
  EXPECT_EQ(total(wc, "gpu_sm_ns/VALUE_KIND_MEASURED"), 0u);
  EXPECT_GT(total(wc, "gpu_allocated_ns/VALUE_KIND_APPORTIONED"), 0u);
  // The lost GPU is said once in the log, and the other GPU went on (above).
  const std::string log = tallyd.process().stderr_text();
  EXPECT_NE(log.find("GPU is lost"), std::string::npos) << log;
  // ... and on the feed, once for each call that failed, naming the GPU.
  std::map<std::string, int> failures;  // call -> events
  while (auto m = events.receive(200ms)) {
    const auto& e = m->envelope.event();
    if (!e.has_gpu_failure()) continue;
    EXPECT_EQ(e.gpu_failure().gpu().uuid(), "GPU-W");
    EXPECT_EQ(e.gpu_failure().error(), "GPU is lost");
    EXPECT_TRUE(e.gpu_failure().lost());
    ++failures[e.gpu_failure().call()];
  }
  ASSERT_FALSE(failures.empty()) << "no GpuFailure event";
  for (const auto& [call, n] : failures) EXPECT_EQ(n, 1) << call << " reported more than once";
}

// A GPU under the idle threshold for the window is idle: an event naming the workloads holding it, which are also
// flagged as holding it unused; busy readings in a row end it.
TEST_F(TallydGpuTest, AnIdleGpuIsAnEventNamingItsHoldersAndEndsWhenBusyAgain) {
  const auto cgroup = parent_->make_child("gpu-idle");
  CgroupProcess holder(cgroup, {"/bin/cat"});
  const nlohmann::json gpu = {
      {"uuid", "GPU-I"}, {"memory_total", 80 * kGiB}, {"utilization_gpu", 0}, {"energy_mj", 0},
      {"processes", {{{"pid", static_cast<unsigned>(holder.pid())}, {"used_gpu_memory", kGiB}}}},
      {"steps", {nlohmann::json::object(), {{"utilization_gpu", 100}}}}};
  dir_.write("scenario.json", nlohmann::json{{"gpus", {gpu}}}.dump());
  set_step(0);
  TallydProcess tallyd(test_config(1000, 1000, "[topology]\nnvml_library = \"" FAKE_NVML_PATH "\"\n"
                                               "[gpu]\ninterval_ms = 20\nidle_window_s = 1\nidle_min_samples = 3\n"
                                               "[probes]\nenabled = false\n"),
                       {}, {{"TALLY_FAKE_NVML_SCENARIO", (dir_ / "scenario.json").string()},
                            {"TALLY_FAKE_NVML_STEP", (dir_ / "step").string()}});
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedSubscriber events(*endpoint, "event");
  const std::string w = workload_id(cgroup);
  const auto idle = events.receive_until([](const FeedMessage& m) { return m.envelope.event().has_gpu_idle(); }, 20s);
  ASSERT_TRUE(idle) << tallyd.process().stderr_text();
  const v1::GpuIdle& started = idle->envelope.event().gpu_idle();
  EXPECT_TRUE(started.idle());
  EXPECT_EQ(started.gpu().uuid(), "GPU-I");
  EXPECT_EQ(started.window_s(), 1u);
  EXPECT_EQ(std::vector<std::string>(started.holders().begin(), started.holders().end()), std::vector<std::string>{w});
  const auto unused =
      events.receive_until([](const FeedMessage& m) { return m.envelope.event().has_gpu_held_unused(); }, 20s);
  ASSERT_TRUE(unused);
  const auto& flagged = unused->envelope.event().gpu_held_unused().workloads();
  EXPECT_EQ(std::vector<std::string>(flagged.begin(), flagged.end()), std::vector<std::string>{w});

  set_step(1);
  const auto ended = events.receive_until([](const FeedMessage& m) { return m.envelope.event().has_gpu_idle(); }, 20s);
  ASSERT_TRUE(ended) << tallyd.process().stderr_text();
  EXPECT_FALSE(ended->envelope.event().gpu_idle().idle());
  const std::string log = tallyd.process().stderr_text();
  EXPECT_NE(log.find("GpuIdle: GPU 0 (GPU-I)"), std::string::npos) << log;
}

// Across a restart nothing is skipped or counted twice: the next agent takes the samples the driver took while no
// agent ran (from the newest one the previous agent took, saved in the checkpoint) and the energy spent meanwhile,
// which nobody watched, as the GPU's unattributed energy.
TEST_F(TallydGpuTest, ARestartNeitherSkipsNorRepeatsSamplesAndChargesUnwatchedEnergyToNoOne) {
  const auto cgroup = parent_->make_child("gpu-restart");
  CgroupProcess a(cgroup, {"/bin/cat"});
  const auto pa = static_cast<unsigned>(a.pid());
  auto now_us = [] {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
  };
  // Sample times ahead of both agents' starts: t1 taken by the first, t2 by none while it runs (the driver's, while
  // no agent runs), and t1 offered again with t2.
  const std::uint64_t t1 = now_us() + 1'000'000, t2 = t1 + 1'000'000;
  const nlohmann::json gpu = {
      {"uuid", "GPU-R"}, {"bus_id", "00000000:3b:00.0"}, {"memory_total", 80 * kGiB}, {"utilization_gpu", 100},
      {"energy_mj", 1000}, {"processes", {{{"pid", pa}, {"used_gpu_memory", kGiB}}}},
      {"steps",
       {nlohmann::json::object(),
        {{"energy_mj", 2000}, {"samples", {{{"pid", pa}, {"at_us", t1}, {"sm", 40}}}}},
        {{"energy_mj", 5000},
         {"samples", {{{"pid", pa}, {"at_us", t1}, {"sm", 40}}, {{"pid", pa}, {"at_us", t2}, {"sm", 20}}}}}}}};
  dir_.write("scenario.json", nlohmann::json{{"gpus", {gpu}}}.dump());
  set_step(0);
  const std::string config = test_config(
      1000, 30,
      "[topology]\nnvml_library = \"" FAKE_NVML_PATH "\"\n[gpu]\ninterval_ms = 20\n[probes]\nenabled = false\n"
      "[metering]\nenabled = false\nstate_dir = \"" + (dir_ / "state").string() + "\"\n");
  const std::map<std::string, std::string> env{{"TALLY_FAKE_NVML_SCENARIO", (dir_ / "scenario.json").string()},
                                               {"TALLY_FAKE_NVML_STEP", (dir_ / "step").string()}};
  const std::string wa = workload_id(cgroup);
  Totals totals;
  auto until = [&](FeedSubscriber& feed, auto&& done) { return fold_until(feed, totals, done); };
  auto total = [&](const std::string& workload, const std::string& k) { return total_of(totals, workload, k); };
  {
    TallydProcess first(config, {}, env);
    const auto endpoint = first.wait_ready();
    ASSERT_TRUE(endpoint) << first.process().stderr_text();
    FeedSubscriber feed(*endpoint, "usage");
    ASSERT_TRUE(wait_until([&] { return now_us() > t1; }, 20s, 10ms));
    set_step(1);
    ASSERT_TRUE(until(feed, [&] { return total(wa, "gpu_sm_ns/VALUE_KIND_MEASURED") == 400'000'000; }))
        << first.process().stderr_text();
    first.process().signal(SIGTERM);
    ASSERT_TRUE(first.process().wait(20s));
  }
  // No agent: the driver takes t2, the GPU spends 3 J.
  set_step(2);
  ASSERT_TRUE(wait_until([&] { return now_us() > t2; }, 20s, 10ms));
  TallydProcess second(config, {}, env);
  const auto endpoint = second.wait_ready();
  ASSERT_TRUE(endpoint) << second.process().stderr_text();
  FeedSubscriber feed(*endpoint, "usage");
  ASSERT_TRUE(until(feed, [&] { return total("gpu:GPU-R", "gpu_energy_mj/VALUE_KIND_MEASURED") == 4000; }))
      << second.process().stderr_text();
  // t1 (40 % of its 1 s period) once, t2 (20 %) once: 400 + 200 ms.
  EXPECT_EQ(total(wa, "gpu_sm_ns/VALUE_KIND_MEASURED"), 600'000'000u);
  EXPECT_EQ(total(wa, "gpu_energy_mj:GPU-R/VALUE_KIND_APPORTIONED"), 1000u) << "what the first agent watched";
  EXPECT_EQ(total("gpu:GPU-R", "gpu_unattributed_energy_mj/VALUE_KIND_APPORTIONED"), 3000u) << "what nobody watched";
  EXPECT_EQ(conservation_broken(totals), "");
}

}  // namespace
}  // namespace tally::test
