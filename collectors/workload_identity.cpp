#include "collectors/workload_identity.hpp"

#include <unistd.h>

#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <vector>

namespace tally::collectors {
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

std::optional<std::string> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
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

Result<std::filesystem::path> find_cgroup2_mount(const std::filesystem::path& mountinfo) {
  std::ifstream in(mountinfo);
  if (!in) return make_error(ErrorCode::not_found, "{}: cannot read", mountinfo.string());
  std::string line;
  std::optional<std::filesystem::path> found;
  while (std::getline(in, line)) {
    // "36 35 0:30 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw,..."
    const auto dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream after(line.substr(dash + 3));
    std::string fstype;
    after >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream before(line.substr(0, dash));
    std::string id, parent, devno, root, mount_point;
    before >> id >> parent >> devno >> root >> mount_point;
    if (mount_point.empty()) continue;
    // Prefer /sys/fs/cgroup (pure v2) over /sys/fs/cgroup/unified (hybrid) when both appear.
    if (!found || mount_point == "/sys/fs/cgroup") found = std::filesystem::path(mount_point);
  }
  if (!found) return make_error(ErrorCode::not_found, "{}: no cgroup2 mount", mountinfo.string());
  return *found;
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

std::optional<std::uint64_t> read_process_start_ticks(pid_t pid, const std::filesystem::path& proc_root) {
  const auto stat = read_file(proc_root / std::to_string(pid) / "stat");
  if (!stat) return std::nullopt;
  const auto close = stat->rfind(')');
  if (close == std::string::npos || close + 2 > stat->size()) return std::nullopt;
  std::istringstream fields(stat->substr(close + 2));  // field 3 (state) onwards
  std::string field;
  for (int i = 3; i < 22 && fields >> field; ++i) {
  }
  std::uint64_t ticks = 0;
  if (!(fields >> ticks)) return std::nullopt;
  return ticks;
}

Result<WorkloadIdentity> identify_process(pid_t pid, const std::filesystem::path& proc_root) {
  const std::filesystem::path dir = proc_root / std::to_string(pid);
  const auto cgroup = read_file(dir / "cgroup");
  if (!cgroup) return make_error(ErrorCode::not_found, "{}: cannot read (process gone?)", (dir / "cgroup").string());
  // cgroup v2 entry "0::/path"; on a v1-only host fall back to the name=systemd hierarchy.
  std::optional<std::string> v2, systemd_v1;
  std::istringstream lines(*cgroup);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("0::")) v2 = line.substr(3);
    if (const auto p = line.find(":name=systemd:"); p != std::string::npos) systemd_v1 = line.substr(p + 14);
  }
  const std::optional<std::string> path = v2 ? v2 : systemd_v1;
  if (!path) return make_error(ErrorCode::invalid_argument, "{}: no cgroup v2 entry", (dir / "cgroup").string());
  WorkloadIdentity identity = identify_cgroup(*path);
  if (identity.kind != WorkloadKind::process) return identity;

  // Root cgroup: the process is its own workload, told apart from a later process with the same pid by its
  // start time (/proc/PID/stat field 22, after the parenthesised command name which may contain anything).
  const auto ticks = read_process_start_ticks(pid, proc_root);
  if (!ticks) return make_error(ErrorCode::not_found, "{}: no start time", (dir / "stat").string());
  const std::string start_ticks = std::to_string(*ticks);
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink(dir / "exe", ec);
  identity.attributes["pid"] = std::to_string(pid);
  identity.attributes["start_time"] = start_ticks;
  identity.attributes["exe"] = ec ? std::string() : exe.string();
  identity.id = "process:" + std::to_string(pid) + ":" + start_ticks;
  return identity;
}

}  // namespace tally::collectors
