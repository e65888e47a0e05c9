// tallyctl gpus: each GPU as the agent accounts it (its own feed entry, kind "gpu"): utilization, power, memory,
// the energy it counted and how much of it is idle or unattributed, its state (lost, idle, MIG), and below it the
// workloads holding memory on it with their share. docs/gpu-accounting.md says what each figure is.

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <memory>

#include <fmt/format.h>

#include "agent/tallyctl/ctl_commands.hpp"
#include "agent/tallyctl/usage_screen.hpp"

namespace tally::agent {
namespace {

std::string attribute(const v1::WorkloadUsage& w, const std::string& key) {
  const auto it = w.attributes().find(key);
  return it == w.attributes().end() ? std::string() : it->second;
}

// The GPU's NVML index, for ordering; one the feed does not give as a number sorts last.
std::uint64_t index_of(const v1::WorkloadUsage& w) {
  const std::string text = attribute(w, "index");
  std::uint64_t index = UINT64_MAX;
  std::from_chars(text.data(), text.data() + text.size(), index);
  return index;
}

std::string joules(std::uint64_t millijoules) { return fmt::format("{:.1f}", static_cast<double>(millijoules) / 1e3); }

std::string render(const std::string& node_id, const UsageView& view, std::size_t limit) {
  const double seconds = std::max(1e-3, view.interval_seconds());
  const std::uint64_t now = view.reports();
  std::vector<const WorkloadView*> gpus;
  for (const auto& [id, w] : view.workloads()) {
    if (w.last.kind() == "gpu") gpus.push_back(&w);
  }
  std::sort(gpus.begin(), gpus.end(), [](const WorkloadView* a, const WorkloadView* b) {
    return index_of(a->last) < index_of(b->last);
  });
  std::string out = fmt::format("tally gpus: node {}, {} GPUs, interval {:.1f}s\n", node_id, gpus.size(), seconds);
  out += fmt::format("{:>3} {:<44} {:<24} {:>5} {:>7} {:>17} {:>11} {:>11} {:>9} {}\n", "GPU", "UUID", "NAME", "UTIL",
                     "POWER W", "MEMORY USED/TOTAL", "ENERGY J", "IDLE J", "UNATTR J", "STATE");
  for (const WorkloadView* g : gpus) {
    const v1::WorkloadUsage& w = g->last;
    const std::string uuid = attribute(w, "uuid");
    std::string state = gauge(w, "gpu_lost") ? "LOST" : gauge(w, "gpu_idle") ? "IDLE" : "ok";
    if (attribute(w, "mig") == "true") state += " MIG";
    const auto util = w.gauges().find("gpu_utilization_percent");
    out += fmt::format(
        "{:>3} {:<44} {:<24} {:>5} {:>7.1f} {:>17} {:>11} {:>11} {:>9} {}\n", attribute(w, "index"), uuid.substr(0, 44),
        attribute(w, "name").substr(0, 24), util == w.gauges().end() ? "-" : fmt::format("{}%", util->second),
        static_cast<double>(gauge(w, "gpu_power_mw")) / 1e3,
        human_size(gauge(w, "gpu_memory_used_bytes")) + "/" + human_size(gauge(w, "gpu_memory_total_bytes")),
        joules(total(g->totals, "gpu_energy_mj", v1::VALUE_SOURCE_NVML)),
        joules(total(g->totals, "gpu_idle_energy_mj", v1::VALUE_SOURCE_NVML)),
        joules(total(g->totals, "gpu_unattributed_energy_mj", v1::VALUE_SOURCE_NVML)), state);
    // Its holders: workloads with memory on it now, or SM time on it in the last interval.
    std::size_t shown = 0;
    for (const auto& [id, holder] : view.workloads()) {
      const std::uint64_t memory = gauge(holder.last, "gpu_memory_bytes:" + uuid);
      const double sm = rate(holder.totals, "gpu_sm_ns:" + uuid, v1::VALUE_SOURCE_NVML, now, seconds) / 1e9;
      if (memory == 0 && sm == 0) continue;
      if (++shown > limit) break;
      out += fmt::format("    {:<60} memory {:>9}  SM {:>5.2f}  energy {:>11} J{}\n", id.substr(0, 60),
                         human_size(memory), sm,
                         joules(total(holder.totals, "gpu_energy_mj:" + uuid, v1::VALUE_SOURCE_NVML)),
                         gauge(holder.last, "gpu_held_unused:" + uuid) ? "  HELD UNUSED" : "");
    }
  }
  return out;
}

}  // namespace

void add_gpus_command(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<ScreenOptions>();
  CLI::App* gpus = app.add_subcommand(
      "gpus", "Each GPU with its utilization, energy, idle and unattributed buckets and its holders, refreshed live");
  add_screen_options(*gpus, *options);
  gpus->callback([options, &exit_status] {
    exit_status = run_usage_screen("tallyctl gpus", *options, [options](const std::string& node, const UsageView& view) {
      return render(node, view, options->limit);
    });
  });
}

}  // namespace tally::agent
