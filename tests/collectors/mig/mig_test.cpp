// MIG geometry: plan_mig on geometries written by hand (pure), and read_mig_geometry / reconcile_mig through the
// production dlopen loader against the fake libnvidia-ml.so.1, whose "mig_model" GPUs carry the A100/H100/H200
// profile tables and change as the calls arrive (tests/fake_nvml/README.md).
#include "collectors/mig/mig.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <nlohmann/json.hpp>

#include "tests/support/temp_dir.hpp"

namespace tally::collectors {
namespace {

using Layout = std::vector<std::pair<std::string, unsigned>>;  // (profile, placement start), by start

Layout layout_of(const MigGeometry& geometry) {
  Layout out;
  for (const MigGpuInstance& instance : geometry.instances) {
    out.emplace_back(instance.profile_name, instance.placement_start);
  }
  return out;
}

std::vector<std::string> described(const std::vector<MigStep>& steps) {
  std::vector<std::string> out;
  for (const MigStep& step : steps) out.push_back(step.describe());
  return out;
}

std::string reasons(const std::vector<MigRefusal>& refusals) {
  std::string out;
  for (const MigRefusal& refusal : refusals) out += refusal.reason + "\n";
  return out;
}

// ---- plan_mig: pure -----------------------------------------------------------------------------------------------

// A100-SXM4-80GB's table as the driver reports it (the same one the fake carries).
std::vector<MigProfile> a100_profiles() {
  return {{19, 0, "1g.10gb", 1, 7, 9856, {0, 1, 2, 3, 4, 5, 6}, 1},
          {20, 7, "1g.10gb+me", 1, 1, 9856, {0, 1, 2, 3, 4, 5, 6}, 1},
          {15, 9, "1g.20gb", 1, 4, 19968, {0, 2, 4, 6}, 2},
          {14, 1, "2g.20gb", 2, 3, 19968, {0, 2, 4}, 2},
          {9, 2, "3g.40gb", 3, 2, 40192, {0, 4}, 4},
          {5, 3, "4g.40gb", 4, 1, 40192, {0}, 4},
          {0, 4, "7g.80gb", 7, 1, 80384, {0}, 8}};
}

MigGpuInstance instance(unsigned id, const std::string& profile, unsigned start, std::vector<unsigned> pids = {}) {
  for (const MigProfile& p : a100_profiles()) {
    if (p.name == profile) return {id, p.id, profile, start, p.placement_size, {0}, std::move(pids)};
  }
  ADD_FAILURE() << "no profile " << profile;
  return {};
}

MigGeometry a100(std::vector<MigGpuInstance> instances) {
  MigGeometry geometry;
  geometry.supported = geometry.enabled = geometry.pending_enabled = true;
  geometry.profiles = a100_profiles();
  geometry.instances = std::move(instances);
  return geometry;
}

std::vector<MigPlacement> placements(const Layout& layout) {
  std::vector<MigPlacement> out;
  for (const auto& [profile, start] : layout) out.push_back({profile, start});
  return out;
}

TEST(PlanMig, KeepsWhatIsAlreadyThere) {
  const MigPlan plan = plan_mig(a100({instance(1, "3g.40gb", 0), instance(2, "3g.40gb", 4)}),
                                {true, {"3g.40gb", "3g.40gb"}});
  EXPECT_TRUE(plan.refusals.empty()) << reasons(plan.refusals);
  EXPECT_TRUE(plan.steps.empty());
  EXPECT_EQ(plan.layout, placements({{"3g.40gb", 0}, {"3g.40gb", 4}}));
}

TEST(PlanMig, DestroysWhatIsNotWantedThenCreatesTheRest) {
  const MigPlan plan = plan_mig(a100({instance(1, "1g.10gb", 0), instance(2, "3g.40gb", 4)}),
                                {true, {"2g.20gb", "3g.40gb", "2g.20gb"}});
  EXPECT_TRUE(plan.refusals.empty()) << reasons(plan.refusals);
  EXPECT_EQ(described(plan.steps),
            (std::vector<std::string>{"destroy GPU instance 1 (1g.10gb at slice 0)", "create 2g.20gb at slice 0",
                                      "create 2g.20gb at slice 2"}));
  EXPECT_EQ(plan.layout, placements({{"2g.20gb", 0}, {"2g.20gb", 2}, {"3g.40gb", 4}}));
}

TEST(PlanMig, SearchesPastTheFirstFit) {
  // First fit puts 3g at 0, 2g at 4, 1g at 6 and has no room for the last 1g; 3g at 4 leaves room for all.
  const MigPlan plan = plan_mig(a100({}), {true, {"1g.10gb", "2g.20gb", "1g.10gb", "3g.40gb"}});
  EXPECT_TRUE(plan.refusals.empty()) << reasons(plan.refusals);
  EXPECT_EQ(plan.layout, placements({{"2g.20gb", 0}, {"1g.10gb", 2}, {"1g.10gb", 3}, {"3g.40gb", 4}}));
  EXPECT_EQ(plan.steps.size(), 4u);
}

TEST(PlanMig, MovesAnIdleInstanceOnlyWhenNothingFitsAroundIt) {
  const MigPlan plan = plan_mig(a100({instance(5, "1g.10gb", 3)}), {true, {"4g.40gb", "1g.10gb"}});
  EXPECT_TRUE(plan.refusals.empty()) << reasons(plan.refusals);
  EXPECT_EQ(described(plan.steps),
            (std::vector<std::string>{"destroy GPU instance 5 (1g.10gb at slice 3)", "create 4g.40gb at slice 0",
                                      "create 1g.10gb at slice 4"}));
}

TEST(PlanMig, KeepsTheBusyInstanceWhenFewerAreWanted) {
  const MigPlan plan =
      plan_mig(a100({instance(1, "1g.10gb", 0), instance(2, "1g.10gb", 1, {4242})}), {true, {"1g.10gb"}});
  EXPECT_TRUE(plan.refusals.empty()) << reasons(plan.refusals);
  EXPECT_EQ(described(plan.steps), (std::vector<std::string>{"destroy GPU instance 1 (1g.10gb at slice 0)"}));
}

TEST(PlanMig, RefusesAnUnknownProfile) {
  const MigPlan plan = plan_mig(a100({}), {true, {"3g.40gb", "5g.50gb"}});
  ASSERT_EQ(plan.refusals.size(), 1u);
  EXPECT_NE(plan.refusals[0].reason.find("profile 5g.50gb is not offered by this GPU (offered: 1g.10gb, 1g.10gb+me"),
            std::string::npos)
      << plan.refusals[0].reason;
  EXPECT_TRUE(plan.steps.empty());
}

TEST(PlanMig, RefusesWhatDoesNotFit) {
  const MigPlan two_7g = plan_mig(a100({}), {true, {"7g.80gb", "1g.10gb"}});
  ASSERT_EQ(two_7g.refusals.size(), 1u);
  EXPECT_EQ(two_7g.refusals[0].reason, "the wanted profiles do not fit: 7g.80gb, 1g.10gb");
  EXPECT_TRUE(two_7g.steps.empty());

  const MigPlan too_many = plan_mig(a100({}), {true, {"4g.40gb", "4g.40gb"}});
  ASSERT_EQ(too_many.refusals.size(), 1u);
  EXPECT_EQ(too_many.refusals[0].reason, "the wanted profiles do not fit: 2 x 4g.40gb, this GPU allows 1");

  // A busy instance stays where it is, so the 7g cannot come.
  const MigPlan beside_busy = plan_mig(a100({instance(3, "1g.10gb", 2, {77})}), {true, {"1g.10gb", "7g.80gb"}});
  ASSERT_EQ(beside_busy.refusals.size(), 1u);
  EXPECT_EQ(beside_busy.refusals[0].reason, "the wanted profiles do not fit: 7g.80gb beside the busy 1g.10gb");
}

TEST(PlanMig, RefusesToDestroyABusyInstance) {
  const MigPlan plan = plan_mig(a100({instance(2, "1g.10gb", 0, {4242, 4243}), instance(3, "1g.10gb", 1)}),
                                {true, {"3g.40gb"}});
  ASSERT_EQ(plan.refusals.size(), 1u);
  EXPECT_EQ(plan.refusals[0].reason, "GPU instance 2 (1g.10gb) is in use by pid 4242, 4243");
  EXPECT_TRUE(plan.steps.empty());
}

TEST(PlanMig, RefusesAModeChangeThatNeedsAResetOrWhileInUse) {
  MigGeometry pending;
  pending.supported = true;
  pending.pending_enabled = true;  // enabled at the next reset
  const MigPlan reset = plan_mig(pending, {true, {"3g.40gb"}});
  ASSERT_EQ(reset.refusals.size(), 1u);
  EXPECT_NE(reset.refusals[0].reason.find("MIG mode change needs a GPU reset (pending mode differs"),
            std::string::npos);

  MigGeometry busy;
  busy.supported = true;
  busy.gpu_pids = {7};
  const MigPlan in_use = plan_mig(busy, {true, {}});
  ASSERT_EQ(in_use.refusals.size(), 1u);
  EXPECT_EQ(in_use.refusals[0].reason, "MIG mode change refused: the GPU is in use by pid 7");

  const MigPlan unsupported = plan_mig(MigGeometry{}, {true, {}});
  ASSERT_EQ(unsupported.refusals.size(), 1u);
  EXPECT_TRUE(plan_mig(MigGeometry{}, {false, {}}).refusals.empty());
}

TEST(PlanMig, WholeGpuDestroysEverythingThenDisables) {
  const MigPlan plan = plan_mig(a100({instance(1, "3g.40gb", 0), instance(2, "4g.40gb", 4)}), {false, {}});
  EXPECT_EQ(described(plan.steps),
            (std::vector<std::string>{"destroy GPU instance 1 (3g.40gb at slice 0)",
                                      "destroy GPU instance 2 (4g.40gb at slice 4)", "disable MIG mode"}));
}

TEST(PlanMig, EnablingFirstPlansTheInstancesOnceProfilesAreKnown) {
  MigGeometry off;
  off.supported = true;
  const MigPlan plan = plan_mig(off, {true, {"3g.40gb"}});
  EXPECT_EQ(described(plan.steps), (std::vector<std::string>{"enable MIG mode"}));
  EXPECT_TRUE(plan.replan_after_enable);
}

// ---- Through the fake NVML ----------------------------------------------------------------------------------------

// Points the fake at a scenario for the life of the test, and opens NVML (a fresh fake state: the last
// nvmlShutdown dropped the previous one).
class FakeGpu {
 public:
  explicit FakeGpu(nlohmann::json gpu) {
    gpu["bus_id"] = "00000000:34:00.0";
    const auto path = dir_.write("scenario.json", nlohmann::json{{"gpus", {gpu}}}.dump(2));
    setenv("TALLY_FAKE_NVML_SCENARIO", path.c_str(), 1);
    auto nvml = NvmlLibrary::open(FAKE_NVML_PATH);
    if (!nvml) {
      ADD_FAILURE() << nvml.error().message;
      return;
    }
    nvml_ = std::move(*nvml);
    EXPECT_EQ(nvml_->api().nvmlDeviceGetHandleByIndex_v2(0, &gpu_), NVML_SUCCESS);
  }
  ~FakeGpu() {
    nvml_.reset();
    unsetenv("TALLY_FAKE_NVML_SCENARIO");
  }
  FakeGpu(const FakeGpu&) = delete;
  FakeGpu& operator=(const FakeGpu&) = delete;

