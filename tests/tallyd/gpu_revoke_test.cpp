// Budgets' revoke-gpu, partitioning side (GpuPartitioning::set_revoked): real BPF on real test cgroups, GPUs from
// the fake NVML (minors 200+, far from real GPUs') and character devices of NVIDIA's major made in a temp dir. An
// open the policy allows reaches the (absent) driver and fails with ENXIO; one it denies fails with EPERM.
//
// The plan gives GPU 0 to cgroup a and leaves GPU 1 open to every workload. Revoking b's workload closes GPU 1 to
// b (and to cgroups made in b later) only: a keeps GPU 0 and GPU 1, an unassigned cgroup c keeps GPU 1. Restoring
// gives b GPU 1 again. Needs root and BPF; skips with the reason otherwise.
#include "agent/tallyd/gpu_partitioning.hpp"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "collectors/kernel/bpf_probes.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/test_cgroup.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::agent {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr unsigned kNvidiaMajor = 195;
constexpr unsigned kFirstMinor = 200;  // GPU n's minor is kFirstMinor + n

class GpuRevokeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (BPF, mknod, test cgroups)";
    if (auto support = collectors::check_bpf_support(); !support) {
      GTEST_SKIP() << "no BPF here: " << support.error().message;
    }
    const auto root = test::cgroup2_root();
    if (!root) GTEST_SKIP() << "needs cgroup v2 (pure or hybrid)";
    root_ = *root;
    parent_ = std::make_unique<test::TestCgroupParent>(root_);
    a_ = parent_->make_child("a");
    b_ = parent_->make_child("b");
    c_ = parent_->make_child("c");
    for (unsigned n : {0u, 1u}) {
      const auto node = dir_ / ("nvidia" + std::to_string(n));
      ASSERT_EQ(::mknod(node.c_str(), S_IFCHR | 0666, makedev(kNvidiaMajor, kFirstMinor + n)), 0);
    }
    json gpus = json::array();
    for (unsigned n : {0u, 1u}) {
      gpus.push_back({{"uuid", fmt::format("GPU-{}", n)},
                      {"bus_id", fmt::format("00000000:3{}:00.0", n)},
                      {"name", "NVIDIA H100 80GB HBM3"},
                      {"memory_total", 80ull << 30},
                      {"minor", kFirstMinor + n}});
    }
    dir_.write("scenario.json", json{{"driver_version", "550.54.15"}, {"gpus", gpus}}.dump());
    ::setenv("TALLY_FAKE_NVML_SCENARIO", (dir_ / "scenario.json").c_str(), 1);

    GpuPartitioningOptions options;
    options.cgroup2_root = root_;
    options.nvml_library = FAKE_NVML_PATH;
    // System units below the test parent, so that a unit's cgroup can be made at a path the plan cannot foresee.
    options.identity.systemd_root = relative(parent_->path());
    partitioning_ =
        std::make_unique<GpuPartitioning>(options, [&](const v1::PartitionEvent& e) { events_.push_back(e); });
    plan_.pin_dir = "";  // the policy goes with the object: nothing outlives the test
    plan_.assignments.push_back({"cgroup:" + relative(a_), {"0"}, "test:1"});
  }

  void TearDown() override {
    partitioning_.reset();
    ::unsetenv("TALLY_FAKE_NVML_SCENARIO");
  }

  std::string relative(const std::filesystem::path& cgroup) const {
    return "/" + cgroup.lexically_relative(root_).generic_string();
  }
  // The workload id a cgroup has on the feed (what budgets name).
  std::string workload(const std::filesystem::path& cgroup) const {
    IdentityRules rules;
    rules.systemd_root = relative(parent_->path());
    return identify_cgroup(relative(cgroup), rules).id;
  }

  // What an open of GPU n's node by a process in `cgroup` gives: 0 or an errno.
  int open_in(const std::filesystem::path& cgroup, unsigned n) const {
    const auto node = dir_ / ("nvidia" + std::to_string(n));
    test::CgroupProcess process(cgroup, {TALLY_EBPF_WORKLOAD, "open", node.string()});
    const auto line = process.read_line(10s);
    EXPECT_TRUE(line) << "the workload said nothing";
    process.close_stdin();
    process.wait(10s);
    if (!line || !line->starts_with("open errno ")) return -1;
    return std::stoi(line->substr(11));
  }

  // Handles the policy's events until tallyd has covered the new cgroup at `cgroup` (KIND_COVERED).
  bool covered(const std::filesystem::path& cgroup) {
    return test::wait_until([&] {
      partitioning_->on_events();
      return std::any_of(events_.begin(), events_.end(), [&](const v1::PartitionEvent& e) {
        return e.kind() == v1::PartitionEvent::KIND_COVERED && e.cgroup() == relative(cgroup);
      });
    });
  }

  const v1::PartitionEvent* applied_for(const std::string& workload_id, const std::string& word) const {
    for (const auto& event : events_) {
      if (event.kind() == v1::PartitionEvent::KIND_APPLIED && event.workload() == workload_id &&
          event.detail().find(word) != std::string::npos) {
        return &event;
      }
    }
    return nullptr;
  }

  std::filesystem::path root_;
  std::unique_ptr<test::TestCgroupParent> parent_;
  test::TempDir dir_;
  std::filesystem::path a_, b_, c_;
  partitioning::PartitionPlan plan_;
  std::vector<v1::PartitionEvent> events_;
  std::unique_ptr<GpuPartitioning> partitioning_;
};

