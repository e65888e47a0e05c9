// The budget engine over a real ledger: a budget is one pool for every label set it selects, counts only its
// resource's counters and only what is new, decides per label set (deny over degrade over throttle), lets an
// operator release a workload for the rest of the window, and keeps its usage across a restart through the
// ledger's cursors (the checkpoint's) and across a reload that keeps its pool.
#include "agent/budgets/engine.hpp"

#include <gtest/gtest.h>

#include "tally/client.h"

namespace tally::budgets {
namespace {

using namespace std::chrono;
using ledger::Ledger;
using ledger::Source;

Seconds at(int hour, int minute = 0) { return Seconds(date::sys_days(date::year{2026} / 12 / 2)) + hours(hour) + minutes(minute); }

Budget budget(std::string name, Selector select, std::string resource, std::optional<std::uint64_t> soft,
              std::optional<std::uint64_t> hard, Action action, std::string window = "day") {
  Budget b;
  b.name = std::move(name);
  b.select = std::move(select);
  b.resource = *parse_resource(resource);
  b.window = *parse_window(window);
  b.soft = soft;
  b.hard = hard;
  b.action = action;
  return b;
}

const date::time_zone& utc() { return **find_time_zone("UTC"); }

// A workload with client label sets, written like the client wiring does: one contributor per segment.
struct Node {
  Ledger ledger;
  ledger::CounterId tokens_in = ledger.counter("tokens_in", Source::client);
  ledger::CounterId tokens_out = ledger.counter("tokens_out", Source::client);
  ledger::CounterId io_read = ledger.counter("io_read_bytes", Source::kernel_probes);