  const NvmlLibrary& nvml() const { return *nvml_; }
  nvmlDevice_t gpu() const { return gpu_; }
  MigGeometry read() const {
    auto geometry = read_mig_geometry(*nvml_, gpu_);
    EXPECT_TRUE(geometry) << geometry.error().message;
    return geometry ? std::move(*geometry) : MigGeometry{};
  }

 private:
  test::TempDir dir_;
  std::unique_ptr<NvmlLibrary> nvml_;
  nvmlDevice_t gpu_ = nullptr;
};

nlohmann::json model(const std::string& name, unsigned mig_mode, nlohmann::json instances = nlohmann::json::array()) {
  return {{"mig_model", name}, {"mig_mode", mig_mode}, {"gpu_instances", std::move(instances)}};
}

TEST(ReadMigGeometry, A100ProfilesInstancesAndProcesses) {
  nlohmann::json gpu = model("A100-SXM4-80GB", 1,
                             {{{"profile", "3g.40gb"}, {"start", 4}},
                              {{"profile", "1g.10gb"}, {"start", 0}, {"processes", {{{"pid", 4242}}}}}});
  gpu["minor"] = 3;
  FakeGpu fake(gpu);
  EXPECT_TRUE(fake.nvml().missing_optional(kNvmlPartitioning).empty());
  const MigGeometry geometry = fake.read();
  EXPECT_TRUE(geometry.supported && geometry.enabled && geometry.pending_enabled);
  ASSERT_EQ(geometry.profiles.size(), 7u);
  std::vector<std::string> names;
  for (const MigProfile& p : geometry.profiles) names.push_back(p.name);
  // In NVML_GPU_INSTANCE_PROFILE_* order: 1_SLICE, 2_SLICE, 3_SLICE, 4_SLICE, 7_SLICE, 1_SLICE_REV1, 1_SLICE_REV2.
  EXPECT_EQ(names, (std::vector<std::string>{"1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "1g.10gb+me",
                                             "1g.20gb"}));
  const MigProfile& one = geometry.profiles[0];
  EXPECT_EQ(one.id, 19u);
  EXPECT_EQ(one.nvml_profile, 0u);
  EXPECT_EQ(one.placements, (std::vector<unsigned>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(one.placement_size, 1u);
  EXPECT_EQ(one.instance_count, 7u);
  const MigProfile& twenty = geometry.profiles[6];
  EXPECT_EQ(twenty.id, 15u);
  EXPECT_EQ(twenty.nvml_profile, 9u);
  EXPECT_EQ(twenty.placements, (std::vector<unsigned>{0, 2, 4, 6}));
  EXPECT_EQ(twenty.placement_size, 2u);
  const MigProfile& three = geometry.profiles[2];
  EXPECT_EQ(three.id, 9u);
  EXPECT_EQ(three.placements, (std::vector<unsigned>{0, 4}));
  EXPECT_EQ(three.placement_size, 4u);
  EXPECT_EQ(geometry.profiles[4].placement_size, 8u);
  EXPECT_EQ(geometry.profiles[4].memory_mib, 80384u);

  ASSERT_EQ(geometry.instances.size(), 2u);
  EXPECT_EQ(layout_of(geometry), (Layout{{"1g.10gb", 0}, {"3g.40gb", 4}}));
  EXPECT_EQ(geometry.instances[0].pids, (std::vector<unsigned>{4242}));
  EXPECT_TRUE(geometry.instances[1].pids.empty());
  EXPECT_EQ(geometry.instances[0].compute_instance_ids, (std::vector<unsigned>{0}));
  EXPECT_EQ(geometry.instances[1].profile_id, 9u);
  EXPECT_TRUE(geometry.gpu_pids.empty());

  // The MIG devices other readers see are the instances that exist.
  const NvmlFunctions& api = fake.nvml().api();
  nvmlDevice_t mig = nullptr;
  unsigned id = 0;
  ASSERT_EQ(api.nvmlDeviceGetMigDeviceHandleByIndex(fake.gpu(), 0, &mig), NVML_SUCCESS);
  ASSERT_EQ(api.nvmlDeviceGetGpuInstanceId(mig, &id), NVML_SUCCESS);
  EXPECT_EQ(id, geometry.instances[0].gpu_instance_id);
  EXPECT_EQ(api.nvmlDeviceGetMigDeviceHandleByIndex(fake.gpu(), 2, &mig), NVML_ERROR_NOT_FOUND);
  unsigned minor = 0;
  ASSERT_EQ(api.nvmlDeviceGetMinorNumber(fake.gpu(), &minor), NVML_SUCCESS);
  EXPECT_EQ(minor, 3u);
}

TEST(ReadMigGeometry, H200Profiles) {
  FakeGpu fake(model("H200-SXM5-141GB", 1));
  const MigGeometry geometry = fake.read();
  std::vector<std::string> names;
  for (const MigProfile& p : geometry.profiles) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb", "1g.18gb+me",
                                             "1g.35gb"}));
  ASSERT_EQ(geometry.profiles.size(), 7u);
  EXPECT_EQ(geometry.profiles[2].id, 9u);
  EXPECT_EQ(geometry.profiles[2].placements, (std::vector<unsigned>{0, 4}));
  EXPECT_EQ(geometry.profiles[4].memory_mib, 144384u);
  EXPECT_TRUE(geometry.instances.empty());
}

TEST(ReadMigGeometry, GpuWithoutMigIsNotAnError) {
  FakeGpu fake(nlohmann::json{{"name", "Tesla T4"}, {"processes", {{{"pid", 9}}}}});
  const MigGeometry geometry = fake.read();
  EXPECT_FALSE(geometry.supported);
  unsigned minor = 0;
  EXPECT_EQ(fake.nvml().api().nvmlDeviceGetMinorNumber(fake.gpu(), &minor), NVML_ERROR_NOT_SUPPORTED);
}

TEST(ReconcileMig, CreatesFromEmpty) {
  FakeGpu fake(model("A100-SXM4-80GB", 1));
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"1g.10gb", "3g.40gb", "2g.20gb"}}, false);
  EXPECT_TRUE(outcome.error.empty()) << outcome.error;
  EXPECT_TRUE(outcome.refusals.empty()) << reasons(outcome.refusals);
  EXPECT_TRUE(outcome.changed());
  EXPECT_EQ(described(outcome.done), (std::vector<std::string>{"create 3g.40gb at slice 0", "create 2g.20gb at slice 4",
                                                               "create 1g.10gb at slice 6"}));
  EXPECT_EQ(layout_of(outcome.after), (Layout{{"3g.40gb", 0}, {"2g.20gb", 4}, {"1g.10gb", 6}}));
  for (const MigGpuInstance& instance : outcome.after.instances) EXPECT_EQ(instance.compute_instance_ids.size(), 1u);
  EXPECT_EQ(layout_of(fake.read()), layout_of(outcome.after));
}

