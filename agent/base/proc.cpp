#include "agent/base/proc.hpp"

#include <charconv>
#include <sstream>

namespace tally {
namespace {

std::string pid_path(pid_t pid, std::string_view file) { return "proc/" + std::to_string(pid) + "/" + std::string(file); }

}  // namespace

std::optional<pid_t> parse_pid(std::string_view text) {
  pid_t pid = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), pid);
  if (ec != std::errc{} || end != text.data() + text.size() || pid <= 0) return std::nullopt;
  return pid;
}

std::optional<std::uint64_t> read_process_start_ticks(const FsRoot& fs, pid_t pid) {
  const auto stat = fs.read_text(pid_path(pid, "stat"));
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

std::optional<std::string> read_process_cgroup(const FsRoot& fs, pid_t pid) {
  const auto text = fs.read_text(pid_path(pid, "cgroup"));
  if (!text) return std::nullopt;
  std::optional<std::string> v2, systemd_v1;
  std::istringstream lines(*text);
  for (std::string line; std::getline(lines, line);) {
    if (line.starts_with("0::")) v2 = line.substr(3);
    if (const auto p = line.find(":name=systemd:"); p != std::string::npos) systemd_v1 = line.substr(p + 14);
  }
  return v2 ? v2 : systemd_v1;
}

std::optional<IoBytes> read_process_io(const FsRoot& fs, pid_t pid) {
  const auto text = fs.read_text(pid_path(pid, "io"));
  if (!text) return std::nullopt;
  std::istringstream in(*text);
  std::string key;
  std::uint64_t value = 0;
  IoBytes io;
  bool read = false, written = false;
  while (in >> key >> value) {
    if (key == "rchar:") io.read_bytes = value, read = true;
    if (key == "wchar:") io.write_bytes = value, written = true;
  }
  if (!read || !written) return std::nullopt;
  return io;
}

std::string read_process_exe(const FsRoot& fs, pid_t pid) {
  return fs.link_target(pid_path(pid, "exe")).value_or("");
}

Result<std::filesystem::path> find_cgroup2_mount(const FsRoot& fs) {
  const auto text = fs.read_text("proc/self/mountinfo");
  if (!text) return make_error(ErrorCode::not_found, "{}: cannot read", fs.path("proc/self/mountinfo").string());
  std::istringstream lines(*text);
  std::optional<std::filesystem::path> found;
  for (std::string line; std::getline(lines, line);) {
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
  if (!found) return make_error(ErrorCode::not_found, "{}: no cgroup2 mount", fs.path("proc/self/mountinfo").string());
  return *found;
}

}  // namespace tally
