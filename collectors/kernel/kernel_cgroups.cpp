#include "collectors/kernel/kernel_cgroups.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

namespace tally::collectors {
Result<std::uint64_t> cgroup_id_of(const std::filesystem::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    return make_error(ErrorCode::not_found, "{}: {}", path.string(), std::strerror(errno));
  }
  return static_cast<std::uint64_t>(st.st_ino);
}

std::optional<std::string> CgroupPaths::path_of(std::uint64_t id) {
  if (auto it = paths_.find(id); it != paths_.end()) return it->second;
  if (!walked_this_round_) walk();
  if (auto it = paths_.find(id); it != paths_.end()) return it->second;
  return std::nullopt;
}

void CgroupPaths::walk() {
  walked_this_round_ = true;
  std::map<std::uint64_t, std::string> paths;
  std::error_code ec;
  if (auto id = cgroup_id_of(root_)) paths[*id] = "/";
  // Cgroups come and go while we walk: skip what vanished, never fail the walk.
  auto options = std::filesystem::directory_options::skip_permission_denied;
  for (auto it = std::filesystem::recursive_directory_iterator(root_, options, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    std::error_code type_error;
    if (!it->is_directory(type_error) || it->is_symlink(type_error)) continue;
    struct stat st{};
    if (::stat(it->path().c_str(), &st) != 0) continue;
    paths[static_cast<std::uint64_t>(st.st_ino)] = "/" + it->path().lexically_relative(root_).generic_string();
  }
  paths_ = std::move(paths);
}

void ProcessTable::apply(const KernelEvent& event) {
  switch (event.type) {
    case KernelEvent::Type::exec: cgroups_[event.pid] = event.cgroup_id; break;
    case KernelEvent::Type::exit: cgroups_.erase(event.pid); break;
    case KernelEvent::Type::device_open: cgroups_[event.pid] = event.cgroup_id; break;
    case KernelEvent::Type::cgroup_created:
    case KernelEvent::Type::cgroup_removed: break;
  }
}

std::optional<std::uint64_t> ProcessTable::cgroup_of(pid_t pid) const {
  if (auto it = cgroups_.find(pid); it != cgroups_.end()) return it->second;
  return std::nullopt;
}

std::map<std::string, IoBytes> ProcIoSampler::sample() {
  std::map<std::string, IoBytes> per_cgroup;
  std::map<pid_t, Seen> current;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(fs_.path("proc"), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const auto pid = parse_pid(it->path().filename().string());
    if (!pid) continue;
    const auto ticks = read_process_start_ticks(fs_, *pid);
    const auto io = read_process_io(fs_, *pid);
    const auto cgroup = read_process_cgroup(fs_, *pid);
    if (!ticks || !io || !cgroup) continue;  // exited meanwhile, or a kernel thread without io accounting
    IoBytes delta = *io;
    if (auto seen = previous_.find(*pid); seen != previous_.end() && seen->second.start_ticks == *ticks) {
      delta.read_bytes = io->read_bytes >= seen->second.io.read_bytes ? io->read_bytes - seen->second.io.read_bytes : 0;
      delta.write_bytes =
          io->write_bytes >= seen->second.io.write_bytes ? io->write_bytes - seen->second.io.write_bytes : 0;
    }
    IoBytes& sum = per_cgroup[*cgroup];
    sum.read_bytes += delta.read_bytes;
    sum.write_bytes += delta.write_bytes;
    current[*pid] = Seen{*ticks, *io};
  }
  previous_ = std::move(current);
  return per_cgroup;
}

}  // namespace tally::collectors
