// The plan compiled for a node (pure) and the node's GPU device nodes read from /proc: what is restricted, who
// holds which grant, which paths are awaited, and what a plan names that the node cannot honour.

#include "agent/partitioning/policy.hpp"

#include <fstream>

#include <gtest/gtest.h>

#include "agent/partitioning/gpu_nodes.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::partitioning {
namespace {

std::uint64_t bit(unsigned n) { return std::uint64_t{1} << n; }

// Two GPUs; GPU 1 in MIG mode with slices 0 and 1, isolated by /dev/nvidia-caps (major 237).
GpuInventory two_gpus() {
  GpuInventory inventory;
  inventory.caps_major = 237;
  inventory.mig_isolation = MigIsolation::device_files;
  GpuNodes gpu0;
  gpu0.index = 0;
  gpu0.uuid = "GPU-aaaa";
  gpu0.bus_id = "00000000:34:00.0";
  gpu0.node = DeviceNode{kNvidiaMajor, 0, "/dev/nvidia0"};
  GpuNodes gpu1;
  gpu1.index = 1;
  gpu1.uuid = "GPU-bbbb";
  gpu1.bus_id = "00000000:36:00.0";
  gpu1.node = DeviceNode{kNvidiaMajor, 1, "/dev/nvidia1"};
  gpu1.mig_enabled = true;
  gpu1.slices.push_back(SliceNodes{0, 1, 0, "MIG-1", {{237, 12, "/dev/nvidia-caps/nvidia-cap12"}, {237, 13, "/dev/nvidia-caps/nvidia-cap13"}}});
  gpu1.slices.push_back(SliceNodes{1, 2, 0, "MIG-2", {{237, 21, "/dev/nvidia-caps/nvidia-cap21"}, {237, 22, "/dev/nvidia-caps/nvidia-cap22"}}});
  inventory.gpus = {gpu0, gpu1};
  return inventory;
}

const std::map<std::uint64_t, std::string> kCgroups{
    {1, "/"},
    {10, "/system.slice"},
    {11, "/system.slice/inference.service"},
    {12, "/system.slice/inference.service/worker"},
    {13, "/system.slice/trainer.service"},
    {14, "/system.slice/nvidia-persistenced.service"},
    {15, "/user.slice/user-1000.slice/user@1000.service/app.slice/inference.service"},
    {16, "/batch/job-a"},
};

PartitionPlan plan_with(std::vector<Assignment> assignments, DefaultAccess access = DefaultAccess::open) {
  PartitionPlan plan;
  plan.default_access = access;
  plan.assignments = std::move(assignments);
  return plan;
}

TEST(CompilePolicy, AWholeGpuIsExclusiveToItsWorkloadAndSystemClients) {
  const auto policy = compile_policy(plan_with({{"systemd:inference.service", {"0"}, "t:1"}}), two_gpus(), kCgroups, {});
  EXPECT_TRUE(policy.problems.empty());
  ASSERT_EQ(policy.grants.size(), 1u);
  EXPECT_EQ(policy.tables.devices, (std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>{
                                       {{kNvidiaMajor, 0}, bit(0) | kSystemGrant}}))
      << "GPU 1 is named by nobody and the default is open: not restricted";
  // The unit's cgroup and its child (same identity) hold grant 0; a user's unit of the same name does not.
  EXPECT_EQ(policy.tables.cgroups.at(11), bit(0));
  EXPECT_EQ(policy.tables.cgroups.at(12), bit(0));
  EXPECT_FALSE(policy.tables.cgroups.contains(15));
  EXPECT_FALSE(policy.tables.cgroups.contains(13));
  EXPECT_FALSE(policy.tables.cgroups.contains(1)) << "the root never holds grants";
  EXPECT_EQ(policy.tables.cgroups.at(14), kAllGrants) << "nvidia-persistenced is a system client";
  EXPECT_EQ(policy.tables.paths.at("/system.slice/inference.service"), bit(0)) << "awaited before it exists";
  EXPECT_EQ(policy.can_open.at("systemd:inference.service"), (std::set<std::string>{"/dev/nvidia0"}));
  EXPECT_EQ(policy.can_open.size(), 1u) << "system clients open everything: not listed per node";
}

TEST(CompilePolicy, DefaultDenyClosesUnassignedGpusToAllButSystemClients) {
  const auto policy = compile_policy(plan_with({{"systemd:inference.service", {"0"}, "t:1"}}, DefaultAccess::deny),
                                     two_gpus(), kCgroups, {});
  EXPECT_EQ(policy.tables.devices.at({kNvidiaMajor, 1}), kSystemGrant);
  EXPECT_EQ(policy.tables.devices.at({237, 12}), kSystemGrant) << "the slices' capabilities too";
  EXPECT_EQ(policy.tables.devices.at({kNvidiaMajor, 0}), bit(0) | kSystemGrant);
}

TEST(CompilePolicy, ASliceClosesItsCapabilitiesAndLeavesTheGpuNodeOpenWhileAnotherSliceIsFree) {
  const auto policy =
      compile_policy(plan_with({{"cgroup:/batch/job-a", {"GPU-bbbb/mig/1"}, "t:1"}}), two_gpus(), kCgroups, {});
  EXPECT_TRUE(policy.problems.empty()) << policy.problems.front();
  EXPECT_EQ(policy.tables.devices.at({237, 21}), bit(0) | kSystemGrant);
  EXPECT_EQ(policy.tables.devices.at({237, 22}), bit(0) | kSystemGrant);
  EXPECT_FALSE(policy.tables.devices.contains({kNvidiaMajor, 1})) << "slice 0 is free: its users need /dev/nvidia1";
  EXPECT_FALSE(policy.tables.devices.contains({237, 12}));
  EXPECT_EQ(policy.tables.cgroups.at(16), bit(0));
  EXPECT_EQ(policy.grants[0].target, "1/mig/1");

  // Both slices given: now the GPU's node is restricted to their holders.
  const auto both = compile_policy(plan_with({{"cgroup:/batch/job-a", {"1/mig/1"}, "t:1"},
                                              {"systemd:trainer.service", {"1/mig/0"}, "t:2"}}),
                                   two_gpus(), kCgroups, {});
  EXPECT_EQ(both.tables.devices.at({kNvidiaMajor, 1}), bit(0) | bit(1) | kSystemGrant);
  EXPECT_EQ(both.tables.cgroups.at(13), bit(1));
}

TEST(CompilePolicy, WhatTheNodeCannotHonourIsSaidAndLeftOut) {
  auto inventory = two_gpus();
  inventory.mig_isolation = MigIsolation::proc_files;
  const auto policy = compile_policy(plan_with({{"systemd:inference.service", {"7", "1/mig/0", "1/mig/5", "0"}, "t:3"}}),
                                     inventory, kCgroups, {});
  ASSERT_EQ(policy.problems.size(), 3u);
  EXPECT_EQ(policy.problems[0], "t:3: GPU '7' is not on this node");
  EXPECT_NE(policy.problems[1].find("cannot be isolated by device policy"), std::string::npos) << policy.problems[1];
  EXPECT_EQ(policy.problems[2], "t:3: GPU 1 has no MIG slice 5");
  EXPECT_EQ(policy.grants.size(), 1u) << "GPU 0 is still assigned";
}

TEST(CompilePolicy, TallydsOwnCgroupHoldsEveryGrantUnlessItIsTheRoot) {
  const auto plan = plan_with({{"systemd:inference.service", {"0"}, "t:1"}});
  const auto own = compile_policy(plan, two_gpus(), kCgroups, {}, CgroupRef{99, "/system.slice/tally.service"});
  EXPECT_EQ(own.tables.cgroups.at(99), kAllGrants);
  const auto root = compile_policy(plan, two_gpus(), kCgroups, {}, CgroupRef{1, "/"});
  EXPECT_FALSE(root.tables.cgroups.contains(1));
}

TEST(CompilePolicy, NothingRestrictedNeedsNoCgroupEntries) {
  const auto policy = compile_policy(PartitionPlan{}, two_gpus(), kCgroups, {});
  EXPECT_EQ(policy.tables, PolicyTables{});
}

TEST(CompilePolicy, ANewCgroupGetsTheGrantsOfItsIdentity) {
  const auto plan = plan_with({{"k8s:pod:0a1b2c3d-0000-4000-8000-00000000abcd", {"0"}, "t:1"}});
  const auto policy = compile_policy(plan, two_gpus(), kCgroups, {});
  EXPECT_EQ(grants_for_path(policy, plan,
                            "/kubepods.slice/kubepods-burstable.slice/"
                            "kubepods-burstable-pod0a1b2c3d_0000_4000_8000_00000000abcd.slice",
                            {}),
            bit(0));
  EXPECT_EQ(grants_for_path(policy, plan,
                            "/user.slice/user-1000.slice/user@1000.service/kubepods/"
                            "pod0a1b2c3d-0000-4000-8000-00000000abcd",
                            {}),
            std::nullopt)
      << "a spoof below a user's delegated cgroup is not the pod: no entry";
}

// Revocation (budgets' revoke-gpu). GPU 0 is assigned, GPU 1 (MIG, no slice assigned) is open to every workload.
const std::set<std::string> kTrainerRevoked{"systemd:trainer.service"};

TEST(CompilePolicyRevoked, ARevokedWorkloadHoldsAnExplicitZeroAndTheOpenGpuIsClosedToItOnly) {
  const auto plan = plan_with({{"systemd:inference.service", {"0"}, "t:1"}});
  const auto policy = compile_policy(plan, two_gpus(), kCgroups, {}, std::nullopt, kTrainerRevoked);
  EXPECT_EQ(policy.tables.devices, (std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>{
                                       {{kNvidiaMajor, 0}, bit(0) | kSystemGrant},
                                       {{kNvidiaMajor, 1}, kOpenGrant | kSystemGrant}}))
      << "the open GPU's node gets kOpenGrant; the assigned one keeps its grants; free slices' capabilities stay open";
  EXPECT_EQ(policy.tables.cgroups.at(13), 0u) << "the revoked unit: an explicit 0";
  EXPECT_EQ(policy.tables.cgroups.at(1), kOpenGrant) << "the root: every cgroup without an entry keeps open GPUs";
  EXPECT_EQ(policy.tables.cgroups.at(11), bit(0) | kOpenGrant) << "an assigned workload keeps the open GPUs too";
  EXPECT_EQ(policy.tables.cgroups.at(12), bit(0) | kOpenGrant);
  EXPECT_EQ(policy.tables.cgroups.at(14), kAllGrants) << "a system client";
  EXPECT_FALSE(policy.tables.cgroups.contains(16)) << "unassigned: inherits the root's kOpenGrant";
  EXPECT_EQ(policy.tables.paths.at("/system.slice/trainer.service"), 0u) << "awaited with 0";
  EXPECT_EQ(policy.tables.paths.at("/system.slice/inference.service"), bit(0) | kOpenGrant);
  EXPECT_EQ(policy.revoked, kTrainerRevoked);
  EXPECT_EQ(policy.can_open.at("systemd:inference.service"), (std::set<std::string>{"/dev/nvidia0"}))
      << "open GPUs are not listed as restricted nodes it may open";
  EXPECT_FALSE(policy.can_open.contains("systemd:trainer.service"));
  // A new cgroup of the revoked unit (its identity) gets an explicit 0; an unassigned one needs no entry.
  EXPECT_EQ(grants_for_path(policy, plan, "/system.slice/trainer.service/step", {}), std::optional<std::uint64_t>(0));
  EXPECT_EQ(grants_for_path(policy, plan, "/batch/job-b", {}), std::nullopt);
  EXPECT_EQ(grants_for_path(policy, plan, "/system.slice/inference.service/w2", {}), bit(0) | kOpenGrant);
}

TEST(CompilePolicyRevoked, ARevocationWinsOverAnAssignment) {
  const auto plan =
      plan_with({{"systemd:inference.service", {"0"}, "t:1"}, {"cgroup:/batch/job-a", {"1/mig/0"}, "t:2"}});
  const auto policy = compile_policy(plan, two_gpus(), kCgroups, {}, std::nullopt,
                                     {"systemd:inference.service", "cgroup:/batch/job-a"});
  EXPECT_EQ(policy.tables.cgroups.at(11), 0u);
  EXPECT_EQ(policy.tables.cgroups.at(12), 0u) << "the unit's child is the unit (identity)";
  EXPECT_EQ(policy.tables.cgroups.at(16), 0u) << "revoked by its cgroup path";
  EXPECT_EQ(policy.tables.paths.at("/system.slice/inference.service"), 0u);
  EXPECT_EQ(policy.tables.paths.at("/batch/job-a"), 0u);
  EXPECT_TRUE(policy.can_open.empty());
  EXPECT_EQ(policy.tables.devices.at({kNvidiaMajor, 0}), bit(0) | kSystemGrant) << "still assigned, to nobody now";
  // GPU 1's node stays open (slice 1 is nobody's) and so gets kOpenGrant; the assigned slice's capabilities keep
  // their grant, the free slice's are not restricted.
  EXPECT_EQ(policy.tables.devices.at({kNvidiaMajor, 1}), kOpenGrant | kSystemGrant);
  EXPECT_EQ(policy.tables.devices.at({237, 12}), bit(1) | kSystemGrant);
  EXPECT_FALSE(policy.tables.devices.contains({237, 21}));
  const auto listed =
      std::find_if(policy.cgroups.begin(), policy.cgroups.end(), [](const CgroupGrant& c) { return c.id == 11; });
  ASSERT_NE(listed, policy.cgroups.end());
  EXPECT_EQ(listed->workload, "systemd:inference.service");
  EXPECT_EQ(listed->grants, 0u);
}

TEST(CompilePolicyRevoked, DefaultDenyGpusGetNoOpenGrant) {
  const auto policy = compile_policy(plan_with({{"systemd:inference.service", {"0"}, "t:1"}}, DefaultAccess::deny),
                                     two_gpus(), kCgroups, {}, std::nullopt, kTrainerRevoked);
  EXPECT_EQ(policy.tables.devices.at({kNvidiaMajor, 1}), kSystemGrant) << "closed to workloads already";
  EXPECT_EQ(policy.tables.cgroups.at(13), 0u);
}

TEST(CompilePolicyRevoked, AmdGpusCloseTheirRenderAndCardNodesNotKfd) {
  GpuInventory inventory;
  GpuNodes amd;
  amd.vendor = "amd";
  amd.node = DeviceNode{226, 128, "/dev/dri/renderD128"};
  amd.also = {DeviceNode{226, 1, "/dev/dri/card1"}};
  inventory.gpus = {amd};
  const auto policy = compile_policy(PartitionPlan{}, inventory, kCgroups, {}, std::nullopt, kTrainerRevoked);
  EXPECT_EQ(policy.tables.devices, (std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>{
                                       {{226, 1}, kOpenGrant | kSystemGrant}, {{226, 128}, kOpenGrant | kSystemGrant}}))
      << "a plan that restricts nothing still closes the GPUs to the revoked workload";
  EXPECT_EQ(policy.tables.cgroups.at(13), 0u);
  EXPECT_EQ(policy.tables.cgroups.at(1), kOpenGrant);
}

TEST(CompilePolicyRevoked, WithNothingRevokedTheTablesAreThePlansAlone) {
  const std::vector<PartitionPlan> plans{
      PartitionPlan{},
      plan_with({{"systemd:inference.service", {"0"}, "t:1"}}),
      plan_with({{"cgroup:/batch/job-a", {"1/mig/1"}, "t:1"}}),
      plan_with({{"systemd:inference.service", {"0"}, "t:1"}}, DefaultAccess::deny),
  };
  for (const PartitionPlan& plan : plans) {
    const auto plain = compile_policy(plan, two_gpus(), kCgroups, {});
    const auto revoked = compile_policy(plan, two_gpus(), kCgroups, {}, std::nullopt, kTrainerRevoked);
    const auto restored = compile_policy(plan, two_gpus(), kCgroups, {}, std::nullopt, {});
    EXPECT_EQ(restored.tables, plain.tables);
    EXPECT_NE(revoked.tables, plain.tables);
    EXPECT_FALSE(plain.tables.cgroups.contains(1)) << "the root holds nothing";
    for (const auto& [device, grants] : plain.tables.devices) EXPECT_EQ(grants & kOpenGrant, 0u);
    for (const auto& [id, grants] : plain.tables.cgroups) {
      if (grants != kAllGrants) {
        EXPECT_EQ(grants & kOpenGrant, 0u);
      }
    }
  }
}

TEST(CompilePolicy, AtMost62GrantsTheRestIsRefused) {
  GpuInventory inventory;
  PartitionPlan plan;
  Assignment assignment{"systemd:inference.service", {}, "t:1"};
  for (unsigned n = 0; n < 63; ++n) {
    GpuNodes gpu;
    gpu.index = n;
    gpu.node = DeviceNode{kNvidiaMajor, n, "/dev/nvidia" + std::to_string(n)};
    inventory.gpus.push_back(gpu);
    assignment.gpus.push_back(std::to_string(n));
  }
  plan.assignments = {assignment};
  const auto policy = compile_policy(plan, inventory, kCgroups, {});
  EXPECT_EQ(policy.grants.size(), 62u);
  ASSERT_EQ(policy.problems.size(), 1u);
  EXPECT_NE(policy.problems[0].find("more than 62"), std::string::npos) << policy.problems[0];
  EXPECT_EQ(policy.tables.cgroups.at(11) & kOpenGrant, 0u) << "bit 62 is never a plan's grant";
}

TEST(ForeseeablePaths, AreOnlyPathsTheIdentityRulesGiveThatWorkload) {
  const auto pod = foreseeable_paths("k8s:pod:0a1b2c3d-0000-4000-8000-00000000abcd", {});
  EXPECT_NE(std::find(pod.begin(), pod.end(),
                      "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b2c3d_0000_4000_8000_00000000abcd.slice"),
            pod.end());
  EXPECT_NE(std::find(pod.begin(), pod.end(), "/kubepods/burstable/pod0a1b2c3d-0000-4000-8000-00000000abcd"), pod.end());
  for (const auto& path : pod) {
    EXPECT_EQ(identify_cgroup(path).id, "k8s:pod:0a1b2c3d-0000-4000-8000-00000000abcd") << path;
  }
  EXPECT_EQ(foreseeable_paths("systemd:inference.service", {}),
            (std::vector<std::string>{"/system.slice/inference.service"}));
  EXPECT_EQ(foreseeable_paths("slurm:job:42", {}),
            (std::vector<std::string>{"/system.slice/slurmstepd.scope/job_42", "/slurm/job_42"}));
  EXPECT_EQ(foreseeable_paths("cgroup:/batch/x", {}), (std::vector<std::string>{"/batch/x"}));
  const auto user = foreseeable_paths("user:1000:jupyter.service", {});
  EXPECT_NE(std::find(user.begin(), user.end(),
                      "/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service"),
            user.end());
  for (const auto& path : user) EXPECT_EQ(identify_cgroup(path).id, "user:1000:jupyter.service") << path;
  const std::string id(64, 'a');
  const auto container = foreseeable_paths("docker:" + id, {});
  EXPECT_NE(std::find(container.begin(), container.end(), "/system.slice/docker-" + id + ".scope"), container.end());
  EXPECT_NE(std::find(container.begin(), container.end(), "/docker/" + id), container.end()) << "cgroupfs driver";
  for (const auto& path : container) EXPECT_EQ(identify_cgroup(path).id, "docker:" + id) << path;
}

// Writes `text` to `relative` below the fake root, making its directories.
void write_file(const test::TempDir& root, const std::string& relative, const std::string& text) {
  const auto path = root.path() / relative;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// /proc as the NVIDIA driver writes it, without NVML.
TEST(GpuInventory, ReadsMinorsAndMigCapabilitiesFromProc) {
  test::TempDir root;
  auto write = [&](const std::string& relative, const std::string& text) { write_file(root, relative, text); };
  write("proc/devices", "Character devices:\n  1 mem\n195 nvidia-frontend\n237 nvidia-caps\n511 nvidia-uvm\n\nBlock devices:\n237 weird\n");
  write("proc/driver/nvidia/gpus/0000:36:00.0/information",
        "Model: \t\t NVIDIA H200\nIRQ:   \t\t 112\nGPU UUID: \t GPU-bbbb\nBus Location: \t 0000:36:00.0\nDevice Minor: \t 3\n");
  write("proc/driver/nvidia/gpus/0000:34:00.0/information",
        "Model: \t\t NVIDIA H200\nGPU UUID: \t GPU-aaaa\nBus Location: \t 0000:34:00.0\nDevice Minor: \t 2\n");
  write("proc/driver/nvidia-caps/mig-minors", "config 1\nmonitor 2\ngpu2/gi1/access 12\ngpu2/gi1/ci0/access 13\n");
  const auto inventory = read_gpu_inventory(nullptr, FsRoot(root.path()));
  EXPECT_EQ(inventory.caps_major, 237u) << "the block device of the same number is not it";
  EXPECT_EQ(inventory.mig_isolation, MigIsolation::device_files);
  ASSERT_EQ(inventory.gpus.size(), 2u);
  EXPECT_EQ(inventory.gpus[0].uuid, "GPU-aaaa") << "ordered by bus id, as NVML orders them";
  ASSERT_TRUE(inventory.gpus[0].node);
  EXPECT_EQ(inventory.gpus[0].node->minor, 2u);
  EXPECT_EQ(inventory.gpus[1].node->path, "/dev/nvidia3");
  EXPECT_EQ(inventory.find("0000:36:00.0"), &inventory.gpus[1]);
  EXPECT_EQ(inventory.find("00000000:36:00.0"), &inventory.gpus[1]) << "NVML's form of the bus id";
  EXPECT_EQ(inventory.find("gpu-AAAA"), &inventory.gpus[0]);
  EXPECT_EQ(inventory.find("1"), &inventory.gpus[1]);
  EXPECT_EQ(inventory.find("2"), nullptr);
}

// AMD GPUs from /sys/class/drm: per GPU its render node and card node (major 226), after the NVIDIA GPUs; an
// assignment closes both to others, and /dev/kfd (one node for all GPUs) is never restricted.
TEST(GpuInventory, AmdGpusByTheirDrmNodes) {
  test::TempDir root;
  auto write = [&](const std::string& relative, const std::string& text) { write_file(root, relative, text); };
  auto drm = [&](const std::string& entry, const std::string& dev, const std::string& bus_id, const std::string& vendor) {
    write("sys/devices/pci0000:c0/" + bus_id + "/vendor", vendor + "\n");
    write("sys/devices/pci0000:c0/" + bus_id + "/device", "0x74a1\n");
    write("sys/class/drm/" + entry + "/dev", dev + "\n");
    std::filesystem::create_directory_symlink("../../../devices/pci0000:c0/" + bus_id,
                                              root.path() / "sys/class/drm" / entry / "device");
  };
  write("proc/driver/nvidia/gpus/0000:34:00.0/information", "GPU UUID: \t GPU-aaaa\nDevice Minor: \t 0\n");
  drm("renderD129", "226:129", "0000:c2:00.0", "0x1002");
  drm("renderD128", "226:128", "0000:c1:00.0", "0x1002");
  drm("card1", "226:1", "0000:c1:00.0", "0x1002");
  drm("card2", "226:2", "0000:c2:00.0", "0x1002");
  drm("card1-DP-1", "0:0", "0000:c1:00.0", "0x1002");   // a connector, not a node
  drm("renderD130", "226:130", "0000:03:00.0", "0x8086");  // another vendor's
  const auto inventory = read_gpu_inventory(nullptr, FsRoot(root.path()));
  ASSERT_EQ(inventory.gpus.size(), 3u);
  EXPECT_EQ(inventory.gpus[0].vendor, "nvidia");
  const GpuNodes& amd = inventory.gpus[1];
  EXPECT_EQ(amd.vendor, "amd");
  EXPECT_EQ(amd.index, 1u) << "numbered after the NVIDIA GPUs, in PCI bus order";
  EXPECT_EQ(amd.bus_id, "0000:c1:00.0");
  EXPECT_EQ(amd.node, (DeviceNode{226, 128, "/dev/dri/renderD128"}));
  EXPECT_EQ(amd.also, (std::vector<DeviceNode>{{226, 1, "/dev/dri/card1"}}));
  EXPECT_EQ(inventory.find("0000:c2:00.0"), &inventory.gpus[2]);

  const auto policy =
      compile_policy(plan_with({{"systemd:trainer.service", {"0000:c1:00.0"}, "t:1"}}), inventory, kCgroups, {});
  EXPECT_TRUE(policy.problems.empty());
  EXPECT_EQ(policy.tables.devices, (std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>{
                                       {{226, 1}, bit(0) | kSystemGrant}, {{226, 128}, bit(0) | kSystemGrant}}));
  EXPECT_EQ(policy.tables.cgroups.at(13), bit(0));
}

TEST(GpuInventory, MissingProcFilesMeanNoGpusAndNoMig) {
  test::TempDir root;
  const auto inventory = read_gpu_inventory(nullptr, FsRoot(root.path()));
  EXPECT_TRUE(inventory.gpus.empty());
  EXPECT_EQ(inventory.mig_isolation, MigIsolation::none);
  EXPECT_FALSE(inventory.caps_major);
}

}  // namespace
}  // namespace tally::partitioning
