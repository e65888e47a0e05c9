#include "agent/base/proc.hpp"

#include <charconv>
#include <sstream>

namespace tally {
namespace {

std::string pid_path(pid_t pid, std::string_view file) { return "proc/" + std::to_string(pid) + "/" + std::string(file); }

// A plain decimal number, all of `text`: no sign, no space, no trailing garbage, no overflow.
std::optional<std::uint64_t> parse_decimal(std::string_view text) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

std::optional<pid_t> parse_pid(std::string_view text) {
  pid_t pid = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), pid);
  if (ec != std::errc{} || end != text.data() + text.size() || pid <= 0) return std::nullopt;
  return pid;
}

std::optional<std::uint64_t> parse_process_start_ticks(std::string_view stat) {
  // The command name (field 2) is the process's to choose, parentheses and spaces included: fields start after
  // the last ')'.
  const auto close = stat.rfind(')');
  if (close == std::string_view::npos || close + 2 > stat.size()) return std::nullopt;
  std::string_view rest = stat.substr(close + 2);  // field 3 (state) onwards
  rest = rest.substr(0, rest.find('\n'));  // one line
  for (int field = 3;; ++field) {
    const auto start = rest.find_first_not_of(' ');
    if (start == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(start);
    const std::string_view token = rest.substr(0, rest.find(' '));
    if (field == 22) return parse_decimal(token);
    rest.remove_prefix(token.size());
  }
}

std::optional<std::uint64_t> read_process_start_ticks(const FsRoot& fs, pid_t pid) {
  const auto stat = fs.read_text(pid_path(pid, "stat"));
  if (!stat) return std::nullopt;
  return parse_process_start_ticks(*stat);
}

std::optional<std::string> parse_process_cgroup(std::string_view text) {
  std::optional<std::string_view> v2, systemd_v1;
  while (!text.empty()) {
    const auto end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    if (line.starts_with("0::")) v2 = line.substr(3);
    if (const auto p = line.find(":name=systemd:"); p != std::string_view::npos) systemd_v1 = line.substr(p + 14);
  }
  if (v2) return std::string(*v2);
  if (systemd_v1) return std::string(*systemd_v1);
  return std::nullopt;
}

std::optional<std::string> read_process_cgroup(const FsRoot& fs, pid_t pid) {
  const auto text = fs.read_text(pid_path(pid, "cgroup"));
  if (!text) return std::nullopt;
  return parse_process_cgroup(*text);
}

std::optional<IoBytes> parse_process_io(std::string_view text) {
  // "rchar: 323934931\nwchar: 323929600\nsyscr: 632687\n..."
  std::optional<std::uint64_t> read, written;
  while (!text.empty()) {
    const auto end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    if (line.starts_with("rchar: ")) read = parse_decimal(line.substr(7));
    if (line.starts_with("wchar: ")) written = parse_decimal(line.substr(7));
  }
  if (!read || !written) return std::nullopt;
  return IoBytes{*read, *written};
}

std::optional<IoBytes> read_process_io(const FsRoot& fs, pid_t pid) {
  const auto text = fs.read_text(pid_path(pid, "io"));
  if (!text) return std::nullopt;
  return parse_process_io(*text);
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
