#pragma once
// Wiring: the node's budgets (agent/budgets) kept from the ledger, and what they decide written where clients read
// it (docs/budgets.md). Each pass, for every live client segment: the admission word of each label set (the
// strongest action in force on it, or DENY when its budget has nothing left to grant it), and the allowance of
// each label set a budget with a hard limit governs, topped up so that what all clients may still spend never
// exceeds what is left. Every crossing, lift and release is a QuotaEvent on the feed and a journal entry.

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/budgets/engine.hpp"
#include "agent/config/config.hpp"
#include "agent/freezer/freezer.hpp"
#include "agent/ledger/ledger.hpp"
#include "agent/tallyd/client_usage.hpp"
#include "shm/segments/metering.hpp"
#include "tally/v1/event.pb.h"

namespace tally::agent {

v1::QuotaEvent to_proto(const budgets::BudgetEvent& event);
// "budget team-a (team=a): hard limit reached: 1000030 of 1000000 tokens_out this day (2026-12-02 00:00 to ...):
// deny".
std::string describe(const v1::QuotaEvent& event);
// TALLY_BUDGET, TALLY_QUOTA_EVENT, TALLY_ACTION, TALLY_SELECTOR, TALLY_RESOURCE, TALLY_USED, TALLY_LIMIT,
// TALLY_OVERSHOOT, TALLY_WINDOW, TALLY_WINDOW_START, TALLY_WINDOW_END and TALLY_WORKLOAD where it has one.
std::vector<std::string> journal_fields(const v1::QuotaEvent& event);

// What carries out the actions that reach past the clients' control files. Either may be absent: the action then
// fails, audited, with the reason.
struct Actuators {
  freezer::Freezer* freezer = nullptr;  // freeze
  // revoke-gpu: the workloads whose GPU access is withdrawn now (the whole set, each call); the error says why not.
  std::function<Result<void>(const std::set<std::string>&)> revoke_gpu;
  // preempt: the workloads holding each GPU now (by GPU), from GPU accounting; absent: no GPU is ever shared.
  std::function<std::map<std::string, std::set<std::string>>()> gpu_holders;
};

class BudgetEnforcement {
 public:
  using Emit = std::function<void(const v1::QuotaEvent&)>;
  BudgetEnforcement(ledger::Ledger& ledger, Emit emit, Actuators actuators = {})
      : ledger_(ledger), emit_(std::move(emit)), actuators_(std::move(actuators)) {}

  // Applies [quota] and [[budgets]] (at start and on reload), logging what changed. An unknown time zone is an
  // error and changes nothing.
  Result<void> configure(const QuotaSection& quota, budgets::Seconds now);
  // Once, after the ledger was restored: usage and actions as they were saved with it.
  void start(budgets::Seconds now);
  // One pass: what the ledger counted since the last one, then decisions and allowances for every live segment.
  void pass(const shm::MeteringSource* metering, const ClientUsage* clients, budgets::Seconds now);
  // Into the ledger's cursors, so that the next checkpoint holds the budgets with the totals they counted, and the
  // workloads this agent froze or cut off from their GPUs (a restarted agent undoes what is no longer in force).
  void save();
  // The workloads whose GPU access the budgets withdrew (as restored at start, then as in force).
  std::set<std::string> gpu_revoked() const;

  bool configured() const { return !engine_.budgets().empty(); }
  // Some budget has a hard limit on a resource clients reserve: a label set's reservations wait for the agent.
  bool governs_reservations() const;
  nlohmann::json show(budgets::Seconds now);
  // `tallyctl release`: the events it made, or why nothing was released.
  Result<void> release(const std::string& workload, const std::string& budget, budgets::Seconds now);

 private:
  struct Holding {  // one label set of one segment under an allowance
    std::uint64_t committed = 0;  // as read at the last pass: its pace is what it committed since
    bool known = false;
  };
  struct SegmentHoldings {
    std::uint64_t pass = 0;  // the last pass that saw the segment live
    std::vector<Holding> by_handle;
    bool pending = false;  // its handles not read yet hold kAllowancePending
  };
  // One action on whole workloads (freeze, revoke-gpu): what this agent did, by workload.
  struct Imposed {
    std::string budget;           // the budget that wanted it ("" : restored from the checkpoint)
    budgets::Action action = budgets::Action::freeze;  // freeze or preempt (frozen_); revoke-gpu (revoked_)
    bool done = false;            // carried out (and not undone)
    budgets::Seconds tried{};     // the last attempt, done or not
    std::string failure;          // the last attempt's error, reported once
  };
  void emit(const budgets::BudgetEvent& event);
  void act(budgets::Seconds now);
  // A workload to freeze: by which budget, for which action, and why (preempt: by whom, on which GPU).
  struct Wanted {
    std::string budget;
    budgets::Action action = budgets::Action::freeze;
    std::string why;
  };
  void freeze(const std::map<std::string, Wanted>& wanted, budgets::Seconds now);
  // preempt: the workload of a higher priority that shares one of `workload`'s GPUs, and where ("" : none).
  std::string preempted_by(const std::string& workload,
                           const std::map<std::string, std::set<std::string>>& holders) const;
  void revoke(const std::map<std::string, std::string>& wanted, budgets::Seconds now);
  // An applied, undone or failed event of `action` on `workload`.
  void report(budgets::BudgetEvent::Kind kind, budgets::Action action, const std::string& budget,
              const std::string& workload, const std::string& detail, budgets::Seconds now);
  void write_segments(const shm::MeteringSource& metering, const ClientUsage& clients, budgets::Seconds now);

  ledger::Ledger& ledger_;
  Emit emit_;
  Actuators actuators_;
  budgets::BudgetEngine engine_;
  std::map<std::string, Imposed> frozen_, revoked_;  // by workload
  std::map<std::string, std::int64_t> priorities_;    // [quota] priorities
  // By segment name.
  std::unordered_map<std::string, SegmentHoldings> holdings_;
  std::uint64_t pass_ = 0;
  bool wrote_ = false;  // decisions or allowances were written: cleared when the last budget goes
};

}  // namespace tally::agent
