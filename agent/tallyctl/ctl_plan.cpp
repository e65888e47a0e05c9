// tallyctl plan show|diff FILE|apply|clear: GPU partitioning through the running agent (docs/partitioning.md), over
// its control socket ([agent] control_socket; root only). One request per connection: a JSON object on one line;
// the answer is one JSON object. `plan clear` works without an agent too: it removes the pinned policy itself.
//
// Exit status: 0 done; 2 done, but part of the plan was refused (diff: would be); 1 error.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "agent/config/config.hpp"
#include "agent/partitioning/device_policy.hpp"
#include "agent/tallyctl/ctl_commands.hpp"
#include "agent/tallyctl/control_client.hpp"

namespace tally::agent {
namespace {

using nlohmann::json;

struct PlanOptions {
  std::string socket = AgentSection{}.control_socket;
  std::string pin_dir = partitioning::PartitionPlan{}.pin_dir;
  std::string file;
  bool json = false;
  // A MIG reconcile on a real GPU takes seconds per step; the agent answers once it is done.
  int timeout_s = 600;
};

std::vector<std::string> strings(const json& value) {
  std::vector<std::string> out;
  if (value.is_array()) {
    for (const auto& item : value) {
      if (item.is_string()) out.push_back(item.get<std::string>());
    }
  }
  return out;
}

void print_list(std::string_view title, const std::vector<std::string>& lines) {
  if (lines.empty()) return;
  fmt::print("{}:\n", title);
  for (const auto& line : lines) fmt::print("  {}\n", line);
}

// What apply did, or diff would do.
int print_report(const json& report, bool dry_run) {
  for (const auto& gpu : report.value("mig", json::array())) {
    const std::string name = gpu.contains("gpu") ? fmt::format("GPU {}", gpu["gpu"].get<unsigned>())
                                                 : fmt::format("GPU '{}'", gpu.value("select", ""));
    const auto steps = strings(gpu[dry_run ? "planned" : "done"]);
    if (steps.empty() && strings(gpu["refused"]).empty()) fmt::print("MIG {}: geometry already as planned\n", name);
    for (const auto& step : steps) fmt::print("MIG {}: {}{}\n", name, step, dry_run ? " (would be done)" : "");
    if (gpu.value("rolled_back", false)) fmt::print("MIG {}: rolled back: {}\n", name, gpu.value("error", ""));
  }
  const auto changes = strings(report.value("changes", json::array()));
  if (changes.empty()) fmt::print("device access: {}\n", dry_run ? "would not change" : "unchanged");
  print_list(dry_run ? "device access would change" : "device access changed", changes);
  std::vector<std::string> refused = strings(report.value("refused", json::array()));
  for (const auto& gpu : report.value("mig", json::array())) {
    if (dry_run) break;  // preview lists the MIG refusals with the others already
    for (const auto& reason : strings(gpu["refused"])) refused.push_back(reason);
  }
  print_list(dry_run ? "would be refused" : "refused", refused);
  print_list("problems reading this node", strings(report.value("problems", json::array())));
  fmt::print("plan generation {}{}\n", report.value("generation", 0),
             report.value("enforcing", true) ? "" : " (no device policy attached)");
  return refused.empty() ? 0 : 2;
}

int print_show(const json& state) {
  fmt::print("plan generation {}: {}; default {}, on_stop {}; MIG isolation: {}\n", state.value("generation", 0),
             state.value("enforcing", false)
                 ? fmt::format("enforcing{}", state.value("adopted", false) ? " (adopted from the previous tallyd)" : "")
                 : "no device policy attached",
             state.value("default", "open"), state.value("on_stop", "keep"), state.value("mig_isolation", "none"));
  const json gpus = state.value("gpus", json::array());
  if (!gpus.empty()) fmt::print("GPUs:\n");
  for (const auto& gpu : gpus) {
    fmt::print("  {}  {}  {}  {}  {}\n", gpu.value("index", 0), gpu.value("name", ""), gpu.value("uuid", ""),
               gpu.value("bus_id", ""), gpu.value("node", "").empty() ? "(minor unknown)" : gpu.value("node", ""));
    std::vector<std::string> instances;
    for (const auto& instance : gpu.value("instances", json::array())) {
      instances.push_back(fmt::format("{} at slice {}{}", instance.value("profile", ""),
                                      instance.value("placement_start", 0), instance.value("busy", false) ? " (busy)" : ""));
    }
    if (gpu.value("mig", false)) fmt::print("     MIG on: {}\n", instances.empty() ? "no instances" : fmt::format("{}", fmt::join(instances, ", ")));
    for (const auto& slice : gpu.value("slices", json::array())) {
      const auto caps = strings(slice.value("caps", json::array()));
      fmt::print("     {}/mig/{}  GI {} CI {}  {}  {}\n", gpu.value("index", 0), slice.value("index", 0),
                 slice.value("gpu_instance_id", 0), slice.value("compute_instance_id", 0), slice.value("uuid", ""),
                 caps.empty() ? "(no capability device files)" : fmt::format("{}", fmt::join(caps, " ")));
    }
  }
  std::vector<std::string> lines;
  for (const auto& assignment : state.value("assignments", json::array())) {
    lines.push_back(fmt::format("{} <- {}  ({})", assignment.value("workload", ""),
                                fmt::join(strings(assignment.value("gpus", json::array())), ", "),
                                assignment.value("origin", "")));
  }
  print_list("assignments", lines);
  // Budgets' revoke-gpu (docs/budgets.md): these open no GPU, whatever the assignments above give them.
  const auto revoked = strings(state.value("revoked", json::array()));
  if (!revoked.empty()) fmt::print("GPU access withdrawn by budgets: {}\n", fmt::join(revoked, ", "));
  const auto system_clients = strings(state.value("system_clients", json::array()));
  if (!system_clients.empty()) fmt::print("system clients (every GPU): {}\n", fmt::join(system_clients, ", "));
  lines.clear();
  const json can_open = state.value("can_open", json::object());  // items() of a temporary would dangle
  for (const auto& [workload, nodes] : can_open.items()) {
    lines.push_back(fmt::format("{}: {}", workload, fmt::join(strings(nodes), " ")));
  }
  print_list("restricted nodes each workload may open", lines);
  lines.clear();
  for (const auto& cgroup : state.value("cgroups", json::array())) {
    lines.push_back(fmt::format("{}  {}  {}", cgroup.value("path", ""), cgroup.value("workload", ""),
                                fmt::join(strings(cgroup.value("gpus", json::array())), ", ")));
  }
  print_list("cgroups holding grants", lines);
  lines.clear();
  for (const auto& denial : state.value("denials", json::array())) {
    lines.push_back(fmt::format("{} denied {} {} times", denial.value("workload", ""), denial.value("device", ""),
                                denial.value("count", 0)));
  }
  print_list("denials", lines);
  print_list("refused", strings(state.value("refused", json::array())));
  print_list("problems reading this node", strings(state.value("problems", json::array())));
  return 0;
}

int fail(std::string_view command, const Error& error) {
  fmt::print(stderr, "tallyctl plan {}: {}\n", command, error.message);
  return 1;
}

int run(const PlanOptions& options, std::string_view command) {
  json request{{"command", fmt::format("plan.{}", command)}};
  if (command == "diff") {
    std::error_code ec;
    request["file"] = std::filesystem::absolute(options.file, ec).string();
  }
  auto reply = ask_agent(options.socket, request, std::chrono::seconds(options.timeout_s));
  if (!reply && command == "clear" && reply.error().code == ErrorCode::not_found) {
    // No agent: the pinned policy is removed here (what package removal does after stopping tallyd).
    auto removed = partitioning::DevicePolicy::remove_pinned(options.pin_dir);
    if (!removed) return fail(command, removed.error());
    fmt::print("{}\n", *removed ? fmt::format("removed the GPU device policy pinned in {}", options.pin_dir)
                                : fmt::format("no GPU device policy pinned in {}", options.pin_dir));
    return 0;
  }
  if (!reply) return fail(command, reply.error());
  if (options.json) {
    fmt::print("{}\n", reply->dump(2));
    return command == "show" || command == "clear" ? 0 : (reply->value("refused", json::array()).empty() ? 0 : 2);
  }
  if (command == "show") return print_show(*reply);
  if (command == "clear") {
    fmt::print("{}\n", reply->value("released", false) ? "GPU device policy released: no GPU is restricted now"
                                                        : "no GPU device policy was in force");
    return 0;
  }
  return print_report(*reply, command == "diff");
}

}  // namespace

void add_plan_command(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* plan = app.add_subcommand("plan", "GPU partitioning: show, preview, apply or clear the plan (root only)");
  plan->require_subcommand(1);
  plan->add_option("--socket", options->socket, "tallyd's control socket ([agent] control_socket)")
      ->capture_default_str();
  plan->add_flag("--json", options->json, "Print tallyd's answer as JSON");
  CLI::App* show =
      plan->add_subcommand("show", "The geometry, assignments, what each workload may open, revocations, denials");
  CLI::App* diff = plan->add_subcommand(
      "diff", "What a plan file would change and what would be refused, changing nothing (a plan drop-in: as added "
              "to the running plan; a tally.toml: its whole plan)");
  diff->add_option("file", options->file, "The plan drop-in or configuration file")->required();
  CLI::App* apply = plan->add_subcommand(
      "apply", "Read the configuration and plan drop-ins again and bring the plan into force (as SIGHUP does)");
  CLI::App* clear = plan->add_subcommand(
      "clear", "Detach the GPU device policy and remove its pins (without a running tallyd too)");
  clear->add_option("--pin-dir", options->pin_dir, "Where it is pinned, when no tallyd answers ([partitioning] pin_dir)")
      ->capture_default_str();
  for (auto [sub, name] : {std::pair{show, "show"}, std::pair{diff, "diff"}, std::pair{apply, "apply"},
                           std::pair{clear, "clear"}}) {
    sub->callback([options, &exit_status, name = std::string(name)] { exit_status = run(*options, name); });
  }
}

}  // namespace tally::agent
