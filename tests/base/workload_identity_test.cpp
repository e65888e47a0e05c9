// Workload identity from cgroup paths (pure v2 and hybrid hosts), and for processes through a fake /proc.
#include "agent/base/workload_identity.hpp"
#include "agent/base/proc.hpp"

#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/temp_dir.hpp"

namespace tally {
namespace {

TEST(IdentifyCgroup, SystemdUnit) {
  const auto id = identify_cgroup("/system.slice/inference.service");
  EXPECT_EQ(id.kind, WorkloadKind::systemd_unit);
  EXPECT_EQ(id.id, "systemd:inference.service");
  EXPECT_EQ(id.attributes.at("unit"), "inference.service");
  EXPECT_EQ(identify_cgroup("/user.slice/user-1000.slice/session-3.scope").id, "systemd:session-3.scope");
  // A service's own sub-cgroups still belong to the service.
  EXPECT_EQ(identify_cgroup("/system.slice/vllm.service/worker").id, "systemd:vllm.service");
}

TEST(IdentifyCgroup, KubernetesPodSystemdAndCgroupfsDrivers) {
  const auto a = identify_cgroup(
      "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718.slice/"
      "cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope");
  EXPECT_EQ(a.kind, WorkloadKind::kubernetes_pod);
  EXPECT_EQ(a.attributes.at("pod_uid"), "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718");
  EXPECT_EQ(a.attributes.at("container_id"), "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  EXPECT_EQ(a.id, "k8s:pod:1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718:"
                  "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  const auto b = identify_cgroup("/kubepods/besteffort/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718/abcdef0123456789abcd");
  EXPECT_EQ(b.kind, WorkloadKind::kubernetes_pod);
  EXPECT_EQ(b.attributes.at("container_id"), "abcdef0123456789abcd");
  const auto pod_only = identify_cgroup("/kubepods/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718");
  EXPECT_EQ(pod_only.id, "k8s:pod:1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718");
}

TEST(IdentifyCgroup, SlurmJob) {
  EXPECT_EQ(identify_cgroup("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0").id, "slurm:job:4242");
  EXPECT_EQ(identify_cgroup("/slurm/uid_1000/job_17/step_batch").attributes.at("job_id"), "17");
}

TEST(IdentifyCgroup, DockerContainer) {
  const std::string cid = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  EXPECT_EQ(identify_cgroup("/docker/" + cid).id, "docker:" + cid);
  EXPECT_EQ(identify_cgroup("/system.slice/docker-" + cid + ".scope").id, "docker:" + cid);
  EXPECT_EQ(identify_cgroup("/system.slice/docker-" + cid + ".scope").kind, WorkloadKind::docker_container);
}

TEST(IdentifyCgroup, AnythingElseIsTheRawPath) {
  const auto id = identify_cgroup("/batch/team-a/run7");
  EXPECT_EQ(id.kind, WorkloadKind::cgroup);
  EXPECT_EQ(id.id, "cgroup:/batch/team-a/run7");
  EXPECT_EQ(identify_cgroup("/").kind, WorkloadKind::process);
}

TEST(FindCgroup2Mount, PureV2AndHybrid) {
  test::TempDir dir;
  // Each capture is a FsRoot holding proc/self/mountinfo.
  auto mountinfo = [&](const std::string& name, const std::string& text) {
    std::filesystem::create_directories(dir / name / "proc/self");
    dir.write(name + "/proc/self/mountinfo", text);
    return FsRoot(dir / name);
  };
  const auto pure = mountinfo("pure", "24 30 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
                                      "25 30 0:23 / /proc rw shared:10 - proc proc rw\n");
  const auto hybrid = mountinfo("hybrid",
                                "30 25 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n"
                                "31 30 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate\n"
                                "32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n");
  const auto v1 = mountinfo("v1", "32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd\n");
  EXPECT_EQ(find_cgroup2_mount(pure).value(), "/sys/fs/cgroup");
  EXPECT_EQ(find_cgroup2_mount(hybrid).value(), "/sys/fs/cgroup/unified");
  EXPECT_FALSE(find_cgroup2_mount(v1));
  EXPECT_FALSE(find_cgroup2_mount(FsRoot(dir / "missing")));
  EXPECT_TRUE(find_cgroup2_mount());  // this machine has one, pure or hybrid
}

class FakeProc {
 public:
  void add(pid_t pid, const std::string& cgroup, std::uint64_t start, const std::string& comm = "python3") {
    const auto d = dir_.path() / "proc" / std::to_string(pid);
    std::filesystem::create_directories(d);
    std::ofstream(d / "cgroup") << cgroup;
    std::ofstream(d / "stat") << pid << " (" << comm
                              << ") S 1 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 " << start
                              << " 1000000 100 18446744073709551615\n";
    std::filesystem::create_symlink("/usr/bin/python3", d / "exe");
  }
  FsRoot root() const { return FsRoot(dir_.path()); }

 private:
  test::TempDir dir_;
};

TEST(IdentifyProcess, RootCgroupProcessesAreThemselvesAndNeverMerged) {
  FakeProc proc;
  proc.add(100, "0::/\n", 5000);
  proc.add(101, "0::/\n", 5001, "weird) name (x");
  const auto a = identify_process(proc.root(), 100);
  const auto b = identify_process(proc.root(), 101);
  ASSERT_TRUE(a) << a.error().message;
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(a->kind, WorkloadKind::process);
  EXPECT_EQ(a->id, "process:100:5000");
  EXPECT_EQ(b->id, "process:101:5001");
  EXPECT_EQ(a->attributes.at("exe"), "/usr/bin/python3");
  EXPECT_EQ(a->attributes.at("start_time"), "5000");
  EXPECT_NE(a->id, b->id);
}

TEST(IdentifyProcess, HybridHostUsesTheV2Line) {
  FakeProc proc;
  // Hybrid: v1 controllers say one thing, the unified (v2) hierarchy another; v2 wins.
  proc.add(200, "4:memory:/other\n1:name=systemd:/system.slice/x.service\n0::/system.slice/x.service\n", 1);
  EXPECT_EQ(identify_process(proc.root(), 200)->id, "systemd:x.service");
  proc.add(201, "1:name=systemd:/system.slice/y.service\n", 1);  // v1 only: name=systemd
  EXPECT_EQ(identify_process(proc.root(), 201)->id, "systemd:y.service");
  EXPECT_FALSE(identify_process(proc.root(), 999));
}

TEST(IdentifyProcess, ThisProcess) {
  const auto self = identify_process(FsRoot(), ::getpid());
  ASSERT_TRUE(self) << self.error().message;
  EXPECT_FALSE(self->id.empty());
}

}  // namespace
}  // namespace tally
