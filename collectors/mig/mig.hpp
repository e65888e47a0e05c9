#pragma once
// MIG geometry through NVML: read what a GPU is partitioned into, plan the steps to a wanted set of GPU-instance
// profiles, and apply them one GPU at a time, verifying the result and putting the GPU back as it was when a step
// or the verification fails. Instances with processes on them are never destroyed, and a MIG mode change that the
// driver refuses (a client holds the GPU, a reset is required) is reported, never forced. See docs/mig.md.

#include <cstdint>
#include <string>
#include <vector>

#include "agent/base/result.hpp"
#include "collectors/nvml/nvml.hpp"

namespace tally::collectors {

struct MigProfile {  // one GPU-instance profile as the driver reports it on this GPU
  // The profile ID (nvmlGpuInstanceProfileInfo_t.id, what `nvidia-smi mig -lgip` lists: 19 for 1g.10gb on A100),
  // the number every other call names the profile by.
  unsigned id = 0;
  unsigned nvml_profile = 0;  // the NVML_GPU_INSTANCE_PROFILE_* index it was read by (0 for 1g.10gb)
  std::string name;           // "3g.40gb", as nvmlGpuInstanceProfileInfo_v2_t names it (or derived: "<slices>g.<GB>gb")
  unsigned slices = 0;        // sliceCount (compute slices)
  unsigned instance_count = 0;  // how many of it may exist at once
  std::uint64_t memory_mib = 0;
  std::vector<unsigned> placements;  // possible placement starts, in memory slices
  unsigned placement_size = 0;       // memory slices one instance spans
};

// (Not MigInstance: topology.hpp has one, a MIG device as the topology lists it. Two types of one name in one
// namespace are an ODR violation that ASan caught as a heap overflow.)
struct MigGpuInstance {  // one GPU instance that exists now
  unsigned gpu_instance_id = 0;
  unsigned profile_id = 0;
  std::string profile_name;
  unsigned placement_start = 0, placement_size = 0;
  std::vector<unsigned> compute_instance_ids;
  std::vector<unsigned> pids;  // processes on it now (busy when not empty)
};

struct MigGeometry {
  bool supported = false;        // the GPU can do MIG at all (nvmlDeviceGetMigMode answered)
  bool enabled = false;          // current mode
  bool pending_enabled = false;  // pending mode (differs from enabled: a GPU reset is required)
  std::vector<MigProfile> profiles;    // known while MIG is enabled
  std::vector<MigGpuInstance> instances;  // ordered by placement_start
  std::vector<unsigned> gpu_pids;      // processes on the GPU that no instance accounts for (all of them, MIG off)
};

// Reads one GPU's geometry (a GPU handle, not a MIG handle). Errors name the GPU and the NVML call. A GPU without
// MIG is not an error: supported is false.
Result<MigGeometry> read_mig_geometry(const NvmlLibrary& nvml, nvmlDevice_t gpu);

struct MigWanted {  // mode "whole" -> mig=false
  bool mig = false;
  std::vector<std::string> profiles;  // a multiset of profile names: {"3g.40gb", "1g.10gb", "1g.10gb"}
};

struct MigStep {
  enum class Kind { enable_mig, disable_mig, destroy_instance, create_instance } kind = Kind::create_instance;
  unsigned gpu_instance_id = 0;  // destroy
  std::string profile;           // create/destroy: the profile name
  unsigned placement_start = 0;  // create: where; destroy: where it was
  std::string describe() const;  // "create 3g.40gb at slice 4", "destroy GPU instance 2 (1g.10gb at slice 1)", ...
  bool operator==(const MigStep&) const = default;
};

struct MigRefusal {
  std::string reason;  // "GPU instance 2 (1g.10gb) is in use by pid 4242", ...
};

struct MigPlacement {  // where one instance of a profile sits
  std::string profile;
  unsigned placement_start = 0;
  auto operator<=>(const MigPlacement&) const = default;
};

struct MigPlan {  // pure: what it takes to go from `now` to `wanted`
  // Mode enable first; then destroys (only instances not kept), then creates; mode disable last.
  std::vector<MigStep> steps;
  std::vector<MigRefusal> refusals;  // non-empty: nothing would be done on this GPU (steps is empty)
  std::vector<MigPlacement> layout;  // the instances there should be once the steps are done, by placement
  // MIG is off, so the profiles are not known yet: the steps hold the mode change only, and the creates are planned
  // once it is on (reconcile_mig does so).
  bool replan_after_enable = false;
};

// Keeps every existing instance whose profile is still wanted (matched as a multiset, busy instances kept first),
// destroys the others, and places the missing ones: a deterministic search over the profiles' placements, larger
// profiles first, lowest start first, that keeps existing instances where they are; only when that cannot fit are
// idle kept instances moved (destroyed and created again). Refuses: unknown profile, cannot fit, an instance to
// destroy is busy, a mode change on a GPU with any process or with a pending reset.
MigPlan plan_mig(const MigGeometry& now, const MigWanted& wanted);

struct MigOutcome {
  std::vector<MigStep> planned;      // what the plan held (all a dry run does)
  std::vector<MigStep> done;         // steps applied (in order)
  std::vector<MigRefusal> refusals;  // why nothing (or not everything) was done
  bool rolled_back = false;          // a step or the verification failed: the GPU was put back as it was
  std::string error;                 // what failed, naming the NVML call and its error string
  MigGeometry after;                 // what NVML reports at the end
  bool changed() const { return !done.empty() && !rolled_back; }
};

// Plans, then (unless dry_run) applies the steps one by one (each create = GPU instance with placement + one
// compute instance of the full-GI profile), re-reads the geometry and verifies it matches the plan's layout; on a
// failed step or verification, destroys what it created and re-creates what it destroyed (same profile and
// placement), and reports rolled_back (left false, with the reason in `error`, when the rollback itself failed).
// Holds a process-wide mutex so that only one reconcile runs at a time.
MigOutcome reconcile_mig(const NvmlLibrary& nvml, nvmlDevice_t gpu, const MigWanted& wanted, bool dry_run);

}  // namespace tally::collectors
