// The GPU device policy in the kernel: real BPF programs on real test cgroups, with character device nodes of
// NVIDIA's major made in a temporary directory. An open the policy allows reaches the (absent) driver and fails with
// ENXIO; one it denies fails with EPERM before any driver runs. Needs root and BPF; skips with the reason otherwise.

#include "agent/partitioning/device_policy.hpp"

#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <gtest/gtest.h>

#include "agent/base/unique_fd.hpp"
#include "collectors/kernel/bpf_probes.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/test_cgroup.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::partitioning {
namespace {

using namespace std::chrono_literals;

constexpr const char* kWorkload = TALLY_EBPF_WORKLOAD;
constexpr std::uint64_t kGrant0 = 1, kGrant1 = 2;
// "GPU n" here is NVIDIA's major with minor kFirstMinor + n: far from the minors of real GPUs (0, 1, ...) and of
// nvidiactl (255) and nvidia-modeset (254), so that a developer's machine with NVIDIA GPUs is not restricted while
// the tests run. The tests of this file hold one ctest resource lock (tests/partitioning/CMakeLists.txt): two
// policies at the root would each deny the other's cgroups.
constexpr std::uint32_t kFirstMinor = 200;
std::pair<std::uint32_t, std::uint32_t> gpu(unsigned n) { return {kNvidiaMajor, kFirstMinor + n}; }

class DevicePolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_BPF, mknod and write access to the cgroup v2 hierarchy)";
    if (auto support = collectors::check_bpf_support(); !support) {
      GTEST_SKIP() << "no BPF here: " << support.error().message;
    }
    const auto root = test::cgroup2_root();
    if (!root) GTEST_SKIP() << "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified";
    root_ = *root;
    parent_ = std::make_unique<test::TestCgroupParent>(root_);
    for (unsigned n : {0u, 1u}) {
      const auto node = nodes_.path() / ("nvidia" + std::to_string(n));
      ASSERT_EQ(::mknod(node.c_str(), S_IFCHR | 0666, makedev(gpu(n).first, gpu(n).second)), 0) << std::strerror(errno);
    }
    a_ = parent_->make_child("a");
    b_ = parent_->make_child("b");
  }

  // What an open of GPU n's node (our copy) by a process in `cgroup` gives: 0 or an errno.
  int open_in(const std::filesystem::path& cgroup, unsigned n) const {
    test::CgroupProcess process(cgroup, {kWorkload, "open", (nodes_.path() / ("nvidia" + std::to_string(n))).string()});
    const auto line = process.read_line(10s);
    EXPECT_TRUE(line) << "the workload said nothing";
    process.close_stdin();
    process.wait(10s);
    if (!line || !line->starts_with("open errno ")) return -1;
    return std::stoi(line->substr(11));
  }
  bool allowed(const std::filesystem::path& cgroup, unsigned n) const { return open_in(cgroup, n) != EPERM; }

  std::uint64_t id_of(const std::filesystem::path& cgroup) const { return *collectors::cgroup_id_of(cgroup); }
  std::string relative(const std::filesystem::path& cgroup) const {
    return "/" + cgroup.lexically_relative(root_).generic_string();
  }

  // GPU 0 to cgroup a, GPU 1 to cgroup b.
  PolicyTables a_has_0_b_has_1() const {
    PolicyTables tables;
    tables.devices[gpu(0)] = kGrant0 | kSystemGrant;
    tables.devices[gpu(1)] = kGrant1 | kSystemGrant;
    tables.cgroups[id_of(a_)] = kGrant0;
    tables.cgroups[id_of(b_)] = kGrant1;
    return tables;
  }

  std::unique_ptr<DevicePolicy> start(const std::filesystem::path& pin_dir = {}) const {
    auto policy = DevicePolicy::start(DevicePolicyOptions{root_, pin_dir});
    EXPECT_TRUE(policy) << policy.error().message;
    return policy ? std::move(*policy) : nullptr;
  }

  std::filesystem::path root_;
  std::unique_ptr<test::TestCgroupParent> parent_;
  test::TempDir nodes_;
  std::filesystem::path a_, b_;
};

