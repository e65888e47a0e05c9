#pragma once
// The GPU partitioning plan: what the platform decided about this node's GPUs (docs/partitioning.md). Which
// workload may open which GPU or MIG slice, what MIG geometry each GPU has, and what happens to unassigned GPUs.
// Read from [partitioning] in tally.toml and from the drop-in directory (one file per assignment, written by
// orchestration); parsing lives with the configuration (agent/config), the meaning here.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.hpp"

namespace tally::partitioning {

enum class DefaultAccess { open, deny };  // GPUs no assignment names: open to every workload, or closed
enum class OnStop { keep, release };       // policies stay in force when tallyd stops, or are detached

// One GPU's wanted geometry ([[partitioning.gpu]]).
struct GpuGeometryPlan {
  std::string select;                 // index, UUID or PCI bus id
  bool mig = false;                   // mode = "mig" (else "whole")
  std::vector<std::string> profiles;  // MIG: GPU instance profiles as NVML names them ("3g.40gb")
  std::string origin;                 // "file:line", for messages
  bool operator==(const GpuGeometryPlan&) const = default;
};

// GPUs or MIG slices given to one workload ([[partitioning.assign]]).
struct Assignment {
  std::string workload;           // an id as on the feed ("systemd:inference.service") or "cgroup:/path"
  std::vector<std::string> gpus;  // GPU selectors; a MIG slice as "<gpu>/mig/<n>"
  std::string origin;
  bool operator==(const Assignment&) const = default;
};

struct PartitionPlan {
  DefaultAccess default_access = DefaultAccess::open;
  OnStop on_stop = OnStop::keep;
  // Drop-in directory of plan files (*.toml, read in name order); "" : <directory of tally.toml>/plan.d.
  std::string drop_in_dir;
  // bpffs directory the device policy is pinned in (so it outlives the agent).
  std::string pin_dir = "/sys/fs/bpf/tally-policy";
  // Workloads that keep access to every GPU: the system's own GPU clients.
  std::vector<std::string> system_clients{
      "systemd:nvidia-persistenced.service", "systemd:nvidia-fabricmanager.service", "systemd:nvidia-dcgm.service",
      "systemd:dcgm.service", "systemd:nv-hostengine.service"};
  std::vector<GpuGeometryPlan> gpus;
  std::vector<Assignment> assignments;
  bool operator==(const PartitionPlan&) const = default;

  // Whether the plan restricts anything: with nothing assigned and default "open", no policy is needed.
  bool restricts() const { return default_access == DefaultAccess::deny || !assignments.empty(); }
};

std::string_view to_string(DefaultAccess access);
std::string_view to_string(OnStop on_stop);

// Whether `workload` can name workloads in an assignment: "cgroup:/abs/path", or an id of a kind whose cgroup
// the identity rules recognise (systemd:, user:, k8s:pod:, slurm:job:, docker:). The error says why not.
Result<void> check_workload_selector(std::string_view workload);

// A GPU selector split: "0/mig/2" → {gpu "0", slice 2}; "GPU-…" → {gpu "GPU-…"}. Error when malformed.
struct GpuSelector {
  std::string gpu;
  std::optional<unsigned> slice;
  bool operator==(const GpuSelector&) const = default;
};
Result<GpuSelector> parse_gpu_selector(std::string_view text);

}  // namespace tally::partitioning
