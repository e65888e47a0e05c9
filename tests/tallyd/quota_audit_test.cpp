// A budget's event said twice: the QuotaEvent on the feed and the journal entry's fields and message carry who,
// which budget, usage, limit, overshoot, action and window.
#include <gtest/gtest.h>

#include <algorithm>

#include "agent/tallyd/budget_enforcement.hpp"

namespace tally::agent {
namespace {

using namespace std::chrono;

budgets::BudgetEvent hard_reached() {
  budgets::BudgetEvent e;
  e.kind = budgets::BudgetEvent::Kind::hard_reached;
  e.budget = "team-a";
  e.selector = "team=a";
  e.resource = "tokens_out";
  e.window_spec = "day";
  e.action = budgets::Action::deny;
  e.used = 1050;
  e.limit = 1000;
  e.overshoot = 50;
  constexpr std::int64_t kDecember2 = 1796169600;  // 2026-12-02 00:00:00 UTC
  e.window = {budgets::Seconds(seconds(kDecember2)), budgets::Seconds(seconds(kDecember2 + 86400))};
  return e;
}

bool has(const std::vector<std::string>& fields, const std::string& field) {
  return std::find(fields.begin(), fields.end(), field) != fields.end();
}

TEST(QuotaAudit, TheEventAndTheJournalSayWhoWhatAndWhen) {
  const v1::QuotaEvent event = to_proto(hard_reached());
  EXPECT_EQ(event.kind(), v1::QuotaEvent::KIND_HARD_REACHED);
  EXPECT_EQ(event.window_start_unix_s(), 1796169600);
  EXPECT_EQ(event.window_end_unix_s(), 1796169600 + 86400);
  EXPECT_EQ(describe(event),
            "budget team-a (team=a): hard limit reached: 1050 of 1000 tokens_out in the day window 2026-12-02 00:00:00 "
            "UTC to 2026-12-03 00:00:00 UTC (50 over): deny");
  const auto fields = journal_fields(event);
  for (const char* field : {"TALLY_BUDGET=team-a", "TALLY_QUOTA_EVENT=hard_reached", "TALLY_ACTION=deny",
                            "TALLY_SELECTOR=team=a", "TALLY_RESOURCE=tokens_out", "TALLY_USED=1050",
                            "TALLY_LIMIT=1000", "TALLY_OVERSHOOT=50", "TALLY_WINDOW=day",
                            "TALLY_WINDOW_START=1796169600", "TALLY_WINDOW_END=1796256000"}) {
    EXPECT_TRUE(has(fields, field)) << field;
  }
  EXPECT_FALSE(std::any_of(fields.begin(), fields.end(), [](const auto& f) { return f.starts_with("TALLY_WORKLOAD="); }));

  budgets::BudgetEvent released = hard_reached();
  released.kind = budgets::BudgetEvent::Kind::released;
  released.workload = "systemd:batch.service";
  const v1::QuotaEvent r = to_proto(released);
  EXPECT_TRUE(has(journal_fields(r), "TALLY_WORKLOAD=systemd:batch.service"));
  EXPECT_TRUE(has(journal_fields(r), "TALLY_QUOTA_EVENT=released"));
  EXPECT_NE(describe(r).find("deny released for systemd:batch.service until the window ends"), std::string::npos)
      << describe(r);
}

}  // namespace
}  // namespace tally::agent
