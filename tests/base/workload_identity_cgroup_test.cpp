// Workload identity of real processes in real cgroups: under the test parent, each manager's layout (kubelet with
// both drivers, slurmstepd v2 and v1, docker/containerd/podman, systemd's system and user units) and each name a
// user can make in the subtree systemd delegates to them. A user (uid 1000, as systemd's Delegate=yes does) makes
// the spoofs; a real process is moved into each cgroup and identified from its /proc/PID/cgroup, with rules whose
// roots are the default ones moved below the test parent.
#include "agent/base/workload_identity.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/support/deadline.hpp"
#include "tests/support/test_cgroup.hpp"

namespace tally {
namespace {

namespace fs = std::filesystem;

constexpr uid_t kUser = 1000;
constexpr const char* kPodUid = "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718";
constexpr const char* kPodUidInSlice = "1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718";
constexpr const char* kContainer = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
constexpr const char* kUserManager = "user.slice/user-1000.slice/user@1000.service";

struct Case {
  std::string cgroup;  // below the test parent
  std::string id;      // the identity expected; "{}" stands for the test parent's path
};

class IdentityInRealCgroups : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (to make cgroups, delegate one to uid 1000, move a process)";
    root_ = test::cgroup2_root();
    if (!root_) GTEST_SKIP() << "needs cgroup v2 (mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified)";
    parent_.emplace(*root_);
    prefix_ = "/" + parent_->path().lexically_relative(*root_).generic_string();
    rules_.kubepods_roots = {prefix_ + "/kubepods.slice", prefix_ + "/kubepods"};
    rules_.slurm_roots = {prefix_ + "/system.slice/slurmstepd.scope", prefix_ + "/slurm"};
    rules_.container_parents = {prefix_ + "/system.slice", prefix_ + "/machine.slice", prefix_ + "/docker"};
    rules_.systemd_root = prefix_;
    rules_.user_root = prefix_ + "/user.slice";
    home_ = parent_->make_child("home");
    made_.push_back(home_);
    process_.emplace(home_, std::vector<std::string>{"/bin/cat"});  // waits on its stdin until we close it
  }

