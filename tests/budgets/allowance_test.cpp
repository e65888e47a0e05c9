// Allowance planning: what all clients may still spend never exceeds what the budget has left, top-ups follow each
// client's pace, and when the budget runs short what is left is shared by need until nothing is.
#include "agent/budgets/allowance.hpp"

#include <numeric>

#include <gtest/gtest.h>

namespace tally::budgets {
namespace {

std::uint64_t exposure_after(const std::vector<Holder>& holders, const AllowancePlan& plan) {
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < holders.size(); ++i) sum += plan.granted[i] - std::min(holders[i].committed, plan.granted[i]);
  return sum;
}

TEST(Allowances, EveryoneGetsAGranuleOrTwiceTheirPaceWhileThereIsPlenty) {
  const std::vector<Holder> holders{{0, 0, 0}, {100, 40, 500}, {1000, 1000, 0}};
  const AllowancePlan plan = plan_allowances(1'000'000, 100, holders);
  EXPECT_EQ(plan.granted[0], 100u);          // a granule
  EXPECT_EQ(plan.granted[1], 100u + 940u);   // exposure 60 topped up to 2 x 500
  EXPECT_EQ(plan.granted[2], 1100u);         // spent all it had: a granule more
  EXPECT_EQ(plan.left, 1'000'000u - 100 - 1000 - 100);
}

TEST(Allowances, NeverMoreThanWhatIsLeftCountingWhatIsAlreadyOut) {
  const std::vector<Holder> holders{{500, 100, 1000}, {0, 0, 1000}, {0, 0, 10}};
  // 400 are already out (holder 0's exposure): 100 are left to share.
  const AllowancePlan plan = plan_allowances(500, 10, holders);
  EXPECT_EQ(exposure_after(holders, plan), 500u);
  EXPECT_EQ(plan.left, 0u);
  for (std::size_t i = 0; i < holders.size(); ++i) EXPECT_GE(plan.granted[i], holders[i].granted);
  // Nothing left: nobody gets more, however fast they spend.
  const AllowancePlan none = plan_allowances(400, 10, holders);
  EXPECT_EQ(none.granted, (std::vector<std::uint64_t>{500, 0, 0}));
  EXPECT_EQ(none.left, 0u);
}

TEST(Allowances, SharesByNeedWhenShortAndHandsOutTheLastUnits) {
  const std::vector<Holder> holders{{0, 0, 300}, {0, 0, 100}, {0, 0, 0}};
  const AllowancePlan plan = plan_allowances(7, 1, holders);
  EXPECT_EQ(std::accumulate(plan.granted.begin(), plan.granted.end(), std::uint64_t{0}), 7u)
      << "the last units are not kept back";
  EXPECT_GT(plan.granted[0], plan.granted[1]) << "the faster client needs more";
}

TEST(Allowances, ACommitAboveTheGrantIsNoExposure) {
  // The client committed more than it was granted (overshoot): it can spend nothing more without a grant, and the
  // overshoot is in the usage (remaining) already.
  const std::vector<Holder> holders{{100, 150, 150}};
  EXPECT_EQ(holders[0].exposure(), 0u);
  const AllowancePlan plan = plan_allowances(1000, 10, holders);
  EXPECT_EQ(plan.granted[0], 150u + 300u) << "topped up from what it committed, to twice its pace";
}

}  // namespace
}  // namespace tally::budgets