TEST_F(DevicePolicyTest, AnAssignedGpuOpensOnlyForItsWorkloadAndItsChildCgroups) {
  auto policy = start();
  ASSERT_TRUE(policy);
  EXPECT_TRUE(allowed(a_, 1)) << "an empty policy restricts nothing";
  auto change = policy->install(a_has_0_b_has_1(), 1);
  ASSERT_TRUE(change) << change.error().message;
  EXPECT_EQ(change->devices, 2u);
  EXPECT_EQ(open_in(a_, 0), ENXIO) << "allowed: the open reaches the driver, which is absent here";
  EXPECT_EQ(open_in(a_, 1), EPERM);
  EXPECT_EQ(open_in(b_, 0), EPERM);
  EXPECT_EQ(open_in(b_, 1), ENXIO);
  const auto a_child = a_ / "worker";
  std::filesystem::create_directory(a_child);
  EXPECT_EQ(open_in(a_child, 0), ENXIO) << "a child cgroup holds its workload's grants";
  EXPECT_EQ(open_in(a_child, 1), EPERM);
  EXPECT_EQ(open_in(parent_->path(), 0), EPERM) << "a cgroup without grants opens no restricted GPU";

  auto installed = policy->installed();
  ASSERT_TRUE(installed);
  EXPECT_EQ(*installed, a_has_0_b_has_1());
  EXPECT_EQ(policy->generation(), 1u);
}

TEST_F(DevicePolicyTest, DenialsAreCountedPerCgroupAndNodeAndSampledAsEvents) {
  auto policy = start();
  ASSERT_TRUE(policy);
  ASSERT_TRUE(policy->install(a_has_0_b_has_1(), 1));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(open_in(a_, 1), EPERM);
  auto denials = policy->denials();
  ASSERT_TRUE(denials);
  const auto key = std::tuple(id_of(a_), kNvidiaMajor, kFirstMinor + 1);
  EXPECT_EQ((*denials)[key], 3u);
  std::vector<PolicyEvent> events;
  const std::function<void(const PolicyEvent&)> keep = [&](const PolicyEvent& e) {
    if (e.type == PolicyEvent::Type::denied) events.push_back(e);
  };
  ASSERT_TRUE(test::wait_until([&] {
    (void)policy->consume_events(keep);
    return events.size() >= 2;
  }));
  // Sampled: the 1st and 2nd denial are reported, the 3rd only counted (the 4th would be).
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].cgroup_id, id_of(a_));
  EXPECT_EQ(events[0].minor, kFirstMinor + 1);
  EXPECT_EQ(events[1].count, 2u);
  EXPECT_TRUE(events[0].read && events[0].write);
  EXPECT_EQ(events[0].comm, std::filesystem::path(kWorkload).filename().string().substr(0, 15));
}

TEST_F(DevicePolicyTest, ACgroupMadeAtAnAwaitedPathHoldsItsGrantsFromItsMkdir) {
  auto policy = start();
  ASSERT_TRUE(policy);
  PolicyTables tables = a_has_0_b_has_1();
  const auto later = parent_->path() / "later.service";
  tables.paths[relative(later)] = kGrant1;
  ASSERT_TRUE(policy->install(tables, 1));
  std::filesystem::create_directory(later);  // after the plan: covered in the mkdir, before any process is in it
  EXPECT_EQ(open_in(later, 1), ENXIO);
  EXPECT_EQ(open_in(later, 0), EPERM);
  std::vector<PolicyEvent> covered;
  const std::function<void(const PolicyEvent&)> keep = [&](const PolicyEvent& e) {
    if (e.type == PolicyEvent::Type::covered) covered.push_back(e);
  };
  ASSERT_TRUE(test::wait_until([&] {
    (void)policy->consume_events(keep);
    return !covered.empty();
  }));
  EXPECT_EQ(covered[0].path, relative(later));
  EXPECT_EQ(covered[0].cgroup_id, id_of(later));
}

