#pragma once
// Parsers of the kernel's per-process files under /proc, through the FsRoot seam. Each returns nullopt when the
// process is gone or the file is malformed: a process can exit between any two reads.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"

namespace tally {

// A process's start time: /proc/PID/stat field 22, in clock ticks since boot, read after the parenthesised command
// name (which may hold spaces and parentheses). Tells a process apart from a later one that reuses its pid.
std::optional<std::uint64_t> read_process_start_ticks(const FsRoot& fs, pid_t pid);

// The process's cgroup v2 path relative to the hierarchy root: the "0::" line of /proc/PID/cgroup; on a host with
// only cgroup v1, the name=systemd hierarchy's path.
std::optional<std::string> read_process_cgroup(const FsRoot& fs, pid_t pid);

// rchar and wchar of /proc/PID/io: bytes the process's threads (live and exited) read and wrote.
struct IoBytes {
  std::uint64_t read_bytes = 0;
  std::uint64_t write_bytes = 0;
  bool operator==(const IoBytes&) const = default;
};
std::optional<IoBytes> read_process_io(const FsRoot& fs, pid_t pid);

// The executable of a process (the /proc/PID/exe link), or "" when it cannot be read.
std::string read_process_exe(const FsRoot& fs, pid_t pid);

// Where the cgroup v2 hierarchy is mounted, from proc/self/mountinfo: /sys/fs/cgroup on a pure v2 host,
// /sys/fs/cgroup/unified on a hybrid host.
Result<std::filesystem::path> find_cgroup2_mount(const FsRoot& fs = FsRoot());

// A pid from a /proc directory entry name; nullopt for anything that is not a positive decimal number.
std::optional<pid_t> parse_pid(std::string_view text);

// The parsers the readers above use, on a file's text: pure, so that they are fuzzed (tests/base/proc_fuzzer.cpp).
// A number must be plain decimal that fits in 64 bits; anything else is malformed (nullopt).
std::optional<std::uint64_t> parse_process_start_ticks(std::string_view stat);
std::optional<std::string> parse_process_cgroup(std::string_view cgroup_file);
std::optional<IoBytes> parse_process_io(std::string_view io_file);

}  // namespace tally
