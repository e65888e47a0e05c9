#include "agent/base/workload_identity.hpp"

#include <algorithm>
#include <optional>
#include <regex>
#include <span>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "agent/base/proc.hpp"
#include "agent/base/text.hpp"

namespace tally {
namespace {

using Parts = std::vector<std::string_view>;

Parts split_path(std::string_view path) {
  Parts parts;
  std::size_t start = 0;
  while (start < path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    if (end > start) parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

// The components of `path` below `root` (none when it is `root` itself); nullopt when `path` is not within `root`.
std::optional<std::span<const std::string_view>> below(const Parts& path, std::string_view root) {
  const Parts anchor = split_path(root);
  if (path.size() < anchor.size() || !std::equal(anchor.begin(), anchor.end(), path.begin())) return std::nullopt;
  return std::span<const std::string_view>(path).subspan(anchor.size());
}

bool is_decimal(std::string_view s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string_view::npos;
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

// Where systemd puts a unit: at the end of a chain of slices, "a.slice/b.slice/foo.service/...": the index of the
// unit. A name below the unit is the unit's (a Delegate=yes unit's subtree is named by whoever it delegates to).
std::optional<std::size_t> unit_after_slices(std::span<const std::string_view> parts) {
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (parts[i].ends_with(".slice")) continue;
    if (parts[i].ends_with(".service") || parts[i].ends_with(".scope")) return i;
    return std::nullopt;
  }
  return std::nullopt;
}

// A user's manager: <user root>/user-<U>.slice/user@<U>.service/<below>. Returns the uid and what is below.
std::optional<std::pair<std::string_view, std::span<const std::string_view>>> in_user_manager(
    const Parts& parts, const IdentityRules& rules) {
  const auto rest = below(parts, rules.user_root);
  if (!rest || rest->size() < 3) return std::nullopt;
  const std::string_view slice = (*rest)[0], manager = (*rest)[1];
  if (!slice.starts_with("user-") || !slice.ends_with(".slice")) return std::nullopt;
  const std::string_view uid = slice.substr(5, slice.size() - 5 - 6);
  if (!is_decimal(uid) || manager != fmt::format("user@{}.service", uid)) return std::nullopt;
  return std::pair(uid, rest->subspan(2));
}

// kubelet's layout below its root: [QoS class/]pod<UID>[/<container>] (systemd driver:
// kubepods-burstable.slice/kubepods-burstable-pod<UID with '_'>.slice/cri-containerd-<ID>.scope).
bool kubernetes_pod(const Parts& parts, const IdentityRules& rules, WorkloadIdentity& identity) {
  static const std::regex pod_re(R"((?:kubepods-(?:(?:burstable|besteffort|guaranteed)-)?)?pod)"
                                 R"(([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12}))"
                                 R"((?:\.slice)?)");
  for (const std::string& root : rules.kubepods_roots) {
    auto rest = below(parts, root);
    if (!rest || rest->empty()) continue;
    for (std::string_view qos : {"burstable", "besteffort", "guaranteed", "kubepods-burstable.slice",
                                 "kubepods-besteffort.slice", "kubepods-guaranteed.slice"}) {
      if (rest->front() == qos) {
        *rest = rest->subspan(1);
        break;
      }
    }
    std::match_results<std::string_view::const_iterator> m;
    if (rest->empty() || !std::regex_match(rest->front().begin(), rest->front().end(), m, pod_re)) continue;
    std::string uid = m[1].str();
    for (char& c : uid) c = c == '_' ? '-' : c;
    identity.kind = WorkloadKind::kubernetes_pod;
    identity.attributes["pod_uid"] = uid;
    identity.id = "k8s:pod:" + uid;
    if (rest->size() > 1) {
      if (auto cid = container_id((*rest)[1])) {
        identity.attributes["container_id"] = *cid;
        identity.id += ":" + *cid;
      }
    }
    return true;
  }
  return false;
}

// slurmstepd's layout below its root: job_<ID>/... (cgroup/v2), uid_<U>/job_<ID>/... (cgroup/v1).
bool slurm_job(const Parts& parts, const IdentityRules& rules, WorkloadIdentity& identity) {
  for (const std::string& root : rules.slurm_roots) {
    auto rest = below(parts, root);
    if (!rest || rest->empty()) continue;
    if (rest->front().starts_with("uid_") && is_decimal(rest->front().substr(4))) *rest = rest->subspan(1);
    if (rest->empty() || !rest->front().starts_with("job_") || !is_decimal(rest->front().substr(4))) continue;
    const std::string job(rest->front().substr(4));
    identity.kind = WorkloadKind::slurm_job;
    identity.attributes["job_id"] = job;
    identity.id = "slurm:job:" + job;
    return true;
  }
  return false;
}

// A container engine's cgroup directly below one of its parents: docker-<ID>.scope (or cri-containerd-, crio-,
// libpod-), or a bare <ID> (docker's cgroupfs driver: /docker/<ID>).
bool container(const Parts& parts, const IdentityRules& rules, WorkloadIdentity& identity) {
  for (const std::string& parent : rules.container_parents) {
    const auto rest = below(parts, parent);
    if (!rest || rest->empty()) continue;
    const std::string_view part = rest->front();
    if (!part.ends_with(".scope") && !is_hex_id(part)) continue;  // e.g. "docker-<ID>" is no engine's name
    if (auto cid = container_id(part)) {
      identity.kind = WorkloadKind::docker_container;
      identity.attributes["container_id"] = *cid;
      identity.id = "docker:" + *cid;
      return true;
    }
  }
  return false;
}

}  // namespace

std::string_view to_string(WorkloadKind kind) {
  switch (kind) {
    case WorkloadKind::systemd_unit: return "systemd_unit";
    case WorkloadKind::kubernetes_pod: return "kubernetes_pod";
    case WorkloadKind::slurm_job: return "slurm_job";
    case WorkloadKind::docker_container: return "docker_container";
    case WorkloadKind::user_unit: return "user_unit";
    case WorkloadKind::process: return "process";
    case WorkloadKind::cgroup: return "cgroup";
    case WorkloadKind::gpu: return "gpu";
  }
  return "cgroup";
}

std::optional<WorkloadKind> workload_kind_from_string(std::string_view name) {
  for (auto kind : {WorkloadKind::systemd_unit, WorkloadKind::kubernetes_pod, WorkloadKind::slurm_job,
                    WorkloadKind::docker_container, WorkloadKind::user_unit, WorkloadKind::process,
                    WorkloadKind::cgroup, WorkloadKind::gpu}) {
    if (to_string(kind) == name) return kind;
  }
  return std::nullopt;
}

Result<void> check_cgroup_root(std::string_view path) {
  if (!path.starts_with('/')) return make_error(ErrorCode::invalid_argument, "'{}' is not an absolute path", path);
  if (path == "/") return {};
  if (path.ends_with('/')) return make_error(ErrorCode::invalid_argument, "'{}' ends with '/'", path);
  for (std::size_t start = 1; start <= path.size();) {
    const std::size_t end = std::min(path.find('/', start), path.size());
    const std::string_view part = path.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") {
      return make_error(ErrorCode::invalid_argument, "'{}' has an empty, '.' or '..' component", path);
    }
    start = end + 1;
  }
  return {};
}

WorkloadIdentity identify_cgroup(std::string_view cgroup_path, const IdentityRules& rules) {
  WorkloadIdentity identity;
  // A cgroup may be named with any bytes but '/' and NUL (by whoever it is delegated to): ids, attributes and the path
  // carry them escaped, so that every identity is valid UTF-8 on the wire and in JSON, and two names never merge.
  identity.cgroup_path = cgroup_path.empty() ? "/" : escape_bytes(cgroup_path);
  const Parts parts = split_path(identity.cgroup_path);
  if (parts.empty()) {
    identity.kind = WorkloadKind::process;  // the root cgroup: identify_process fills in who
    identity.id = "process:";
    return identity;
  }
  auto raw_path = [&] {
    identity.kind = WorkloadKind::cgroup;
    identity.id = "cgroup:" + identity.cgroup_path;
    return identity;
  };

  // First, because its whole subtree is the user's to name: there, only the user's own units exist.
  if (const auto user = in_user_manager(parts, rules)) {
    const auto unit = unit_after_slices(user->second);
    if (!unit) return raw_path();
    const std::string_view name = user->second[*unit];
    identity.kind = WorkloadKind::user_unit;
    identity.attributes["uid"] = std::string(user->first);
    identity.attributes["unit"] = std::string(name);
    identity.id = fmt::format("user:{}:{}", user->first, name);
    return identity;
  }
  if (kubernetes_pod(parts, rules, identity) || slurm_job(parts, rules, identity) ||
      container(parts, rules, identity)) {
    return identity;
  }
  if (const auto rest = below(parts, rules.systemd_root)) {
    const auto unit = unit_after_slices(*rest);
    // A user manager's subtree never names a system unit, even where [identity] user_root misses it.
    const bool in_user_manager = unit && (*rest)[*unit].starts_with("user@") && *unit + 1 < rest->size();
    if (unit && !in_user_manager) {
      identity.kind = WorkloadKind::systemd_unit;
      identity.attributes["unit"] = std::string((*rest)[*unit]);
      identity.id = "systemd:" + std::string((*rest)[*unit]);
      return identity;
    }
  }
  return raw_path();
}

WorkloadIdentity identify_root_process(pid_t pid, std::uint64_t start_ticks, std::string exe) {
  WorkloadIdentity identity;
  identity.kind = WorkloadKind::process;
  identity.cgroup_path = "/";
  identity.attributes["pid"] = std::to_string(pid);
  identity.attributes["start_time"] = std::to_string(start_ticks);
  identity.attributes["exe"] = escape_bytes(exe);  // a file name: any bytes
  identity.id = "process:" + std::to_string(pid) + ":" + std::to_string(start_ticks);
  return identity;
}

Result<WorkloadIdentity> identify_process(const FsRoot& fs, pid_t pid, const IdentityRules& rules) {
  const auto path = read_process_cgroup(fs, pid);
  if (!path) {
    const std::string file = fs.path("proc/" + std::to_string(pid) + "/cgroup").string();
    // A process that is still there but whose file cannot be read (the agent out of descriptors, say) is not gone:
    // callers retry an io error, and the message must not send an operator after an exited process.
    std::error_code ec;
    if (std::filesystem::exists(fs.path("proc/" + std::to_string(pid)), ec)) {
      return make_error(ErrorCode::io, "{}: cannot be read although the process exists (out of file descriptors?)",
                        file);
    }
    return make_error(ErrorCode::not_found, "{}: the process is gone", file);
  }
  WorkloadIdentity identity = identify_cgroup(*path, rules);
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
