#pragma once
// What a budget is, as the configuration says it ([[budgets]] in tally.toml and budgets.d/*.toml, docs/budgets.md):
// whom it covers (a selector over workloads and labels), what it counts (a resource: ledger counters), over which
// window, its soft and hard limits, and what happens at the hard one.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/base/result.hpp"
#include "agent/budgets/window.hpp"

namespace tally::budgets {

// What happens when usage reaches the hard limit. notify: an event only; deny, throttle, degrade: the admission
// word of the matching label sets; freeze, revoke-gpu, preempt: the workload's cgroup or its GPU access
// (preempt: frozen while a workload of a higher priority shares one of its GPUs).
enum class Action { notify, deny, throttle, degrade, freeze, revoke_gpu, preempt };
Result<Action> parse_action(std::string_view text);
std::string_view to_string(Action action);

// Whom a budget covers: a label set matches when every label named here has this value in it (others are free),
// and, when `workload` is set, its workload's id is exactly that.
struct Selector {
  std::string workload;
  std::vector<std::pair<std::string, std::string>> labels;  // sorted by key
  bool operator==(const Selector&) const = default;
};
std::string to_string(const Selector& selector);  // "team=a,model=m" or "workload=…"

// What a budget counts: a sum of ledger counters (by name and source), in the counters' unit; a limit in the
// resource's unit is `scale` counter units (gpu_seconds: 1e9 ns).
struct Resource {
  struct Term {
    std::string counter;   // a counter's name, or with `prefix` the start of one ("gpu_sm_ns" covers "gpu_sm_ns:<GPU>")
    bool prefix = false;
    std::uint8_t sources = 0;  // bit (1 << ledger::Source)
    bool operator==(const Term&) const = default;
  };
  std::string name;
  std::vector<Term> terms;
  std::uint64_t scale = 1;
  // Only client-reported counters can be governed by allowances (reserve, then commit): the one counter index
  // (tally_counter) when the resource is exactly one.
  std::optional<std::uint32_t> client_counter;
  bool operator==(const Resource&) const = default;
};
// tokens_in, tokens_out, tokens, requests, tool_calls, errors, gpu_seconds (as reported), gpu_seconds_observed
// (NVML), gpu_energy_joules (NVML), io_bytes, net_bytes, or counter:<name> (a user-named client counter).
Result<Resource> parse_resource(std::string_view text);

struct Budget {
  std::string name;
  Selector select;
  Resource resource;
  WindowSpec window;
  std::optional<std::uint64_t> soft, hard;  // in counter units (already scaled)
  Action action = Action::notify;
  std::uint32_t degrade_max_tokens = 0;  // degrade's hint: the largest max_tokens a request should ask for
  // The allowance granularity: the smallest top-up a client is offered while more than it is left (0: a
  // thousandth of the hard limit, at least 1).
  std::uint64_t allowance = 0;
  std::uint64_t granule() const { return allowance != 0 ? allowance : std::max<std::uint64_t>(1, hard.value_or(0) / 1000); }
  std::string origin;                    // file:line, for messages
  // Equal when they mean the same: a reload that changes only where a budget is written keeps its state.
  bool same_meaning(const Budget& other) const;
  bool operator==(const Budget&) const = default;
};

}  // namespace tally::budgets
