// The kernel source when the probes are off: /proc/PID/io sampled per owner (a cgroup, or a process of the root
// cgroup), cumulative from the sampler's start: what came before is its baseline.

#include <fcntl.h>
#include <sys/wait.h>
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
  test::TempDir dir;
  const auto before = dir.write("before", std::string(100000, 'b'));  // before the sampler: its baseline
  ProcIoSampler sampler;
  const auto first = sampler.sample();
  ASSERT_TRUE(first.contains(owner));
  EXPECT_LT(first.at(owner).total.write_bytes, 100000u) << "what came before the sampler is not counted";
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

// A process that starts after the sampler and does its IO before the first sample counts whole: the agent was
// running when it did it (on a loaded machine the first sample may come long after the agent started).
TEST(ProcIoSamplerTest, AProcessBornAfterTheStartCountsWholeBeforeTheFirstSample) {
  ProcIoSampler sampler;
  test::TempDir dir;
  const auto path = (dir / "child").string();
  int done[2], release[2];
  ASSERT_EQ(::pipe(done), 0);
  ASSERT_EQ(::pipe(release), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(done[0]);
    ::close(release[1]);  // else the read below never sees the parent close its end
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const std::string block(100000, 'c');
    const bool ok = fd >= 0 && ::write(fd, block.data(), block.size()) == static_cast<ssize_t>(block.size());
    char byte = ok ? 'y' : 'n';
    (void)!::write(done[1], &byte, 1);
    (void)!::read(release[0], &byte, 1);  // stay alive until the sample is taken: exited processes are not seen
    ::_exit(0);
  }
  ::close(done[1]);
  ::close(release[0]);
  char byte = 0;
  ASSERT_EQ(::read(done[0], &byte, 1), 1);
  ASSERT_EQ(byte, 'y');
  const auto cgroup = read_process_cgroup(FsRoot(), child);
  const auto ticks = read_process_start_ticks(FsRoot(), child);
  const auto sample = sampler.sample();
  ::close(release[1]);
  ::close(done[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(cgroup && ticks);
  const std::string owner =
      *cgroup == "/" ? "process:" + std::to_string(child) + ":" + std::to_string(*ticks) : "cgroup:" + *cgroup;
  ASSERT_TRUE(sample.contains(owner)) << owner;
  EXPECT_GE(sample.at(owner).total.write_bytes, 100000u);
}

}  // namespace
}  // namespace tally::collectors
