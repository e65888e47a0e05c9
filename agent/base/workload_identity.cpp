#include "agent/base/workload_identity.hpp"

#include <optional>
#include <regex>
#include <vector>

#include "agent/base/proc.hpp"

namespace tally {
namespace {

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (start < path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (end > start) parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

bool is_hex_id(std::string_view s) {
  if (s.size() < 12) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// "docker-<id>.scope", "cri-containerd-<id>.scope", "crio-<id>.scope", or a bare "<id>": the container id.
std::optional<std::string> container_id(std::string_view part) {
  std::string_view s = part;
  if (s.ends_with(".scope")) s.remove_suffix(6);
  for (std::string_view prefix : {"docker-", "cri-containerd-", "crio-", "containerd-", "libpod-"}) {
    if (s.starts_with(prefix)) {
      s.remove_prefix(prefix.size());
      break;
    }
  }
  if (is_hex_id(s)) return std::string(s);
  return std::nullopt;
}

}  // namespace

std::string_view to_string(WorkloadKind kind) {
  switch (kind) {
    case WorkloadKind::systemd_unit: return "systemd_unit";
    case WorkloadKind::kubernetes_pod: return "kubernetes_pod";
    case WorkloadKind::slurm_job: return "slurm_job";
    case WorkloadKind::docker_container: return "docker_container";
    case WorkloadKind::process: return "process";
    case WorkloadKind::cgroup: return "cgroup";
  }
  return "cgroup";
}

std::optional<WorkloadKind> workload_kind_from_string(std::string_view name) {
  for (auto kind : {WorkloadKind::systemd_unit, WorkloadKind::kubernetes_pod, WorkloadKind::slurm_job,
                    WorkloadKind::docker_container, WorkloadKind::process, WorkloadKind::cgroup}) {
    if (to_string(kind) == name) return kind;
  }
  return std::nullopt;
}

WorkloadIdentity identify_cgroup(std::string_view cgroup_path) {
  WorkloadIdentity identity;
  identity.cgroup_path = std::string(cgroup_path.empty() ? "/" : cgroup_path);
  const std::vector<std::string_view> parts = split_path(cgroup_path);
  if (parts.empty()) {
    identity.kind = WorkloadKind::process;  // the root cgroup: identify_process fills in who
    identity.id = "process:";
    return identity;
  }

  // Kubernetes: a "kubepods" ancestor and a "pod<UID>" component (systemd driver: "kubepods-burstable-pod<uid>.slice"
  // with '_' for '-'; cgroupfs driver: "pod<uid>").
  bool kube = false;
  for (auto p : parts) kube = kube || p.starts_with("kubepods");
  if (kube) {
    static const std::regex pod_re(R"(pod([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}))");
    for (std::size_t i = 0; i < parts.size(); ++i) {
      std::match_results<std::string_view::const_iterator> m;
      if (std::regex_search(parts[i].begin(), parts[i].end(), m, pod_re)) {
        std::string uid = m[1].str();
        for (char& c : uid) c = c == '_' ? '-' : c;
        identity.kind = WorkloadKind::kubernetes_pod;
        identity.attributes["pod_uid"] = uid;
        identity.id = "k8s:pod:" + uid;
        if (i + 1 < parts.size()) {
          if (auto cid = container_id(parts[i + 1])) {
            identity.attributes["container_id"] = *cid;
            identity.id += ":" + *cid;
          }
        }
        return identity;
      }
    }
  }

  // Slurm: ".../job_<ID>/..." (cgroup/v2 plugin: system.slice/slurmstepd.scope/job_<ID>/step_<N>/...).
  for (auto p : parts) {
    if (p.starts_with("job_") && p.size() > 4) {
      const std::string_view job = p.substr(4);
      if (job.find_first_not_of("0123456789") == std::string_view::npos) {
        identity.kind = WorkloadKind::slurm_job;
        identity.attributes["job_id"] = std::string(job);
        identity.id = "slurm:job:" + std::string(job);
        return identity;
      }
    }
  }

  // Docker: "/docker/<id>" (cgroupfs driver) or ".../docker-<id>.scope" (systemd driver).
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const bool under_docker = i > 0 && parts[i - 1] == "docker";
    if ((under_docker && is_hex_id(parts[i])) || (parts[i].starts_with("docker-") && parts[i].ends_with(".scope"))) {
      if (auto cid = container_id(parts[i])) {
        identity.kind = WorkloadKind::docker_container;
        identity.attributes["container_id"] = *cid;
        identity.id = "docker:" + *cid;
        return identity;
      }
    }
  }

  // systemd: the deepest .service, else the deepest .scope (a session or a transient unit).
  for (std::string_view suffix : {".service", ".scope"}) {
    for (std::size_t i = parts.size(); i-- > 0;) {
      if (parts[i].ends_with(suffix)) {
        identity.kind = WorkloadKind::systemd_unit;
        identity.attributes["unit"] = std::string(parts[i]);
        identity.id = "systemd:" + std::string(parts[i]);
        return identity;
      }
    }
  }

  identity.kind = WorkloadKind::cgroup;
  identity.id = "cgroup:" + identity.cgroup_path;
  return identity;
}

WorkloadIdentity identify_root_process(pid_t pid, std::uint64_t start_ticks, std::string exe) {
  WorkloadIdentity identity;
  identity.kind = WorkloadKind::process;
  identity.cgroup_path = "/";
  identity.attributes["pid"] = std::to_string(pid);
  identity.attributes["start_time"] = std::to_string(start_ticks);
  identity.attributes["exe"] = std::move(exe);
  identity.id = "process:" + std::to_string(pid) + ":" + std::to_string(start_ticks);
  return identity;
}

Result<WorkloadIdentity> identify_process(const FsRoot& fs, pid_t pid) {
  const auto path = read_process_cgroup(fs, pid);
  if (!path) {
    return make_error(ErrorCode::not_found, "{}: no cgroup entry (process gone?)",
                      fs.path("proc/" + std::to_string(pid) + "/cgroup").string());
  }
  WorkloadIdentity identity = identify_cgroup(*path);
  if (identity.kind != WorkloadKind::process) return identity;
  // Root cgroup: the process is its own workload, told apart from a later process with the same pid by its start
  // time.
  const auto ticks = read_process_start_ticks(fs, pid);
  if (!ticks) {
    return make_error(ErrorCode::not_found, "{}: no start time", fs.path("proc/" + std::to_string(pid) + "/stat").string());
  }
  return identify_root_process(pid, *ticks, read_process_exe(fs, pid));
}

nlohmann::json to_json(const WorkloadIdentity& identity) {
  return {{"kind", std::string(to_string(identity.kind))},
          {"id", identity.id},
          {"cgroup_path", identity.cgroup_path},
          {"attributes", identity.attributes}};
}

Result<WorkloadIdentity> identity_from_json(const nlohmann::json& json) {
  try {
    WorkloadIdentity identity;
    const auto kind = workload_kind_from_string(json.at("kind").get<std::string>());
    if (!kind) return make_error(ErrorCode::invalid_argument, "unknown workload kind {}", json.at("kind").dump());
    identity.kind = *kind;
    identity.id = json.at("id").get<std::string>();
    identity.cgroup_path = json.at("cgroup_path").get<std::string>();
    identity.attributes = json.at("attributes").get<std::map<std::string, std::string>>();
    if (identity.id.empty()) return make_error(ErrorCode::invalid_argument, "workload identity without an id");
    return identity;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::invalid_argument, "malformed workload identity: {}", e.what());
  }
}

}  // namespace tally
