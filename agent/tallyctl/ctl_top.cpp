// tallyctl top: workloads sorted by cost (GPU time, then tokens, over the last report's interval) with their
// tails, what the kernel and the GPU driver saw of them, refreshed live from the feed's usage reports (folded into
// a UsageView: a report carries what changed). GPUs themselves are `tallyctl gpus`.

#include <memory>

#include <fmt/format.h>

#include "agent/base/histogram.hpp"
#include "agent/tallyctl/ctl_commands.hpp"
#include "agent/tallyctl/usage_screen.hpp"

namespace tally::agent {
namespace {

struct Row {
  std::string id, name, state;
  double requests = 0, tokens = 0, gpu_s = 0;  // per second over the interval (gpu_s: as the client reported)
  // What the GPU driver saw (NVML): SM-seconds and watts per second over the interval, memory held now.
  double sm_s = 0, watts = 0;
  std::uint64_t gpu_memory = 0;
  std::uint64_t total_tokens = 0, dropped = 0;
  // Kernel-observed (eBPF probes or /proc sampling), per second over the interval; device opens in the interval.
  double io_read = 0, io_write = 0, net_rx = 0, net_tx = 0;
  std::uint64_t gpu_opens = 0;
  ExponentialHistogram ttft, duration, tokens_hist, gpu;
};

ExponentialHistogram from_proto(const v1::RequestTail& tail) {
  const auto& h = tail.histogram();
  return ExponentialHistogram::from_parts(h.offset(), {h.bucket_counts().begin(), h.bucket_counts().end()},
                                               h.zero_count(), h.sum(), h.min(), h.max());
}

std::string render(const std::string& node_id, const UsageView& view, std::size_t limit) {
  const double seconds = std::max(1e-3, view.interval_seconds());
  const std::uint64_t now = view.reports();
  std::vector<Row> rows;
  for (const auto& [id, w] : view.workloads()) {
    if (w.last.kind() == "gpu") continue;  // a GPU's own entry, not a workload
    Row row;
    row.id = id;
    for (const auto& n : w.last.names()) row.name += (row.name.empty() ? "" : ",") + n;
    row.state = w.last.exited() ? "exited" : fmt::format("{} pid", w.last.pids_size());
    if (!w.last.quarantined().empty()) row.state += " QUARANTINE";
    row.dropped = total(w.totals, "events_dropped", v1::VALUE_SOURCE_CLIENT);
    // The kernel's view: traced by the probes, or sampled from /proc when they are off.
    for (v1::ValueSource source : {v1::VALUE_SOURCE_KERNEL_PROBES, v1::VALUE_SOURCE_PROC_SAMPLING}) {
      row.io_read += rate(w.totals, "io_read_bytes", source, now, seconds);
      row.io_write += rate(w.totals, "io_write_bytes", source, now, seconds);
      row.net_rx += rate(w.totals, "net_rx_bytes", source, now, seconds);
      row.net_tx += rate(w.totals, "net_tx_bytes", source, now, seconds);
    }
    row.gpu_opens = total(w.totals, "gpu_device_opens", v1::VALUE_SOURCE_KERNEL_PROBES);
    // The GPU driver's view (NVML).
    row.sm_s = rate(w.totals, "gpu_sm_ns", v1::VALUE_SOURCE_NVML, now, seconds) / 1e9;
    row.watts = rate(w.totals, "gpu_energy_mj", v1::VALUE_SOURCE_NVML, now, seconds) / 1e3;
    row.gpu_memory = gauge(w.last, "gpu_memory_bytes");
    if (w.label_sets.empty() && w.last.names().empty()) {  // no client: who saw it
      bool traced = false, sampled = false, driver = false;
      for (const auto& [key, counter] : w.totals) {
        traced = traced || std::get<1>(key) == v1::VALUE_SOURCE_KERNEL_PROBES;
        sampled = sampled || std::get<1>(key) == v1::VALUE_SOURCE_PROC_SAMPLING;
        driver = driver || std::get<1>(key) == v1::VALUE_SOURCE_NVML;
      }
      row.state = driver && !traced && !sampled ? "driver" : sampled ? "kernel (sampled)" : "kernel";
    }
    for (const auto& [text, ls] : w.label_sets) {
      row.requests += rate(ls.counters, "requests", v1::VALUE_SOURCE_CLIENT, now, seconds);
      row.tokens += rate(ls.counters, "tokens_in", v1::VALUE_SOURCE_CLIENT, now, seconds) +
                    rate(ls.counters, "tokens_out", v1::VALUE_SOURCE_CLIENT, now, seconds);
      row.gpu_s += rate(ls.counters, "gpu_time_ns", v1::VALUE_SOURCE_CLIENT, now, seconds) / 1e9;
      row.total_tokens += total(ls.counters, "tokens_in", v1::VALUE_SOURCE_CLIENT) +
                          total(ls.counters, "tokens_out", v1::VALUE_SOURCE_CLIENT);
      if (ls.last.has_ttft_ns()) {
        row.ttft.merge(from_proto(ls.last.ttft_ns()));
        row.duration.merge(from_proto(ls.last.duration_ns()));
        row.tokens_hist.merge(from_proto(ls.last.tokens()));
        row.gpu.merge(from_proto(ls.last.gpu_time_ns()));
      }
    }
    rows.push_back(std::move(row));
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.gpu_s + a.sm_s != b.gpu_s + b.sm_s) return a.gpu_s + a.sm_s > b.gpu_s + b.sm_s;
    if (a.tokens != b.tokens) return a.tokens > b.tokens;
    if (a.total_tokens != b.total_tokens) return a.total_tokens > b.total_tokens;
    return a.io_read + a.io_write + a.net_rx + a.net_tx > b.io_read + b.io_write + b.net_rx + b.net_tx;
  });
  std::string out = fmt::format("tally top: node {}, {} workloads, interval {:.1f}s\n", node_id, rows.size(), seconds);
  out += fmt::format(
      "{:<40} {:<16} {:>8} {:>10} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {}\n",
      "WORKLOAD", "NAME", "REQ/s", "TOK/s", "GPU", "SM", "GPUMEM", "GPU W", "TTFT p50", "TTFT p99", "DUR p99",
      "TOP1%TOK", "DROPPED", "IO R/s", "IO W/s", "NET RX", "NET TX", "GPUOPEN", "STATE");
  for (std::size_t i = 0; i < rows.size() && i < limit; ++i) {
    const Row& r = rows[i];
    out += fmt::format(
        "{:<40} {:<16} {:>8.1f} {:>10.0f} {:>7.2f} {:>7.2f} {:>8} {:>7.1f} {:>9} {:>9} {:>9} {:>7.1f}% {:>8} {:>7} {:>7} "
        "{:>7} {:>7} {:>7} {}\n",
        r.id.substr(0, 40), r.name.substr(0, 16), r.requests, r.tokens, r.gpu_s, r.sm_s, human_size(r.gpu_memory),
        r.watts, human_ns(r.ttft.quantile(0.5)), human_ns(r.ttft.quantile(0.99)), human_ns(r.duration.quantile(0.99)),
        r.tokens_hist.top_share(0.01) * 100.0, r.dropped, human_rate(r.io_read), human_rate(r.io_write),
        human_rate(r.net_rx), human_rate(r.net_tx), r.gpu_opens, r.state);
  }
  return out;
}

}  // namespace

void add_top_command(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<ScreenOptions>();
  CLI::App* top = app.add_subcommand(
      "top", "Workloads sorted by cost, with their tails and what the kernel and the GPU driver saw, refreshed live");
  add_screen_options(*top, *options);
  top->callback([options, &exit_status] {
    exit_status = run_usage_screen("tallyctl top", *options, [options](const std::string& node, const UsageView& view) {
      return render(node, view, options->limit);
    });
  });
}

}  // namespace tally::agent