  ledger::LabelSet& labels(const std::string& unit, const std::string& text) {
    return ledger.label_set(ledger.workload(identify_cgroup("/system.slice/" + unit)), text);
  }
  void add(ledger::LabelSet& label_set, ledger::CounterId counter, std::uint64_t amount) {
    ledger.add(label_set, counter, amount);
  }
};

std::vector<BudgetEvent::Kind> kinds(const std::vector<BudgetEvent>& events) {
  std::vector<BudgetEvent::Kind> out;
  for (const auto& e : events) out.push_back(e.kind);
  return out;
}

TEST(BudgetEngine, OnePoolForEverythingSelectedCountingOnlyItsResource) {
  Node node;
  auto& a1 = node.labels("a.service", "team=a\nmodel=m1");
  auto& a2 = node.labels("b.service", "model=m2\nteam=a");
  auto& other = node.labels("c.service", "team=b");
  BudgetEngine engine;
  engine.configure({budget("team-a", {"", {{"team", "a"}}}, "tokens_out", 800, 1000, Action::deny)}, utc(), at(1));
  EXPECT_TRUE(engine.start(node.ledger, at(1)).empty());

  node.add(a1, node.tokens_out, 500);
  node.add(a2, node.tokens_out, 250);
  node.add(a1, node.tokens_in, 10'000);  // another resource
  node.add(other, node.tokens_out, 10'000);  // another team
  EXPECT_TRUE(engine.update(node.ledger, at(2)).empty());
  EXPECT_EQ(engine.used(0, at(2)), 750u);

  node.add(a2, node.tokens_out, 50);
  auto events = engine.update(node.ledger, at(3));
  ASSERT_EQ(kinds(events), std::vector{BudgetEvent::Kind::soft_reached});
  EXPECT_EQ(events[0].used, 800u);
  EXPECT_EQ(engine.verdict(a1).decision, TALLY_ALLOW) << "a soft limit is an event only";

  node.add(a1, node.tokens_out, 230);
  events = engine.update(node.ledger, at(4));
  ASSERT_EQ(kinds(events), std::vector{BudgetEvent::Kind::hard_reached});
  EXPECT_EQ(events[0].overshoot, 30u);
  EXPECT_EQ(events[0].action, Action::deny);
  EXPECT_EQ(engine.verdict(a1).decision, TALLY_DENY);
  EXPECT_EQ(engine.verdict(a1).reason, TALLY_REASON_BUDGET);
  EXPECT_EQ(engine.verdict(a2).decision, TALLY_DENY);
  EXPECT_EQ(engine.verdict(other).decision, TALLY_ALLOW) << "only the label sets the budget selects";

  // The next day the action is lifted and the pool starts from nothing.
  events = engine.update(node.ledger, at(24 + 1));
  ASSERT_EQ(kinds(events), std::vector{BudgetEvent::Kind::lifted});
  EXPECT_EQ(events[0].used, 1030u);
  EXPECT_EQ(engine.verdict(a1).decision, TALLY_ALLOW);
  EXPECT_EQ(engine.used(0, at(25)), 0u);
}

TEST(BudgetEngine, StrongestActionWinsAndDegradeCarriesItsHint) {
  Node node;
  auto& ls = node.labels("a.service", "team=a\nmodel=big");
  BudgetEngine engine;
  auto degrade = budget("model", {"", {{"model", "big"}}}, "tokens_out", std::nullopt, 10, Action::degrade);
  degrade.degrade_max_tokens = 256;
  engine.configure({budget("team", {"", {{"team", "a"}}}, "tokens_out", std::nullopt, 20, Action::throttle), degrade,
                    budget("deny", {"", {{"team", "a"}}}, "tokens_in", std::nullopt, 5, Action::deny)},
                   utc(), at(1));
  engine.start(node.ledger, at(1));
  node.add(ls, node.tokens_out, 15);
  engine.update(node.ledger, at(2));
  Verdict v = engine.verdict(ls);
  EXPECT_EQ(v.decision, TALLY_DEGRADE);
  EXPECT_EQ(TALLY_REASON_CODE(v.reason), TALLY_REASON_BUDGET);
  EXPECT_EQ(TALLY_DEGRADE_MAX_TOKENS(v.reason), 256u);
  node.add(ls, node.tokens_out, 15);
  engine.update(node.ledger, at(3));
  EXPECT_EQ(engine.verdict(ls).decision, TALLY_DEGRADE) << "degrade is stronger than throttle";
  node.add(ls, node.tokens_in, 5);
  engine.update(node.ledger, at(4));
  EXPECT_EQ(engine.verdict(ls).decision, TALLY_DENY);
  EXPECT_EQ(engine.verdict(ls).budget->name, "deny");
}

TEST(BudgetEngine, WorkloadSelectorAndKernelResources) {
  Node node;
  auto& whole = node.labels("a.service", "");
  auto& labelled = node.labels("a.service", "team=a");
  auto& other = node.labels("b.service", "");
  BudgetEngine engine;
  engine.configure({budget("io", {"systemd:a.service", {}}, "io_bytes", std::nullopt, 1000, Action::throttle)}, utc(),
                   at(1));
  engine.start(node.ledger, at(1));
  node.add(whole, node.io_read, 600);
  node.add(other, node.io_read, 5000);
  node.add(labelled, node.tokens_out, 5000);
  engine.update(node.ledger, at(2));
  EXPECT_EQ(engine.used(0, at(2)), 600u);
  node.add(whole, node.io_read, 400);
  engine.update(node.ledger, at(3));
  EXPECT_EQ(engine.verdict(whole).decision, TALLY_THROTTLE);
  EXPECT_EQ(engine.verdict(labelled).decision, TALLY_THROTTLE) << "every label set of the workload";
  EXPECT_EQ(engine.verdict(other).decision, TALLY_ALLOW);
}

TEST(BudgetEngine, ReleaseLiftsTheActionForTheRestOfTheWindowOnly) {
  Node node;
  auto& a = node.labels("a.service", "team=a");
  auto& b = node.labels("b.service", "team=a");
  BudgetEngine engine;
  engine.configure({budget("team-a", {"", {{"team", "a"}}}, "tokens_out", std::nullopt, 100, Action::deny)}, utc(),
                   at(1));
  engine.start(node.ledger, at(1));
  EXPECT_FALSE(engine.release(node.ledger, "systemd:a.service", "", at(1))) << "nothing is in force yet";
  node.add(a, node.tokens_out, 150);
  engine.update(node.ledger, at(2));
  EXPECT_FALSE(engine.release(node.ledger, "systemd:a.service", "nope", at(2)));
  const auto nobody = engine.release(node.ledger, "systemd:nobody.service", "", at(2));
  ASSERT_FALSE(nobody);
  EXPECT_EQ(nobody.error().message, "no workload 'systemd:nobody.service' on this node");
  auto released = engine.release(node.ledger, "systemd:a.service", "team-a", at(2));
  ASSERT_TRUE(released) << released.error().message;
  ASSERT_EQ(released->size(), 1u);
  EXPECT_EQ((*released)[0].kind, BudgetEvent::Kind::released);
  EXPECT_EQ((*released)[0].workload, "systemd:a.service");
  EXPECT_EQ(engine.verdict(a).decision, TALLY_ALLOW);
  EXPECT_EQ(engine.verdict(b).decision, TALLY_DENY) << "only the released workload";
  node.add(a, node.tokens_out, 10);
  engine.update(node.ledger, at(3));
  EXPECT_EQ(engine.verdict(a).decision, TALLY_ALLOW) << "not applied again at the next pass";
  // A new window: the release ends with the window it was given for.
  engine.update(node.ledger, at(24 + 1));
  node.add(a, node.tokens_out, 100);
  engine.update(node.ledger, at(24 + 2));
  EXPECT_EQ(engine.verdict(a).decision, TALLY_DENY);
}

TEST(BudgetEngine, UsageAndActionsSurviveARestartThroughTheLedgersCursors) {
  Node node;
  auto& a = node.labels("a.service", "team=a");
  auto& b = node.labels("b.service", "team=a");
  const std::vector<Budget> budgets{
      budget("calendar", {"", {{"team", "a"}}}, "tokens_out", std::nullopt, 100, Action::deny),
      budget("rolling", {"", {{"team", "a"}}}, "tokens_out", std::nullopt, 1000, Action::throttle, "rolling:1h")};
  {
    BudgetEngine engine;
    engine.configure(budgets, utc(), at(1));
    engine.start(node.ledger, at(1));
    node.add(a, node.tokens_out, 120);
    engine.update(node.ledger, at(2));
    ASSERT_TRUE(engine.release(node.ledger, "systemd:b.service", "", at(2)));
    EXPECT_EQ(engine.verdict(b).decision, TALLY_ALLOW);
    engine.save(node.ledger);
  }
  // The agent restarts: the ledger comes back from its checkpoint with the cursors; nothing is counted twice.
  BudgetEngine engine;
  engine.configure(budgets, utc(), at(2, 30));
  EXPECT_TRUE(engine.start(node.ledger, at(2, 30)).empty());
  EXPECT_EQ(engine.used(0, at(2, 30)), 120u);
  EXPECT_EQ(engine.used(1, at(2, 30)), 120u);
  EXPECT_EQ(engine.verdict(a).decision, TALLY_DENY) << "the action stays in force";
  EXPECT_EQ(engine.verdict(b).decision, TALLY_ALLOW) << "the release too";
  EXPECT_EQ(engine.show(at(2, 30))[0]["released"], nlohmann::json::array({"systemd:b.service"}));
  node.add(a, node.tokens_out, 5);
  EXPECT_TRUE(engine.update(node.ledger, at(2, 31)).empty()) << "the hard crossing is not reported twice";
  EXPECT_EQ(engine.used(0, at(2, 31)), 125u);

  // Down across midnight: the window it was saved in is over, and its action is lifted at start.
  engine.save(node.ledger);
  BudgetEngine next_day;
  next_day.configure(budgets, utc(), at(24 + 3));
  auto events = next_day.start(node.ledger, at(24 + 3));
  ASSERT_EQ(kinds(events), std::vector{BudgetEvent::Kind::lifted});
  EXPECT_EQ(events[0].budget, "calendar");
  EXPECT_EQ(next_day.verdict(a).decision, TALLY_ALLOW);
  EXPECT_EQ(next_day.used(1, at(24 + 3)), 0u) << "the rolling hour forgot it too";

  // A budget no longer configured leaves no state behind.
  next_day.configure({budgets[1]}, utc(), at(24 + 3));
  next_day.save(node.ledger);
  for (const auto& [key, value] : node.ledger.cursors()) EXPECT_FALSE(key.starts_with("budget:calendar:")) << key;
}

TEST(BudgetEngine, AReloadKeepsTheSamePoolsUsageAndSaysWhatChanged) {
  Node node;
  auto& a = node.labels("a.service", "team=a");
  BudgetEngine engine;
  auto b = budget("team-a", {"", {{"team", "a"}}}, "tokens_out", std::nullopt, 100, Action::deny);
  engine.configure({b}, utc(), at(1));
  engine.start(node.ledger, at(1));
  node.add(a, node.tokens_out, 80);
  engine.update(node.ledger, at(2));
  b.hard = 50;  // lowered under the usage
  auto reloaded = engine.configure({b}, utc(), at(2));
  ASSERT_EQ(reloaded.changes.size(), 1u);
  EXPECT_NE(reloaded.changes[0].find("usage kept"), std::string::npos) << reloaded.changes[0];
  ASSERT_EQ(kinds(reloaded.events), std::vector{BudgetEvent::Kind::hard_reached});
  EXPECT_EQ(engine.verdict(a).decision, TALLY_DENY);
  b.hard = 500;  // raised again: lifted
  reloaded = engine.configure({b}, utc(), at(2));
  EXPECT_EQ(kinds(reloaded.events), std::vector{BudgetEvent::Kind::lifted});
  EXPECT_EQ(engine.verdict(a).decision, TALLY_ALLOW);
  b.resource = *parse_resource("tokens_in");  // another pool
  reloaded = engine.configure({b}, utc(), at(2));
  EXPECT_NE(reloaded.changes[0].find("starts from nothing"), std::string::npos) << reloaded.changes[0];
  EXPECT_EQ(engine.used(0, at(2)), 0u);
  reloaded = engine.configure({}, utc(), at(2));
  EXPECT_NE(reloaded.changes[0].find("removed: team-a"), std::string::npos);
}

}  // namespace
}  // namespace tally::budgets
