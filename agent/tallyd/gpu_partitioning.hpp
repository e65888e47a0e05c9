#pragma once
// GPU partitioning's wiring (docs/partitioning.md): the plan brought into force at start, on SIGHUP and on
// `tallyctl plan apply`. MIG geometry first (through NVML, one GPU at a time), then the GPU device nodes read again
// (minors may move), the plan compiled against the cgroups there are now, and the BPF device policy brought to it.
// A cgroup made later is covered by the kernel when its path was foreseeable, else here when its mkdir is seen.
// Every decision is a PartitionEvent on the feed and a journal line naming the plan generation.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>
#include <spdlog/common.h>

#include "agent/base/result.hpp"
#include "agent/base/workload_identity.hpp"
#include "agent/partitioning/device_policy.hpp"
#include "agent/partitioning/plan.hpp"
#include "agent/partitioning/policy.hpp"
#include "collectors/mig/mig.hpp"
#include "collectors/nvml/nvml.hpp"
#include "tally/v1/event.pb.h"

namespace tally::agent {

struct GpuPartitioningOptions {
  std::filesystem::path cgroup2_root;  // where the device program attaches and cgroups are listed
  std::string nvml_library;            // empty: no NVML (no MIG; minors from /proc/driver/nvidia)
  IdentityRules identity;
  FsRoot fs;                           // /proc for the inventory
};

class GpuPartitioning {
 public:
  using Publish = std::function<void(const v1::PartitionEvent&)>;
  GpuPartitioning(GpuPartitioningOptions options, Publish publish);
  ~GpuPartitioning();

  // Brings `plan` into force. A plan that restricts nothing, with no policy pinned before, attaches nothing. The
  // report says what changed and what was refused (JSON: the control socket's answer).
  nlohmann::json apply(const partitioning::PartitionPlan& plan);
  // What apply(plan) would do, doing nothing: MIG steps, changes of who may open what, refusals.
  nlohmann::json preview(const partitioning::PartitionPlan& plan);
  // The state in force: geometry, assignments, what each workload may open, denials so far.
  nlohmann::json show();
  // Detaches the policy and removes its pins (`tallyctl plan clear`); the next apply attaches it again.
  nlohmann::json clear();
  // Budgets' revoke-gpu: from now on the GPU access of `workloads` (ids as on the feed, or "cgroup:/path") is
  // withdrawn, and that of the workloads revoked before but absent here restored. The plan in force is compiled
  // again with them and installed (the policy attached if the plan alone needed none); new opens of any GPU's node
  // by their cgroups fail with EPERM, files already open stay open. Each revocation and restoration is audited
  // (KIND_APPLIED, the workload named). apply() keeps the set in force. Before the first apply() the set is kept
  // and brought into force by it. The error: the policy could not be attached or updated (also audited).
  Result<nlohmann::json> set_revoked(std::set<std::string> workloads);
  const std::set<std::string>& revoked() const { return revoked_; }
  // Whether apply() ran: before it, set_revoked() only keeps the set.
  bool planned() const { return planned_; }
  // The agent stops: on_stop = "release" detaches; "keep" leaves the pinned policy in force.
  void stop();

  // The policy's ring buffer (denials, new cgroups), -1 while no policy is attached; on_events() when readable.
  int events_fd() const;
  void on_events();
  // New cgroups were given grants, or many were made: walk the tree and match every cgroup again (coalesced by the
  // caller), pruning the entries of removed ones.
  void resync();
  bool wants_resync() const { return resync_wanted_; }

  std::uint64_t generation() const { return generation_; }

 private:
  struct Compiled;
  Result<void> ensure_policy(std::uint64_t& previous);
  // Brings the device policy to `compiled` (attached where it restricts something), saying in `report` what
  // changed; `previous` is the generation before this change, kept when nothing changed. Whether the tables
  // changed, or the error (audited, and in report["refused"]).
  Result<bool> bring_into_force(std::unique_ptr<Compiled> compiled, nlohmann::json& report, std::uint64_t previous,
                                bool geometry_changed);
  Compiled compile(const partitioning::PartitionPlan& plan);
  nlohmann::json reconcile_geometry(const partitioning::PartitionPlan& plan, bool dry_run);
  // Why the instances `steps` would destroy on `gpu` must stay: processes holding their capabilities open.
  std::vector<std::string> held_instances(const partitioning::GpuNodes& gpu,
                                          const std::vector<collectors::MigStep>& steps) const;
  // A decision: on the feed and in the journal (partition_audit.hpp).
  void audit(const v1::PartitionEvent& event, spdlog::level::level_enum level);
  void audit(v1::PartitionEvent::Kind kind, spdlog::level::level_enum level, std::string gpu, std::string detail,
             std::string workload = {});
  std::string workload_of(std::uint64_t cgroup_id);
  void list_cgroups();

  GpuPartitioningOptions options_;
  Publish publish_;
  std::unique_ptr<collectors::NvmlLibrary> nvml_;
  std::string nvml_error_;
  std::unique_ptr<partitioning::DevicePolicy> policy_;
  std::unique_ptr<Compiled> in_force_;
  partitioning::PartitionPlan plan_;
  bool planned_ = false;            // apply() ran: plan_ is the plan in force
  std::set<std::string> revoked_;   // workloads whose GPU access is withdrawn (set_revoked)
  std::map<std::uint64_t, std::string> cgroup_paths_;  // id → path: the last walk, and every mkdir seen since
  std::size_t listed_size_ = 0;
  std::chrono::steady_clock::time_point last_listed_{};
  std::uint64_t generation_ = 0;
  bool resync_wanted_ = false;
};

}  // namespace tally::agent