TEST_F(GpuRevokeTest, RevokeMakesANewOpenOfTheOpenGpuFailForThatWorkloadOnly) {
  json report = partitioning_->apply(plan_);
  ASSERT_TRUE(report.value("enforcing", false)) << report.dump();
  ASSERT_EQ(open_in(b_, 1), ENXIO) << "before: GPU 1 is open to every workload";
  ASSERT_EQ(open_in(b_, 0), EPERM) << "GPU 0 is a's";

  const std::string b = workload(b_);
  auto revoked = partitioning_->set_revoked({b});
  ASSERT_TRUE(revoked) << revoked.error().message;
  EXPECT_EQ((*revoked)["revoked"], json::array({b})) << revoked->dump();
  EXPECT_TRUE((*revoked)["refused"].empty()) << revoked->dump();
  EXPECT_EQ(open_in(b_, 1), EPERM) << "revoked: a new open of the open GPU fails";
  EXPECT_EQ(open_in(a_, 0), ENXIO) << "the assigned workload keeps its GPU";
  EXPECT_EQ(open_in(a_, 1), ENXIO) << "and the open GPU";
  EXPECT_EQ(open_in(c_, 1), ENXIO) << "an unassigned cgroup keeps the open GPU";
  EXPECT_EQ(open_in(c_, 0), EPERM);
  const auto* audited = applied_for(b, "revoked");
  ASSERT_NE(audited, nullptr) << "the revocation is a PartitionEvent naming the workload";
  EXPECT_EQ(audited->generation(), partitioning_->generation());
  const json shown = partitioning_->show();
  EXPECT_EQ(shown["revoked"], json::array({b})) << shown.dump();

  const auto child = b_ / "step";
  std::filesystem::create_directory(child);
  EXPECT_EQ(open_in(child, 1), EPERM) << "a cgroup made in b after the revocation is denied too";

  // A reload of the same plan keeps the revocation in force.
  report = partitioning_->apply(plan_);
  ASSERT_TRUE(report.value("enforcing", false)) << report.dump();
  EXPECT_EQ(open_in(b_, 1), EPERM) << "apply (SIGHUP, tallyctl plan apply) keeps the revoked set";

  revoked = partitioning_->set_revoked({});
  ASSERT_TRUE(revoked) << revoked.error().message;
  EXPECT_EQ(open_in(b_, 1), ENXIO) << "restored: b opens GPU 1 again";
  EXPECT_EQ(open_in(child, 1), ENXIO);
  EXPECT_EQ(open_in(b_, 0), EPERM) << "GPU 0 stays a's";
  EXPECT_EQ(open_in(a_, 0), ENXIO);
  EXPECT_NE(applied_for(b, "restored"), nullptr) << "the restoration is audited";
  EXPECT_TRUE(partitioning_->show()["revoked"].empty());
}

// A revoked unit's new cgroups: at the path the plan awaits, the kernel writes its 0 in the mkdir; at a path it
// cannot foresee (a unit in a slice of its own), tallyd writes an explicit 0 when it sees the mkdir, since without an
// entry the cgroup would inherit the root's access to open GPUs.
TEST_F(GpuRevokeTest, ARevokedUnitsNewCgroupsAreDeniedAwaitedOrNot) {
  ASSERT_TRUE(partitioning_->apply(plan_).value("enforcing", false));
  auto revoked = partitioning_->set_revoked({"systemd:rev.service"});
  ASSERT_TRUE(revoked) << revoked.error().message;

  const auto awaited = parent_->path() / "system.slice" / "rev.service";
  std::filesystem::create_directories(awaited);
  ASSERT_EQ(workload(awaited), "systemd:rev.service");
  EXPECT_EQ(open_in(awaited, 1), EPERM) << "awaited with 0: denied from its mkdir";

  const auto unforeseen = parent_->path() / "rev.slice" / "rev.service";
  std::filesystem::create_directories(unforeseen);
  ASSERT_EQ(workload(unforeseen), "systemd:rev.service");
  ASSERT_TRUE(covered(unforeseen)) << "tallyd saw the mkdir and wrote the unit's entry";
  EXPECT_EQ(open_in(unforeseen, 1), EPERM) << "an explicit 0, not the root's kOpenGrant";
  EXPECT_EQ(open_in(parent_->path() / "rev.slice", 1), ENXIO) << "its slice is not the unit";

  ASSERT_TRUE(partitioning_->set_revoked({}));
  EXPECT_EQ(open_in(unforeseen, 1), ENXIO);
  EXPECT_EQ(open_in(awaited, 1), ENXIO);
}

// A plan that restricts nothing attaches nothing; a revocation attaches the policy all the same.
TEST_F(GpuRevokeTest, ARevocationAttachesThePolicyWhereThePlanRestrictsNothing) {
  plan_.assignments.clear();
  ASSERT_FALSE(partitioning_->apply(plan_).value("enforcing", true));
  ASSERT_EQ(partitioning_->events_fd(), -1) << "nothing attached";
  auto revoked = partitioning_->set_revoked({workload(b_)});
  ASSERT_TRUE(revoked) << revoked.error().message;
  EXPECT_TRUE((*revoked).value("enforcing", false)) << revoked->dump();
  EXPECT_EQ(open_in(b_, 0), EPERM);
  EXPECT_EQ(open_in(b_, 1), EPERM);
  EXPECT_EQ(open_in(c_, 0), ENXIO);
  ASSERT_TRUE(partitioning_->set_revoked({}));
  EXPECT_EQ(open_in(b_, 0), ENXIO) << "restored: nothing restricts a GPU";
  EXPECT_EQ(open_in(b_, 1), ENXIO);
}

}  // namespace
}  // namespace tally::agent
