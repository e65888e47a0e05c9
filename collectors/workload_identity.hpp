#pragma once
// Who a process or a cgroup belongs to: the workload identity every counter is attributed to, derived by the
// agent from the kernel's view (the cgroup path), never from what a workload claims. Shared by the shm
// registration path and the eBPF collectors so that both name a workload the same way.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "collectors/result.hpp"

namespace tally::collectors {

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

// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified on a hybrid
// host. Read from `mountinfo` (normally /proc/self/mountinfo).
Result<std::filesystem::path> find_cgroup2_mount(const std::filesystem::path& mountinfo = "/proc/self/mountinfo");

// The identity of the workload a cgroup v2 path belongs to.
WorkloadIdentity identify_cgroup(std::string_view cgroup_path);

// A process's start time: /proc/PID/stat field 22, in clock ticks since boot, read after the parenthesised command
// name (which may hold spaces and parentheses). Tells a process apart from a later one that reuses its pid.
// nullopt when the process is gone or the file is malformed.
std::optional<std::uint64_t> read_process_start_ticks(pid_t pid, const std::filesystem::path& proc_root = "/proc");

// The identity of a running process, from `proc_root`/PID/cgroup (and, for a process in the root cgroup,
// its executable and start time from `proc_root`/PID/exe and /stat).
Result<WorkloadIdentity> identify_process(pid_t pid, const std::filesystem::path& proc_root = "/proc");

}  // namespace tally::collectors
