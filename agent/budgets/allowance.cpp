#include "agent/budgets/allowance.hpp"

#include <algorithm>

namespace tally::budgets {

namespace {

// need * avail / total (avail < total) in long double: its 64-bit mantissa keeps it within a unit.
std::uint64_t proportion(std::uint64_t need, std::uint64_t avail, std::uint64_t total) {
  const long double exact = static_cast<long double>(need) * static_cast<long double>(avail) / static_cast<long double>(total);
  const auto share = static_cast<std::uint64_t>(exact);
  return std::min({share, need, avail});  // rounding never hands out more than is needed or left
}

}  // namespace

AllowancePlan plan_allowances(std::uint64_t remaining, std::uint64_t granule, std::span<const Holder> holders) {
  AllowancePlan plan;
  plan.granted.reserve(holders.size());
  std::uint64_t exposed = 0;
  for (const Holder& h : holders) {
    // A client that committed past its grant (overshoot) is topped up from what it committed.
    plan.granted.push_back(std::max(h.granted, h.committed));
    exposed += h.exposure();
  }
  std::uint64_t avail = remaining > exposed ? remaining - exposed : 0;
  // What each holder needs to hold enough for its pace until the next pass.
  std::vector<std::uint64_t> needs(holders.size(), 0);
  std::uint64_t total_need = 0;  // saturating: a need this large is more than any budget holds
  for (std::size_t i = 0; i < holders.size(); ++i) {
    const std::uint64_t pace = holders[i].spent > UINT64_MAX / 2 ? UINT64_MAX : holders[i].spent * 2;
    const std::uint64_t target = std::max(granule, pace);
    const std::uint64_t exposure = holders[i].exposure();
    needs[i] = target > exposure ? target - exposure : 0;
    total_need = needs[i] > UINT64_MAX - total_need ? UINT64_MAX : total_need + needs[i];
  }
  if (total_need <= avail) {
    for (std::size_t i = 0; i < holders.size(); ++i) plan.granted[i] += needs[i];
    plan.left = avail - total_need;
    return plan;
  }
  // Not enough for everyone: shares in proportion to the needs, and what rounding leaves to the neediest first.
  std::uint64_t given = 0;
  for (std::size_t i = 0; i < holders.size(); ++i) {
    const std::uint64_t share = std::min(proportion(needs[i], avail, total_need), avail - given);
    plan.granted[i] += share;
    needs[i] -= share;
    given += share;
  }
  std::uint64_t rest = avail - given;
  std::vector<std::size_t> order(holders.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return needs[a] > needs[b]; });
  for (std::size_t i : order) {
    if (rest == 0) break;
    const std::uint64_t more = std::min(rest, needs[i]);
    plan.granted[i] += more;
    rest -= more;
  }
  plan.left = rest;
  return plan;
}

}  // namespace tally::budgets
