#include "collectors/gpu/gpu_accounting.hpp"

#include <algorithm>

namespace tally::collectors::gpu {
namespace {

__extension__ using u128 = unsigned __int128;

std::uint64_t mul_div(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  return c == 0 ? 0 : static_cast<std::uint64_t>(static_cast<u128>(a) * b / c);
}

HolderUsage& holder(std::map<std::string, HolderUsage>& holders, const std::string& workload) {
  HolderUsage& h = holders[workload];
  h.workload = workload;
  return h;
}

}  // namespace

std::vector<GpuUsage> GpuAccounting::account(const NodeReading& reading, const Resolve& resolve) {
  std::vector<GpuUsage> out;
  out.reserve(reading.gpus.size());
  for (const GpuReading& gpu : reading.gpus) {
    GpuUsage& usage = out.emplace_back();
    usage.index = gpu.index;
    usage.uuid = gpu.uuid;
    usage.name = gpu.name;
    usage.bus_id = gpu.bus_id;
    usage.mig = gpu.mig;
    usage.lost = gpu.lost;
    usage.failures = gpu.failures;
    usage.future_samples = gpu.future_samples;
    usage.last_sample_us = gpu.last_sample_us;
    GpuState& state = gpus_[gpu.uuid];
    if (gpu.lost) {  // nothing read: the next good pass counts from here (its time was not observed)
      state.last_monotonic_ns = 0;
      state.energy_unobserved = true;
      continue;
    }
    usage.memory_total = gpu.memory_total;
    usage.memory_used = gpu.memory_used;
    usage.power_mw = gpu.power_mw;
    usage.utilization_percent = gpu.utilization_percent;
    if (state.last_monotonic_ns != 0 && reading.monotonic_ns > state.last_monotonic_ns) {
      usage.elapsed_ns = static_cast<std::uint64_t>(reading.monotonic_ns - state.last_monotonic_ns);
    }
    state.last_monotonic_ns = reading.monotonic_ns;
    if (gpu.energy_mj) {
      if (state.last_energy_mj) {
        usage.energy_reset = *gpu.energy_mj < *state.last_energy_mj;
        usage.energy_mj = usage.energy_reset ? *gpu.energy_mj : *gpu.energy_mj - *state.last_energy_mj;
      }
      state.last_energy_mj = gpu.energy_mj;
      usage.energy_counter_mj = gpu.energy_mj;
    }
    // Energy spent while nobody watched is the device's, not any workload's: kept out of the split below.
    const std::uint64_t unobserved = state.energy_unobserved ? usage.energy_mj : 0;
    state.energy_unobserved = false;
    usage.energy_mj -= unobserved;
    if (gpu.clock_stepped) state.last_sample_us.clear();
    if (gpu.mig) {
      account_mig(gpu, usage, resolve);
    } else {
      account_whole(gpu, state, usage, resolve);
    }
    usage.energy_mj += unobserved;
    usage.unattributed_energy_mj += unobserved;
    track_idle(gpu, reading.monotonic_ns, state, usage);
  }
  return out;
}

void GpuAccounting::resume_energy(const std::string& uuid, std::uint64_t energy_mj) {
  GpuState& state = gpus_[uuid];
  state.last_energy_mj = energy_mj;
  state.energy_unobserved = true;
}

void GpuAccounting::account_whole(const GpuReading& gpu, GpuState& state, GpuUsage& usage, const Resolve& resolve) {
  const std::uint32_t capacity = gpu.utilization_percent.value_or(100);
  usage.busy_ns = mul_div(usage.elapsed_ns, capacity, 100);
  std::map<std::string, HolderUsage> holders;
  for (const ProcessOnGpu& p : gpu.processes) {
    const std::string w = resolve(p.pid);
    if (w.empty()) continue;  // gone since NVML listed it
    HolderUsage& h = holder(holders, w);
    h.memory_bytes += p.memory_bytes;
    h.peak_memory_bytes = std::max(h.peak_memory_bytes, p.peak_memory_bytes);
    h.holds_memory = true;
  }
  for (auto& [w, h] : holders) h.allocated_ns = usage.elapsed_ns;

  // The driver's period: the shortest gap between two samples of one process.
  for (const UtilizationSample& s : gpu.samples) {
    if (auto it = state.last_sample_us.find(s.pid); it != state.last_sample_us.end() && s.timestamp_us > it->second) {
      state.period_us = std::min(state.period_us, s.timestamp_us - it->second);
    }
  }
  // SM time per sample, then per period (samples with one timestamp) scaled to the device's utilization.
  std::uint64_t attributed_sm = 0;
  for (std::size_t begin = 0; begin < gpu.samples.size();) {
    std::size_t end = begin;
    std::uint64_t percent_sum = 0;
    while (end < gpu.samples.size() && gpu.samples[end].timestamp_us == gpu.samples[begin].timestamp_us) {
      percent_sum += gpu.samples[end].sm_percent;
      ++end;
    }
    for (std::size_t i = begin; i < end; ++i) {
      const UtilizationSample& s = gpu.samples[i];
      auto [it, first] = state.last_sample_us.try_emplace(s.pid, 0);
      if (!first && s.timestamp_us <= it->second) continue;  // taken before
      const std::uint64_t covered_us = first ? state.period_us : std::min(s.timestamp_us - it->second, state.period_us);
      it->second = s.timestamp_us;
      const std::uint64_t raw = std::uint64_t{s.sm_percent} * covered_us * 10;  // % x us -> ns
      const std::uint64_t sm = percent_sum > capacity ? mul_div(raw, capacity, percent_sum) : raw;
      usage.sm_scaled_off_ns += raw - sm;
      if (sm == 0) continue;
      const std::string w = resolve(s.pid);
      if (w.empty()) {
        usage.unattributed_sm_ns += sm;
        continue;
      }
      holder(holders, w).sm_ns += sm;
      attributed_sm += sm;
    }
    begin = end;
  }
  // Processes gone from the driver's view: their last timestamps are not needed again.
  std::erase_if(state.last_sample_us, [&](const auto& entry) {
    return entry.second + 60 * kDefaultPeriodUs < (gpu.samples.empty() ? entry.second : gpu.samples.back().timestamp_us);
  });

  const std::uint64_t busy_energy = mul_div(usage.energy_mj, capacity, 100);
  usage.idle_energy_mj = usage.energy_mj - busy_energy;
  const std::uint64_t explained = attributed_sm + usage.unattributed_sm_ns;
  std::uint64_t shared = 0;
  for (auto& [w, h] : holders) {
    h.energy_mj = mul_div(busy_energy, h.sm_ns, explained);
    shared += h.energy_mj;
  }
  usage.unattributed_energy_mj = busy_energy - shared;
  for (auto& [w, h] : holders) usage.holders.push_back(std::move(h));
}

void GpuAccounting::account_mig(const GpuReading& gpu, GpuUsage& usage, const Resolve& resolve) {
  constexpr std::uint64_t kPpm = 1'000'000;
  std::map<std::string, HolderUsage> holders;
  std::uint64_t charged = 0;
  for (const MigSlice& slice : gpu.slices) {
    const std::uint64_t share_ppm = gpu.memory_total > 0 && slice.memory_total > 0
                                        ? std::min(kPpm, mul_div(slice.memory_total, kPpm, gpu.memory_total))
                                        : kPpm / std::max<std::size_t>(gpu.slices.size(), 1);
    std::map<std::string, std::uint64_t> memory;  // the slice's holders
    for (const ProcessOnGpu& p : slice.processes) {
      const std::string w = resolve(p.pid);
      if (!w.empty()) memory[w] += p.memory_bytes;
    }
    if (memory.empty()) continue;  // an empty slice: its energy is idle
    const std::uint64_t n = memory.size();
    const std::uint64_t slice_ns = mul_div(usage.elapsed_ns, share_ppm, kPpm);
    const std::uint64_t slice_energy = mul_div(usage.energy_mj, share_ppm, kPpm);
    for (const auto& [w, bytes] : memory) {
      HolderUsage& h = holder(holders, w);
      h.memory_bytes += bytes;
      h.holds_memory = true;
      h.allocated_ns += slice_ns / n;
      h.energy_mj += slice_energy / n;
      charged += slice_energy / n;
    }
  }
  usage.idle_energy_mj = usage.energy_mj - charged;  // empty slices, and the rounding of the shares
  for (auto& [w, h] : holders) usage.holders.push_back(std::move(h));
}

void GpuAccounting::track_idle(const GpuReading& gpu, std::int64_t now_ns, GpuState& state, GpuUsage& usage) {
  const auto window = static_cast<std::int64_t>(idle_.window_ns);
  if (gpu.utilization_percent) {
    if (*gpu.utilization_percent < idle_.threshold_percent) {
      state.busy_in_row = 0;
      if (state.below_since_ns < 0) state.below_since_ns = now_ns;
      ++state.below_readings;
    } else if (++state.busy_in_row >= idle_.busy_to_end || !state.idle) {
      // Not idle yet: one busy reading starts the window again. Idle: only a few in a row end it.
      state.below_since_ns = -1;
      state.below_readings = 0;
    }
    const bool idle = state.below_since_ns >= 0 && now_ns - state.below_since_ns >= window &&
                      state.below_readings >= idle_.min_samples;
    if (idle != state.idle && (idle || state.below_since_ns < 0)) {
      state.idle = idle;
      usage.idle_changed = true;
    }
  }
  usage.idle = state.idle;
  // Workloads that hold memory on it and ran nothing on it for the window (on MIG: no SM figures, not judged).
  std::set<std::string> holding;
  for (const HolderUsage& h : usage.holders) {
    if (!h.holds_memory || gpu.mig) continue;
    holding.insert(h.workload);
    auto [it, fresh] = state.unused_since_ns.try_emplace(h.workload, now_ns);
    if (h.sm_ns > 0) it->second = now_ns;
  }
  std::erase_if(state.unused_since_ns, [&](const auto& e) { return !holding.contains(e.first); });
  std::set<std::string> idle_holders;
  for (const auto& [w, since] : state.unused_since_ns) {
    if (now_ns - since >= window) idle_holders.insert(w);
  }
  usage.idle_holders_changed = idle_holders != state.idle_holders;
  state.idle_holders = std::move(idle_holders);
  usage.idle_holders.assign(state.idle_holders.begin(), state.idle_holders.end());
}

}  // namespace tally::collectors::gpu
