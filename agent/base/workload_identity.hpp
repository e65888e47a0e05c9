#pragma once
// Who a process or a cgroup belongs to: the workload identity every number is attributed to, derived by the agent
// from the kernel's view (the cgroup path), never from what a workload claims. Every source (shm registration,
// kernel probes, /proc sampling, NVML) names a workload through these functions, so one workload is one row.

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"

namespace tally {

enum class WorkloadKind {
  systemd_unit,      // a system unit: /system.slice/foo.service, /a.slice/b.slice/c.scope
  kubernetes_pod,    // <kubepods root>/[QoS/]pod<UID>[/<container>]
  slurm_job,         // <slurm root>/[uid_<U>/]job_<ID>/...
  docker_container,  // <container parent>/docker-<ID>.scope (or cri-containerd-, crio-, libpod-), /docker/<ID>
  user_unit,         // a unit of a user's manager: /user.slice/user-<U>.slice/user@<U>.service/app.slice/foo.service
  process,           // a process in the root cgroup: identified as itself (pid, executable, start time)
  cgroup,            // anything else: the raw cgroup path
  gpu,               // not a workload: a GPU's own totals and its idle and unattributed buckets, "gpu:<uuid>"
};

struct WorkloadIdentity {
  WorkloadKind kind = WorkloadKind::cgroup;
  // Stable key, unique per workload on the node, e.g. "systemd:inference.service", "k8s:pod:<uid>:<container>",
  // "slurm:job:1234", "docker:<id>", "user:1000:jupyter.service", "process:<pid>:<start_ticks>",
  // "cgroup:/raw/path".
  std::string id;
  std::string cgroup_path;  // cgroup v2 path relative to the hierarchy root, e.g. "/system.slice/foo.service"
  std::map<std::string, std::string> attributes;  // unit, uid, pod_uid, container_id, job_id, pid, exe, start_time...
  bool operator==(const WorkloadIdentity&) const = default;
};

std::string_view to_string(WorkloadKind kind);
std::optional<WorkloadKind> workload_kind_from_string(std::string_view name);

// Where each workload manager puts its cgroups: absolute cgroup v2 paths (relative to the hierarchy root). A rule
// matches only at its manager's place, because names are free for anyone to make below a delegated cgroup (every
// user's user@UID.service, a Delegate=yes service, a container with its own cgroup namespace): a `job_4242` or
// `kubepods/pod<UID>` made there claims nothing. Sites that move a manager's cgroups configure them ([identity]).
struct IdentityRules {
  // kubelet's top cgroup (systemd driver, cgroupfs driver); below it: [QoS class/]pod<UID>[/<container>].
  std::vector<std::string> kubepods_roots{"/kubepods.slice", "/kubepods"};
  // slurmstepd's cgroups: cgroup/v2 <root>/job_<ID>/..., cgroup/v1 <root>/uid_<U>/job_<ID>/....
  std::vector<std::string> slurm_roots{"/system.slice/slurmstepd.scope", "/slurm"};
  // Where container engines put a container: <parent>/docker-<ID>.scope (cri-containerd-, crio-, libpod-) or
  // <parent>/<ID>, directly below the parent.
  std::vector<std::string> container_parents{"/system.slice", "/machine.slice", "/docker"};
  // Where the system manager's slices start: a system unit is <root>/[a.slice/...]<unit>.service|.scope.
  std::string systemd_root = "/";
  // Where user managers live: <root>/user-<U>.slice/user@<U>.service/[a.slice/...]<unit>.service|.scope is
  // the user unit "user:<U>:<unit>". Everything below user@<U>.service is the user's to name: nothing there is
  // ever a job, pod, container or system unit.
  std::string user_root = "/user.slice";
  bool operator==(const IdentityRules&) const = default;
};

// Whether `path` can be a root in IdentityRules: absolute, no empty, "." or ".." component, no trailing '/'
// (except "/" itself). The error says what is wrong.
Result<void> check_cgroup_root(std::string_view path);

// The identity of the workload a cgroup v2 path belongs to, under `rules` (first match): a user's unit, a pod, a
// Slurm job, a container, a system unit, else the path itself (kind `cgroup`). The root cgroup ("/") gives kind
// `process` with an incomplete id: its processes are each their own workload (identify_process,
// identify_root_process).
WorkloadIdentity identify_cgroup(std::string_view cgroup_path, const IdentityRules& rules = IdentityRules{});

// A process in the root cgroup, by pid and start time (/proc/PID/stat field 22): "process:<pid>:<start_ticks>".
WorkloadIdentity identify_root_process(pid_t pid, std::uint64_t start_ticks, std::string exe);

// The identity of a running process, from proc/PID/cgroup (and, for a process in the root cgroup, its start time
// and executable).
Result<WorkloadIdentity> identify_process(const FsRoot& fs, pid_t pid, const IdentityRules& rules = IdentityRules{});

// The one JSON form of an identity (segment metadata files).
nlohmann::json to_json(const WorkloadIdentity& identity);
Result<WorkloadIdentity> identity_from_json(const nlohmann::json& json);

}  // namespace tally
