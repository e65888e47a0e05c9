// tallyctl quota: every budget of the running agent with its usage, what is left and what is in force;
// tallyctl release WORKLOAD [--budget NAME]: lifts what budgets put in force on a workload for the rest of the
// current window (audited by the agent). Over tallyd's control socket (root only), docs/budgets.md.
//
// Exit status: 0 done; 1 error (no agent, nothing to release).

#include <chrono>
#include <cstdio>
#include <memory>

#include <date/date.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "agent/config/config.hpp"
#include "agent/tallyctl/control_client.hpp"
#include "agent/tallyctl/ctl_commands.hpp"

namespace tally::agent {
namespace {

using nlohmann::json;

struct QuotaOptions {
  std::string socket = AgentSection{}.control_socket;
  bool json = false;
  std::string workload, budget;
};

constexpr std::chrono::seconds kTimeout{10};

// An amount in the resource's unit: counters count gpu_seconds in nanoseconds.
std::string amount(const json& budget, std::string_view key) {
  const auto value = budget.value(std::string(key), std::uint64_t{0});
  const auto scale = budget.value("scale", std::uint64_t{1});
  if (scale <= 1) return fmt::format("{}", value);
  return fmt::format("{:.3f}", static_cast<double>(value) / static_cast<double>(scale));
}

std::string time_of(std::int64_t unix_s) {
  return date::format("%F %H:%M", date::sys_seconds(std::chrono::seconds(unix_s)));
}

int print_budgets(const json& reply) {
  const json budgets = reply.value("budgets", json::array());
  if (budgets.empty()) {
    fmt::print("no budgets: add [[budgets]] to tally.toml or budgets.d/ (docs/budgets.md)\n");
    return 0;
  }
  fmt::print("{:<24} {:<28} {:<14} {:>14} {:>14} {:>14}  {:<10} {}\n", "BUDGET", "SELECT", "RESOURCE", "USED", "HARD",
             "REMAINING", "ACTION", "WINDOW (UTC)");
  for (const json& b : budgets) {
    std::string action = b.value("action", "");
    if (b.value("in_force", false)) action += " (in force)";
    const std::string select = b.value("select", "");
    fmt::print("{:<24} {:<28} {:<14} {:>14} {:>14} {:>14}  {:<10} {} {} to {}\n", b.value("name", ""),
               select.empty() ? "(every workload)" : select, b.value("resource", ""), amount(b, "used"),
               b.contains("hard") ? amount(b, "hard") : "-", b.contains("remaining") ? amount(b, "remaining") : "-",
               action, b.value("window", ""), time_of(b.value("window_start", std::int64_t{0})),
               time_of(b.value("window_end", std::int64_t{0})));
    const auto released = b.value("released", json::array());
    if (!released.empty()) {
      fmt::print("{:<24} released until the window ends: {}\n", "", fmt::join(released.get<std::vector<std::string>>(), ", "));
    }
    for (const auto& [key, what] : {std::pair{"frozen", "frozen"}, std::pair{"gpu_revoked", "GPU access withdrawn"}}) {
      const auto workloads = b.value(key, json::array());
      if (!workloads.empty()) {
        fmt::print("{:<24} {}: {}\n", "", what, fmt::join(workloads.get<std::vector<std::string>>(), ", "));
      }
    }
    for (const auto& [workload, why] : b.value("failed", json::object()).items()) {
      fmt::print("{:<24} could not act on {}: {}\n", "", workload, why.get<std::string>());
    }
  }
  return 0;
}

int run(const QuotaOptions& options, bool release) {
  json request{{"command", release ? "quota.release" : "quota.show"}};
  if (release) {
    request["workload"] = options.workload;
    if (!options.budget.empty()) request["budget"] = options.budget;
  }
  auto reply = ask_agent(options.socket, request, kTimeout);
  if (!reply) {
    fmt::print(stderr, "tallyctl {}: {}\n", release ? "release" : "quota", reply.error().message);
    return 1;
  }
  if (options.json) {
    fmt::print("{}\n", reply->dump(2));
    return 0;
  }
  if (release) {
    fmt::print("released {}{} for the rest of the window\n", options.workload,
               options.budget.empty() ? " from every budget in force on it" : " from budget " + options.budget);
  }
  return print_budgets(*reply);
}

}  // namespace

void add_quota_commands(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<QuotaOptions>();
  CLI::App* quota = app.add_subcommand("quota", "Budgets: usage, what is left and what is in force (root only)");
  CLI::App* release = app.add_subcommand(
      "release", "Lift what budgets put in force on a workload, for the rest of the current window (root only)");
  for (CLI::App* sub : {quota, release}) {
    sub->add_option("--socket", options->socket, "tallyd's control socket ([agent] control_socket)")
        ->capture_default_str();
    sub->add_flag("--json", options->json, "Print tallyd's answer as JSON");
  }
  release->add_option("workload", options->workload, "The workload, as on the feed (e.g. systemd:inference.service)")
      ->required();
  release->add_option("--budget", options->budget, "Only this budget's action (default: every budget in force on it)");
  quota->callback([options, &exit_status] { exit_status = run(*options, false); });
  release->callback([options, &exit_status] { exit_status = run(*options, true); });
}

}  // namespace tally::agent
