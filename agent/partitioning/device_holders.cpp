#include "agent/partitioning/device_holders.hpp"

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <fmt/format.h>

#include "agent/base/proc.hpp"

namespace tally::partitioning {

std::vector<DeviceHolder> find_device_holders(const FsRoot& fs,
                                              const std::set<std::pair<std::uint32_t, std::uint32_t>>& devices) {
  std::vector<DeviceHolder> holders;
  if (devices.empty()) return holders;
  for (const std::string& entry : fs.list("proc")) {
    const auto pid = parse_pid(entry);
    if (!pid) continue;
    const std::string fd_dir = fmt::format("proc/{}/fd", *pid);
    std::set<std::pair<std::uint32_t, std::uint32_t>> held;
    for (const std::string& fd : fs.list(fd_dir)) {
      struct stat target{};
      // stat() follows the fd's link to the file it has open: a device node's st_rdev names the device.
      if (::stat(fs.path(fmt::format("{}/{}", fd_dir, fd)).c_str(), &target) != 0 || !S_ISCHR(target.st_mode)) continue;
      const std::pair<std::uint32_t, std::uint32_t> device{major(target.st_rdev), minor(target.st_rdev)};
      if (devices.contains(device) && held.insert(device).second) {
        holders.push_back(DeviceHolder{*pid, fs.read_line(fmt::format("proc/{}/comm", *pid)).value_or(""),
                                       device.first, device.second});
      }
    }
  }
  return holders;
}

}  // namespace tally::partitioning
