#pragma once
// The metering checkpoint: what must survive an agent crash that the segments themselves do not hold. Live
// segments keep their own cumulative counters on tmpfs, so the checkpoint holds only
//  - the totals of segments that are gone (their process exited, or they were quarantined): "retired",
//  - what the last report published (so deltas continue across a restart),
//  - the names of segments already folded into "retired", so a restart never counts them twice.
// Written atomically (temporary file, fsync, rename, fsync of the directory) under the state dir.

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "agent/base/result.hpp"
#include "agent/base/workload_identity.hpp"

namespace tally::agent {

using CounterMap = std::map<std::string, std::uint64_t>;

struct CheckpointLabelSet {
  CounterMap retired;   // from segments that are gone
  CounterMap reported;  // cumulative values in the last report
  bool refused = false;
};

struct CheckpointWorkload {
  WorkloadIdentity identity;
  std::set<std::string> names;
  std::map<std::string, CheckpointLabelSet> label_sets;  // by label text
  std::uint64_t retired_dropped = 0;
  std::uint64_t reported_dropped = 0;
  std::uint64_t exited_unix_ns = 0;  // 0 while some process is alive
};

struct Checkpoint {
  std::map<std::string, CheckpointWorkload> workloads;  // by workload id
  std::set<std::string> retired_segments;              // segment file names
};

Result<void> write_checkpoint(const Checkpoint& checkpoint, const std::filesystem::path& path);
// A missing file is an empty checkpoint; a corrupt one is an Error (the caller logs it and starts empty).
Result<Checkpoint> read_checkpoint(const std::filesystem::path& path);

}  // namespace tally::agent
