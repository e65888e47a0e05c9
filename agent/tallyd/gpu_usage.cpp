#include "agent/tallyd/gpu_usage.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

namespace tally::agent {
namespace {

using collectors::gpu::GpuPass;
using collectors::gpu::GpuUsage;
using ledger::Kind;

// Ledger cursors: "nvml:<uuid>:sample_us", "nvml:<uuid>:energy_mj".
const std::string kCursorPrefix = "nvml:";
const std::string kSampleCursor = ":sample_us", kEnergyCursor = ":energy_mj";

WorkloadIdentity gpu_identity(const GpuUsage& gpu) {
  WorkloadIdentity identity;
  identity.kind = WorkloadKind::gpu;
  identity.id = "gpu:" + gpu.uuid;
  identity.attributes = {{"uuid", gpu.uuid}, {"index", std::to_string(gpu.index)}};
  if (!gpu.name.empty()) identity.attributes["name"] = gpu.name;
  if (!gpu.bus_id.empty()) identity.attributes["bus_id"] = gpu.bus_id;
  if (gpu.mig) identity.attributes["mig"] = "true";
  return identity;
}

void fill_ref(const GpuUsage& gpu, v1::GpuRef& ref) {
  ref.set_uuid(gpu.uuid);
  ref.set_index(gpu.index);
  ref.set_name(gpu.name);
  ref.set_bus_id(gpu.bus_id);
}

}  // namespace

GpuUsageRecorder::GpuUsageRecorder(ledger::Ledger& ledger, collectors::gpu::IdleOptions idle, EventSink on_event)
    : ledger_(ledger), idle_(idle), on_event_(std::move(on_event)) {}

std::map<std::string, std::pair<std::optional<std::uint64_t>, std::optional<std::uint64_t>>>
GpuUsageRecorder::resume_points(const ledger::Ledger& ledger) {
  std::map<std::string, std::pair<std::optional<std::uint64_t>, std::optional<std::uint64_t>>> points;
  for (const auto& [key, value] : ledger.cursors()) {
    if (!key.starts_with(kCursorPrefix)) continue;
    const std::string_view rest = std::string_view(key).substr(kCursorPrefix.size());
    if (rest.ends_with(kSampleCursor)) {
      points[std::string(rest.substr(0, rest.size() - kSampleCursor.size()))].first = value;
    } else if (rest.ends_with(kEnergyCursor)) {
      points[std::string(rest.substr(0, rest.size() - kEnergyCursor.size()))].second = value;
    }
  }
  return points;
}

ledger::CounterId GpuUsageRecorder::id(const std::string& name, Kind kind, bool gauge) {
  return ledger_.counter(name, ledger::Source::nvml, kind, gauge);
}

void GpuUsageRecorder::record(const GpuPass& pass) {
  // A workload the ledger let expire starts again from nothing: so does the peak its counters continue from.
  std::erase_if(peak_, [&](const auto& entry) {
    return ledger_.find_workload(std::string_view(entry.first).substr(entry.first.find('\n') + 1)) == nullptr;
  });
  // The node answering again (the device count read): a later failure is worth a new report.
  if (pass.failures.empty()) std::erase_if(reported_, [](const auto& r) { return std::get<0>(r) == "node"; });
  for (const auto& failure : pass.failures) {
    if (!reported_.insert({"node", failure.call, failure.error}).second) continue;
    spdlog::warn("GPU accounting: {} failed: {}; retried every pass", failure.call, failure.error);
    v1::Event event;
    event.mutable_gpu_failure()->set_call(failure.call);
    event.mutable_gpu_failure()->set_error(failure.error);
    emit(event);
  }
  for (const GpuUsage& gpu : pass.gpus) record_gpu(gpu, pass);
}

void GpuUsageRecorder::emit(const v1::Event& event) {
  if (on_event_) on_event_(event);
}

void GpuUsageRecorder::report_failures(const GpuUsage& gpu) {
  for (const auto& failure : gpu.failures) {
    if (!reported_.insert({gpu.uuid, failure.call, failure.error}).second) continue;
    spdlog::warn("GPU {} ({}): {} failed: {}{}", gpu.index, gpu.uuid, failure.call, failure.error,
                 gpu.lost ? "; its usage is not counted until it answers again, the other GPUs go on" : "");
    v1::Event event;
    v1::GpuFailure& e = *event.mutable_gpu_failure();
    fill_ref(gpu, *e.mutable_gpu());
    e.set_call(failure.call);
    e.set_error(failure.error);
    e.set_lost(gpu.lost);
    emit(event);
  }
  if (gpu.lost || !gpu.failures.empty()) return;
  // Answering again: a later failure is worth a new line.
  std::erase_if(reported_, [&](const auto& r) { return std::get<0>(r) == gpu.uuid; });
}

void GpuUsageRecorder::report_idle(const GpuUsage& gpu, const std::set<std::string>& holders) {
  if (gpu.idle_changed) {
    if (gpu.idle) {
      spdlog::warn("GpuIdle: GPU {} ({}) stayed under {} % for {} s; holding memory: {}", gpu.index, gpu.uuid,
                   idle_.threshold_percent, idle_.window_ns / 1'000'000'000,
                   holders.empty() ? "nobody" : fmt::format("{}", fmt::join(holders, ", ")));
    } else {
      spdlog::info("GpuIdle ended: GPU {} ({}) is busy again", gpu.index, gpu.uuid);
    }
    v1::Event event;
    v1::GpuIdle& e = *event.mutable_gpu_idle();
    fill_ref(gpu, *e.mutable_gpu());
    e.set_idle(gpu.idle);
    e.set_threshold_percent(idle_.threshold_percent);
    e.set_window_s(idle_.window_ns / 1'000'000'000);
    for (const auto& h : holders) e.add_holders(h);
    emit(event);
  }
  if (gpu.idle_holders_changed) {
    if (!gpu.idle_holders.empty()) {
      spdlog::warn("GpuHeldUnused: on GPU {} ({}), {} hold memory and ran nothing for {} s", gpu.index, gpu.uuid,
                   fmt::join(gpu.idle_holders, ", "), idle_.window_ns / 1'000'000'000);
    }
    v1::Event event;
    v1::GpuHeldUnused& e = *event.mutable_gpu_held_unused();
    fill_ref(gpu, *e.mutable_gpu());
    for (const auto& w : gpu.idle_holders) e.add_workloads(w);
    emit(event);
  }
}

void GpuUsageRecorder::record_gpu(const GpuUsage& gpu, const GpuPass& pass) {
  report_failures(gpu);
  const std::string& uuid = gpu.uuid;
  ledger::Workload& device = ledger_.workload(gpu_identity(gpu));
  ledger::LabelSet& device_totals = ledger_.label_set(device, "");
  ledger::Contributor& device_levels = ledger_.contributor("nvml:gpu:" + uuid, device, ledger::Source::nvml);
  auto level = [&](const char* name, std::uint64_t value) {
    ledger_.update(device_levels, ledger_.cell(device_levels, device_totals, id(name, Kind::measured, true)), value);
  };
  level("gpu_lost", gpu.lost ? 1 : 0);
  if (gpu.lost) return;
  // Where this pass left off, saved with the totals it led to (the checkpoint), for the next agent.
  ledger_.set_cursor(kCursorPrefix + uuid + kSampleCursor, gpu.last_sample_us);
  if (gpu.energy_counter_mj) ledger_.set_cursor(kCursorPrefix + uuid + kEnergyCursor, *gpu.energy_counter_mj);
  auto add = [&](ledger::LabelSet& set, const std::string& name, Kind kind, std::uint64_t amount) {
    if (amount > 0) ledger_.add(set, id(name, kind), amount);
  };
  add(device_totals, "gpu_elapsed_ns", Kind::measured, gpu.elapsed_ns);
  add(device_totals, "gpu_busy_ns", Kind::measured, gpu.busy_ns);
  add(device_totals, "gpu_energy_mj", Kind::measured, gpu.energy_mj);
  add(device_totals, "gpu_idle_energy_mj", Kind::apportioned, gpu.idle_energy_mj);
  add(device_totals, "gpu_unattributed_energy_mj", Kind::apportioned, gpu.unattributed_energy_mj);
  add(device_totals, "gpu_unattributed_sm_ns", Kind::measured, gpu.unattributed_sm_ns);
  add(device_totals, "gpu_sm_scaled_off_ns", Kind::measured, gpu.sm_scaled_off_ns);
  add(device_totals, "gpu_energy_resets", Kind::measured, gpu.energy_reset ? 1 : 0);
  add(device_totals, "gpu_future_samples", Kind::measured, gpu.future_samples);
  level("gpu_memory_total_bytes", gpu.memory_total);
  level("gpu_memory_used_bytes", gpu.memory_used);
  if (gpu.power_mw) level("gpu_power_mw", *gpu.power_mw);
  if (gpu.utilization_percent) level("gpu_utilization_percent", *gpu.utilization_percent);
  level("gpu_idle", gpu.idle ? 1 : 0);
  level("gpu_idle_holders", gpu.idle_holders.size());

  const Kind energy_kind = gpu.mig ? Kind::estimated : Kind::apportioned;
  std::set<std::string>& holding = holding_[uuid];
  std::set<std::string> still;
  for (const auto& h : gpu.holders) {
    auto known = pass.identities.find(h.workload);
    if (known == pass.identities.end()) continue;
    ledger::Workload& workload = ledger_.workload(known->second);
    ledger::LabelSet& whole = ledger_.label_set(workload, "");
    for (const std::string& suffix : {std::string(), ":" + uuid}) {
      add(whole, "gpu_sm_ns" + suffix, Kind::measured, h.sm_ns);
      add(whole, "gpu_allocated_ns" + suffix, Kind::apportioned, h.allocated_ns);
      add(whole, "gpu_energy_mj" + suffix, energy_kind, h.energy_mj);
    }
    // Held now, or (accounting mode) the most one of its processes ever held: the peak is at least that.
    const std::uint64_t high = std::max(h.memory_bytes, h.peak_memory_bytes);
    std::uint64_t& peak = peak_[uuid + "\n" + h.workload];
    if (high > peak) {
      add(whole, "gpu_memory_peak_bytes:" + uuid, Kind::measured, high - peak);
      peak = high;
    }
    if (!h.holds_memory) continue;
    still.insert(h.workload);
    ledger::Contributor& c = ledger_.contributor("nvml:" + uuid + ":" + h.workload, workload, ledger::Source::nvml);
    ledger_.update(c, ledger_.cell(c, whole, id("gpu_memory_bytes", Kind::measured, true)), h.memory_bytes);
    ledger_.update(c, ledger_.cell(c, whole, id("gpu_memory_bytes:" + uuid, Kind::measured, true)), h.memory_bytes);
    const bool unused = std::find(gpu.idle_holders.begin(), gpu.idle_holders.end(), h.workload) != gpu.idle_holders.end();
    ledger_.update(c, ledger_.cell(c, whole, id("gpu_held_unused:" + uuid, Kind::measured, true)), unused ? 1 : 0);
  }
  for (const std::string& gone : holding) {
    if (still.contains(gone)) continue;
    if (auto* c = ledger_.find_contributor("nvml:" + uuid + ":" + gone)) ledger_.retire(*c);
  }
  holding = std::move(still);
  // The workload's peak over all GPUs: the largest sum of its memory seen at one time, and at least its peak on
  // this GPU.
  auto& memory = memory_[uuid];
  memory.clear();
  for (const auto& h : gpu.holders) {
    if (h.holds_memory && pass.identities.contains(h.workload)) memory[h.workload] = h.memory_bytes;
  }
  for (const auto& [workload_id, bytes] : memory) {
    std::uint64_t sum = 0;
    for (const auto& [other_uuid, per_workload] : memory_) {
      if (auto it = per_workload.find(workload_id); it != per_workload.end()) sum += it->second;
    }
    sum = std::max(sum, peak_[uuid + "\n" + workload_id]);
    std::uint64_t& peak = peak_["\n" + workload_id];
    if (sum <= peak) continue;
    if (auto* w = ledger_.find_workload(workload_id)) {
      add(ledger_.label_set(*w, ""), "gpu_memory_peak_bytes", Kind::measured, sum - peak);
    }
    peak = sum;
  }

  report_idle(gpu, holding);  // the workloads holding memory on it now
}

}  // namespace tally::agent
