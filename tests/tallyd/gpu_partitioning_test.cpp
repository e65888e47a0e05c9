// GPU partitioning's wiring on its own (agent/tallyd/gpu_partitioning): MIG through the fake NVML, the node's /proc
// a fake one (FsRoot), so that a process can be made to hold a MIG capability open. An instance held open is never
// destroyed: its GPU is left as it is, with the reason on the feed; once the holder is gone, the reconcile goes on.
#include "agent/tallyd/gpu_partitioning.hpp"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include "tests/support/temp_dir.hpp"

namespace tally::agent {
namespace {

using nlohmann::json;

TEST(GpuPartitioningMig, AnInstanceHeldOpenIsNotDestroyedAndTheReasonIsAudited) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (mknod of a capability node)";
  test::TempDir dir;
  auto write = [&](const std::string& relative, const std::string& text) {
    std::filesystem::create_directories((dir / relative).parent_path());
    std::ofstream(dir / relative) << text;
  };
  // /proc as the driver writes it (device-file capabilities), and pid 4242 holding GPU instance 2's open.
  write("proc/devices", "Character devices:\n195 nvidia-frontend\n237 nvidia-caps\n");
  write("proc/driver/nvidia-caps/mig-minors",
        "gpu3/gi1/access 30\ngpu3/gi1/ci0/access 31\ngpu3/gi2/access 39\ngpu3/gi2/ci0/access 40\n");
  write("proc/4242/comm", "vllm\n");
  ASSERT_EQ(::mknod((dir / "nvidia-cap39").c_str(), S_IFCHR | 0600, makedev(237, 39)), 0);
  std::filesystem::create_directories(dir / "proc/4242/fd");
  std::filesystem::create_symlink(dir / "nvidia-cap39", dir / "proc/4242/fd/7");
  std::filesystem::create_directory(dir / "cgroup");
  write("scenario.json",
        json{{"gpus",
              {{{"uuid", "GPU-aaaa"}, {"bus_id", "00000000:34:00.0"}, {"mig_model", "A100-SXM4-80GB"},
                {"mig_mode", 1}, {"minor", 3},
                {"gpu_instances",
                 {{{"profile", "3g.40gb"}, {"start", 0}, {"id", 1}, {"compute_instances", 1}},
                  {{"profile", "3g.40gb"}, {"start", 4}, {"id", 2}, {"compute_instances", 1}}}}}}}}
            .dump());
  ::setenv("TALLY_FAKE_NVML_SCENARIO", (dir / "scenario.json").c_str(), 1);

  std::vector<v1::PartitionEvent> events;
  GpuPartitioningOptions options;
  options.cgroup2_root = dir / "cgroup";
  options.nvml_library = FAKE_NVML_PATH;
  options.fs = FsRoot(dir.path());
  {
    GpuPartitioning partitioning(options, [&](const v1::PartitionEvent& e) { events.push_back(e); });
    partitioning::PartitionPlan plan;
    plan.pin_dir = "";
    plan.gpus.push_back({"0", true, {"7g.80gb"}, "test:1"});  // both instances would go

    json report = partitioning.apply(plan);
    ASSERT_EQ(report["mig"].size(), 1u) << report.dump();
    EXPECT_TRUE(report["mig"][0]["done"].empty()) << report.dump();
    const std::string refused = report["mig"][0]["refused"].dump();
    EXPECT_NE(refused.find("GPU instance 2 (3g.40gb) is held open by pid 4242 (vllm)"), std::string::npos) << refused;
    EXPECT_EQ(partitioning.show()["gpus"][0]["instances"].size(), 2u) << "nothing was destroyed";
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().kind(), v1::PartitionEvent::KIND_REFUSED);
    EXPECT_EQ(events.back().gpu(), "0");

    std::filesystem::remove(dir / "proc/4242/fd/7");  // the holder let go
    report = partitioning.apply(plan);
    EXPECT_TRUE(report["mig"][0]["refused"].empty()) << report.dump();
    EXPECT_EQ(report["mig"][0]["done"].size(), 3u) << report.dump();  // two destroys, one create
    const json instances = partitioning.show()["gpus"][0]["instances"];
    ASSERT_EQ(instances.size(), 1u) << instances.dump();
    EXPECT_EQ(instances[0]["profile"], "7g.80gb");
    EXPECT_EQ(events.back().kind(), v1::PartitionEvent::KIND_RECONCILE_STEP);
    EXPECT_EQ(events.back().detail(), "create 7g.80gb at slice 0");
  }
  ::unsetenv("TALLY_FAKE_NVML_SCENARIO");
}

}  // namespace
}  // namespace tally::agent
