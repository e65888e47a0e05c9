#pragma once
// Allowances (docs/budgets.md): how much each client may still spend of a budget on its own, without asking. The
// agent grants them in advance into each client's control area; a client reserves from its allowance and commits
// what the work cost, all in shared memory. Each pass the agent tops them up, sized by what each client spent in
// the last pass, so that what all clients may still spend never exceeds what the budget has left:
//
//     used (the counters, the truth)  +  Σ exposure  <=  hard limit
//
// where a client's exposure is what it may still add through commits: granted minus committed (outstanding
// reservations included). Pure arithmetic: the caller reads the clients' words and writes the new grants.

#include <cstdint>
#include <span>
#include <vector>

namespace tally::budgets {

struct Holder {
  std::uint64_t granted = 0;    // cumulative, as the allowance word says now
  std::uint64_t committed = 0;  // as the client's entry said at the previous pass (older: never more than now)
  std::uint64_t spent = 0;      // committed since the pass before that: its pace
  std::uint64_t exposure() const { return granted - (committed < granted ? committed : granted); }
};

struct AllowancePlan {
  std::vector<std::uint64_t> granted;  // per holder, the new cumulative grant (never below the old one)
  std::uint64_t left = 0;              // what the budget could still grant after this plan
};

// `remaining`: the hard limit minus the usage counted so far in the window. `granule`: the smallest top-up
// offered while at least that much is left (a client is offered twice its last pass's spending, at least this).
// When the budget cannot meet every need, what is left is shared in proportion to the needs.
AllowancePlan plan_allowances(std::uint64_t remaining, std::uint64_t granule, std::span<const Holder> holders);

}  // namespace tally::budgets