  void TearDown() override {
    if (!parent_) return;
    if (process_) move(process_->pid(), home_);
    process_.reset();
    // Deepest first: a cgroup goes only once it has no children (TestCgroupParent removes its direct children).
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
      EXPECT_TRUE(test::wait_until([&] { return ::rmdir(it->c_str()) == 0 || errno == ENOENT; })) << *it;
    }
    parent_.reset();
  }

  // Makes `cgroup` (below the test parent) and the cgroups above it, as root.
  fs::path make(const std::string& cgroup) {
    fs::path path = parent_->path();
    for (const auto& part : fs::path(cgroup)) {
      path /= part;
      if (fs::create_directory(path)) made_.push_back(path);
    }
    return path;
  }

  // Delegates `cgroup` to uid `uid` the way systemd's Delegate=yes does: the directory and the files that move
  // processes and enable controllers become the user's, so the user can make any cgroup below it.
  void delegate(const fs::path& cgroup, uid_t uid) {
    for (const fs::path& p : {cgroup, cgroup / "cgroup.procs", cgroup / "cgroup.subtree_control",
                              cgroup / "cgroup.threads"}) {
      ASSERT_EQ(::chown(p.c_str(), uid, uid), 0) << p << ": " << std::strerror(errno);
    }
  }

  // Makes `cgroup` (below the test parent) as uid `uid`, in a child process, from `delegated` down.
  void make_as(uid_t uid, const fs::path& delegated, const std::string& cgroup) {
    std::vector<fs::path> paths;  // those it makes: the ones not there yet
    const fs::path below = fs::path(cgroup).lexically_relative(delegated.lexically_relative(parent_->path()));
    ASSERT_FALSE(below.empty() || *below.begin() == "..") << cgroup << " is not below " << delegated;
    fs::path path = delegated;
    for (const auto& part : below) {
      if (!fs::exists(path /= part)) paths.push_back(path);
    }
    ASSERT_FALSE(paths.empty()) << cgroup << " is there already";
    const pid_t child = ::fork();
    ASSERT_GE(child, 0) << std::strerror(errno);
    if (child == 0) {  // only async-signal-safe calls: this process has other threads
      if (::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(2);
      for (const fs::path& p : paths) {
        if (::mkdir(p.c_str(), 0755) != 0) ::_exit(1);
      }
      ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    for (const fs::path& p : paths) made_.push_back(p);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "uid " << uid << " could not mkdir " << cgroup;
    struct stat made{};
    ASSERT_EQ(::stat(paths.back().c_str(), &made), 0);
    EXPECT_EQ(made.st_uid, uid) << "the spoof is the user's own";
  }

  static void move(pid_t pid, const fs::path& cgroup) {
    const int procs = ::open((cgroup / "cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(procs, 0) << cgroup << ": " << std::strerror(errno);
    const std::string text = std::to_string(pid);
    const bool written = ::write(procs, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    const int saved = errno;
    ::close(procs);
    ASSERT_TRUE(written) << "move " << pid << " to " << cgroup << ": " << std::strerror(saved);
  }

  // Moves the process into each case's cgroup and identifies it there.
  void expect_identities(const std::vector<Case>& cases) {
    for (const Case& c : cases) {
      SCOPED_TRACE(c.cgroup);
      move(process_->pid(), parent_->path() / c.cgroup);
      const auto identity = identify_process(FsRoot(), process_->pid(), rules_);
      ASSERT_TRUE(identity) << identity.error().message;
      EXPECT_EQ(identity->cgroup_path, prefix_ + "/" + c.cgroup) << "the process is not where the test put it";
      EXPECT_EQ(identity->id, fmt::format(fmt::runtime(c.id), prefix_));
    }
  }

  std::optional<fs::path> root_;
  std::optional<test::TestCgroupParent> parent_;
  std::string prefix_;  // the test parent, as /proc/PID/cgroup names it
  IdentityRules rules_;
  fs::path home_;
  std::vector<fs::path> made_;  // the cgroups this test made, in order
  std::optional<test::CgroupProcess> process_;
};

TEST_F(IdentityInRealCgroups, EachManagersLayout) {
  const std::string pod_slice = fmt::format("kubepods-burstable-pod{}.slice", kPodUidInSlice);
  const std::string user_units = std::string(kUserManager) + "/app.slice";
  const std::vector<Case> cases = {
      {fmt::format("kubepods.slice/kubepods-burstable.slice/{}/cri-containerd-{}.scope", pod_slice, kContainer),
       fmt::format("k8s:pod:{}:{}", kPodUid, kContainer)},
      {fmt::format("kubepods.slice/kubepods-pod{}.slice/crio-{}.scope", kPodUidInSlice, kContainer),
       fmt::format("k8s:pod:{}:{}", kPodUid, kContainer)},
      {fmt::format("kubepods/besteffort/pod{}/{}", kPodUid, kContainer),
       fmt::format("k8s:pod:{}:{}", kPodUid, kContainer)},
      {fmt::format("kubepods/pod{}", kPodUid), fmt::format("k8s:pod:{}", kPodUid)},
      {"system.slice/slurmstepd.scope/job_4242/step_0/user/task_0", "slurm:job:4242"},
      {"system.slice/slurmstepd.scope/system", "systemd:slurmstepd.scope"},
      {"slurm/uid_1000/job_17/step_batch", "slurm:job:17"},
      {fmt::format("system.slice/docker-{}.scope", kContainer), fmt::format("docker:{}", kContainer)},
      {fmt::format("machine.slice/libpod-{}.scope", kContainer), fmt::format("docker:{}", kContainer)},
      {fmt::format("docker/{}", kContainer), fmt::format("docker:{}", kContainer)},
      {"system.slice/inference.service", "systemd:inference.service"},
      {"system.slice/system-getty.slice/getty@tty1.service", "systemd:getty@tty1.service"},
      {"foo.slice/bar.service", "systemd:bar.service"},
      {"user.slice/user-1000.slice/session-3.scope", "systemd:session-3.scope"},
      {user_units + "/jupyter.service", "user:1000:jupyter.service"},
      {"user.slice/user-1001.slice/user@1001.service/app.slice/jupyter.service", "user:1001:jupyter.service"},
      {"system.slice/jupyter.service", "systemd:jupyter.service"},
      {"batch/team-a/run7", "cgroup:{}/batch/team-a/run7"},
      {fmt::format("batch/kubepods/pod{}", kPodUid), fmt::format("cgroup:{{}}/batch/kubepods/pod{}", kPodUid)},
      {"batch/system.slice/slurmstepd.scope/job_4242", "cgroup:{}/batch/system.slice/slurmstepd.scope/job_4242"},
  };
  for (const Case& c : cases) make(c.cgroup);
  expect_identities(cases);
}

TEST_F(IdentityInRealCgroups, SpoofsInADelegatedSubtreeClaimNothing) {
  const fs::path manager = make(kUserManager);
  delegate(manager, kUser);
  const std::string home = std::string(kUserManager) + "/app.slice";
  const std::vector<Case> cases = {
      {home + "/job_4242", "cgroup:{}/" + home + "/job_4242"},
      {home + "/slurm/uid_0/job_4242", "cgroup:{}/" + home + "/slurm/uid_0/job_4242"},
      {home + "/system.slice/slurmstepd.scope/job_4242", "user:1000:slurmstepd.scope"},
      {fmt::format("{}/kubepods/pod{}", home, kPodUid), fmt::format("cgroup:{{}}/{}/kubepods/pod{}", home, kPodUid)},
      {fmt::format("{}/kubepods/burstable/pod{}/{}", home, kPodUid, kContainer),
       fmt::format("cgroup:{{}}/{}/kubepods/burstable/pod{}/{}", home, kPodUid, kContainer)},
      {fmt::format("{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", home, kPodUidInSlice),
       fmt::format("cgroup:{{}}/{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", home,
                   kPodUidInSlice)},
      {fmt::format("{}/docker/{}", home, kContainer), fmt::format("cgroup:{{}}/{}/docker/{}", home, kContainer)},
      {fmt::format("{}/system.slice/docker-{}.scope", home, kContainer),
       fmt::format("user:1000:docker-{}.scope", kContainer)},
      {home + "/sshd.service", "user:1000:sshd.service"},
      {home + "/jupyter.service/job_4242", "user:1000:jupyter.service"},
      {home + "/x/system.slice/sshd.service", "cgroup:{}/" + home + "/x/system.slice/sshd.service"},
      {std::string(kUserManager) + "/job_4242", "cgroup:{}/" + std::string(kUserManager) + "/job_4242"},
  };
  for (const Case& c : cases) make_as(kUser, manager, c.cgroup);
  expect_identities(cases);
}

TEST_F(IdentityInRealCgroups, SpoofsBelowADelegatingSystemServiceAreTheService) {
  const std::string runner = "system.slice/ci-runner.service";  // Delegate=yes, User=1000: a CI runner, say
  delegate(make(runner), kUser);
  std::vector<Case> cases;
  for (const std::string& spoof :
       {std::string("job_4242"), std::string("slurm/uid_0/job_4242"), fmt::format("kubepods/pod{}", kPodUid),
        fmt::format("kubepods.slice/kubepods-pod{}.slice", kPodUidInSlice), fmt::format("docker/{}", kContainer),
        fmt::format("docker-{}.scope", kContainer), std::string("sshd.service")}) {
    cases.push_back({runner + "/" + spoof, "systemd:ci-runner.service"});
    make_as(kUser, parent_->path() / runner, cases.back().cgroup);
  }
  expect_identities(cases);
}

// Identity reads a process's cgroup from one line of /proc/PID/cgroup, which the kernel writes unescaped: cgroups
// "x\n0::", "kubepods", "pod<UID>" would forge a second line "0::/kubepods/pod<UID>". The kernel refuses a name with
// a line end; this test fails if it ever does not.
TEST_F(IdentityInRealCgroups, NoCgroupNameForgesALineOfProcPidCgroup) {
  const fs::path forged = home_ / "x\n0::";
  const int made = ::mkdir(forged.c_str(), 0755);
  const int error = errno;
  if (made == 0) made_.push_back(forged);
  ASSERT_NE(made, 0) << "the kernel took a cgroup name with a line end";
  EXPECT_EQ(error, EINVAL);
}

}  // namespace
}  // namespace tally
