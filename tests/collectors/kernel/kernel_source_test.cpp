// The kernel source when the probes are off: /proc/PID/io sampled per owner (a cgroup, or a process of the root
// cgroup), cumulative from the first sample, which is a baseline.

#include <unistd.h>

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

#include "agent/base/proc.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::collectors {
namespace {

std::string own_owner() {
  const auto cgroup = read_process_cgroup(FsRoot(), ::getpid());
  if (!cgroup) return {};
  if (*cgroup != "/") return "cgroup:" + *cgroup;
  return "process:" + std::to_string(::getpid()) + ":" + std::to_string(*read_process_start_ticks(FsRoot(), ::getpid()));
}

TEST(ProcIoSamplerTest, CountsOurReadsAndWritesAfterTheBaseline) {
  const std::string owner = own_owner();
  if (owner.empty()) GTEST_SKIP() << "no cgroup line in /proc/self/cgroup";
  ProcIoSampler sampler;
  const auto baseline = sampler.sample();
  ASSERT_TRUE(baseline.contains(owner));
  EXPECT_EQ(baseline.at(owner).total, IoBytes{}) << "the first sample is a baseline";
  test::TempDir dir;
  const auto file = dir.write("data", std::string(100000, 'z'));
  std::ifstream in(file);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(text.size(), 100000u);
  const auto sample = sampler.sample();
  ASSERT_TRUE(sample.contains(owner));
  EXPECT_GE(sample.at(owner).total.read_bytes, 100000u);
  EXPECT_GE(sample.at(owner).total.write_bytes, 100000u);
  EXPECT_TRUE(sample.at(owner).live);
}

}  // namespace
}  // namespace tally::collectors
