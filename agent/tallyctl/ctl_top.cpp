// tallyctl top: workloads sorted by cost (GPU time, then tokens, over the last report's interval) with their
// tails, refreshed live from the feed's usage reports.

#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "agent/config/config.hpp"
#include "agent/tallyctl/ctl_commands.hpp"
#include "agent/feed/subscription.hpp"
#include "agent/feed/watch.hpp"
#include "agent/base/histogram.hpp"

namespace tally::agent {
namespace {

struct TopOptions {
  std::vector<std::string> endpoints{std::string(kDefaultFeedEndpoint)};
  std::uint64_t count = 0;  // 0: until interrupted
  bool plain = false;       // no screen clearing (pipes, tests)
  std::size_t limit = 30;
};

struct Row {
  std::string id, name, state;
  double requests = 0, tokens = 0, gpu_s = 0;  // per second over the interval
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

std::string human_ns(double ns) {
  if (ns <= 0) return "-";
  if (ns < 1e3) return fmt::format("{:.0f}ns", ns);
  if (ns < 1e6) return fmt::format("{:.1f}us", ns / 1e3);
  if (ns < 1e9) return fmt::format("{:.1f}ms", ns / 1e6);
  return fmt::format("{:.2f}s", ns / 1e9);
}

std::string human_rate(double bytes_per_second) {
  if (bytes_per_second <= 0) return "-";
  if (bytes_per_second < 1e3) return fmt::format("{:.0f}B", bytes_per_second);
  if (bytes_per_second < 1e6) return fmt::format("{:.1f}K", bytes_per_second / 1e3);
  if (bytes_per_second < 1e9) return fmt::format("{:.1f}M", bytes_per_second / 1e6);
  return fmt::format("{:.2f}G", bytes_per_second / 1e9);
}

std::string render(const v1::Envelope& envelope, std::size_t limit) {
  const v1::UsageReport& report = envelope.usage();
  const double seconds =
      std::max(1e-3, static_cast<double>(report.interval_end_unix_ns() - report.interval_start_unix_ns()) / 1e9);
  std::vector<Row> rows;
  for (const auto& w : report.workloads()) {
    const bool kernel_only = w.label_sets().empty() && w.names().empty();
    if (kernel_only && !w.has_kernel()) continue;
    Row row;
    row.id = w.workload_id();
    for (const auto& n : w.names()) row.name += (row.name.empty() ? "" : ",") + n;
    row.state = w.exited() ? "exited" : fmt::format("{} pid", w.pids_size());
    if (!w.quarantined().empty()) row.state += " QUARANTINE";
    row.dropped = w.dropped_events();
    if (w.has_kernel()) {
      const v1::KernelUsage& k = w.kernel();
      row.io_read = static_cast<double>(k.io_read_bytes()) / seconds;
      row.io_write = static_cast<double>(k.io_write_bytes()) / seconds;
      row.net_rx = static_cast<double>(k.net_rx_bytes()) / seconds;
      row.net_tx = static_cast<double>(k.net_tx_bytes()) / seconds;
      row.gpu_opens = k.gpu_device_opens();
      if (kernel_only) row.state = k.source() == v1::KernelUsage::SOURCE_SAMPLED ? "kernel (sampled)" : "kernel";
    }
    for (const auto& ls : w.label_sets()) {
      auto delta = [&](const char* key) {
        const auto it = ls.deltas().find(key);
        return it == ls.deltas().end() ? 0.0 : static_cast<double>(it->second);
      };
      auto total = [&](const char* key) {
        const auto it = ls.counters().find(key);
        return it == ls.counters().end() ? std::uint64_t{0} : it->second;
      };
      row.requests += delta("requests") / seconds;
      row.tokens += (delta("tokens_in") + delta("tokens_out")) / seconds;
      row.gpu_s += delta("gpu_time_ns") / 1e9 / seconds;
      row.total_tokens += total("tokens_in") + total("tokens_out");
      if (ls.has_ttft_ns()) {
        row.ttft.merge(from_proto(ls.ttft_ns()));
        row.duration.merge(from_proto(ls.duration_ns()));
        row.tokens_hist.merge(from_proto(ls.tokens()));
        row.gpu.merge(from_proto(ls.gpu_time_ns()));
      }
    }
    rows.push_back(std::move(row));
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.gpu_s != b.gpu_s) return a.gpu_s > b.gpu_s;
    if (a.tokens != b.tokens) return a.tokens > b.tokens;
    if (a.total_tokens != b.total_tokens) return a.total_tokens > b.total_tokens;
    return a.io_read + a.io_write + a.net_rx + a.net_tx > b.io_read + b.io_write + b.net_rx + b.net_tx;
  });
  std::string out = fmt::format("tally top: node {}, {} workloads, interval {:.1f}s\n", envelope.node_id(),
                                rows.size(), seconds);
  out += fmt::format("{:<40} {:<16} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {}\n",
                     "WORKLOAD", "NAME", "REQ/s", "TOK/s", "GPU", "TTFT p50", "TTFT p99", "DUR p99", "TOP1%TOK",
                     "DROPPED", "IO R/s", "IO W/s", "NET RX", "NET TX", "GPUOPEN", "STATE");
  for (std::size_t i = 0; i < rows.size() && i < limit; ++i) {
    const Row& r = rows[i];
    out += fmt::format(
        "{:<40} {:<16} {:>8.1f} {:>10.0f} {:>7.2f} {:>9} {:>9} {:>9} {:>7.1f}% {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {}\n",
        r.id.substr(0, 40), r.name.substr(0, 16), r.requests, r.tokens, r.gpu_s, human_ns(r.ttft.quantile(0.5)),
        human_ns(r.ttft.quantile(0.99)), human_ns(r.duration.quantile(0.99)), r.tokens_hist.top_share(0.01) * 100.0,
        r.dropped, human_rate(r.io_read), human_rate(r.io_write), human_rate(r.net_rx), human_rate(r.net_tx),
        r.gpu_opens, r.state);
  }
  return out;
}

int run_top(const TopOptions& options) {
  std::uint64_t shown = 0;
  const std::vector<std::string> kinds{std::string(topic_of(FeedKind::usage))};
  return receive_feed("tallyctl top", options.endpoints, kinds, [&](const v1::Envelope& envelope) {
    const std::string screen = render(envelope, options.limit);
    if (!options.plain) std::fputs("\x1b[H\x1b[2J", stdout);  // home, clear: refresh in place
    std::fputs(screen.c_str(), stdout);
    std::fflush(stdout);
    return options.count == 0 || ++shown < options.count;
  });
}

}  // namespace

void add_top_command(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<TopOptions>();
  CLI::App* top = app.add_subcommand("top", "Workloads sorted by cost, with their tails, refreshed live");
  top->add_option("-e,--endpoint", options->endpoints, "Feed endpoint(s) to connect to")->capture_default_str();
  top->add_option("-n,--count", options->count, "Exit after this many refreshes (0: run until interrupted)");
  top->add_option("--limit", options->limit, "Rows to show")->capture_default_str();
  top->add_flag("--plain", options->plain, "Do not clear the screen between refreshes");
  top->callback([options, &exit_status] { exit_status = run_top(*options); });
}

}  // namespace tally::agent
