#pragma once
// What `tallyctl top` and `tallyctl gpus` share: a screen redrawn from a UsageView at each usage report once the
// picture is whole (from the first snapshot on), and the human units they print.

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "agent/feed/usage_view.hpp"

namespace tally::agent {

struct ScreenOptions {
  std::vector<std::string> endpoints;
  std::uint64_t count = 0;  // refreshes before exiting; 0: until interrupted
  bool plain = false;       // no screen clearing (pipes, tests)
  std::size_t limit = 30;   // rows
};

// Registers --endpoint, --count, --limit and --plain on `command`.
void add_screen_options(CLI::App& command, ScreenOptions& options);

using RenderScreen = std::function<std::string(const std::string& node_id, const UsageView& view)>;
// Folds the node's usage reports into a view and prints render(view) after each; the exit status.
int run_usage_screen(const char* command, const ScreenOptions& options, const RenderScreen& render);

std::string human_ns(double ns);              // "-", "12ns", "3.4us", "5.6ms", "7.89s"
std::string human_rate(double per_second);    // "-", "512B", "1.5K", "2.3M", "4.56G"
std::string human_size(std::uint64_t bytes);  // "-" for 0, else human_bytes(): "512.0B", "1.5KiB", "2.0GiB"

// Per second over the last report's interval: what moved in it (a counter the report did not carry did not move).
// Both sum the counter's kinds.
double rate(const CounterViews& counters, const std::string& name, v1::ValueSource source, std::uint64_t report,
            double seconds);
std::uint64_t total(const CounterViews& counters, const std::string& name, v1::ValueSource source);
std::uint64_t gauge(const v1::WorkloadUsage& workload, const std::string& name);

}  // namespace tally::agent
