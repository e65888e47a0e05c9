#pragma once
// The GPU device policy in the kernel (ebpf/gpu_policy*.bpf.c): one cgroup device program attached as a link at
// the root of the cgroup v2 hierarchy (multi-attach: beside, never instead of, what systemd, kubelet or runtimes
// attach), and a cgroup_mkdir program that gives an awaited cgroup its grants in the mkdir itself.
//
// With a pin directory the maps and links are pinned there: the policy stays in force while no agent runs (a crash
// included: fail-closed for assigned GPUs), and the next agent adopts it without a gap. release() and
// remove_pinned() take it away for good. Without one, it lives as long as this object.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "agent/base/result.hpp"
#include "agent/partitioning/policy.hpp"

namespace tally::partitioning {

struct DevicePolicyOptions {
  std::filesystem::path cgroup2_root;  // where the device program attaches
  std::filesystem::path pin_dir;       // bpffs directory; empty: not pinned
};

struct PolicyEvent {
  enum class Type {
    denied,   // an open was denied (sampled: the 1st, 2nd, 4th... per cgroup and node; `count` says how many so far)
    covered,  // a cgroup made at an awaited path got its grants in its mkdir
    mkdir,    // another v2 cgroup was made: the agent decides by identity
  };
  Type type = Type::denied;
  pid_t pid = 0;
  std::uint64_t cgroup_id = 0;
  std::uint64_t count = 0;  // denied: denials of this cgroup and node; covered: the grants
  std::uint32_t major = 0, minor = 0;
  bool read = false, write = false;
  std::string comm;
  std::string path;  // covered, mkdir
};

// What install() changed.
struct PolicyChange {
  std::size_t devices = 0, cgroups = 0, paths = 0;  // entries added, changed or removed
  bool any() const { return devices + cgroups + paths != 0; }
};

class DevicePolicy {
 public:
  // Adopts a policy pinned in options.pin_dir by an earlier agent (of this ABI), else loads and attaches a new one
  // (empty: it restricts nothing until install()) and pins it. A pinned policy of another ABI is replaced after the
  // new one is attached, so that no open slips through between them.
  static Result<std::unique_ptr<DevicePolicy>> start(const DevicePolicyOptions& options);
  // Detaches the policy for good: its pinned links are detached (whoever else holds them) and its pins removed.
  // True when something was there. What `tallyctl plan clear` and package removal use.
  static Result<bool> remove_pinned(const std::filesystem::path& pin_dir);
  // Whether `pin_dir` holds a pinned policy (or what is left of one): "" never does.
  static bool pinned(const std::filesystem::path& pin_dir);
  // A pinned policy stays in force; one that is not pinned is detached with this object.
  ~DevicePolicy();
  DevicePolicy(const DevicePolicy&) = delete;
  DevicePolicy& operator=(const DevicePolicy&) = delete;

  bool adopted() const;
  // The plan generation written by the last install() (adopted: the previous agent's).
  std::uint64_t generation() const;

  // Makes the maps hold `tables`: adds and widens first (holders, then nodes), then narrows and removes, entry by
  // entry, so that no open the new tables allow is denied on the way.
  Result<PolicyChange> install(const PolicyTables& tables, std::uint64_t generation);
  // What the maps hold now.
  Result<PolicyTables> installed() const;
  // Gives one cgroup its grants (a new cgroup matched by identity).
  Result<void> grant(std::uint64_t cgroup_id, std::uint64_t grants);
  // Denials counted so far, per (cgroup id, major, minor).
  Result<std::map<std::tuple<std::uint64_t, std::uint32_t, std::uint32_t>, std::uint64_t>> denials() const;

  int events_fd() const;
  Result<int> consume_events(const std::function<void(const PolicyEvent&)>& handler);

  // Detaches now and removes the pins: nothing of the policy is left.
  Result<void> release();

  // The ids of the attached links (device program, mkdir program), for tests and logs.
  std::vector<std::uint32_t> link_ids() const;

  struct Impl;

 private:
  explicit DevicePolicy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tally::partitioning
