#include "agent/tallyd/budget_enforcement.hpp"

#include <algorithm>

#include <date/date.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "agent/base/logging.hpp"
#include "agent/budgets/allowance.hpp"
#include "shm/format/segment_format.hpp"
#include "shm/segments/segment_file.hpp"
#include "tally/client.h"

namespace tally::agent {
namespace {

namespace fmt_ns = shm::format;
using budgets::BudgetEvent;

// An action that failed is tried again this often (a workload's cgroup may appear, a device policy load); one
// carried out is applied again as often, silently (a unit restarted into a new cgroup is frozen again).
constexpr std::chrono::seconds kRetryInterval{10};
constexpr std::chrono::seconds kReapplyInterval{5};
// The ledger cursors that remember what this agent did to whole workloads: "action:freeze:<workload>".
constexpr std::string_view kFrozenCursor = "action:freeze:";
constexpr std::string_view kRevokedCursor = "action:revoke-gpu:";

// A client may write anything into its own entries: what is read from them stays far from the word's bounds.
constexpr std::uint64_t kClientValueBound = fmt_ns::kAllowanceAmountMask / 4;

std::string kind_name(v1::QuotaEvent::Kind kind) {
  std::string name = v1::QuotaEvent::Kind_Name(kind);
  if (name.starts_with("KIND_")) name.erase(0, 5);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

std::string time_of(std::int64_t unix_s) {
  return date::format("%F %T UTC", budgets::Seconds(std::chrono::seconds(unix_s)));
}

}  // namespace

v1::QuotaEvent to_proto(const BudgetEvent& e) {
  v1::QuotaEvent out;
  switch (e.kind) {
    case BudgetEvent::Kind::soft_reached: out.set_kind(v1::QuotaEvent::KIND_SOFT_REACHED); break;
    case BudgetEvent::Kind::hard_reached: out.set_kind(v1::QuotaEvent::KIND_HARD_REACHED); break;
    case BudgetEvent::Kind::lifted: out.set_kind(v1::QuotaEvent::KIND_LIFTED); break;
    case BudgetEvent::Kind::released: out.set_kind(v1::QuotaEvent::KIND_RELEASED); break;
    case BudgetEvent::Kind::applied: out.set_kind(v1::QuotaEvent::KIND_APPLIED); break;
    case BudgetEvent::Kind::undone: out.set_kind(v1::QuotaEvent::KIND_UNDONE); break;
    case BudgetEvent::Kind::failed: out.set_kind(v1::QuotaEvent::KIND_FAILED); break;
  }
  out.set_budget(e.budget);
  out.set_selector(e.selector);
  out.set_resource(e.resource);
  out.set_window(e.window_spec);
  out.set_action(std::string(budgets::to_string(e.action)));
  out.set_used(e.used);
  out.set_limit(e.limit);
  out.set_overshoot(e.overshoot);
  out.set_window_start_unix_s(e.window.start.time_since_epoch().count());
  out.set_window_end_unix_s(e.window.end.time_since_epoch().count());
  out.set_workload(e.workload);
  out.set_detail(e.detail);
  return out;
}

std::string describe(const v1::QuotaEvent& e) {
  const std::string head =
      fmt::format("budget {} ({})", e.budget(), e.selector().empty() ? "every workload" : e.selector());
  const std::string usage = fmt::format("{} of {} {} in the {} window {} to {}", e.used(), e.limit(), e.resource(),
                                        e.window(), time_of(e.window_start_unix_s()), time_of(e.window_end_unix_s()));
  const std::string overshoot = e.overshoot() != 0 ? fmt::format(" ({} over)", e.overshoot()) : "";
  switch (e.kind()) {
    case v1::QuotaEvent::KIND_SOFT_REACHED: return fmt::format("{}: soft limit reached: {}", head, usage);
    case v1::QuotaEvent::KIND_HARD_REACHED:
      return fmt::format("{}: hard limit reached: {}{}: {}", head, usage, overshoot, e.action());
    case v1::QuotaEvent::KIND_LIFTED: return fmt::format("{}: {} lifted: {}{}", head, e.action(), usage, overshoot);
    case v1::QuotaEvent::KIND_RELEASED:
      return fmt::format("{}: {} released for {} until the window ends: {}", head, e.action(), e.workload(), usage);
    case v1::QuotaEvent::KIND_APPLIED:
      return fmt::format("{}: {} carried out on {}: {}; {}", head, e.action(), e.workload(), e.detail(), usage);
    case v1::QuotaEvent::KIND_UNDONE:
      return fmt::format("{}: {} undone on {}: {}", head, e.action(), e.workload(), e.detail());
    case v1::QuotaEvent::KIND_FAILED:
      return fmt::format("{}: {} could not be carried out on {}: {}", head, e.action(), e.workload(), e.detail());
    default: return fmt::format("{}: {}", head, usage);
  }
}

std::vector<std::string> journal_fields(const v1::QuotaEvent& e) {
  std::vector<std::string> fields{
      fmt::format("TALLY_BUDGET={}", e.budget()),
      fmt::format("TALLY_QUOTA_EVENT={}", kind_name(e.kind())),
      fmt::format("TALLY_ACTION={}", e.action()),
      fmt::format("TALLY_SELECTOR={}", e.selector()),
      fmt::format("TALLY_RESOURCE={}", e.resource()),
      fmt::format("TALLY_USED={}", e.used()),
      fmt::format("TALLY_LIMIT={}", e.limit()),
      fmt::format("TALLY_OVERSHOOT={}", e.overshoot()),
      fmt::format("TALLY_WINDOW={}", e.window()),
      fmt::format("TALLY_WINDOW_START={}", e.window_start_unix_s()),
      fmt::format("TALLY_WINDOW_END={}", e.window_end_unix_s())};
  if (!e.workload().empty()) fields.push_back(fmt::format("TALLY_WORKLOAD={}", e.workload()));
  if (!e.detail().empty()) fields.push_back(fmt::format("TALLY_DETAIL={}", e.detail()));
  return fields;
}

Result<void> BudgetEnforcement::configure(const QuotaSection& quota, budgets::Seconds now) {
  auto zone = budgets::find_time_zone(quota.time_zone);
  if (!zone) return zone.error();
  auto reconfigured = engine_.configure(quota.budgets, **zone, now);
  priorities_ = quota.priorities;
  for (const auto& change : reconfigured.changes) spdlog::info("budgets: {}", change);
  for (const auto& event : reconfigured.events) emit(event);
  return {};
}

bool BudgetEnforcement::governs_reservations() const {
  const auto& all = engine_.budgets();
  return std::any_of(all.begin(), all.end(), [](const budgets::Budget& b) { return b.hard && b.resource.client_counter; });
}

void BudgetEnforcement::start(budgets::Seconds now) {
  for (const auto& event : engine_.start(ledger_, now)) emit(event);
  // What an earlier agent did to whole workloads: the first pass keeps what is still in force and undoes the rest.
  const auto& cursors = ledger_.cursors();
  for (auto [prefix, imposed, action] : {std::tuple{kFrozenCursor, &frozen_, budgets::Action::freeze},
                                         std::tuple{kRevokedCursor, &revoked_, budgets::Action::revoke_gpu}}) {
    for (auto it = cursors.lower_bound(std::string(prefix)); it != cursors.end() && it->first.starts_with(prefix); ++it) {
      (*imposed)[it->first.substr(prefix.size())] = Imposed{"", action, true, {}, ""};
    }
  }
  if (!frozen_.empty() || !revoked_.empty()) {
    spdlog::info("budgets: {} workloads frozen and {} cut off from their GPUs by the agent before this one",
                 frozen_.size(), revoked_.size());
  }
  if (configured()) spdlog::info("budgets: {} in force", engine_.budgets().size());
}

void BudgetEnforcement::emit(const BudgetEvent& event) {
  const v1::QuotaEvent message = to_proto(event);
  const bool acts = (event.kind == BudgetEvent::Kind::hard_reached && event.action != budgets::Action::notify) ||
                    event.kind == BudgetEvent::Kind::applied || event.kind == BudgetEvent::Kind::failed;
  journal_entry(acts ? spdlog::level::warn : spdlog::level::info, describe(message), journal_fields(message));
  if (emit_) emit_(message);
}

void BudgetEnforcement::pass(const shm::MeteringSource* metering, const ClientUsage* clients, budgets::Seconds now) {
  if (!configured() && !wrote_ && frozen_.empty() && revoked_.empty()) return;
  ++pass_;
  for (const auto& event : engine_.update(ledger_, now)) emit(event);
  if (metering != nullptr && clients != nullptr) write_segments(*metering, *clients, now);
  act(now);
  wrote_ = configured();
}

void BudgetEnforcement::act(budgets::Seconds now) {
  using budgets::Action;
  std::map<std::string, Wanted> frozen;
  for (auto& [workload, budget] : engine_.workloads_under(Action::freeze, ledger_)) {
    frozen[workload] = Wanted{budget, Action::freeze, ""};
  }
  const auto preemptible = engine_.workloads_under(Action::preempt, ledger_);
  if (!preemptible.empty() && actuators_.gpu_holders) {
    const auto holders = actuators_.gpu_holders();
    for (const auto& [workload, budget] : preemptible) {
      if (frozen.contains(workload)) continue;
      if (std::string by = preempted_by(workload, holders); !by.empty()) frozen[workload] = Wanted{budget, Action::preempt, by};
    }
  }
  freeze(frozen, now);
  revoke(engine_.workloads_under(Action::revoke_gpu, ledger_), now);
}

std::string BudgetEnforcement::preempted_by(const std::string& workload,
                                            const std::map<std::string, std::set<std::string>>& holders) const {
  const auto priority = [&](const std::string& w) {
    const auto it = priorities_.find(w);
    return it == priorities_.end() ? std::int64_t{0} : it->second;
  };
  const std::int64_t mine = priority(workload);
  for (const auto& [gpu, on_it] : holders) {
    if (!on_it.contains(workload)) continue;
    for (const auto& other : on_it) {
      if (other != workload && priority(other) > mine) {
        return fmt::format("{} (priority {}, this one {}) on GPU {}", other, priority(other), mine, gpu);
      }
    }
  }
  return "";
}

void BudgetEnforcement::report(BudgetEvent::Kind kind, budgets::Action action, const std::string& budget,
                               const std::string& workload, const std::string& detail, budgets::Seconds now) {
  // A budget removed since (or one of the agent before a restart) still names the action.
  BudgetEvent event = engine_.event_for(budget, kind, now).value_or(BudgetEvent{});
  event.kind = kind;
  event.budget = budget;
  event.action = action;
  event.workload = workload;
  event.detail = detail;
  emit(event);
}

void BudgetEnforcement::freeze(const std::map<std::string, Wanted>& wanted, budgets::Seconds now) {
  using budgets::Action;
  const auto no_freezer = [] {
    return Result<freezer::Outcome>(make_error(ErrorCode::unsupported, "no cgroup v2 freezer on this node"));
  };
  for (const auto& [workload, want] : wanted) {
    Imposed& imposed = frozen_[workload];
    if (imposed.budget.empty() || !imposed.done) {
      imposed.budget = want.budget;
      imposed.action = want.action;
    }
    const auto since = now - imposed.tried;
    if (imposed.tried != budgets::Seconds{} && since < (imposed.done ? kReapplyInterval : kRetryInterval)) continue;
    const bool again = imposed.done;
    imposed.tried = now;
    auto frozen = actuators_.freezer != nullptr ? actuators_.freezer->freeze(workload) : no_freezer();
    if (!frozen) {
      if (imposed.failure != frozen.error().message) {
        imposed.failure = frozen.error().message;
        report(BudgetEvent::Kind::failed, imposed.action, imposed.budget, workload, imposed.failure, now);
      }
      continue;
    }
    imposed.done = true;
    imposed.failure.clear();
    if (again) continue;  // applied again: the event was given the first time
    std::string detail = fmt::format("frozen through {}: {}", frozen->via, fmt::join(frozen->cgroups, ", "));
    if (!want.why.empty()) detail += fmt::format("; for {}", want.why);
    if (!frozen->note.empty()) detail += fmt::format(" ({})", frozen->note);
    report(BudgetEvent::Kind::applied, imposed.action, imposed.budget, workload, detail, now);
  }
  for (auto it = frozen_.begin(); it != frozen_.end();) {
    if (wanted.contains(it->first)) {
      ++it;
      continue;
    }
    Imposed& imposed = it->second;
    if (!imposed.done) {  // never carried out: nothing to undo
      it = frozen_.erase(it);
      continue;
    }
    auto thawed = actuators_.freezer != nullptr ? actuators_.freezer->thaw(it->first) : no_freezer();
    if (!thawed) {
      if (imposed.failure != thawed.error().message) {
        imposed.failure = thawed.error().message;
        report(BudgetEvent::Kind::failed, imposed.action, imposed.budget, it->first, "cannot thaw: " + imposed.failure,
               now);
      }
      ++it;  // tried again at the next pass
      continue;
    }
    report(BudgetEvent::Kind::undone, imposed.action, imposed.budget, it->first,
           thawed->cgroups.empty() ? "no cgroup left to thaw"
                                   : fmt::format("thawed through {}: {}", thawed->via, fmt::join(thawed->cgroups, ", ")),
           now);
    it = frozen_.erase(it);
  }
}

void BudgetEnforcement::revoke(const std::map<std::string, std::string>& wanted, budgets::Seconds now) {
  using budgets::Action;
  std::set<std::string> in_force;
  for (const auto& [workload, imposed] : revoked_) {
    if (imposed.done) in_force.insert(workload);
  }
  std::set<std::string> next;
  for (const auto& entry : wanted) next.insert(entry.first);
  if (next == in_force) return;
  // Waiting out a failure, unless what is wanted changed since.
  const bool changed = std::any_of(wanted.begin(), wanted.end(), [&](const auto& e) { return !revoked_.contains(e.first); }) ||
                       std::any_of(revoked_.begin(), revoked_.end(), [&](const auto& e) { return !wanted.contains(e.first); });
  const bool waiting = std::any_of(revoked_.begin(), revoked_.end(), [&](const auto& e) {
    return !e.second.failure.empty() && now - e.second.tried < kRetryInterval;
  });
  if (waiting && !changed) return;
  for (const auto& [workload, budget] : wanted) {
    Imposed& imposed = revoked_[workload];
    imposed.action = Action::revoke_gpu;
    if (imposed.budget.empty()) imposed.budget = budget;
  }
  auto done = actuators_.revoke_gpu
                  ? actuators_.revoke_gpu(next)
                  : Result<void>(make_error(ErrorCode::unsupported, "no GPU device policy on this node"));
  for (auto it = revoked_.begin(); it != revoked_.end();) {
    Imposed& imposed = it->second;
    const bool wanted_now = next.contains(it->first);
    imposed.tried = now;
    if (!done) {
      if (imposed.failure != done.error().message) {
        imposed.failure = done.error().message;
        report(BudgetEvent::Kind::failed, Action::revoke_gpu, imposed.budget, it->first,
               (wanted_now ? "" : "cannot give GPU access back: ") + imposed.failure, now);
      }
      ++it;
      continue;
    }
    imposed.failure.clear();
    if (wanted_now && !imposed.done) {
      imposed.done = true;
      report(BudgetEvent::Kind::applied, Action::revoke_gpu, imposed.budget, it->first,
             "GPU access withdrawn: new opens of its GPUs fail; files already open stay open", now);
    } else if (!wanted_now) {
      if (imposed.done) {
        report(BudgetEvent::Kind::undone, Action::revoke_gpu, imposed.budget, it->first, "GPU access given back", now);
      }
      it = revoked_.erase(it);
      continue;
    }
    ++it;
  }
}

void BudgetEnforcement::save() {
  engine_.save(ledger_);
  for (auto [prefix, imposed] : {std::pair{kFrozenCursor, &frozen_}, std::pair{kRevokedCursor, &revoked_}}) {
    std::set<std::string> want, have;
    for (const auto& [workload, entry] : *imposed) {
      if (entry.done) want.insert(std::string(prefix) + workload);
    }
    const auto& cursors = ledger_.cursors();
    for (auto it = cursors.lower_bound(std::string(prefix)); it != cursors.end() && it->first.starts_with(prefix); ++it) {
      have.insert(it->first);
    }
    if (want == have) continue;
    ledger_.erase_cursors(std::string(prefix));
    for (const auto& key : want) ledger_.set_cursor(key, 1);
  }
}

std::set<std::string> BudgetEnforcement::gpu_revoked() const {
  std::set<std::string> out;
  for (const auto& [workload, imposed] : revoked_) {
    if (imposed.done) out.insert(workload);
  }
  return out;
}

void BudgetEnforcement::write_segments(const shm::MeteringSource& metering, const ClientUsage& clients,
                                       budgets::Seconds now) {
  // A label set of a segment under an allowance, as planned in this pass.
  struct Governed {
    const shm::Segment* segment = nullptr;
    std::uint32_t handle = 0;
    std::uint32_t counter = 0;
    std::vector<std::size_t> budgets;  // every budget with a hard limit on this counter that selects it
    budgets::Holder holder;
    std::uint64_t granted = UINT64_MAX;  // the least any of its budgets offers
    bool exhausted = false;              // some budget has nothing left for it
  };
  struct Decision {
    const shm::Segment* segment;
    std::uint32_t handle;
    budgets::Verdict verdict;
    std::size_t governed;  // index into `governed`, or SIZE_MAX
  };
  std::vector<Governed> governed;
  std::vector<Decision> decisions;
  const auto& all = engine_.budgets();
  const bool reservations = governs_reservations();
  metering.for_each_segment([&](const shm::Segment& segment) {
    if (!segment.control || !segment.reader) return;
    const auto label_sets = clients.label_sets(segment);
    SegmentHoldings& held = holdings_[segment.name];
    held.pass = pass_;
    auto& holdings = held.by_handle;
    holdings.resize(label_sets.size());
    if (held.pending != reservations) {
      // Budgets that govern reservations came or went (a reload, or the first pass over a segment): the handles
      // this agent has not read yet wait for it, or no longer.
      const std::uint64_t from = reservations ? 0 : fmt_ns::kAllowancePending;
      const std::uint64_t to = reservations ? fmt_ns::kAllowancePending : 0;
      const auto& header = *reinterpret_cast<const fmt_ns::ControlHeader*>(segment.control->bytes().data());
      for (auto handle = static_cast<std::uint32_t>(std::max<std::size_t>(label_sets.size(), 1));
           handle < fmt_ns::load_relaxed(header.label_capacity); ++handle) {
        if (shm::allowance(*segment.control, handle) == from) shm::set_allowance(*segment.control, handle, to);
      }
      held.pending = reservations;
    }
    for (std::uint32_t handle = 1; handle < label_sets.size(); ++handle) {
      const ledger::LabelSet* label_set = label_sets[handle];
      if (label_set == nullptr || (handle < segment.refused.size() && segment.refused[handle])) continue;
      Decision decision{&segment, handle, engine_.verdict(*label_set), SIZE_MAX};
      Governed g;
      g.segment = &segment;
      g.handle = handle;
      bool governs = false;
      for (std::size_t index : engine_.matching(*label_set)) {
        const budgets::Budget& b = all[index];
        if (!b.hard || !b.resource.client_counter) continue;
        if (!governs) g.counter = *b.resource.client_counter;
        governs = true;
        if (*b.resource.client_counter == g.counter) g.budgets.push_back(index);
      }
      Holding& hold = holdings[handle];
      const std::uint64_t word = shm::allowance(*segment.control, handle);
      if (!governs) {
        if (word != 0) shm::set_allowance(*segment.control, handle, 0);  // nothing governs it any more
        hold = Holding{};
        decisions.push_back(decision);
        continue;
      }
      const fmt_ns::BudgetEntry entry = segment.reader->budget_entry(handle);
      // As read with the counters the ledger holds now: every commit in it is in the budget's usage already.
      const std::uint64_t committed = std::min(segment.reader->committed(handle), kClientValueBound);
      const std::uint64_t spent = hold.known ? committed - std::min(hold.committed, committed) : 0;
      if (word != 0 && !fmt_ns::allowance_pending(word) && fmt_ns::allowance_counter(word) == g.counter) {
        // Granted before (by this agent, or by the one before a restart): what it may still commit is the grant
        // less what it committed.
        g.holder = {fmt_ns::allowance_granted(word), committed, spent};
      } else {
        // Newly governed (or on another counter): grants start from what it holds already, and what it holds
        // beyond what is counted (reserved, or committed since its counters were read) counts as out.
        const std::uint64_t base =
            std::max({std::min(entry.claimed, kClientValueBound), std::min(entry.committed, kClientValueBound), committed});
        g.holder = {base, committed, 0};
      }
      hold.committed = committed;
      hold.known = true;
      decision.governed = governed.size();
      governed.push_back(std::move(g));
      decisions.push_back(decision);
    }
  });
  // Segments gone: their allowances went back to their budgets with them.
  std::erase_if(holdings_, [&](const auto& entry) { return entry.second.pass != pass_; });
  // Each budget shares what it has left among the label sets it governs; a label set takes the least it is offered.
  for (std::size_t index = 0; index < all.size(); ++index) {
    const std::optional<std::uint64_t> remaining = engine_.remaining(index, now);
    if (!remaining) continue;
    std::vector<std::size_t> members;
    std::vector<budgets::Holder> holders;
    for (std::size_t i = 0; i < governed.size(); ++i) {
      if (std::find(governed[i].budgets.begin(), governed[i].budgets.end(), index) == governed[i].budgets.end()) continue;
      members.push_back(i);
      holders.push_back(governed[i].holder);
    }
    if (members.empty()) continue;
    const std::uint64_t granule = all[index].granule();
    const budgets::AllowancePlan plan = budgets::plan_allowances(*remaining, granule, holders);
    for (std::size_t k = 0; k < members.size(); ++k) {
      Governed& g = governed[members[k]];
      g.granted = std::min(g.granted, plan.granted[k]);
      const std::uint64_t exposure = plan.granted[k] - std::min(holders[k].committed, plan.granted[k]);
      if (plan.left == 0 && exposure < granule) g.exhausted = true;
    }
  }
  for (const Governed& g : governed) {
    const std::uint64_t granted = std::min(std::max(g.granted, g.holder.granted), fmt_ns::kAllowanceAmountMask);
    const std::uint64_t word = fmt_ns::allowance_word(g.counter, granted);
    if (shm::allowance(*g.segment->control, g.handle) != word) shm::set_allowance(*g.segment->control, g.handle, word);
  }
  for (const Decision& d : decisions) {
    std::uint8_t decision = d.verdict.decision;
    std::uint32_t reason = d.verdict.reason;
    if (d.governed != SIZE_MAX && governed[d.governed].exhausted) {
      decision = TALLY_DENY;  // nothing left to grant it: a cooperative client stops asking
      reason = TALLY_REASON_BUDGET;
    }
    shm::set_decision(*d.segment->control, d.handle, decision, reason);
  }
}

nlohmann::json BudgetEnforcement::show(budgets::Seconds now) {
  nlohmann::json shown = engine_.show(now);
  // Beside each budget: the workloads its action was carried out on, and those where it failed (and why).
  for (auto& entry : shown) {
    const std::string name = entry["name"];
    for (auto [key, imposed] : {std::pair{"frozen", &frozen_}, std::pair{"gpu_revoked", &revoked_}}) {
      for (const auto& [workload, i] : *imposed) {
        if (i.budget != name) continue;
        if (i.done) entry[key].push_back(workload);
        if (!i.failure.empty()) entry["failed"][workload] = i.failure;
      }
    }
  }
  return shown;
}

Result<void> BudgetEnforcement::release(const std::string& workload, const std::string& budget,
                                        budgets::Seconds now) {
  auto events = engine_.release(ledger_, workload, budget, now);
  if (!events) return events.error();
  for (const auto& event : *events) emit(event);
  return {};
}

}  // namespace tally::agent
