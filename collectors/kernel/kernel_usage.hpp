#pragma once
// Kernel-observed usage per workload, one report interval at a time: the eBPF probes' per-cgroup counters turned
// into deltas and attributed to workloads (identify_cgroup, the same identity the shm path uses), or, when the
// probes cannot run, /proc/PID/io sampled per cgroup. The agent owns one and calls it on its usage timer.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "collectors/kernel/bpf_probes.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"
#include "agent/base/result.hpp"
#include "tally/v1/kernel.pb.h"

namespace tally::collectors {

class KernelUsageCollector {
 public:
  // Starts the probes when `probes_enabled`; when they cannot start, the collector samples /proc instead and
  // probe_state() says why (the caller logs it once). Never fails: there is always a sampled fallback.
  static std::unique_ptr<KernelUsageCollector> start(bool probes_enabled);

  // The probes' state for the Heartbeat.
  const v1::ProbeState& probe_state() const { return state_; }
  bool traced() const { return probes_ != nullptr; }

  // The ring buffer's fd to watch (readable when events wait); -1 when probes are off.
  int events_fd() const { return probes_ ? probes_->events_fd() : -1; }
  // Drains pending exec/exit/device events into the process table and this interval's device opens.
  void consume_events();

  // Usage per workload id since the previous call, only workloads with something to report.
  std::map<std::string, v1::KernelUsage> collect();

  // pid → cgroup v2 id, kept current by exec and exit events (empty when probes are off).
  const ProcessTable& processes() const { return processes_; }

 private:
  KernelUsageCollector() = default;
  std::map<std::string, v1::KernelUsage> collect_traced();
  std::map<std::string, v1::KernelUsage> collect_sampled();
  std::string workload_of_cgroup(const std::string& cgroup_path) const;

  v1::ProbeState state_;
  std::unique_ptr<KernelProbes> probes_;
  std::unique_ptr<CgroupPaths> cgroups_;
  ProcIoSampler sampler_;
  ProcessTable processes_;
  std::map<std::uint64_t, KernelCounters> previous_;
  std::map<std::uint64_t, int> unknown_rounds_;
  // Device opens of this interval: cgroup id → (major, minor) → count.
  std::map<std::uint64_t, std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>> device_opens_;
};

}  // namespace tally::collectors
