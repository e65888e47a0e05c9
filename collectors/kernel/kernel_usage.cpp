#include "collectors/kernel/kernel_usage.hpp"

#include <spdlog/spdlog.h>

#include "agent/base/workload_identity.hpp"

namespace tally::collectors {
namespace {

bool is_zero(const KernelCounters& c) { return c == KernelCounters{}; }

void add_counters(v1::KernelUsage& usage, const KernelCounters& c) {
  usage.set_io_read_bytes(usage.io_read_bytes() + c.io_read_bytes);
  usage.set_io_write_bytes(usage.io_write_bytes() + c.io_write_bytes);
  usage.set_socket_rx_bytes(usage.socket_rx_bytes() + c.socket_rx_bytes);
  usage.set_socket_tx_bytes(usage.socket_tx_bytes() + c.socket_tx_bytes);
  usage.set_net_rx_bytes(usage.net_rx_bytes() + c.net_rx_bytes);
  usage.set_net_tx_bytes(usage.net_tx_bytes() + c.net_tx_bytes);
  usage.set_processes_started(usage.processes_started() + c.processes_started);
  usage.set_processes_exited(usage.processes_exited() + c.processes_exited);
  usage.set_execs(usage.execs() + c.execs);
  usage.set_gpu_device_opens(usage.gpu_device_opens() + c.gpu_device_opens);
  usage.set_events_dropped(usage.events_dropped() + c.events_dropped);
}

// A cgroup id seen in the counters but absent from two walks in a row is gone: its entry is freed.
constexpr int kRoundsBeforeForget = 2;

}  // namespace

std::unique_ptr<KernelUsageCollector> KernelUsageCollector::start(bool probes_enabled) {
  std::unique_ptr<KernelUsageCollector> collector(new KernelUsageCollector());
  v1::ProbeState& state = collector->state_;
  if (!probes_enabled) {
    state.set_state(v1::ProbeState::STATE_DISABLED);
    state.set_reason("disabled in the configuration ([probes] enabled = false)");
    return collector;
  }
  auto root = find_cgroup2_mount();
  if (!root) {
    state.set_state(v1::ProbeState::STATE_OFF);
    state.set_reason(root.error().message);
    return collector;
  }
  route_libbpf_logs();
  ProbeOptions options;
  options.cgroup2_root = *root;
  options.accelerator_majors = accelerator_majors();
  auto probes = KernelProbes::start(options);
  if (!probes) {
    state.set_state(v1::ProbeState::STATE_OFF);
    state.set_reason(probes.error().message);
    return collector;
  }
  collector->probes_ = std::move(*probes);
  collector->cgroups_ = std::make_unique<CgroupPaths>(*root);
  // The baseline: live threads' rchar/wchar include what they moved before the agent started, which the first
  // report must not claim as this interval's.
  if (auto baseline = collector->probes_->read_counters()) collector->previous_ = std::move(*baseline);
  state.set_state(v1::ProbeState::STATE_ATTACHED);
  for (const auto& name : collector->probes_->attached()) state.add_programs(name);
  return collector;
}

void KernelUsageCollector::consume_events() {
  if (!probes_) return;
  auto consumed = probes_->consume_events([this](const KernelEvent& event) {
    processes_.apply(event);
    if (event.type == KernelEvent::Type::device_open) ++device_opens_[event.cgroup_id][{event.major, event.minor}];
  });
  if (!consumed) spdlog::warn("probes: {}", consumed.error().message);
}

std::string KernelUsageCollector::workload_of_cgroup(const std::string& cgroup_path) const {
  // Processes in the root cgroup share its counters: per-cgroup counting cannot tell them apart, so they are
  // reported together as the root cgroup, not as one process.
  if (cgroup_path == "/") return "cgroup:/";
  return identify_cgroup(cgroup_path).id;
}

std::map<std::string, v1::KernelUsage> KernelUsageCollector::collect() {
  return probes_ ? collect_traced() : collect_sampled();
}

std::map<std::string, v1::KernelUsage> KernelUsageCollector::collect_traced() {
  consume_events();
  std::map<std::string, v1::KernelUsage> usage;
  auto counters = probes_->read_counters();
  if (!counters) {
    spdlog::warn("probes: {}", counters.error().message);
    return usage;
  }
  cgroups_->next_round();
  std::uint64_t dropped = 0;
  for (const auto& [id, total] : *counters) {
    KernelCounters delta;
    for (const auto& field : kKernelCounterFields) {
      const std::uint64_t now = total.*field.member, then = previous_[id].*field.member;
      delta.*field.member = now >= then ? now - then : 0;
    }
    previous_[id] = total;
    dropped += total.events_dropped;
    const auto path = cgroups_->path_of(id);
    if (!path) {
      // Removed before we learnt its path (or born after the walk): retried next round, then forgotten.
      if (++unknown_rounds_[id] >= kRoundsBeforeForget) {
        probes_->forget(id);
        previous_.erase(id);
        unknown_rounds_.erase(id);
      }
      continue;
    }
    unknown_rounds_.erase(id);
    const auto opens = device_opens_.find(id);
    if (is_zero(delta) && opens == device_opens_.end()) continue;
    v1::KernelUsage& entry = usage[workload_of_cgroup(*path)];
    entry.set_source(v1::KernelUsage::SOURCE_TRACED);
    add_counters(entry, delta);
    if (opens != device_opens_.end()) {
      for (const auto& [device, count] : opens->second) {
        v1::DeviceOpens* open = entry.add_device_opens();
        open->set_major(device.first);
        open->set_minor(device.second);
        open->set_count(count);
      }
    }
  }
  device_opens_.clear();
  state_.set_events_dropped(dropped);
  return usage;
}

std::map<std::string, v1::KernelUsage> KernelUsageCollector::collect_sampled() {
  std::map<std::string, v1::KernelUsage> usage;
  for (const auto& [cgroup, io] : sampler_.sample()) {
    if (io.read_bytes == 0 && io.write_bytes == 0) continue;
    v1::KernelUsage& entry = usage[workload_of_cgroup(cgroup)];
    entry.set_source(v1::KernelUsage::SOURCE_SAMPLED);
    entry.set_source_reason(state_.reason());
    entry.set_io_read_bytes(entry.io_read_bytes() + io.read_bytes);
    entry.set_io_write_bytes(entry.io_write_bytes() + io.write_bytes);
  }
  return usage;
}

}  // namespace tally::collectors
