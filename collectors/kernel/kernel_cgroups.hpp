#pragma once
// What the kernel counters are keyed by, made readable: cgroup v2 ids (the inode number of the cgroup directory, as
// bpf_get_current_cgroup_id() returns it) named by their paths, and the pid → cgroup table the exec/exit events keep
// current. Also the fallback when probes are off: /proc/PID/io sampled per cgroup.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "agent/base/proc.hpp"
#include "agent/base/result.hpp"
#include "collectors/kernel/bpf_probes.hpp"

namespace tally::collectors {

// The cgroup v2 id of the directory `path` (its inode number), as BPF sees it.
Result<std::uint64_t> cgroup_id_of(const std::filesystem::path& path);

// Every cgroup below `root` (a cgroup v2 mount) now, by id, with its path relative to it ("/" for the root).
std::map<std::uint64_t, std::string> list_cgroups(const std::filesystem::path& root);

// cgroup v2 id → path relative to the hierarchy root ("/" for the root, "/system.slice/foo.service"). Learnt from
// the probes' cgroup events as cgroups are made, so that one that lives less than a report interval is named too,
// and from walks of the hierarchy (at start, and at most once per round for an id no event named).
class CgroupNames {
 public:
  explicit CgroupNames(std::filesystem::path root) : root_(std::move(root)) {}

  void learn(std::uint64_t id, std::string path) { paths_[id] = std::move(path); }
  void forget(std::uint64_t id) { paths_.erase(id); }
  // The path of `id`; when it is unknown, walks the hierarchy (once per round) to learn new cgroups.
  std::optional<std::string> path_of(std::uint64_t id);
  // Allows one more walk (call once per reporting interval).
  void next_round() { walked_this_round_ = false; }
  void walk();

 private:
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

// The fallback when probes are off: /proc/PID/io rchar and wchar of the live processes, summed per owner (a cgroup
// path, or for a process in the root cgroup the process itself, as on every other path). It is a sample, not a
// trace: bytes a process moved after the previous sample and before it exited are missed, and the first sample is a
// baseline (the processes' bytes before the agent started are not this agent's to report).
class ProcIoSampler {
 public:
  struct Owner {
    IoBytes total;             // cumulative since the sampler started
    std::string cgroup_path;   // the owner's cgroup
    pid_t pid = 0;             // a root-cgroup process: its pid and start time
    std::uint64_t start_ticks = 0;
    bool live = false;         // had a live process in the last sample
  };
  // Reads every process's counters now, as the baseline: what a process did before the sampler started is not
  // counted; a process born later counts whole, however late the first sample() finds it.
  explicit ProcIoSampler(FsRoot fs = FsRoot());
  // Samples every process; returns every owner seen so far by key ("cgroup:<path>" or "process:<pid>:<ticks>").
  // Owners with no live process left are returned once more with live = false, then dropped.
  const std::map<std::string, Owner>& sample();

 private:
  struct Seen {
    std::uint64_t start_ticks = 0;  // tells a reused pid from the process seen before
    IoBytes io;
  };
  struct Process {
    pid_t pid = 0;
    Seen seen;
    std::string cgroup;
  };
  std::vector<Process> read_processes() const;

  FsRoot fs_;
  std::map<pid_t, Seen> previous_;
  std::map<std::string, Owner> owners_;
};

}  // namespace tally::collectors
