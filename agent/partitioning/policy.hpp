#pragma once
// The plan compiled against this node: which device nodes are restricted, which cgroups hold which grants, which
// cgroup paths are awaited (docs/partitioning.md). Pure: the same plan, inventory and cgroups give the same tables,
// so `tallyctl plan diff` shows exactly what `apply` would install.
//
// Each GPU or MIG slice an assignment names is a grant (one bit). A whole GPU's grant opens its /dev/nvidia<minor>
// and the capabilities of all its slices; a slice's grant opens the GPU's node and the slice's capabilities. A GPU no
// assignment names is open (default "open") or restricted to system clients (default "deny"); on a MIG GPU where
// some slices stay open, the GPU's node stays open too and the assigned slices are closed by their capabilities.
// System clients (and tallyd itself) hold every grant.
//
// Revocation (budgets' revoke-gpu): a revoked workload's cgroups hold an explicit 0, so they open no restricted
// node. For that to include GPUs open to everyone, those GPUs' nodes become restricted to kOpenGrant while a
// revocation is in force, and every cgroup that should keep opening them holds it: the root (so cgroups without an
// entry inherit it), assigned workloads' cgroups, system clients (every grant). Without a revocation, open GPUs
// have no entry at all, as before.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/base/workload_identity.hpp"
#include "agent/partitioning/gpu_nodes.hpp"
#include "agent/partitioning/plan.hpp"

namespace tally::partitioning {

// Bit 63 is every restricted node's: held by system clients only, so that a node no workload is granted still
// opens for them. Bit 62 marks "a GPU open to every workload" while a revocation is in force (above): every cgroup
// but a revoked workload's holds it. Grants of the plan use bits 0..61, hence at most 62 of them.
inline constexpr std::uint64_t kSystemGrant = std::uint64_t{1} << 63;
inline constexpr std::uint64_t kOpenGrant = std::uint64_t{1} << 62;
inline constexpr std::uint64_t kAllGrants = ~std::uint64_t{0};
inline constexpr unsigned kMaxGrants = 62;

// What the kernel program reads (tally_policy_abi.h), keyed as its maps are.
struct PolicyTables {
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t> devices;  // (major, minor) → grants
  std::map<std::uint64_t, std::uint64_t> cgroups;                            // cgroup id → grants
  std::map<std::string, std::uint64_t> paths;                                // awaited cgroup path → grants
  bool operator==(const PolicyTables&) const = default;
};

struct Grant {
  unsigned bit = 0;
  std::string target;                // "0", "0/mig/1" (by index, whatever the plan used)
  std::vector<DeviceNode> nodes;     // what it opens
  std::set<std::string> workloads;   // who holds it
};

struct CgroupGrant {
  std::string path;
  std::uint64_t id = 0;
  std::string workload;  // the assignment, system client or revoked workload it matched
  std::uint64_t grants = 0;  // 0: a revoked workload's
};

struct CompiledPolicy {
  PolicyTables tables;
  std::vector<Grant> grants;
  std::vector<CgroupGrant> cgroups;   // existing cgroups that hold grants (or a revoked workload's explicit 0)
  std::vector<std::string> problems;  // what the plan names that this node cannot honour (and was left out)
  // workload → the restricted device nodes it may open (for plan show and diff; system clients open them all).
  // Nodes open to every workload (kOpenGrant) are not listed; a revoked workload opens nothing.
  std::map<std::string, std::set<std::string>> can_open;
  std::set<std::string> revoked;  // workloads whose GPU access is withdrawn
};

// A cgroup v2 id and its path from the hierarchy root ("/a/b").
struct CgroupRef {
  std::uint64_t id = 0;
  std::string path;
};

// Compiles `plan` for `inventory`, matching `cgroups` (every cgroup now) by identity under `rules`; `own_cgroup`
// (tallyd's, unless it is the root) holds every grant. `revoked`: workload ids (as assignments name them) whose GPU
// access is withdrawn; a revocation wins over an assignment. Empty: the tables are the plan's alone.
CompiledPolicy compile_policy(const PartitionPlan& plan, const GpuInventory& inventory,
                              const std::map<std::uint64_t, std::string>& cgroups, const IdentityRules& rules,
                              const std::optional<CgroupRef>& own_cgroup = std::nullopt,
                              const std::set<std::string>& revoked = {});

// The entry a new cgroup at `path` gets under the compiled policy (identity match): its grants, an explicit 0 for
// a revoked workload's, nullopt when it needs none (it inherits its parent's). For cgroups whose path could not be
// awaited.
std::optional<std::uint64_t> grants_for_path(const CompiledPolicy& policy, const PartitionPlan& plan,
                                             std::string_view path, const IdentityRules& rules);

// The cgroup paths at which a workload's cgroup will appear where that is foreseeable (cgroup:, system units, pods
// under each kubepods root and QoS class, Slurm v2 jobs, containers), each checked against the identity rules.
std::vector<std::string> foreseeable_paths(std::string_view workload, const IdentityRules& rules);

}  // namespace tally::partitioning
