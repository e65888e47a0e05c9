#include "agent/budgets/engine.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "shm/format/segment_format.hpp"
#include "tally/client.h"

namespace tally::budgets {
namespace {

constexpr std::string_view kCursorPrefix = "budget:";

// Keeps state across a reload when the pool is the same: who, what and over which window.
bool same_pool(const Budget& a, const Budget& b) {
  return a.name == b.name && a.select == b.select && a.resource == b.resource && a.window == b.window;
}

// A stable digest of what makes a pool, so that state saved for another pool of the same name is not restored.
std::uint64_t pool_digest(const Budget& budget) {
  const std::string text = fmt::format("{}\n{}\n{}\n{}", budget.name, to_string(budget.select), budget.resource.name,
                                       to_string(budget.window));
  std::uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a
  for (unsigned char c : text) hash = (hash ^ c) * 0x100000001b3ULL;
  return hash;
}

std::string cursor(const Budget& budget, std::string_view field) {
  return fmt::format("{}{}:{}", kCursorPrefix, budget.name, field);
}

std::uint8_t strength(Action action) {
  switch (action) {
    case Action::deny: return 3;
    case Action::degrade: return 2;
    case Action::throttle: return 1;
    default: return 0;
  }
}

std::string describe(const Budget& b) {
  return fmt::format("{} ({}: {} per {}, soft {}, hard {}, action {})", b.name,
                     to_string(b.select).empty() ? "every workload" : to_string(b.select), b.resource.name,
                     to_string(b.window), b.soft ? fmt::format("{}", *b.soft) : "none",
                     b.hard ? fmt::format("{}", *b.hard) : "none", to_string(b.action));
}

}  // namespace

std::string_view to_string(BudgetEvent::Kind kind) {
  switch (kind) {
    case BudgetEvent::Kind::soft_reached: return "soft_reached";
    case BudgetEvent::Kind::hard_reached: return "hard_reached";
    case BudgetEvent::Kind::lifted: return "lifted";
    case BudgetEvent::Kind::released: return "released";
    case BudgetEvent::Kind::applied: return "applied";
    case BudgetEvent::Kind::undone: return "undone";
    case BudgetEvent::Kind::failed: return "failed";
  }
  return "lifted";
}

BudgetEngine::Reconfigured BudgetEngine::configure(std::vector<Budget> budgets, const date::time_zone& zone,
                                                   Seconds now) {
  Reconfigured result;
  std::vector<std::string>& changes = result.changes;
  const bool zone_changed = zone_ != nullptr && zone_ != &zone;
  if (zone_changed) changes.push_back(fmt::format("time zone {} (was {}): every window starts again", zone.name(), zone_->name()));
  std::vector<State> next;
  for (Budget& budget : budgets) {
    State state;
    auto old = std::find_if(states_.begin(), states_.end(), [&](const State& s) { return s.budget.name == budget.name; });
    const Limits limits{budget.soft, budget.hard};
    state.usage = std::make_unique<BudgetUsage>(budget.window, zone, limits);
    if (old != states_.end() && !zone_changed && same_pool(old->budget, budget)) {
      // The same pool: its usage goes on under the new limits.
      state.released = old->released;
      state.budget = budget;
      for (const Crossing& crossing : state.usage->restore(old->usage->save(), now)) {
        add_event(result.events, state, crossing);
      }
      if (!(old->budget == budget)) changes.push_back(fmt::format("changed: {} (usage kept)", describe(budget)));
    } else if (old != states_.end()) {
      changes.push_back(fmt::format("changed: {} (a new pool: usage starts from nothing)", describe(budget)));
    } else if (zone_ != nullptr) {
      changes.push_back(fmt::format("added: {}", describe(budget)));
    }
    state.budget = std::move(budget);
    next.push_back(std::move(state));
  }
  for (const State& old : states_) {
    const bool kept = std::any_of(next.begin(), next.end(), [&](const State& s) { return s.budget.name == old.budget.name; });
    if (!kept) changes.push_back(fmt::format("removed: {} (what it put in force is lifted)", old.budget.name));
  }
  states_ = std::move(next);
  budgets_.clear();
  for (const State& s : states_) budgets_.push_back(s.budget);
  zone_ = &zone;
  counts_.assign(states_.size(), {});
  ++generation_;
  return result;
}

std::vector<BudgetEvent> BudgetEngine::start(const ledger::Ledger& ledger, Seconds now) {
  // Everything the ledger holds now was counted before: it is the baseline.
  for (const auto& [id, workload] : ledger.workloads()) {
    for (const auto& [text, label_set] : workload->label_sets) {
      Seen& s = seen(*label_set);
      s.version = label_set->version;
      s.totals.clear();
      for (const auto& counter : label_set->counters) s.totals.push_back(counter.total);
    }
  }
  std::vector<BudgetEvent> events;
  const auto& cursors = ledger.cursors();
  const auto value = [&](const std::string& key) -> std::optional<std::uint64_t> {
    auto it = cursors.find(key);
    if (it == cursors.end()) return std::nullopt;
    return it->second;
  };
  for (State& state : states_) {
    const Budget& b = state.budget;
    if (value(cursor(b, "pool")) != pool_digest(b)) continue;
    SavedUsage saved;
    saved.window_start = static_cast<std::int64_t>(value(cursor(b, "window_start")).value_or(0));
    saved.used = value(cursor(b, "used")).value_or(0);
    const std::uint64_t flags = value(cursor(b, "flags")).value_or(0);
    saved.soft_reached = (flags & 1) != 0;
    saved.hard_reached = (flags & 2) != 0;
    const std::string bucket_prefix = cursor(b, "bucket:");
    for (auto it = cursors.lower_bound(bucket_prefix); it != cursors.end() && it->first.starts_with(bucket_prefix); ++it) {
      const std::string_view epoch = std::string_view(it->first).substr(bucket_prefix.size());
      saved.buckets.emplace_back(std::stoll(std::string(epoch)), it->second);
    }
    const std::string released_prefix = cursor(b, "released:");
    for (auto it = cursors.lower_bound(released_prefix); it != cursors.end() && it->first.starts_with(released_prefix);
         ++it) {
      state.released.insert(it->first.substr(released_prefix.size()));
    }
    for (const Crossing& crossing : state.usage->restore(saved, now)) add_event(events, state, crossing);
  }
  return events;
}

BudgetEngine::Seen& BudgetEngine::seen(const ledger::LabelSet& label_set) {
  Seen& s = seen_[label_set.serial];
  s.pass = pass_;
  if (s.matching_generation != generation_) {
    s.matching.clear();
    for (std::size_t i = 0; i < states_.size(); ++i) {
      const Selector& select = states_[i].budget.select;
      if (!select.workload.empty() && label_set.workload->identity.id != select.workload) continue;
      const bool all = std::all_of(select.labels.begin(), select.labels.end(), [&](const auto& wanted) {
        return std::find(label_set.labels.begin(), label_set.labels.end(), wanted) != label_set.labels.end();
      });
      if (all && !label_set.refused) s.matching.push_back(i);
    }
    s.matching_generation = generation_;
  }
  return s;
}

const std::vector<std::size_t>& BudgetEngine::matching(const ledger::LabelSet& label_set) {
  return seen(label_set).matching;
}

bool BudgetEngine::counts(std::size_t index, const ledger::Ledger& ledger, ledger::CounterId counter) {
  auto& known = counts_[index];
  if (counter >= known.size()) known.resize(counter + 1, -1);
  if (known[counter] < 0) {
    const ledger::CounterKey& key = ledger.key(counter);
    bool yes = false;
    for (const Resource::Term& term : states_[index].budget.resource.terms) {
      const bool name = term.prefix ? key.name == term.counter || key.name.starts_with(term.counter + ":")
                                    : key.name == term.counter;
      yes = yes || (!key.gauge && name && (term.sources & (1u << static_cast<unsigned>(key.source))) != 0);
    }
    known[counter] = yes ? 1 : 0;
  }
  return known[counter] == 1;
}

std::vector<BudgetEvent> BudgetEngine::update(const ledger::Ledger& ledger, Seconds now) {
  ++pass_;
  for (State& state : states_) state.pending = 0;
  for (const auto& [id, workload] : ledger.workloads()) {
    for (const auto& [text, label_set] : workload->label_sets) {
      Seen& s = seen(*label_set);
      if (s.version == label_set->version && !s.totals.empty()) continue;
      s.version = label_set->version;
      if (s.totals.size() < label_set->counters.size()) s.totals.resize(label_set->counters.size(), 0);
      for (std::size_t slot = 0; slot < label_set->counters.size(); ++slot) {
        const ledger::Counter& counter = label_set->counters[slot];
        const std::uint64_t before = s.totals[slot];
        if (counter.total <= before) continue;
        s.totals[slot] = counter.total;
        for (std::size_t index : s.matching) {
          if (counts(index, ledger, counter.id)) states_[index].pending += counter.total - before;
        }
      }
    }
  }
  std::erase_if(seen_, [&](const auto& entry) { return entry.second.pass != pass_; });
  std::vector<BudgetEvent> events;
  for (State& state : states_) {
    for (const Crossing& crossing : state.usage->record(state.pending, now)) {
      if (crossing.kind == Crossing::Kind::lifted) state.released.clear();
      add_event(events, state, crossing);
    }
  }
  return events;
}

void BudgetEngine::add_event(std::vector<BudgetEvent>& events, const State& state, const Crossing& crossing) {
  BudgetEvent::Kind kind = BudgetEvent::Kind::soft_reached;
  switch (crossing.kind) {
    case Crossing::Kind::soft_reached: kind = BudgetEvent::Kind::soft_reached; break;
    case Crossing::Kind::hard_reached: kind = BudgetEvent::Kind::hard_reached; break;
    case Crossing::Kind::lifted: kind = BudgetEvent::Kind::lifted; break;
  }
  events.push_back(event_of(state, kind, crossing.used, crossing.limit, crossing.window));
}

BudgetEvent BudgetEngine::event_of(const State& state, BudgetEvent::Kind kind, std::uint64_t used, std::uint64_t limit,
                                   const CalendarWindow& window) {
  const Budget& b = state.budget;
  BudgetEvent event;
  event.kind = kind;
  event.budget = b.name;
  event.selector = to_string(b.select);
  event.resource = b.resource.name;
  event.window_spec = to_string(b.window);
  event.action = kind == BudgetEvent::Kind::soft_reached ? Action::notify : b.action;
  event.used = used;
  event.limit = limit;
  if (b.hard && used > *b.hard) event.overshoot = used - *b.hard;
  event.window = window;
  return event;
}

void BudgetEngine::save(ledger::Ledger& ledger) const {
  std::set<std::string> names;
  for (const State& state : states_) {
    const Budget& b = state.budget;
    names.insert(b.name);
    const SavedUsage saved = state.usage->save();
    // Buckets and releases come and go: the budget's keys are written afresh when they changed.
    std::map<std::string, std::uint64_t> keys{
        {cursor(b, "pool"), pool_digest(b)},
        {cursor(b, "window_start"), static_cast<std::uint64_t>(saved.window_start)},
        {cursor(b, "used"), saved.used},
        {cursor(b, "flags"), (saved.soft_reached ? 1u : 0u) | (saved.hard_reached ? 2u : 0u)}};
    for (const auto& [epoch, amount] : saved.buckets) keys[cursor(b, fmt::format("bucket:{}", epoch))] = amount;
    for (const auto& workload : state.released) keys[cursor(b, "released:" + workload)] = 1;
    const std::string prefix = cursor(b, "");
    std::map<std::string, std::uint64_t> present;
    const auto& cursors = ledger.cursors();
    for (auto it = cursors.lower_bound(prefix); it != cursors.end() && it->first.starts_with(prefix); ++it) {
      present.emplace(it->first, it->second);
    }
    if (present == keys) continue;
    ledger.erase_cursors(prefix);
    for (const auto& [key, value] : keys) ledger.set_cursor(key, value);
  }
  // Budgets no longer configured: their state goes.
  std::set<std::string> gone;
  for (auto it = ledger.cursors().lower_bound(kCursorPrefix);
       it != ledger.cursors().end() && it->first.starts_with(kCursorPrefix); ++it) {
    const std::string_view rest = std::string_view(it->first).substr(kCursorPrefix.size());
    const std::string name(rest.substr(0, rest.find(':')));
    if (!names.contains(name)) gone.insert(name);
  }
  for (const auto& name : gone) ledger.erase_cursors(fmt::format("{}{}:", kCursorPrefix, name));
}

bool BudgetEngine::in_force(const State& state, const ledger::LabelSet& label_set) const {
  return state.usage->hard_reached() && !state.released.contains(label_set.workload->identity.id);
}

std::map<std::string, std::string> BudgetEngine::workloads_under(Action action, const ledger::Ledger& ledger) {
  std::map<std::string, std::string> out;
  const bool any = std::any_of(states_.begin(), states_.end(), [&](const State& s) {
    return s.budget.action == action && s.usage->hard_reached();
  });
  if (!any) return out;
  for (const auto& [id, workload] : ledger.workloads()) {
    for (const auto& [text, label_set] : workload->label_sets) {
      for (std::size_t index : matching(*label_set)) {
        const State& state = states_[index];
        if (state.budget.action == action && in_force(state, *label_set)) out.emplace(id, state.budget.name);
      }
    }
  }
  return out;
}

std::optional<BudgetEvent> BudgetEngine::event_for(std::string_view name, BudgetEvent::Kind kind, Seconds now) {
  for (State& state : states_) {
    if (state.budget.name != name) continue;
    return event_of(state, kind, state.usage->used(now), state.budget.hard.value_or(0), state.usage->window_at(now));
  }
  return std::nullopt;
}

Verdict BudgetEngine::verdict(const ledger::LabelSet& label_set) {
  Verdict verdict;
  std::uint8_t strongest = 0;
  for (std::size_t index : matching(label_set)) {
    const State& state = states_[index];
    const std::uint8_t s = strength(state.budget.action);
    if (s <= strongest || !in_force(state, label_set)) continue;
    strongest = s;
    verdict.budget = &state.budget;
    switch (state.budget.action) {
      case Action::deny: verdict.decision = TALLY_DENY; break;
      case Action::degrade: verdict.decision = TALLY_DEGRADE; break;
      default: verdict.decision = TALLY_THROTTLE; break;
    }
    verdict.reason = TALLY_REASON_BUDGET;
    if (state.budget.action == Action::degrade) verdict.reason |= state.budget.degrade_max_tokens << 8;
  }
  return verdict;
}

std::optional<std::uint64_t> BudgetEngine::remaining(std::size_t index, Seconds now) {
  return states_[index].usage->remaining(now);
}

std::uint64_t BudgetEngine::used(std::size_t index, Seconds now) { return states_[index].usage->used(now); }

Result<std::vector<BudgetEvent>> BudgetEngine::release(const ledger::Ledger& ledger, std::string_view workload,
                                                       std::string_view budget, Seconds now) {
  const auto it = ledger.workloads().find(std::string(workload));
  const ledger::Workload* found = it == ledger.workloads().end() ? nullptr : it->second.get();
  if (found == nullptr) return make_error(ErrorCode::not_found, "no workload '{}' on this node", workload);
  std::vector<BudgetEvent> events;
  bool named = budget.empty();
  for (std::size_t index = 0; index < states_.size(); ++index) {
    State& state = states_[index];
    if (!budget.empty() && state.budget.name != budget) continue;
    named = true;
    if (!state.usage->hard_reached() || state.budget.action == Action::notify) continue;
    // Only a budget that selects some label set of the workload has anything in force on it.
    const bool selects = std::any_of(found->label_sets.begin(), found->label_sets.end(), [&](const auto& entry) {
      const auto& indexes = matching(*entry.second);
      return std::find(indexes.begin(), indexes.end(), index) != indexes.end();
    });
    if (!selects) continue;
    if (!state.released.insert(std::string(workload)).second) continue;
    BudgetEvent event = event_of(state, BudgetEvent::Kind::released, state.usage->used(now),
                                 state.budget.hard.value_or(0), state.usage->window_at(now));
    event.workload = std::string(workload);
    events.push_back(std::move(event));
  }
  if (!named) return make_error(ErrorCode::not_found, "no budget is named '{}'", budget);
  if (events.empty()) {
    return make_error(ErrorCode::not_found, "nothing is in force on '{}'{}", workload,
                      budget.empty() ? "" : fmt::format(" by budget '{}'", budget));
  }
  return events;
}

nlohmann::json BudgetEngine::show(Seconds now) {
  nlohmann::json out = nlohmann::json::array();
  for (State& state : states_) {
    const Budget& b = state.budget;
    const CalendarWindow window = state.usage->window_at(now);
    nlohmann::json entry{{"name", b.name},
                         {"select", to_string(b.select)},
                         {"resource", b.resource.name},
                         {"scale", b.resource.scale},
                         {"window", to_string(b.window)},
                         {"window_start", window.start.time_since_epoch().count()},
                         {"window_end", window.end.time_since_epoch().count()},
                         {"used", state.usage->used(now)},
                         {"action", to_string(b.action)},
                         {"in_force", state.usage->hard_reached() && b.action != Action::notify},
                         {"released", state.released},
                         {"origin", b.origin}};
    if (b.soft) entry["soft"] = *b.soft;
    if (b.hard) {
      entry["hard"] = *b.hard;
      entry["remaining"] = *state.usage->remaining(now);
    }
    out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace tally::budgets