TEST(ReconcileMig, EnablesMigThenCreates) {
  FakeGpu fake(model("H100-SXM5-80GB", 0));
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"7g.80gb"}}, false);
  EXPECT_TRUE(outcome.error.empty()) << outcome.error;
  EXPECT_EQ(described(outcome.done), (std::vector<std::string>{"enable MIG mode", "create 7g.80gb at slice 0"}));
  EXPECT_TRUE(outcome.after.enabled);
  EXPECT_EQ(layout_of(outcome.after), (Layout{{"7g.80gb", 0}}));
}

TEST(ReconcileMig, DestroysAndGoesBackToTheWholeGpu) {
  FakeGpu fake(model("A100-SXM4-80GB", 1,
                     {{{"profile", "1g.10gb"}, {"start", 0}}, {{"profile", "1g.10gb"}, {"start", 1}}}));
  const MigOutcome fewer = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"1g.10gb"}}, false);
  EXPECT_TRUE(fewer.error.empty()) << fewer.error;
  EXPECT_EQ(described(fewer.done), (std::vector<std::string>{"destroy GPU instance 2 (1g.10gb at slice 1)"}));
  EXPECT_EQ(layout_of(fewer.after), (Layout{{"1g.10gb", 0}}));

  const MigOutcome whole = reconcile_mig(fake.nvml(), fake.gpu(), {false, {}}, false);
  EXPECT_TRUE(whole.error.empty()) << whole.error;
  EXPECT_EQ(whole.done.back().kind, MigStep::Kind::disable_mig);
  EXPECT_FALSE(whole.after.enabled);
  EXPECT_TRUE(whole.after.instances.empty());
}

