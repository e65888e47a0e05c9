#pragma once
// The budgets of a node, kept from the ledger (docs/budgets.md). Each pass adds what the ledger counted since the
// last one to every budget whose selector matches the label set it was counted under: a budget is one pool for
// everything it selects. It answers what is in force for a label set (the strongest action of the budgets over
// their hard limit that match it, unless an operator released its workload), and saves its state into the
// ledger's cursors, so that the checkpoint makes usage and the totals it counted durable together.
//
// Runs on the agent's event loop. Time is given, never read (tests inject theirs).

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/budgets/budget.hpp"
#include "agent/budgets/usage.hpp"
#include "agent/ledger/ledger.hpp"

namespace tally::budgets {

// What a budget did, for the feed and the journal.
struct BudgetEvent {
  // applied, undone, failed: what the agent did to a workload's cgroup or GPU access (freeze, revoke-gpu).
  enum class Kind { soft_reached, hard_reached, lifted, released, applied, undone, failed };
  Kind kind = Kind::soft_reached;
  std::string budget, selector, resource, window_spec;
  Action action = Action::notify;
  std::uint64_t used = 0, limit = 0;  // in counter units
  std::uint64_t overshoot = 0;        // usage past the hard limit (commits above their reservation, late counts)
  CalendarWindow window;
  std::string workload;  // released: whose action was lifted; applied, undone, failed: whom it concerns
  std::string detail;    // applied, undone, failed: how, or why not
};
std::string_view to_string(BudgetEvent::Kind kind);

// The admission a label set should see: tally_decision and its reason word (decision_word()).
struct Verdict {
  std::uint8_t decision = 0;  // TALLY_ALLOW
  std::uint32_t reason = 0;
  const Budget* budget = nullptr;  // the budget that decided, if any
};

class BudgetEngine {
 public:
  BudgetEngine() = default;

  // Replaces the budgets. One with the same name, selector, resource and window keeps its usage (its limits and
  // action may change: the crossings that causes are returned); any other starts from nothing.
  struct Reconfigured {
    std::vector<std::string> changes;  // what changed, a line each, for the log
    std::vector<BudgetEvent> events;
  };
  Reconfigured configure(std::vector<Budget> budgets, const date::time_zone& zone, Seconds now);

  // Once, after the ledger was restored and before any source adds to it: what the ledger holds now was counted
  // by the usage saved with it, which is restored. Returns the crossings restoring caused (a window that ended
  // while the agent was down).
  std::vector<BudgetEvent> start(const ledger::Ledger& ledger, Seconds now);

  // Adds what the ledger counted since the last pass and returns the crossings, in order.
  std::vector<BudgetEvent> update(const ledger::Ledger& ledger, Seconds now);

  // Writes every budget's state into the ledger's cursors ("budget:<name>:…"), and removes those of budgets gone.
  void save(ledger::Ledger& ledger) const;

  // What is in force for this label set: deny over degrade over throttle.
  Verdict verdict(const ledger::LabelSet& label_set);

  // The workloads on which a budget with `action` is in force (it selects some label set of theirs, is over its
  // hard limit, and no operator released them), each with the first such budget's name. What freeze and revoke-gpu
  // act on: a whole workload, never one label set of it.
  std::map<std::string, std::string> workloads_under(Action action, const ledger::Ledger& ledger);
  // An event about budget `name` (its fields as now), e.g. an action carried out; nullopt if no such budget.
  std::optional<BudgetEvent> event_for(std::string_view name, BudgetEvent::Kind kind, Seconds now);

  // The budgets (indexes) that select this label set.
  const std::vector<std::size_t>& matching(const ledger::LabelSet& label_set);
  const std::vector<Budget>& budgets() const { return budgets_; }
  // What budget `index` has left under its hard limit at `now` (nullopt: no hard limit).
  std::optional<std::uint64_t> remaining(std::size_t index, Seconds now);
  std::uint64_t used(std::size_t index, Seconds now);

  // `tallyctl release WORKLOAD [--budget NAME]`: lifts the actions in force on the workload's label sets for the
  // rest of the current window. The error says why nothing was released.
  Result<std::vector<BudgetEvent>> release(const ledger::Ledger& ledger, std::string_view workload,
                                           std::string_view budget, Seconds now);

  // For `tallyctl quota`: every budget with its usage, remaining, window and what is in force.
  nlohmann::json show(Seconds now);

 private:
  struct State {
    Budget budget;
    std::unique_ptr<BudgetUsage> usage;
    std::set<std::string> released;  // workloads whose action is lifted until the window ends
    std::uint64_t pending = 0;       // counted in this pass
  };
  struct Seen {
    std::uint64_t version = 0;
    std::vector<std::uint64_t> totals;  // by counter slot
    std::uint64_t pass = 0;
    std::vector<std::size_t> matching;
    std::uint64_t matching_generation = 0;
  };
  bool counts(std::size_t index, const ledger::Ledger& ledger, ledger::CounterId counter);
  void add_event(std::vector<BudgetEvent>& events, const State& state, const Crossing& crossing);
  // An event about `state`'s budget: the one place its fields are filled (overshoot: usage past the hard limit).
  static BudgetEvent event_of(const State& state, BudgetEvent::Kind kind, std::uint64_t used, std::uint64_t limit,
                              const CalendarWindow& window);
  bool in_force(const State& state, const ledger::LabelSet& label_set) const;
  Seen& seen(const ledger::LabelSet& label_set);

  std::vector<State> states_;
  std::vector<Budget> budgets_;
  const date::time_zone* zone_ = nullptr;
  std::unordered_map<std::uint64_t, Seen> seen_;  // by label set serial
  std::vector<std::vector<std::int8_t>> counts_;  // [budget][counter id]: -1 unknown, 0 no, 1 yes
  std::uint64_t pass_ = 0;
  std::uint64_t generation_ = 1;  // of the budgets: matching is computed again after configure()
  std::set<std::string> saved_names_;
};

}  // namespace tally::budgets
