#pragma once
// Freezing a workload (the budgets' `freeze` action, docs/budgets.md): every process of the workload stops where it
// is, keeps its memory (host and GPU) and its open files, and goes on where it stopped when thawed.
//
// A workload is the cgroups whose identity (agent/base/workload_identity.hpp) is it; freezing its topmost ones
// freezes everything below them too, cgroups made later included (cgroup v2's freezer is hierarchical). Two ways:
//  - a system unit, where systemd runs the host: systemd's own FreezeUnit/ThawUnit over D-Bus, so that systemd's
//    view of the unit ("frozen") stays true and it does not fight the freeze;
//  - otherwise, or where systemd refuses (hybrid hosts: its freezer needs the unified hierarchy), the cgroup's
//    `cgroup.freeze` in the v2 hierarchy (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
// Refused, with the reason: a process in the root cgroup (cgroup v2 cannot freeze the root), a workload with no
// cgroup now, and the cgroup tallyd itself runs in or any above it (the agent would freeze itself and never thaw).

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.hpp"
#include "agent/base/workload_identity.hpp"

namespace tally::freezer {

struct FreezerOptions {
  std::filesystem::path cgroup2_root;  // the cgroup v2 mount
  IdentityRules identity;
  bool use_systemd = true;             // system units through systemd where it runs the host
};

// The topmost cgroups of `cgroups` (id → path relative to the root) whose identity is `workload`, sorted.
std::vector<std::string> workload_cgroups(const std::map<std::uint64_t, std::string>& cgroups, std::string_view workload,
                                          const IdentityRules& rules);

// What a freeze or thaw did.
struct Outcome {
  std::vector<std::string> cgroups;  // the workload's topmost cgroups
  std::string via;                   // "cgroup.freeze", "systemd FreezeUnit", ...
  std::string note;                  // why systemd was not used, when it was tried
};

class Freezer {
 public:
  explicit Freezer(FreezerOptions options);

  // Freezes `workload`. The error says why it cannot be (refusals above, or what the kernel or systemd said).
  Result<Outcome> freeze(std::string_view workload);
  // Thaws `workload` (both ways: whichever froze it). A workload with no cgroup left is nothing to thaw (no error).
  Result<Outcome> thaw(std::string_view workload);
  // Whether every cgroup of `workload` says it is frozen (cgroup.events "frozen 1"): the kernel completes a freeze
  // asynchronously, once every task has stopped.
  bool frozen(std::string_view workload) const;

 private:
  Result<std::vector<std::string>> cgroups_of(std::string_view workload) const;
  Result<void> check_freezable(std::string_view workload, const std::vector<std::string>& cgroups) const;

  FreezerOptions options_;
  std::string own_cgroup_;  // tallyd's cgroup v2 path, "" when unknown
};

// Whether systemd manages this host (sd_booted()).
bool systemd_running();

}  // namespace tally::freezer
