// tallyctl top: workloads sorted by cost (GPU time, then tokens, over the last report's interval) with their
// tails, refreshed live from the feed's usage reports (folded into a UsageView: a report carries what changed).

#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "agent/feed/endpoint.hpp"
#include "agent/feed/usage_view.hpp"
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

// Per second over the last report's interval: what moved in it (a counter the report did not carry did not move).
double rate(const CounterViews& counters, const std::string& name, v1::ValueSource source, std::uint64_t report,
            double seconds) {
  const auto it = counters.find({name, source});
  if (it == counters.end() || it->second.reported != report) return 0.0;
  return static_cast<double>(it->second.delta) / seconds;
}

std::uint64_t total(const CounterViews& counters, const std::string& name, v1::ValueSource source) {
  const auto it = counters.find({name, source});
  return it == counters.end() ? 0 : it->second.total;
}

std::string render(const std::string& node_id, const UsageView& view, std::size_t limit) {
  const double seconds = std::max(1e-3, view.interval_seconds());
  const std::uint64_t now = view.reports();
  std::vector<Row> rows;
  for (const auto& [id, w] : view.workloads()) {
    Row row;
    row.id = id;
    for (const auto& n : w.last.names()) row.name += (row.name.empty() ? "" : ",") + n;
    row.state = w.last.exited() ? "exited" : fmt::format("{} pid", w.last.pids_size());
    if (!w.last.quarantined().empty()) row.state += " QUARANTINE";
    row.dropped = total(w.totals, "events_dropped", v1::VALUE_SOURCE_CLIENT);
    // The kernel's view: traced by the probes, or sampled from /proc when they are off.
    bool sampled = false;
    for (v1::ValueSource source : {v1::VALUE_SOURCE_KERNEL_PROBES, v1::VALUE_SOURCE_PROC_SAMPLING}) {
      row.io_read += rate(w.totals, "io_read_bytes", source, now, seconds);
      row.io_write += rate(w.totals, "io_write_bytes", source, now, seconds);
      row.net_rx += rate(w.totals, "net_rx_bytes", source, now, seconds);
      row.net_tx += rate(w.totals, "net_tx_bytes", source, now, seconds);
      sampled = sampled || w.totals.contains({"io_read_bytes", v1::VALUE_SOURCE_PROC_SAMPLING}) ||
                w.totals.contains({"io_write_bytes", v1::VALUE_SOURCE_PROC_SAMPLING});
    }
    row.gpu_opens = total(w.totals, "gpu_device_opens", v1::VALUE_SOURCE_KERNEL_PROBES);
    if (w.label_sets.empty() && w.last.names().empty()) row.state = sampled ? "kernel (sampled)" : "kernel";
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
    if (a.gpu_s != b.gpu_s) return a.gpu_s > b.gpu_s;
    if (a.tokens != b.tokens) return a.tokens > b.tokens;
    if (a.total_tokens != b.total_tokens) return a.total_tokens > b.total_tokens;
    return a.io_read + a.io_write + a.net_rx + a.net_tx > b.io_read + b.io_write + b.net_rx + b.net_tx;
  });
  std::string out = fmt::format("tally top: node {}, {} workloads, interval {:.1f}s\n", node_id, rows.size(), seconds);
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
  UsageView view;
  bool complete = false;  // a report carries what changed: the picture is whole from the first snapshot on
  if (!options.plain) std::fputs("tally top: waiting for the agent's next snapshot...\n", stdout);
  return receive_feed("tallyctl top", options.endpoints, kinds, [&](const v1::Envelope& envelope) {
    view.apply(envelope.usage());
    complete = complete || envelope.usage().snapshot();
    if (!complete) return true;
    const std::string screen = render(envelope.node_id(), view, options.limit);
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
