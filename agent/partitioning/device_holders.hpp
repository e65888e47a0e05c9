#pragma once
// Which processes hold a device node open: /proc/PID/fd/* whose target is a character device of a given number.
// MIG's reconcile asks before it destroys an instance: a process may hold the instance's capability open (about to
// use it) without NVML listing it yet, and destroying the instance behind its back is what the plan must not do.

#include <sys/types.h>

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/base/fs_root.hpp"

namespace tally::partitioning {

struct DeviceHolder {
  pid_t pid = 0;
  std::string comm;
  std::uint32_t major = 0, minor = 0;
  bool operator==(const DeviceHolder&) const = default;
};

// Every (process, device) pair where a process of `fs`'s /proc holds one of `devices` ((major, minor) of character
// devices) open. Processes that exit or whose fds cannot be read meanwhile are skipped.
std::vector<DeviceHolder> find_device_holders(const FsRoot& fs,
                                              const std::set<std::pair<std::uint32_t, std::uint32_t>>& devices);

}  // namespace tally::partitioning
