#include "agent/tallyctl/usage_screen.hpp"

#include <cstdio>

#include <fmt/format.h>

#include "agent/base/text.hpp"
#include "agent/feed/endpoint.hpp"
#include "agent/feed/subscription.hpp"
#include "agent/feed/watch.hpp"

namespace tally::agent {

void add_screen_options(CLI::App& command, ScreenOptions& options) {
  options.endpoints = {std::string(kDefaultFeedEndpoint)};
  command.add_option("-e,--endpoint", options.endpoints, "Feed endpoint(s) to connect to")->capture_default_str();
  command.add_option("-n,--count", options.count, "Exit after this many refreshes (0: run until interrupted)");
  command.add_option("--limit", options.limit, "Rows to show")->capture_default_str();
  command.add_flag("--plain", options.plain, "Do not clear the screen between refreshes");
}

int run_usage_screen(const char* command, const ScreenOptions& options, const RenderScreen& render) {
  std::uint64_t shown = 0;
  const std::vector<std::string> kinds{std::string(topic_of(FeedKind::usage))};
  UsageView view;
  bool complete = false;  // a report carries what changed: the picture is whole from the first snapshot on
  if (!options.plain) std::printf("%s: waiting for the agent's next snapshot...\n", command);
  return receive_feed(command, options.endpoints, kinds, [&](const v1::Envelope& envelope) {
    view.apply(envelope.usage());
    complete = complete || envelope.usage().snapshot();
    if (!complete) return true;
    const std::string screen = render(envelope.node_id(), view);
    if (!options.plain) std::fputs("\x1b[H\x1b[2J", stdout);  // home, clear: refresh in place
    std::fputs(screen.c_str(), stdout);
    std::fflush(stdout);
    return options.count == 0 || ++shown < options.count;
  });
}

std::string human_ns(double ns) {
  if (ns <= 0) return "-";
  if (ns < 1e3) return fmt::format("{:.0f}ns", ns);
  if (ns < 1e6) return fmt::format("{:.1f}us", ns / 1e3);
  if (ns < 1e9) return fmt::format("{:.1f}ms", ns / 1e6);
  return fmt::format("{:.2f}s", ns / 1e9);
}

std::string human_rate(double per_second) {
  if (per_second <= 0) return "-";
  if (per_second < 1e3) return fmt::format("{:.0f}B", per_second);
  if (per_second < 1e6) return fmt::format("{:.1f}K", per_second / 1e3);
  if (per_second < 1e9) return fmt::format("{:.1f}M", per_second / 1e6);
  return fmt::format("{:.2f}G", per_second / 1e9);
}

std::string human_size(std::uint64_t bytes) { return bytes == 0 ? "-" : human_bytes(bytes); }

namespace {

// Every kind of counter `name` from `source` (GPU energy can be apportioned and estimated at once).
template <typename Visit>
void each_kind(const CounterViews& counters, const std::string& name, v1::ValueSource source, Visit&& visit) {
  for (auto it = counters.lower_bound({name, source, v1::ValueKind{}});
       it != counters.end() && std::get<0>(it->first) == name && std::get<1>(it->first) == source; ++it) {
    visit(it->second);
  }
}

}  // namespace

double rate(const CounterViews& counters, const std::string& name, v1::ValueSource source, std::uint64_t report,
            double seconds) {
  std::uint64_t moved = 0;
  each_kind(counters, name, source, [&](const CounterView& c) {
    if (c.reported == report) moved += c.delta;
  });
  return static_cast<double>(moved) / seconds;
}

std::uint64_t total(const CounterViews& counters, const std::string& name, v1::ValueSource source) {
  std::uint64_t sum = 0;
  each_kind(counters, name, source, [&](const CounterView& c) { sum += c.total; });
  return sum;
}

std::uint64_t gauge(const v1::WorkloadUsage& workload, const std::string& name) {
  const auto it = workload.gauges().find(name);
  return it == workload.gauges().end() ? 0 : it->second;
}

}  // namespace tally::agent
