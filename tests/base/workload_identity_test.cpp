// Workload identity from cgroup paths (pure v2 and hybrid hosts), and for processes through a fake /proc.
#include "agent/base/workload_identity.hpp"
#include "agent/base/proc.hpp"

#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "tests/support/temp_dir.hpp"

namespace tally {
namespace {

constexpr const char* kPodUid = "1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718";
constexpr const char* kPodSlice = "kubepods-burstable-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718.slice";
constexpr const char* kContainer = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
constexpr const char* kUserManager = "/user.slice/user-1000.slice/user@1000.service";

TEST(IdentifyCgroup, SystemUnitsUnderTopLevelSlices) {
  const auto id = identify_cgroup("/system.slice/inference.service");
  EXPECT_EQ(id.kind, WorkloadKind::systemd_unit);
  EXPECT_EQ(id.id, "systemd:inference.service");
  EXPECT_EQ(id.attributes.at("unit"), "inference.service");
  EXPECT_EQ(identify_cgroup("/user.slice/user-1000.slice/session-3.scope").id, "systemd:session-3.scope");
  EXPECT_EQ(identify_cgroup("/system.slice/system-getty.slice/getty@tty1.service").id, "systemd:getty@tty1.service");
  EXPECT_EQ(identify_cgroup("/foo.slice/bar.service").id, "systemd:bar.service");
  EXPECT_EQ(identify_cgroup("/init.scope").id, "systemd:init.scope");
  // The user manager itself is a system unit; what is below it is not (IdentifyCgroup.UserUnits...).
  EXPECT_EQ(identify_cgroup(kUserManager).id, "systemd:user@1000.service");
  // A service's own sub-cgroups still belong to the service, whatever they are called: a Delegate=yes service's
  // subtree is named by the service.
  EXPECT_EQ(identify_cgroup("/system.slice/vllm.service/worker").id, "systemd:vllm.service");
  EXPECT_EQ(identify_cgroup("/system.slice/vllm.service/sshd.service").id, "systemd:vllm.service");
  EXPECT_EQ(identify_cgroup("/system.slice/vllm.service/job_4242").id, "systemd:vllm.service");
}

TEST(IdentifyCgroup, KubernetesPodSystemdAndCgroupfsDrivers) {
  const auto a = identify_cgroup(fmt::format("/kubepods.slice/kubepods-burstable.slice/{}/cri-containerd-{}.scope",
                                             kPodSlice, kContainer));
  EXPECT_EQ(a.kind, WorkloadKind::kubernetes_pod);
  EXPECT_EQ(a.attributes.at("pod_uid"), kPodUid);
  EXPECT_EQ(a.attributes.at("container_id"), kContainer);
  EXPECT_EQ(a.id, fmt::format("k8s:pod:{}:{}", kPodUid, kContainer));
  const auto b = identify_cgroup(fmt::format("/kubepods/besteffort/pod{}/abcdef0123456789abcd", kPodUid));
  EXPECT_EQ(b.kind, WorkloadKind::kubernetes_pod);
  EXPECT_EQ(b.attributes.at("container_id"), "abcdef0123456789abcd");
  // Guaranteed pods sit right below the root, with both drivers; a pod's own cgroup has no container.
  EXPECT_EQ(identify_cgroup(fmt::format("/kubepods/pod{}", kPodUid)).id, fmt::format("k8s:pod:{}", kPodUid));
  EXPECT_EQ(identify_cgroup("/kubepods.slice/kubepods-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718.slice/crio-" +
                            std::string(kContainer) + ".scope")
                .id,
            fmt::format("k8s:pod:{}:{}", kPodUid, kContainer));
  EXPECT_EQ(identify_cgroup(fmt::format("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                                        "1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718"))
                .id,
            fmt::format("k8s:pod:{}", kPodUid));
  // A pod deeper than kubelet puts one is no pod; kubelet's slices themselves are system slices, not workloads.
  EXPECT_EQ(identify_cgroup(fmt::format("/kubepods/burstable/extra/pod{}", kPodUid)).kind, WorkloadKind::cgroup);
  EXPECT_EQ(identify_cgroup("/kubepods.slice/kubepods-burstable.slice").kind, WorkloadKind::cgroup);
}

TEST(IdentifyCgroup, SlurmJobCgroupV2AndV1) {
  const auto v2 = identify_cgroup("/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0");
  EXPECT_EQ(v2.kind, WorkloadKind::slurm_job);
  EXPECT_EQ(v2.id, "slurm:job:4242");
  EXPECT_EQ(identify_cgroup("/slurm/uid_1000/job_17/step_batch").attributes.at("job_id"), "17");
  EXPECT_EQ(identify_cgroup("/slurm/job_18").id, "slurm:job:18");
  // slurmstepd's own processes are its scope's.
  EXPECT_EQ(identify_cgroup("/system.slice/slurmstepd.scope/system").id, "systemd:slurmstepd.scope");
  EXPECT_EQ(identify_cgroup("/system.slice/slurmstepd.scope/job_x1").id, "systemd:slurmstepd.scope");
}

TEST(IdentifyCgroup, ContainersUnderTheirEnginesParents) {
  const std::string cid = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  EXPECT_EQ(identify_cgroup("/docker/" + cid).id, "docker:" + cid);
  EXPECT_EQ(identify_cgroup("/system.slice/docker-" + cid + ".scope").id, "docker:" + cid);
  EXPECT_EQ(identify_cgroup("/system.slice/docker-" + cid + ".scope").kind, WorkloadKind::docker_container);
  EXPECT_EQ(identify_cgroup("/system.slice/docker-" + cid + ".scope").attributes.at("container_id"), cid);
  EXPECT_EQ(identify_cgroup("/machine.slice/libpod-" + cid + ".scope/container").id, "docker:" + cid);
  EXPECT_EQ(identify_cgroup("/system.slice/cri-containerd-" + cid + ".scope").id, "docker:" + cid);
  // Not an engine's name: podman's conmon scope is a system unit.
  EXPECT_EQ(identify_cgroup("/machine.slice/libpod-conmon-" + cid + ".scope").kind, WorkloadKind::systemd_unit);
}

TEST(IdentifyCgroup, UserUnitsAreTheirOwnKindPerUid) {
  const auto a = identify_cgroup(std::string(kUserManager) + "/app.slice/jupyter.service");
  EXPECT_EQ(a.kind, WorkloadKind::user_unit);
  EXPECT_EQ(a.id, "user:1000:jupyter.service");
  EXPECT_EQ(a.attributes.at("uid"), "1000");
  EXPECT_EQ(a.attributes.at("unit"), "jupyter.service");
  EXPECT_EQ(a.cgroup_path, std::string(kUserManager) + "/app.slice/jupyter.service");
  // Two users' units of one name, and the system unit of that name, are three workloads.
  const auto b = identify_cgroup("/user.slice/user-1001.slice/user@1001.service/app.slice/jupyter.service");
  EXPECT_EQ(b.id, "user:1001:jupyter.service");
  EXPECT_EQ(identify_cgroup("/system.slice/jupyter.service").id, "systemd:jupyter.service");
  EXPECT_EQ(identify_cgroup(std::string(kUserManager) + "/init.scope").id, "user:1000:init.scope");
  EXPECT_EQ(identify_cgroup(std::string(kUserManager) + "/app.slice/app-code-1.scope/sub").id,
            "user:1000:app-code-1.scope");
  // Rootless podman: a user's container is the user's unit.
  EXPECT_EQ(identify_cgroup(std::string(kUserManager) + "/user.slice/libpod-" + kContainer + ".scope").id,
            "user:1000:libpod-" + std::string(kContainer) + ".scope");
  // A manager whose uid does not match its slice is not systemd's: its path.
  EXPECT_EQ(identify_cgroup("/user.slice/user-1000.slice/user@1001.service/app.slice/x.service").kind,
            WorkloadKind::cgroup);
}

// What a user can make in the subtree systemd delegates to them: names that claim a job, a pod, a container or a
// system unit. Each is the user's unit, or its path; never what it claims.
TEST(IdentifyCgroup, SpoofsInADelegatedSubtreeClaimNothing) {
  const std::string home = std::string(kUserManager) + "/app.slice";
  const std::string cid = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
  struct Case {
    std::string path;
    std::string id;
  };
  const std::vector<Case> cases = {
      {home + "/job_4242", "cgroup:" + home + "/job_4242"},
      {home + "/slurm/uid_0/job_4242", "cgroup:" + home + "/slurm/uid_0/job_4242"},
      {home + "/system.slice/slurmstepd.scope/job_4242", "user:1000:slurmstepd.scope"},
      {home + "/kubepods/pod" + kPodUid, "cgroup:" + home + "/kubepods/pod" + kPodUid},
      {home + "/kubepods/burstable/pod" + kPodUid + "/" + kContainer,
       "cgroup:" + home + "/kubepods/burstable/pod" + kPodUid + "/" + kContainer},
      {home + "/kubepods.slice/kubepods-burstable.slice/" + kPodSlice,
       "cgroup:" + home + "/kubepods.slice/kubepods-burstable.slice/" + kPodSlice},
      {home + "/docker/" + cid, "cgroup:" + home + "/docker/" + cid},
      {home + "/docker-" + cid + ".scope", "user:1000:docker-" + cid + ".scope"},
      {home + "/sshd.service", "user:1000:sshd.service"},
      {home + "/x/system.slice/sshd.service", "cgroup:" + home + "/x/system.slice/sshd.service"},
      {home + "/jupyter.service/job_4242", "user:1000:jupyter.service"},
      {home + "/jupyter.service/kubepods/pod" + kPodUid, "user:1000:jupyter.service"},
      {std::string(kUserManager) + "/job_4242", "cgroup:" + std::string(kUserManager) + "/job_4242"},
  };
  for (const Case& c : cases) {
    const auto id = identify_cgroup(c.path);
    EXPECT_EQ(id.id, c.id) << c.path;
    EXPECT_TRUE(id.kind == WorkloadKind::user_unit || id.kind == WorkloadKind::cgroup) << c.path;
  }
  // A Delegate=yes system service's subtree (a CI runner, a rootless engine) is the service's, whatever it names.
  const std::string runner = "/system.slice/ci-runner.service";
  for (const std::string& spoof : {runner + "/job_4242", runner + "/slurm/uid_0/job_4242",
                                   runner + "/kubepods/pod" + kPodUid, runner + "/docker/" + cid,
                                   runner + "/docker-" + cid + ".scope", runner + "/sshd.service"}) {
    EXPECT_EQ(identify_cgroup(spoof).id, "systemd:ci-runner.service") << spoof;
  }
  // Elsewhere than below a manager's root, the same names claim nothing either.
  EXPECT_EQ(identify_cgroup("/batch/job_4242").id, "cgroup:/batch/job_4242");
  EXPECT_EQ(identify_cgroup(fmt::format("/batch/kubepods/pod{}", kPodUid)).kind, WorkloadKind::cgroup);
  EXPECT_EQ(identify_cgroup("/batch/docker-" + cid + ".scope").kind, WorkloadKind::cgroup);
  EXPECT_EQ(identify_cgroup("/batch/x.service").kind, WorkloadKind::cgroup);
  // A user root that misses the user managers still never makes a system unit of their subtrees.
  IdentityRules elsewhere;
  elsewhere.user_root = "/users.slice";
  EXPECT_EQ(identify_cgroup(home + "/sshd.service", elsewhere).id, "cgroup:" + home + "/sshd.service");
}

TEST(IdentifyCgroup, RootsAreConfigurable) {
  IdentityRules rules;
  rules.kubepods_roots = {"/site/k8s"};
  rules.slurm_roots = {"/site/slurm"};
  rules.container_parents = {"/site/containers"};
  rules.systemd_root = "/site/systemd";
  rules.user_root = "/site/systemd/user.slice";
  EXPECT_EQ(identify_cgroup(fmt::format("/site/k8s/burstable/pod{}", kPodUid), rules).id,
            fmt::format("k8s:pod:{}", kPodUid));
  EXPECT_EQ(identify_cgroup("/site/slurm/job_7/step_0", rules).id, "slurm:job:7");
  EXPECT_EQ(identify_cgroup(fmt::format("/site/containers/docker-{}.scope", kContainer), rules).id,
            fmt::format("docker:{}", kContainer));
  EXPECT_EQ(identify_cgroup("/site/systemd/system.slice/a.service", rules).id, "systemd:a.service");
  EXPECT_EQ(identify_cgroup("/site/systemd/user.slice/user-5.slice/user@5.service/a.service", rules).id,
            "user:5:a.service");
  // The default places are no longer any manager's.
  EXPECT_EQ(identify_cgroup(fmt::format("/kubepods/pod{}", kPodUid), rules).kind, WorkloadKind::cgroup);
  EXPECT_EQ(identify_cgroup("/system.slice/slurmstepd.scope/job_7", rules).kind, WorkloadKind::cgroup);
  EXPECT_EQ(identify_cgroup("/system.slice/a.service", rules).kind, WorkloadKind::cgroup);
  // A root is a whole component: /site/k8s is not /site/k8s2.
  EXPECT_EQ(identify_cgroup(fmt::format("/site/k8s2/pod{}", kPodUid), rules).kind, WorkloadKind::cgroup);
}

TEST(IdentifyCgroup, CgroupRootsAreCheckedWithAReason) {
  EXPECT_TRUE(check_cgroup_root("/"));
  EXPECT_TRUE(check_cgroup_root("/kubepods.slice"));
  EXPECT_TRUE(check_cgroup_root("/system.slice/slurmstepd.scope"));
  for (const char* bad : {"", "kubepods", "/kubepods/", "//kubepods", "/a//b", "/a/./b", "/a/.."}) {
    const auto checked = check_cgroup_root(bad);
    ASSERT_FALSE(checked) << bad;
    EXPECT_NE(checked.error().message.find(fmt::format("'{}'", bad)), std::string::npos) << checked.error().message;
  }
}

TEST(IdentifyCgroup, AnythingElseIsTheRawPath) {
  const auto id = identify_cgroup("/batch/team-a/run7");
  EXPECT_EQ(id.kind, WorkloadKind::cgroup);
  EXPECT_EQ(id.id, "cgroup:/batch/team-a/run7");
  EXPECT_EQ(identify_cgroup("/").kind, WorkloadKind::process);
}

// A cgroup can be named with any bytes but '/' and NUL by whoever it is delegated to. Raw, such a name made the
// identity's JSON throw (tallyd terminated on that client's registration) and made every subscriber reject the whole
// report (protobuf strings must be UTF-8).
TEST(IdentifyCgroup, NamesOfAnyBytesAreEscapedValidUtf8AndStayApart) {
  const std::string user_dir = std::string(kUserManager) + "/app.slice/";
  const auto invalid = identify_cgroup(user_dir + "bad\xff\x01name\\.service");
  EXPECT_EQ(invalid.id, "user:1000:bad\\xff\\x01name\\x5c.service");
  EXPECT_EQ(invalid.cgroup_path, user_dir + "bad\\xff\\x01name\\x5c.service");
  EXPECT_NO_THROW((void)to_json(invalid).dump());
  const auto back = identity_from_json(nlohmann::json::parse(to_json(invalid).dump()));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, invalid);

  // Well-formed UTF-8 is kept as it is; a name that spells an escape stays apart from the bytes it spells.
  EXPECT_EQ(identify_cgroup("/caf\xc3\xa9/x").id, "cgroup:/caf\xc3\xa9/x");
  EXPECT_NE(identify_cgroup("/a\\xff").id, identify_cgroup("/a\xff").id);
  EXPECT_EQ(identify_cgroup("/a\xc0\xaf").id, "cgroup:/a\\xc0\\xaf");  // an overlong '/' is not a separator
  EXPECT_EQ(identify_root_process(7, 9, "/tmp/\xfe").attributes.at("exe"), "/tmp/\\xfe");
}

TEST(IdentityJson, EveryKindRoundTrips) {
  for (const std::string& path :
       {std::string(kUserManager) + "/app.slice/jupyter.service", std::string("/system.slice/a.service"),
        fmt::format("/kubepods/pod{}/{}", kPodUid, kContainer), std::string("/slurm/uid_1/job_2"),
        fmt::format("/docker/{}", kContainer), std::string("/batch/x")}) {
    const WorkloadIdentity identity = identify_cgroup(path);
    EXPECT_EQ(workload_kind_from_string(to_string(identity.kind)), identity.kind) << path;
    const auto back = identity_from_json(to_json(identity));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(*back, identity) << path;
  }
  const WorkloadIdentity process = identify_root_process(7, 8, "/bin/true");
  EXPECT_EQ(identity_from_json(to_json(process)).value(), process);
  EXPECT_FALSE(identity_from_json({{"kind", "user"}, {"id", "x"}, {"cgroup_path", "/"}, {"attributes", {}}}));
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

TEST(IdentifyProcess, AnUnreadableFileOfALiveProcessIsNotAnExit) {
  FakeProc proc;
  proc.add(300, "0::/system.slice/x.service\n", 1);
  const auto cgroup = proc.root().path("proc/300/cgroup");
  std::filesystem::remove(cgroup);
  std::filesystem::create_directory(cgroup);  // there, but no file to read: what EMFILE looks like from here
  const auto live = identify_process(proc.root(), 300);
  ASSERT_FALSE(live);
  EXPECT_EQ(live.error().code, ErrorCode::io) << live.error().message;
  const auto gone = identify_process(proc.root(), 301);
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().code, ErrorCode::not_found) << gone.error().message;
}

TEST(IdentifyProcess, ThisProcess) {
  const auto self = identify_process(FsRoot(), ::getpid());
  ASSERT_TRUE(self) << self.error().message;
  EXPECT_FALSE(self->id.empty());
}

}  // namespace
}  // namespace tally
