// The GPU device nodes through NVML (the fake, loaded by the production dlopen path): minors from
// nvmlDeviceGetMinorNumber, slices from the MIG device handles, each slice's capabilities from mig-minors keyed by
// the GPU's minor and the slice's GPU and compute instance ids; and the plan compiled on them.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/partitioning/device_holders.hpp"
#include "agent/partitioning/gpu_nodes.hpp"
#include "agent/partitioning/policy.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::partitioning {
namespace {

TEST(GpuInventoryThroughNvml, SlicesAndTheirCapabilitiesAreTheDriversOwn) {
  test::TempDir dir;
  // An A100 with MIG on and two 3g.40gb instances (GPU instances 1 at slice 0 and 2 at slice 4), its minor 3; a
  // second GPU without MIG, minor 7.
  const nlohmann::json scenario{
      {"gpus",
       {{{"uuid", "GPU-aaaa"}, {"bus_id", "00000000:34:00.0"}, {"mig_model", "A100-SXM4-80GB"}, {"mig_mode", 1},
         {"minor", 3},
         {"gpu_instances",
          {{{"profile", "3g.40gb"}, {"start", 4}, {"id", 2}, {"compute_instances", 1}},
           {{"profile", "3g.40gb"}, {"start", 0}, {"id", 1}, {"compute_instances", 1}}}}},
        {{"uuid", "GPU-bbbb"}, {"bus_id", "00000000:36:00.0"}, {"minor", 7}}}}};
  const auto path = dir.write("scenario.json", scenario.dump());
  ::setenv("TALLY_FAKE_NVML_SCENARIO", path.c_str(), 1);
  auto nvml = collectors::NvmlLibrary::open(FAKE_NVML_PATH);
  ASSERT_TRUE(nvml) << nvml.error().message;
  // /proc as the driver writes it with device-file capabilities (nv_cap_enable_devfs=1).
  std::filesystem::create_directories(dir / "proc/driver/nvidia-caps");
  std::ofstream(dir / "proc/devices") << "Character devices:\n195 nvidia-frontend\n237 nvidia-caps\n";
  std::ofstream(dir / "proc/driver/nvidia-caps/mig-minors")
      << "config 1\nmonitor 2\ngpu3/gi1/access 30\ngpu3/gi1/ci0/access 31\ngpu3/gi2/access 39\n"
         "gpu3/gi2/ci0/access 40\ngpu7/gi1/access 75\n";

  const GpuInventory inventory = read_gpu_inventory(nvml->get(), FsRoot(dir.path()));
  EXPECT_TRUE(inventory.problems.empty()) << inventory.problems.front();
  EXPECT_EQ(inventory.mig_isolation, MigIsolation::device_files);
  ASSERT_EQ(inventory.gpus.size(), 2u);
  const GpuNodes& a100 = inventory.gpus[0];
  ASSERT_TRUE(a100.node);
  EXPECT_EQ(*a100.node, (DeviceNode{kNvidiaMajor, 3, "/dev/nvidia3"}));
  EXPECT_TRUE(a100.mig_enabled);
  ASSERT_EQ(a100.slices.size(), 2u);
  // NVML lists MIG devices by placement: slice 0 is GPU instance 1, slice 1 is GPU instance 2.
  EXPECT_EQ(a100.slices[0].gpu_instance_id, 1u);
  EXPECT_EQ(a100.slices[0].caps, (std::vector<DeviceNode>{{237, 30, "/dev/nvidia-caps/nvidia-cap30"},
                                                           {237, 31, "/dev/nvidia-caps/nvidia-cap31"}}));
  EXPECT_EQ(a100.slices[1].gpu_instance_id, 2u);
  EXPECT_EQ(a100.slices[1].caps, (std::vector<DeviceNode>{{237, 39, "/dev/nvidia-caps/nvidia-cap39"},
                                                           {237, 40, "/dev/nvidia-caps/nvidia-cap40"}}));
  EXPECT_EQ(inventory.gpus[1].node->minor, 7u);
  EXPECT_TRUE(inventory.gpus[1].slices.empty());

  // Slice 1 to one workload: its capabilities are closed to others, the GPU's node stays open (slice 0 is free).
  PartitionPlan plan;
  plan.assignments.push_back(Assignment{"systemd:a.service", {"GPU-aaaa/mig/1"}, "test"});
  const CompiledPolicy policy = compile_policy(plan, inventory, {{5, "/system.slice/a.service"}}, IdentityRules{});
  EXPECT_TRUE(policy.problems.empty()) << policy.problems.front();
  EXPECT_EQ(policy.tables.devices,
            (std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>{{{237, 39}, 1 | kSystemGrant},
                                                                             {{237, 40}, 1 | kSystemGrant}}));
  EXPECT_EQ(policy.tables.cgroups.at(5), 1u);
  nvml->reset();
  ::unsetenv("TALLY_FAKE_NVML_SCENARIO");
}

// A process holding a device node open is found by the node's number, whatever path it opened it by.
TEST(DeviceHolders, FindsTheProcessesThatHoldANodeOpen) {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  // (1, 3)
  ASSERT_GE(fd, 0);
  const auto holders = find_device_holders(FsRoot(), {{1, 3}});
  EXPECT_NE(std::find_if(holders.begin(), holders.end(), [](const DeviceHolder& h) { return h.pid == ::getpid(); }),
            holders.end());
  ::close(fd);
  EXPECT_TRUE(find_device_holders(FsRoot(), {}).empty()) << "nothing asked, nothing scanned";
  const auto none = find_device_holders(FsRoot(), {{1, 254}});  // no such device
  EXPECT_TRUE(none.empty());
}

}  // namespace
}  // namespace tally::partitioning
