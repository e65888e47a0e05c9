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

#include <nlohmann/json.hpp>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"

namespace tally {

enum class WorkloadKind {
  systemd_unit,      // .../foo.service or .../foo.scope
  kubernetes_pod,    // kubepods...pod<UID>... (container id when present)
  slurm_job,         // .../job_<ID>/...
  docker_container,  // .../docker-<ID>.scope or /docker/<ID>
  process,           // a process in the root cgroup: identified as itself (pid, executable, start time)
  cgroup,            // anything else: the raw cgroup path
};

struct WorkloadIdentity {
  WorkloadKind kind = WorkloadKind::cgroup;
  // Stable key, unique per workload on the node, e.g. "systemd:inference.service", "k8s:pod:<uid>:<container>",
  // "slurm:job:1234", "docker:<id>", "process:<pid>:<start_ticks>", "cgroup:/raw/path".
  std::string id;
  std::string cgroup_path;  // cgroup v2 path relative to the hierarchy root, e.g. "/system.slice/foo.service"
  std::map<std::string, std::string> attributes;  // unit, pod_uid, container_id, job_id, pid, exe, start_time...
  bool operator==(const WorkloadIdentity&) const = default;
};

std::string_view to_string(WorkloadKind kind);
std::optional<WorkloadKind> workload_kind_from_string(std::string_view name);

// The identity of the workload a cgroup v2 path belongs to. The root cgroup ("/") gives kind `process` with an
// incomplete id: its processes are each their own workload (identify_process, identify_root_process).
WorkloadIdentity identify_cgroup(std::string_view cgroup_path);

// A process in the root cgroup, by pid and start time (/proc/PID/stat field 22): "process:<pid>:<start_ticks>".
WorkloadIdentity identify_root_process(pid_t pid, std::uint64_t start_ticks, std::string exe);

// The identity of a running process, from proc/PID/cgroup (and, for a process in the root cgroup, its start time
// and executable).
Result<WorkloadIdentity> identify_process(const FsRoot& fs, pid_t pid);

// The one JSON form of an identity (segment metadata files).
nlohmann::json to_json(const WorkloadIdentity& identity);
Result<WorkloadIdentity> identity_from_json(const nlohmann::json& json);

}  // namespace tally
