#include "agent/budgets/budget.hpp"

#include <fmt/format.h>

#include "shm/format/names.hpp"

namespace tally::budgets {
namespace {

// Bits of ledger::Source, spelled here so that the configuration's view of a budget needs no ledger.
constexpr std::uint8_t kClient = 1 << 0, kProbes = 1 << 1, kProcSampling = 1 << 2, kNvml = 1 << 3;

struct KnownResource {
  std::string_view name;
  std::vector<Resource::Term> terms;
  std::uint64_t scale = 1;
  std::optional<std::uint32_t> client_counter;
};

const std::vector<KnownResource>& known_resources() {
  static const std::vector<KnownResource> known{
      {"tokens_in", {{"tokens_in", false, kClient}}, 1, 0},
      {"tokens_out", {{"tokens_out", false, kClient}}, 1, 1},
      {"tokens", {{"tokens_in", false, kClient}, {"tokens_out", false, kClient}}, 1, std::nullopt},
      {"requests", {{"requests", false, kClient}}, 1, 3},
      {"errors", {{"errors", false, kClient}}, 1, 4},
      {"gpu_seconds", {{"gpu_time_ns", false, kClient}}, 1'000'000'000, 5},
      {"tool_calls", {{"tool_calls", false, kClient}}, 1, 6},
      {"gpu_seconds_observed", {{"gpu_sm_ns", true, kNvml}}, 1'000'000'000, std::nullopt},
      {"gpu_energy_joules", {{"gpu_energy_mj", true, kNvml}}, 1000, std::nullopt},
      {"io_bytes",
       {{"io_read_bytes", false, kProbes | kProcSampling}, {"io_write_bytes", false, kProbes | kProcSampling}},
       1,
       std::nullopt},
      {"net_bytes", {{"net_rx_bytes", false, kProbes}, {"net_tx_bytes", false, kProbes}}, 1, std::nullopt},
  };
  return known;
}

}  // namespace

Result<Action> parse_action(std::string_view text) {
  static constexpr std::pair<std::string_view, Action> kActions[] = {
      {"notify", Action::notify},   {"deny", Action::deny},         {"throttle", Action::throttle},
      {"degrade", Action::degrade}, {"freeze", Action::freeze},     {"revoke-gpu", Action::revoke_gpu},
      {"preempt", Action::preempt}};
  for (const auto& [name, action] : kActions) {
    if (name == text) return action;
  }
  return make_error(ErrorCode::invalid_argument,
                    "'{}' is not an action: deny, throttle, degrade, freeze, revoke-gpu, preempt or notify", text);
}

std::string_view to_string(Action action) {
  switch (action) {
    case Action::notify: return "notify";
    case Action::deny: return "deny";
    case Action::throttle: return "throttle";
    case Action::degrade: return "degrade";
    case Action::freeze: return "freeze";
    case Action::revoke_gpu: return "revoke-gpu";
    case Action::preempt: return "preempt";
  }
  return "notify";
}

std::string to_string(const Selector& selector) {
  std::string text;
  if (!selector.workload.empty()) text = "workload=" + selector.workload;
  for (const auto& [key, value] : selector.labels) {
    if (!text.empty()) text += ',';
    text += key + "=" + value;
  }
  return text;
}

Result<Resource> parse_resource(std::string_view text) {
  for (const KnownResource& known : known_resources()) {
    if (known.name == text) return Resource{std::string(text), known.terms, known.scale, known.client_counter};
  }
  constexpr std::string_view kUser = "counter:";
  if (text.starts_with(kUser) && shm::format::valid_counter_name(text.substr(kUser.size()))) {
    return Resource{std::string(text), {{std::string(text.substr(kUser.size())), false, kClient}}, 1, std::nullopt};
  }
  return make_error(ErrorCode::invalid_argument,
                    "'{}' is not a resource: tokens_in, tokens_out, tokens, requests, tool_calls, errors, gpu_seconds, "
                    "gpu_seconds_observed, gpu_energy_joules, io_bytes, net_bytes or counter:<name>",
                    text);
}

bool Budget::same_meaning(const Budget& other) const {
  Budget a = *this, b = other;
  a.origin.clear();
  b.origin.clear();
  return a == b;
}

}  // namespace tally::budgets
