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

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/base/workload_identity.hpp"
#include "agent/partitioning/gpu_nodes.hpp"
#include "agent/partitioning/plan.hpp"

namespace tally::partitioning {

// Bit 63 is every restricted node's: held by system clients only, so that a node no workload is granted still
// opens for them. Grants use bits 0..62.
inline constexpr std::uint64_t kSystemGrant = std::uint64_t{1} << 63;
inline constexpr std::uint64_t kAllGrants = ~std::uint64_t{0};
inline constexpr unsigned kMaxGrants = 63;

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
  std::string workload;  // the assignment or system client it matched
  std::uint64_t grants = 0;
};

struct CompiledPolicy {
  PolicyTables tables;
  std::vector<Grant> grants;
  std::vector<CgroupGrant> cgroups;   // existing cgroups that hold grants
  std::vector<std::string> problems;  // what the plan names that this node cannot honour (and was left out)
  // workload → the restricted device nodes it may open (for plan show and diff; system clients open them all).
  std::map<std::string, std::set<std::string>> can_open;
};

// A cgroup v2 id and its path from the hierarchy root ("/a/b").
struct CgroupRef {
  std::uint64_t id = 0;
  std::string path;
};

// Compiles `plan` for `inventory`, matching `cgroups` (every cgroup now) by identity under `rules`; `own_cgroup`
// (tallyd's, unless it is the root) holds every grant.
CompiledPolicy compile_policy(const PartitionPlan& plan, const GpuInventory& inventory,
                              const std::map<std::uint64_t, std::string>& cgroups, const IdentityRules& rules,
                              const std::optional<CgroupRef>& own_cgroup = std::nullopt);

// The grants a new cgroup at `path` gets under the plan (identity match), 0 if none: for cgroups whose path could
// not be awaited.
std::uint64_t grants_for_path(const CompiledPolicy& policy, const PartitionPlan& plan, std::string_view path,
                              const IdentityRules& rules);

// The cgroup paths at which a workload's cgroup will appear where that is foreseeable (cgroup:, system units, pods
// under each kubepods root and QoS class, Slurm v2 jobs, containers), each checked against the identity rules.
std::vector<std::string> foreseeable_paths(std::string_view workload, const IdentityRules& rules);

}  // namespace tally::partitioning