TEST(ReconcileMig, RefusesABusyInstanceAndChangesNothing) {
  FakeGpu fake(model("A100-SXM4-80GB", 1,
                     {{{"profile", "1g.10gb"}, {"start", 0}, {"processes", {{{"pid", 4242}}}}}}));
  const Layout before = layout_of(fake.read());
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"3g.40gb"}}, false);
  ASSERT_EQ(outcome.refusals.size(), 1u);
  EXPECT_NE(outcome.refusals[0].reason.find("(1g.10gb) is in use by pid 4242"), std::string::npos);
  EXPECT_TRUE(outcome.done.empty());
  EXPECT_FALSE(outcome.changed());
  EXPECT_EQ(layout_of(fake.read()), before);
}

TEST(ReconcileMig, PartialFailureIsRolledBack) {
  // The second creation fails: the first is destroyed again and the 1g.10gb destroyed before it comes back.
  nlohmann::json gpu = model("A100-SXM4-80GB", 1, {{{"profile", "1g.10gb"}, {"start", 2}}});
  gpu["fail_create_after"] = 1;
  FakeGpu fake(gpu);
  const Layout before = layout_of(fake.read());
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"3g.40gb", "3g.40gb"}}, false);
  EXPECT_TRUE(outcome.rolled_back);
  EXPECT_FALSE(outcome.changed());
  EXPECT_NE(outcome.error.find("nvmlDeviceCreateGpuInstanceWithPlacement failed: Ran out of critical resources"),
            std::string::npos)
      << outcome.error;
  EXPECT_EQ(described(outcome.done),
            (std::vector<std::string>{"destroy GPU instance 1 (1g.10gb at slice 2)", "create 3g.40gb at slice 0"}));
  EXPECT_EQ(layout_of(outcome.after), before);
  EXPECT_EQ(outcome.after.instances.at(0).compute_instance_ids.size(), 1u);
}

