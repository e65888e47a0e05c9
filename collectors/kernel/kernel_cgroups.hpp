#pragma once
// What the eBPF counters are keyed by, made readable: cgroup v2 ids (the inode number of the cgroup directory, as
// bpf_get_current_cgroup_id() returns it) mapped to paths relative to the hierarchy root, and the pid → cgroup
// table the exec/exit events keep current. Also the fallback when probes are off: /proc/PID/io sampled per cgroup.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "collectors/kernel/bpf_probes.hpp"
#include "agent/base/proc.hpp"
#include "agent/base/result.hpp"

namespace tally::collectors {

// The cgroup v2 id of the directory `path` (its inode number), as BPF sees it.
Result<std::uint64_t> cgroup_id_of(const std::filesystem::path& path);

// cgroup v2 id → path relative to the hierarchy root ("/" for the root, "/system.slice/foo.service").
class CgroupPaths {
 public:
  explicit CgroupPaths(std::filesystem::path root) : root_(std::move(root)) {}

  // The path of `id`; when it is unknown, walks the hierarchy once per call of next_round() to learn new cgroups.
  std::optional<std::string> path_of(std::uint64_t id);
  // Allows one more walk (call once per reporting interval).
  void next_round() { walked_this_round_ = false; }
  // Whether `id` was seen on the last walk (false: the cgroup was removed, or is newer than the walk).
  bool known(std::uint64_t id) const { return paths_.contains(id); }
  const std::filesystem::path& root() const { return root_; }

 private:
  void walk();
  std::filesystem::path root_;
  std::map<std::uint64_t, std::string> paths_;
  bool walked_this_round_ = false;
};

// pid → cgroup id, fed by exec and exit events, so other collectors can attribute a pid without reading /proc.
class ProcessTable {
 public:
  void apply(const KernelEvent& event);
  std::optional<std::uint64_t> cgroup_of(pid_t pid) const;
  std::size_t size() const { return cgroups_.size(); }

 private:
  std::map<pid_t, std::uint64_t> cgroups_;
};

// The fallback when probes are off: sums /proc/PID/io rchar and wchar over the processes of each cgroup. It is a
// sample, not a trace: bytes a process moved after the previous sample and before it exited are missed.
class ProcIoSampler {
 public:
  explicit ProcIoSampler(FsRoot fs = FsRoot()) : fs_(std::move(fs)) {}
  // Bytes per cgroup path since the previous call (the first call counts everything the processes did so far).
  std::map<std::string, IoBytes> sample();

 private:
  struct Seen {
    std::uint64_t start_ticks = 0;  // tells a reused pid from the process seen before
    IoBytes io;
  };
  FsRoot fs_;
  std::map<pid_t, Seen> previous_;
};

}  // namespace tally::collectors
