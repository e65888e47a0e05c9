#include "collectors/kernel/kernel_cgroups.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>

namespace tally::collectors {

Result<std::uint64_t> cgroup_id_of(const std::filesystem::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    return make_error(ErrorCode::not_found, "{}: {}", path.string(), std::strerror(errno));
  }
  return static_cast<std::uint64_t>(st.st_ino);
}

std::optional<std::string> CgroupNames::path_of(std::uint64_t id) {
  if (auto it = paths_.find(id); it != paths_.end()) return it->second;
  if (!walked_this_round_) walk();
  if (auto it = paths_.find(id); it != paths_.end()) return it->second;
  return std::nullopt;
}

std::map<std::uint64_t, std::string> list_cgroups(const std::filesystem::path& root) {
  std::map<std::uint64_t, std::string> found;
  std::error_code ec;
  if (auto id = cgroup_id_of(root)) found[*id] = "/";
  // Cgroups come and go while we walk: skip what vanished, never fail the walk.
  auto options = std::filesystem::directory_options::skip_permission_denied;
  for (auto it = std::filesystem::recursive_directory_iterator(root, options, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code type_error;
    if (!it->is_directory(type_error) || it->is_symlink(type_error)) continue;
    struct stat st{};
    if (::stat(it->path().c_str(), &st) != 0) continue;
    found[static_cast<std::uint64_t>(st.st_ino)] = "/" + it->path().lexically_relative(root).generic_string();
  }
  return found;
}

void CgroupNames::walk() {
  walked_this_round_ = true;
  // Names learnt from events stay: a removed cgroup keeps its name until its last counters were reported.
  for (auto& [id, path] : list_cgroups(root_)) paths_[id] = std::move(path);
}

void ProcessTable::apply(const KernelEvent& event) {
  switch (event.type) {
    case KernelEvent::Type::exec:
    case KernelEvent::Type::device_open: cgroups_[event.pid] = event.cgroup_id; break;
    case KernelEvent::Type::exit: cgroups_.erase(event.pid); break;
    case KernelEvent::Type::cgroup_created:
    case KernelEvent::Type::cgroup_removed: break;
  }
}

std::optional<std::uint64_t> ProcessTable::cgroup_of(pid_t pid) const {
  if (auto it = cgroups_.find(pid); it != cgroups_.end()) return it->second;
  return std::nullopt;
}

ProcIoSampler::ProcIoSampler(FsRoot fs) : fs_(std::move(fs)) {
  for (const Process& process : read_processes()) previous_[process.pid] = process.seen;
}

std::vector<ProcIoSampler::Process> ProcIoSampler::read_processes() const {
  std::vector<Process> processes;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(fs_.path("proc"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const auto pid = parse_pid(it->path().filename().string());
    if (!pid) continue;
    const auto ticks = read_process_start_ticks(fs_, *pid);
    const auto io = read_process_io(fs_, *pid);
    auto cgroup = read_process_cgroup(fs_, *pid);
    if (!ticks || !io || !cgroup) continue;  // exited meanwhile, or a kernel thread without io accounting
    processes.push_back({*pid, Seen{*ticks, *io}, std::move(*cgroup)});
  }
  return processes;
}

const std::map<std::string, ProcIoSampler::Owner>& ProcIoSampler::sample() {
  // Owners reported as gone last time go now; the others start this sample with no live process.
  for (auto it = owners_.begin(); it != owners_.end();) {
    if (!it->second.live) {
      it = owners_.erase(it);
    } else {
      it->second.live = false;
      ++it;
    }
  }
  std::map<pid_t, Seen> current;
  for (const Process& process : read_processes()) {
    const Seen& now = process.seen;
    current[process.pid] = now;
    const bool root = process.cgroup == "/";
    const std::string key = root ? "process:" + std::to_string(process.pid) + ":" + std::to_string(now.start_ticks)
                                 : "cgroup:" + process.cgroup;
    Owner& owner = owners_[key];
    owner.cgroup_path = process.cgroup;
    owner.live = true;
    if (root) {
      owner.pid = process.pid;
      owner.start_ticks = now.start_ticks;
    }
    IoBytes grown = now.io;  // a process born since the last sample (or the baseline): all of it is new
    if (auto seen = previous_.find(process.pid); seen != previous_.end() && seen->second.start_ticks == now.start_ticks) {
      const IoBytes& before = seen->second.io;
      grown.read_bytes = now.io.read_bytes >= before.read_bytes ? now.io.read_bytes - before.read_bytes : 0;
      grown.write_bytes = now.io.write_bytes >= before.write_bytes ? now.io.write_bytes - before.write_bytes : 0;
    }
    owner.total.read_bytes += grown.read_bytes;
    owner.total.write_bytes += grown.write_bytes;
  }
  previous_ = std::move(current);
  return owners_;
}

}  // namespace tally::collectors
