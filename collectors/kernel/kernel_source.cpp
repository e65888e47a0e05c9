#include "collectors/kernel/kernel_source.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/base/proc.hpp"

namespace tally::collectors {
namespace {

// A cgroup key that neither an event nor two walks could name is gone (removed before we learnt its path).
constexpr int kUnnamedRoundsBeforeGone = 2;

WorkloadIdentity unattributed() {
  WorkloadIdentity identity;
  identity.kind = WorkloadKind::cgroup;
  identity.id = "kernel:unattributed";  // what the probes could not give an entry of its own: the map was full
  return identity;
}

WorkloadIdentity root_cgroup() {
  // What only the root cgroup's id knows (sockets of root-cgroup processes, seen in softirq): not one process.
  WorkloadIdentity identity;
  identity.kind = WorkloadKind::cgroup;
  identity.id = "cgroup:/";
  identity.cgroup_path = "/";
  return identity;
}

}  // namespace

std::unique_ptr<KernelSource> KernelSource::start(const KernelSourceOptions& options) {
  std::unique_ptr<KernelSource> source(new KernelSource(options));
  ProbeState& state = source->state_;
  // Without probes, /proc is sampled; the sampler starts now, so that what processes did before the agent is its
  // baseline and whatever starts later counts whole.
  const auto sampled = [&](ProbeState::State why, std::string reason) {
    state.state = why;
    state.reason = std::move(reason);
    source->sampler_.emplace(options.fs);
    return std::move(source);
  };
  if (!options.probes_enabled) {
    return sampled(ProbeState::State::disabled, "disabled in the configuration ([probes] enabled = false)");
  }
  auto root = find_cgroup2_mount(options.fs);
  if (!root) return sampled(ProbeState::State::off, root.error().message);
  route_libbpf_logs();
  ProbeOptions probe_options;
  probe_options.cgroup2_root = *root;
  probe_options.accelerator_majors = accelerator_majors(options.fs);
  probe_options.pin_dir = options.pin_dir;
  probe_options.counters_capacity = options.counters_capacity;
  auto probes = KernelProbes::start(probe_options);
  if (!probes && !probe_options.pin_dir.empty()) {
    // Pinning is what lets counting go on while no agent runs; without it the probes still count while we do.
    state.pin_error = probes.error().message;
    probe_options.pin_dir.clear();
    probes = KernelProbes::start(probe_options);
  }
  if (!probes) return sampled(ProbeState::State::off, probes.error().message);
  source->probes_ = std::move(*probes);
  source->names_ = std::make_unique<CgroupNames>(*root);
  source->names_->walk();
  if (auto id = cgroup_id_of(*root)) source->root_cgroup_id_ = *id;
  state.state = ProbeState::State::attached;
  state.programs = source->probes_->attached();
  state.pinned = !probe_options.pin_dir.empty();
  state.adopted = source->probes_->adopted();
  state.epoch = source->probes_->epoch();
  return source;
}

void KernelSource::consume_events() {
  if (!probes_) return;
  auto consumed = probes_->consume_events([this](const KernelEvent& event) {
    processes_.apply(event);
    switch (event.type) {
      case KernelEvent::Type::device_open: ++device_opens_[event.key][{event.major, event.minor}]; break;
      case KernelEvent::Type::exit:
        if (is_process_key(event.key)) ended_.insert(event.key);
        break;
      case KernelEvent::Type::cgroup_created:
        if (!event.path.empty()) names_->learn(event.cgroup_id, event.path);
        break;
      case KernelEvent::Type::cgroup_removed:
        if (!event.path.empty()) names_->learn(event.cgroup_id, event.path);
        ended_.insert(event.cgroup_id);
        break;
      case KernelEvent::Type::exec: break;
    }
  });
  if (!consumed) spdlog::warn("probes: {}", consumed.error().message);
}

std::string KernelSource::contributor_of(std::uint64_t key) const {
  return fmt::format("kernel:{}:{:x}", probes_->epoch(), key);
}

std::optional<WorkloadIdentity> KernelSource::identity_of(std::uint64_t key) {
  if (auto it = identities_.find(key); it != identities_.end()) return it->second;
  std::optional<WorkloadIdentity> identity;
  if (key == kOverflowKey) {
    identity = unattributed();
  } else if (is_process_key(key)) {
    const pid_t pid = process_key_pid(key);
    const std::uint64_t ticks = process_key_start_ticks(key);
    const auto alive = read_process_start_ticks(options_.fs, pid);
    identity = identify_root_process(pid, ticks, alive == ticks ? read_process_exe(options_.fs, pid) : "");
  } else if (key == root_cgroup_id_) {
    identity = root_cgroup();
  } else if (auto path = names_->path_of(key)) {
    identity = identify_cgroup(*path, options_.identity_rules);
  }
  if (identity) identities_[key] = *identity;
  return identity;
}

std::vector<KernelUsage> KernelSource::collect() { return probes_ ? collect_traced() : collect_sampled(); }

std::vector<KernelUsage> KernelSource::collect_traced() {
  consume_events();
  names_->next_round();
  std::vector<KernelUsage> out;
  auto counters = probes_->read_counters();
  state_.stats = probes_->stats();
  if (!counters) {
    spdlog::warn("probes: {}", counters.error().message);
    return out;
  }
  for (const auto& [key, totals] : *counters) {
    if (finished_.contains(key)) continue;  // its final numbers were handed out: waiting for forget()
    auto identity = identity_of(key);
    bool final = ended_.contains(key);
    if (!identity) final = final || ++unnamed_rounds_[key] >= kUnnamedRoundsBeforeGone;
    const auto last = last_.find(key);
    const auto opens = device_opens_.find(key);
    const bool changed = last == last_.end() || !(last->second == totals);
    if (!changed && opens == device_opens_.end() && !final) continue;
    KernelUsage usage;
    usage.contributor = contributor_of(key);
    usage.identity = std::move(identity);
    usage.totals = totals;
    if (opens != device_opens_.end()) usage.device_opens = std::move(opens->second);
    usage.final = final;
    out.push_back(std::move(usage));
    if (final) {
      finished_.insert(key);
      last_.erase(key);
      unnamed_rounds_.erase(key);
    } else {
      last_[key] = totals;
    }
  }
  // Ended keys that never counted anything have nothing to hand out.
  for (auto it = ended_.begin(); it != ended_.end();) {
    it = counters->contains(*it) && !finished_.contains(*it) ? std::next(it) : ended_.erase(it);
  }
  device_opens_.clear();
  return out;
}

std::vector<KernelUsage> KernelSource::collect_sampled() {
  std::vector<KernelUsage> out;
  for (const auto& [owner_key, owner] : sampler_->sample()) {
    auto last = sampled_last_.find(owner_key);
    const bool changed = last == sampled_last_.end() || !(last->second == owner.total);
    if (!changed && owner.live) continue;
    KernelUsage usage;
    usage.contributor = fmt::format("proc:{}:{}", options_.instance_id, owner_key);
    usage.traced = false;
    usage.identity = owner.pid != 0 ? identify_root_process(owner.pid, owner.start_ticks,
                                                             read_process_exe(options_.fs, owner.pid))
                                    : identify_cgroup(owner.cgroup_path, options_.identity_rules);
    usage.totals.io_read_bytes = owner.total.read_bytes;
    usage.totals.io_write_bytes = owner.total.write_bytes;
    usage.final = !owner.live;
    out.push_back(std::move(usage));
    if (owner.live) {
      sampled_last_[owner_key] = owner.total;
    } else {
      sampled_last_.erase(owner_key);
    }
  }
  return out;
}

bool KernelSource::forget(const std::string& contributor) {
  if (contributor.starts_with("proc:")) return true;  // nothing kept in the kernel
  if (!contributor.starts_with("kernel:")) return false;
  if (!probes_) return true;  // another run's maps: nothing of ours to remove
  const std::string prefix = fmt::format("kernel:{}:", probes_->epoch());
  if (!contributor.starts_with(prefix)) return true;  // another epoch's maps are gone with it
  std::uint64_t key = 0;
  try {
    key = std::stoull(contributor.substr(prefix.size()), nullptr, 16);
  } catch (const std::exception&) {
    return true;
  }
  probes_->forget(key);
  finished_.erase(key);
  identities_.erase(key);
  if (!is_process_key(key)) names_->forget(key);
  return true;
}

}  // namespace tally::collectors
