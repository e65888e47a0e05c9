// The freezer on real cgroups: a frozen workload's processes stop using CPU while another's go on, thawing starts
// them again, and what cannot be frozen is refused with the reason. The CPU time of the workload that goes on is
// the clock: no fixed sleep decides anything.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "agent/base/files.hpp"
#include "agent/freezer/freezer.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/test_cgroup.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

TEST(WorkloadCgroups, TheTopmostCgroupsOfTheWorkloadOnly) {
  const std::map<std::uint64_t, std::string> cgroups{{1, "/"},
                                                     {2, "/system.slice"},
                                                     {3, "/system.slice/a.service"},
                                                     {4, "/system.slice/a.service/worker"},
                                                     {5, "/system.slice/b.service"},
                                                     {6, "/x/y"},
                                                     {7, "/x/y/z"}};
  EXPECT_EQ(freezer::workload_cgroups(cgroups, "systemd:a.service", {}),
            std::vector<std::string>{"/system.slice/a.service"});
  EXPECT_EQ(freezer::workload_cgroups(cgroups, "cgroup:/x/y", {}), std::vector<std::string>{"/x/y"});
  EXPECT_EQ(freezer::workload_cgroups(cgroups, "cgroup:/x/y/z", {}), std::vector<std::string>{"/x/y/z"});
  EXPECT_TRUE(freezer::workload_cgroups(cgroups, "systemd:c.service", {}).empty());
}

class FreezerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (test cgroups)";
    auto root = cgroup2_root();
    if (!root) GTEST_SKIP() << "needs cgroup v2 (pure or hybrid)";
    root_ = *root;
    parent_ = std::make_unique<TestCgroupParent>(root_);
    if (!std::filesystem::exists(parent_->path() / "cgroup.freeze")) GTEST_SKIP() << "no cgroup v2 freezer (Linux 5.2+)";
  }
  std::string workload(const std::filesystem::path& cgroup) const {
    return "cgroup:/" + cgroup.lexically_relative(root_).generic_string();
  }
  freezer::Freezer make() const { return freezer::Freezer({root_, {}, true}); }

  std::filesystem::path root_;
  std::unique_ptr<TestCgroupParent> parent_;
};

TEST_F(FreezerTest, AFrozenWorkloadStopsUsingCpuOthersGoOnAndThawStartsItAgain) {
  const auto a = parent_->make_child("a");
  const auto b = parent_->make_child("b");
  CgroupProcess spin_a(a, {TALLY_EBPF_WORKLOAD, "spin"});
  CgroupProcess spin_b(b, {TALLY_EBPF_WORKLOAD, "spin"});
  ASSERT_EQ(spin_a.read_line(10s), "spinning");
  ASSERT_EQ(spin_b.read_line(10s), "spinning");
  ASSERT_TRUE(wait_until([&] { return cgroup_cpu_usec(a) > 0 && cgroup_cpu_usec(b) > 0; }, 20s));

  auto freezer = make();
  auto frozen = freezer.freeze(workload(a));
  ASSERT_TRUE(frozen) << frozen.error().message;
  EXPECT_EQ(frozen->cgroups, std::vector<std::string>{"/" + a.lexically_relative(root_).generic_string()});
  EXPECT_EQ(frozen->via, "cgroup.freeze");
  ASSERT_TRUE(wait_until([&] { return freezer.frozen(workload(a)); }, 20s)) << "cgroup.events never said frozen";
  EXPECT_FALSE(freezer.frozen(workload(b)));

  // While b burns another 200 ms of CPU, a burns none.
  const std::uint64_t a_frozen = cgroup_cpu_usec(a);
  const std::uint64_t b_before = cgroup_cpu_usec(b);
  ASSERT_TRUE(wait_until([&] { return cgroup_cpu_usec(b) >= b_before + 200'000; }, 30s)) << "b stopped too";
  EXPECT_EQ(cgroup_cpu_usec(a), a_frozen) << "a frozen workload used CPU";

  auto thawed = freezer.thaw(workload(a));
  ASSERT_TRUE(thawed) << thawed.error().message;
  ASSERT_TRUE(wait_until([&] { return !freezer.frozen(workload(a)); }, 20s));
  EXPECT_TRUE(wait_until([&] { return cgroup_cpu_usec(a) >= a_frozen + 100'000; }, 30s)) << "a did not run again";
}

TEST_F(FreezerTest, ACgroupMadeInsideAFrozenWorkloadIsFrozenToo) {
  const auto a = parent_->make_child("a");
  auto freezer = make();
  ASSERT_TRUE(freezer.freeze(workload(a)));
  std::filesystem::create_directory(a / "later");
  CgroupProcess late(a / "later", {TALLY_EBPF_WORKLOAD, "spin"});
  // The kernel says the new cgroup is frozen with its process in it, and the process never got to print: it was
  // stopped before its first instruction in user space.
  ASSERT_TRUE(wait_until([&] {
    const auto events = read_file(a / "later" / "cgroup.events");
    return events && events->find("populated 1") != std::string::npos && events->find("frozen 1") != std::string::npos;
  }, 20s));
  EXPECT_FALSE(late.read_line(0ms).has_value());
  ASSERT_TRUE(freezer.thaw(workload(a)));
  EXPECT_EQ(late.read_line(10s), "spinning");
}

TEST_F(FreezerTest, WhatCannotBeFrozenIsRefusedWithTheReason) {
  auto freezer = make();
  auto root_process = freezer.freeze("process:1:1");
  ASSERT_FALSE(root_process);
  EXPECT_NE(root_process.error().message.find("root cgroup"), std::string::npos) << root_process.error().message;
  auto absent = freezer.freeze(workload(parent_->path() / "absent"));
  ASSERT_FALSE(absent);
  EXPECT_NE(absent.error().message.find("no cgroup"), std::string::npos) << absent.error().message;
  auto gpu = freezer.freeze("gpu:GPU-0");
  ASSERT_FALSE(gpu);

  // An agent running inside the workload's cgroup (or below it) refuses to freeze itself.
  const auto self = parent_->make_child("self");
  const std::string self_workload = workload(self);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::ofstream(self / "cgroup.procs") << ::getpid();
    freezer::Freezer inside({root_, {}, true});
    auto refused = inside.freeze(self_workload);
    ::_exit(refused ? 1 : refused.error().message.find("tallyd itself") != std::string::npos ? 0 : 2);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: it froze itself; 2: refused for another reason";
}

}  // namespace
}  // namespace tally::test