TEST(ReconcileMig, AnInjectedErrorFailsTheStepAndTheRollbackSaysSo) {
  // Every creation fails, the rollback's too: the GPU is not back as it was, and the outcome does not claim it is.
  nlohmann::json gpu = model("A100-SXM4-80GB", 1, {{{"profile", "1g.10gb"}, {"start", 0}}});
  gpu["errors"] = {{"nvmlDeviceCreateGpuInstanceWithPlacement", "INSUFFICIENT_RESOURCES"}};
  FakeGpu fake(gpu);
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"7g.80gb"}}, false);
  EXPECT_FALSE(outcome.rolled_back);
  EXPECT_NE(outcome.error.find("rollback failed: undoing \"destroy GPU instance 1 (1g.10gb at slice 0)\""),
            std::string::npos)
      << outcome.error;
  EXPECT_TRUE(outcome.after.instances.empty());
}

TEST(ReconcileMig, VerificationMismatchIsRolledBack) {
  // The fake's driver puts the instance elsewhere than asked: what NVML reports is not the plan.
  nlohmann::json gpu = model("A100-SXM4-80GB", 1);
  gpu["create_misplaced"] = true;
  FakeGpu fake(gpu);
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"3g.40gb"}}, false);
  EXPECT_TRUE(outcome.rolled_back);
  EXPECT_NE(outcome.error.find("verification failed: NVML reports 3g.40gb at slice 4; the plan was 3g.40gb at slice 0"),
            std::string::npos)
      << outcome.error;
  EXPECT_TRUE(outcome.after.instances.empty());
}

