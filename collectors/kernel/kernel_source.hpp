#pragma once
// What the kernel counted per workload, as a source for the ledger: the eBPF probes' cumulative counters per key
// (a cgroup, or a process of the root cgroup), named with the same workload identity as every other source, or,
// when the probes cannot run, /proc/PID/io sampled per cgroup. It records nothing itself: collect() hands the
// caller what changed, and the caller writes it into its ledger.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "agent/base/workload_identity.hpp"
#include "collectors/kernel/bpf_probes.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"

namespace tally::collectors {

// Whether the probes run, and why not: for the Heartbeat and the log.
struct ProbeState {
  enum class State { attached, off, disabled };
  State state = State::off;
  std::string reason;  // why off or disabled
  std::vector<std::string> programs;
  ProbeStats stats;
  bool pinned = false;
  std::string pin_error;  // why they are not pinned although a pin directory was asked for
  bool adopted = false;
  std::string epoch;
};

// One counting instance's numbers: a probes key (cumulative since the probes' maps were made) or a sampled owner
// (cumulative since this agent started sampling).
struct KernelUsage {
  // Stable name of the counting instance, unique across sources and agent restarts: "kernel:<epoch>:<key>" for
  // the probes (the same counters for as long as the pinned maps live), "proc:<instance>:<owner>" when sampled.
  std::string contributor;
  bool traced = true;  // probes (else /proc sampling: io bytes only)
  // Whom it belongs to; nullopt when the source cannot name it (a cgroup removed before any event or walk named
  // it): the caller may know it from before.
  std::optional<WorkloadIdentity> identity;
  KernelCounters totals;
  // Accelerator device opens since the last collect(), by (major, minor): increments, from the probes' events.
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t> device_opens;
  // The instance is gone (its cgroup was removed, its process exited): these are its last numbers.
  bool final = false;
};

struct KernelSourceOptions {
  bool probes_enabled = true;
  std::filesystem::path pin_dir;  // where the probes are pinned (empty: not pinned)
  std::uint32_t counters_capacity = kDefaultCountersCapacity;
  FsRoot fs;
  IdentityRules identity_rules;  // how a cgroup names its workload
  std::string instance_id;  // this agent's instance: names the sampled contributors
};

class KernelSource {
 public:
  // Starts the probes; when they cannot start, samples /proc instead and state() says why (the caller logs it
  // once). Never fails: there is always the sampled fallback.
  static std::unique_ptr<KernelSource> start(const KernelSourceOptions& options);

  const ProbeState& state() const { return state_; }
  bool traced() const { return probes_ != nullptr; }

  // The ring buffer's fd to watch (readable when events wait); -1 when probes are off.
  int events_fd() const { return probes_ ? probes_->events_fd() : -1; }
  // Drains pending events: cgroup names, exits, device opens, the pid table.
  void consume_events();

  // The counting instances that changed since the last call, and those that ended (final). Costs one pass of the
  // task iterator over the node's threads: call it once per report.
  std::vector<KernelUsage> collect();

  // A final instance's numbers are durable elsewhere: its map entry can go. Returns false for a contributor this
  // source never made (another source's, or another epoch's whose maps are gone: nothing to remove).
  bool forget(const std::string& contributor);

  const ProcessTable& processes() const { return processes_; }

 private:
  KernelSource(const KernelSourceOptions& options) : options_(options) {}
  std::vector<KernelUsage> collect_traced();
  std::vector<KernelUsage> collect_sampled();
  std::optional<WorkloadIdentity> identity_of(std::uint64_t key);
  std::string contributor_of(std::uint64_t key) const;

  KernelSourceOptions options_;
  ProbeState state_;
  std::unique_ptr<KernelProbes> probes_;
  std::unique_ptr<CgroupNames> names_;
  std::uint64_t root_cgroup_id_ = 0;
  std::optional<ProcIoSampler> sampler_;  // when the probes are off
  ProcessTable processes_;
  std::map<std::uint64_t, KernelCounters> last_;  // per key, as last collected
  std::map<std::uint64_t, WorkloadIdentity> identities_;
  std::set<std::uint64_t> ended_;                 // keys whose cgroup was removed or process exited
  std::set<std::uint64_t> finished_;              // keys whose final numbers were handed out, until forget()
  std::map<std::string, IoBytes> sampled_last_;   // sampled owners, as last collected
  std::map<std::uint64_t, int> unnamed_rounds_;   // keys no event or walk could name, by rounds seen
  std::map<std::uint64_t, std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>> device_opens_;
};

}  // namespace tally::collectors