// Someone else's device program on the same cgroup (as systemd's DevicePolicy= or a runtime's) still applies: an
// open passes only when both allow it.
TEST_F(DevicePolicyTest, CoexistsWithAnotherDeviceProgramOnTheSameCgroup) {
  // Theirs: deny GPU 0, allow everything else. r0 = ctx->minor; if r0 == GPU 0 goto deny; return 1; deny: return 0.
  bpf_insn program[5]{};
  program[0] = {.code = BPF_LDX | BPF_W | BPF_MEM, .dst_reg = BPF_REG_0, .src_reg = BPF_REG_1, .off = 8, .imm = 0};
  program[1] = {.code = BPF_JMP | BPF_JEQ | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 2, .imm = kFirstMinor};
  program[2] = {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = 1};
  program[3] = {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0};
  program[4] = {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = 0};
  bpf_insn with_exit[6];
  std::copy(std::begin(program), std::end(program), with_exit);
  with_exit[5] = {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0};
  const UniqueFd theirs(bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, "other_policy", "GPL", with_exit, 6, nullptr));
  ASSERT_TRUE(theirs) << std::strerror(errno);
  const UniqueFd cgroup(::open(a_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_EQ(bpf_prog_attach(theirs.get(), cgroup.get(), BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI), 0) << std::strerror(errno);

  auto policy = start();
  ASSERT_TRUE(policy);
  PolicyTables tables;
  tables.devices[gpu(1)] = kGrant1 | kSystemGrant;  // only GPU 1 restricted, to b
  tables.cgroups[id_of(b_)] = kGrant1;
  ASSERT_TRUE(policy->install(tables, 1));
  EXPECT_EQ(open_in(a_, 0), EPERM) << "theirs denies, ours allows: denied";
  EXPECT_EQ(open_in(a_, 1), EPERM) << "theirs allows, ours denies: denied";
  EXPECT_EQ(open_in(b_, 1), ENXIO) << "a cgroup with only our program: allowed";
  EXPECT_EQ(bpf_prog_detach2(theirs.get(), cgroup.get(), BPF_CGROUP_DEVICE), 0);
  EXPECT_EQ(open_in(a_, 0), ENXIO) << "with theirs gone, ours alone decides";
}

TEST_F(DevicePolicyTest, APinnedPolicyOutlivesItsAgentAndIsAdoptedWithoutAGap) {
  test::PrivateBpffs bpffs;
  if (!bpffs.error().empty()) GTEST_SKIP() << bpffs.error();
  const auto pin_dir = bpffs.path() / "tally-policy";
  std::vector<std::uint32_t> links;
  {
    auto policy = start(pin_dir);
    ASSERT_TRUE(policy);
    EXPECT_FALSE(policy->adopted());
    ASSERT_TRUE(policy->install(a_has_0_b_has_1(), 7));
    links = policy->link_ids();
    ASSERT_EQ(links.size(), 2u);
  }  // the agent is gone (as after SIGKILL: only its fds closed)
  EXPECT_EQ(open_in(a_, 1), EPERM) << "fail-closed: the policy stays in force with no agent";
  EXPECT_EQ(open_in(a_, 0), ENXIO);
  auto adopted = start(pin_dir);
  ASSERT_TRUE(adopted);
  EXPECT_TRUE(adopted->adopted());
  EXPECT_EQ(adopted->generation(), 7u);
  EXPECT_EQ(adopted->link_ids(), links) << "the same links: never detached, no gap";
  auto installed = adopted->installed();
  ASSERT_TRUE(installed);
  EXPECT_EQ(*installed, a_has_0_b_has_1());

  auto removed = DevicePolicy::remove_pinned(pin_dir);
  ASSERT_TRUE(removed) << removed.error().message;
  EXPECT_TRUE(*removed);
  EXPECT_EQ(open_in(a_, 1), ENXIO) << "removed: detached even while an agent still holds the links";
  adopted.reset();
  for (std::uint32_t id : links) EXPECT_TRUE(test::wait_until([&] { return !test::bpf_link_exists(id); }));
  EXPECT_FALSE(std::filesystem::exists(pin_dir / "links"));
  auto again = DevicePolicy::remove_pinned(pin_dir);
  ASSERT_TRUE(again);
  EXPECT_FALSE(*again) << "nothing left to remove";
}

TEST_F(DevicePolicyTest, ReleaseDetachesAndUnpins) {
  test::PrivateBpffs bpffs;
  if (!bpffs.error().empty()) GTEST_SKIP() << bpffs.error();
  const auto pin_dir = bpffs.path() / "tally-policy";
  auto policy = start(pin_dir);
  ASSERT_TRUE(policy);
  ASSERT_TRUE(policy->install(a_has_0_b_has_1(), 1));
  ASSERT_EQ(open_in(a_, 1), EPERM);
  auto released = policy->release();
  ASSERT_TRUE(released) << released.error().message;
  EXPECT_EQ(open_in(a_, 1), ENXIO);
  EXPECT_FALSE(std::filesystem::exists(pin_dir / "maps"));
  EXPECT_FALSE(policy->install(a_has_0_b_has_1(), 2)) << "a released policy takes no more tables";
}

TEST_F(DevicePolicyTest, AnUnpinnedPolicyGoesWithItsAgent) {
  {
    auto policy = start();
    ASSERT_TRUE(policy);
    ASSERT_TRUE(policy->install(a_has_0_b_has_1(), 1));
    ASSERT_EQ(open_in(a_, 1), EPERM);
  }
  EXPECT_TRUE(test::wait_until([&] { return open_in(a_, 1) == ENXIO; }));
}

TEST_F(DevicePolicyTest, InstallRemovesWhatTheNewTablesNoLongerHold) {
  auto policy = start();
  ASSERT_TRUE(policy);
  ASSERT_TRUE(policy->install(a_has_0_b_has_1(), 1));
  PolicyTables fewer;
  fewer.devices[gpu(0)] = kGrant0 | kSystemGrant;
  fewer.cgroups[id_of(a_)] = kGrant0;
  auto change = policy->install(fewer, 2);
  ASSERT_TRUE(change);
  EXPECT_EQ(change->devices, 1u);
  EXPECT_EQ(change->cgroups, 1u);
  EXPECT_EQ(open_in(a_, 1), ENXIO) << "GPU 1 is no longer restricted";
  EXPECT_EQ(open_in(b_, 0), EPERM);
  auto installed = policy->installed();
  ASSERT_TRUE(installed);
  EXPECT_EQ(*installed, fewer);
  auto same = policy->install(fewer, 3);
  ASSERT_TRUE(same);
  EXPECT_FALSE(same->any());
}

// A holder whose grants narrow (here: a revocation's kOpenGrant leaving an assigned cgroup) ends with exactly the
// new grants, written after the nodes changed: it never lacks, on the way, a grant for a node it still may open.
TEST_F(DevicePolicyTest, InstallNarrowsHoldersToTheNewTables) {
  auto policy = start();
  ASSERT_TRUE(policy);
  PolicyTables revoked = a_has_0_b_has_1();
  revoked.devices[gpu(1)] = kOpenGrant | kSystemGrant;  // GPU 1 open to all but b
  revoked.cgroups[id_of(a_)] = kGrant0 | kOpenGrant;
  revoked.cgroups[id_of(b_)] = 0;
  revoked.cgroups[id_of(parent_->path())] = kOpenGrant;
  ASSERT_TRUE(policy->install(revoked, 1));
  EXPECT_EQ(open_in(b_, 1), EPERM) << "an explicit 0";
  EXPECT_EQ(open_in(a_, 1), ENXIO);
  EXPECT_EQ(open_in(parent_->make_child("c"), 1), ENXIO) << "inherits its parent's kOpenGrant";
  PolicyTables restored;
  restored.devices[gpu(0)] = kGrant0 | kSystemGrant;
  restored.cgroups[id_of(a_)] = kGrant0;
  auto change = policy->install(restored, 2);
  ASSERT_TRUE(change) << change.error().message;
  EXPECT_EQ(change->cgroups, 3u) << "a narrowed, b and the parent removed";
  auto installed = policy->installed();
  ASSERT_TRUE(installed);
  EXPECT_EQ(*installed, restored);
  EXPECT_EQ(open_in(b_, 1), ENXIO);
  EXPECT_EQ(open_in(a_, 0), ENXIO);
  EXPECT_EQ(open_in(b_, 0), EPERM);
}

}  // namespace
}  // namespace tally::partitioning