TEST(ReconcileMig, DryRunChangesNothing) {
  FakeGpu fake(model("A100-SXM4-80GB", 1, {{{"profile", "1g.10gb"}, {"start", 0}}}));
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"3g.40gb", "3g.40gb"}}, true);
  EXPECT_EQ(described(outcome.planned),
            (std::vector<std::string>{"destroy GPU instance 1 (1g.10gb at slice 0)", "create 3g.40gb at slice 0",
                                      "create 3g.40gb at slice 4"}));
  EXPECT_TRUE(outcome.done.empty());
  EXPECT_EQ(layout_of(fake.read()), (Layout{{"1g.10gb", 0}}));
}

TEST(ReconcileMig, ModeChangeInUseIsRefusedNotForced) {
  nlohmann::json gpu = model("A100-SXM4-80GB", 0);
  gpu["in_use"] = true;
  FakeGpu fake(gpu);
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {"3g.40gb"}}, false);
  ASSERT_EQ(outcome.refusals.size(), 1u);
  EXPECT_NE(outcome.refusals[0].reason.find("in use by another client"), std::string::npos)
      << outcome.refusals[0].reason;
  EXPECT_TRUE(outcome.done.empty());
  EXPECT_FALSE(outcome.after.enabled);
  EXPECT_FALSE(outcome.after.pending_enabled);  // the pending mode was put back
}

TEST(ReconcileMig, ModeChangeNeedingAResetIsReported) {
  nlohmann::json gpu = model("A100-SXM4-80GB", 0);
  gpu["mig_mode_needs_reset"] = true;
  FakeGpu fake(gpu);
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {true, {}}, false);
  ASSERT_EQ(outcome.refusals.size(), 1u);
  EXPECT_EQ(outcome.refusals[0].reason, "MIG mode change needs a GPU reset (pending mode differs)");
  EXPECT_FALSE(outcome.after.enabled);
  EXPECT_FALSE(outcome.after.pending_enabled);
}

TEST(ReconcileMig, RefusedDisableRestoresTheDestroyedInstances) {
  nlohmann::json gpu = model("A100-SXM4-80GB", 1, {{{"profile", "2g.20gb"}, {"start", 2}}});
  gpu["in_use"] = true;
  FakeGpu fake(gpu);
  const MigOutcome outcome = reconcile_mig(fake.nvml(), fake.gpu(), {false, {}}, false);
  ASSERT_EQ(outcome.refusals.size(), 1u);
  EXPECT_TRUE(outcome.rolled_back);
  EXPECT_TRUE(outcome.after.enabled);
  EXPECT_EQ(layout_of(outcome.after), (Layout{{"2g.20gb", 2}}));
}

}  // namespace
}  // namespace tally::collectors
