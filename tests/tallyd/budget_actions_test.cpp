// The budgets' whole-workload actions as the agent carries them out (agent/tallyd/budget_enforcement), over a real
// ledger with an injected clock: freeze on real test cgroups is undone when the window ends; revoke-gpu hands the
// whole set of workloads to the device policy's seam each time it changes, and a failure is audited once and tried
// again later; what was done is remembered in the ledger's cursors and undone by the next agent when no budget wants
// it any more.
#include <gtest/gtest.h>
#include <unistd.h>

#include "agent/tallyd/budget_enforcement.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/test_cgroup.hpp"

namespace tally::agent {
namespace {

using namespace std::chrono;
using test::wait_until;

budgets::Seconds at(int day, int hour, int minute = 0) {
  return budgets::Seconds(date::sys_days(date::year{2026} / 12 / day)) + hours(hour) + minutes(minute);
}

QuotaSection quota(const std::string& workload, const std::string& action) {
  budgets::Budget b;
  b.name = "w-" + action;
  b.select.workload = workload;
  b.resource = *budgets::parse_resource("tokens_out");
  b.window = *budgets::parse_window("day");
  b.hard = 1000;
  b.action = *budgets::parse_action(action);
  QuotaSection section;
  section.budgets.push_back(b);
  return section;
}

struct Recorded {
  std::vector<v1::QuotaEvent> events;
  std::vector<v1::QuotaEvent::Kind> kinds() const {
    std::vector<v1::QuotaEvent::Kind> out;
    for (const auto& e : events) out.push_back(e.kind());
    return out;
  }
};

TEST(BudgetActions, RevokeGpuHandsTheWholeSetToThePolicyRetriesFailuresAndUndoesAfterARestart) {
  ledger::Ledger ledger;
  const auto tokens = ledger.counter("tokens_out", ledger::Source::client);
  auto& batch = ledger.label_set(ledger.workload(identify_cgroup("/system.slice/batch.service")), "team=a");
  Recorded recorded;
  std::vector<std::set<std::string>> calls;
  bool fail = true;
  Actuators actuators;
  actuators.revoke_gpu = [&](const std::set<std::string>& workloads) -> Result<void> {
    calls.push_back(workloads);
    if (fail) return make_error(ErrorCode::unsupported, "no BPF here");
    return {};
  };
  auto enforcement = std::make_unique<BudgetEnforcement>(
      ledger, [&](const v1::QuotaEvent& e) { recorded.events.push_back(e); }, actuators);
  ASSERT_TRUE(enforcement->configure(quota("systemd:batch.service", "revoke-gpu"), at(2, 9)));
  enforcement->start(at(2, 9));
  ledger.add(batch, tokens, 1500);
  enforcement->pass(nullptr, nullptr, at(2, 10));
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0], std::set<std::string>{"systemd:batch.service"});
  EXPECT_EQ(recorded.kinds(), (std::vector{v1::QuotaEvent::KIND_HARD_REACHED, v1::QuotaEvent::KIND_FAILED}));
  EXPECT_EQ(recorded.events.back().detail(), "no BPF here");
  // Not hammered: the next passes within the retry interval do not call; the one after it does, and succeeds.
  enforcement->pass(nullptr, nullptr, at(2, 10) + seconds(1));
  EXPECT_EQ(calls.size(), 1u);
  fail = false;
  enforcement->pass(nullptr, nullptr, at(2, 10, 1));
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(recorded.events.back().kind(), v1::QuotaEvent::KIND_APPLIED);
  EXPECT_EQ(recorded.events.back().workload(), "systemd:batch.service");
  EXPECT_EQ(enforcement->gpu_revoked(), std::set<std::string>{"systemd:batch.service"});
  enforcement->pass(nullptr, nullptr, at(2, 11));
  EXPECT_EQ(calls.size(), 2u) << "nothing changed: the policy is left alone";
  enforcement->save();

  // A restarted agent whose configuration no longer has the budget: it knows what the last one revoked, and gives
  // it back at its first pass.
  enforcement = std::make_unique<BudgetEnforcement>(
      ledger, [&](const v1::QuotaEvent& e) { recorded.events.push_back(e); }, actuators);
  ASSERT_TRUE(enforcement->configure(QuotaSection{}, at(2, 12)));
  enforcement->start(at(2, 12));
  EXPECT_EQ(enforcement->gpu_revoked(), std::set<std::string>{"systemd:batch.service"});
  enforcement->pass(nullptr, nullptr, at(2, 12));
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_TRUE(calls.back().empty());
  EXPECT_EQ(recorded.events.back().kind(), v1::QuotaEvent::KIND_UNDONE);
  EXPECT_TRUE(enforcement->gpu_revoked().empty());
  enforcement->save();
  EXPECT_EQ(ledger.cursors().count("action:revoke-gpu:systemd:batch.service"), 0u);
}

TEST(BudgetActions, AFrozenWorkloadIsThawedWhenItsWindowEnds) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (test cgroups)";
  const auto root = test::cgroup2_root();
  if (!root) GTEST_SKIP() << "needs cgroup v2 (pure or hybrid)";
  test::TestCgroupParent parent(*root);
  if (!std::filesystem::exists(parent.path() / "cgroup.freeze")) GTEST_SKIP() << "no cgroup v2 freezer (Linux 5.2+)";
  const auto cgroup = parent.make_child("w");
  const std::string path = "/" + cgroup.lexically_relative(*root).generic_string();
  const auto frozen = [&] { return test::cgroup_frozen(cgroup); };

  ledger::Ledger ledger;
  const auto tokens = ledger.counter("tokens_out", ledger::Source::client);
  auto& w = ledger.label_set(ledger.workload(identify_cgroup(path)), "team=a");
  freezer::Freezer freezer({*root, {}, true});
  Recorded recorded;
  BudgetEnforcement enforcement(ledger, [&](const v1::QuotaEvent& e) { recorded.events.push_back(e); },
                                Actuators{&freezer, {}, {}});
  ASSERT_TRUE(enforcement.configure(quota("cgroup:" + path, "freeze"), at(2, 9)));
  enforcement.start(at(2, 9));
  ledger.add(w, tokens, 999);
  enforcement.pass(nullptr, nullptr, at(2, 10));
  EXPECT_FALSE(frozen());
  ledger.add(w, tokens, 1);
  enforcement.pass(nullptr, nullptr, at(2, 11));
  EXPECT_EQ(recorded.kinds(), (std::vector{v1::QuotaEvent::KIND_HARD_REACHED, v1::QuotaEvent::KIND_APPLIED}));
  EXPECT_TRUE(wait_until([&] { return frozen(); }, 20s));
  enforcement.pass(nullptr, nullptr, at(2, 23, 59));
  EXPECT_TRUE(frozen());
  // Midnight: a new window, the action is lifted and the workload thawed.
  enforcement.pass(nullptr, nullptr, at(3, 0, 0) + seconds(1));
  EXPECT_EQ(recorded.kinds(), (std::vector{v1::QuotaEvent::KIND_HARD_REACHED, v1::QuotaEvent::KIND_APPLIED,
                                           v1::QuotaEvent::KIND_LIFTED, v1::QuotaEvent::KIND_UNDONE}));
  EXPECT_TRUE(wait_until([&] { return !frozen(); }, 20s));
}

// preempt: a workload over its preempt budget is frozen only while a workload of a higher priority shares one of its
// GPUs (as GPU accounting sees the holders), and thawed when that one lets go of the GPU.
TEST(BudgetActions, PreemptFreezesTheLowerPriorityHolderWhileAHigherOneSharesItsGpu) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (test cgroups)";
  const auto root = test::cgroup2_root();
  if (!root) GTEST_SKIP() << "needs cgroup v2 (pure or hybrid)";
  test::TestCgroupParent parent(*root);
  if (!std::filesystem::exists(parent.path() / "cgroup.freeze")) GTEST_SKIP() << "no cgroup v2 freezer (Linux 5.2+)";
  const auto low_cgroup = parent.make_child("low");
  const std::string low = "cgroup:/" + low_cgroup.lexically_relative(*root).generic_string();
  const std::string high = "systemd:inference.service";
  const auto frozen = [&] { return test::cgroup_frozen(low_cgroup); };

  ledger::Ledger ledger;
  const auto tokens = ledger.counter("tokens_out", ledger::Source::client);
  auto& w = ledger.label_set(ledger.workload(identify_cgroup(low.substr(7))), "team=a");
  freezer::Freezer freezer({*root, {}, true});
  std::map<std::string, std::set<std::string>> holders{{"GPU-0", {low}}, {"GPU-1", {"cgroup:/elsewhere"}}};
  Recorded recorded;
  BudgetEnforcement enforcement(ledger, [&](const v1::QuotaEvent& e) { recorded.events.push_back(e); },
                                Actuators{&freezer, {}, [&] { return holders; }});
  QuotaSection section = quota(low, "preempt");
  section.priorities = {{high, 10}, {low, 1}};
  ASSERT_TRUE(enforcement.configure(section, at(2, 9)));
  enforcement.start(at(2, 9));
  ledger.add(w, tokens, 2000);
  enforcement.pass(nullptr, nullptr, at(2, 10));
  EXPECT_EQ(recorded.kinds(), std::vector{v1::QuotaEvent::KIND_HARD_REACHED}) << "alone on its GPU: it runs on";
  EXPECT_FALSE(frozen());

  // The higher-priority workload starts on the same GPU: the lower one is frozen, and the event says for whom.
  holders["GPU-0"].insert(high);
  enforcement.pass(nullptr, nullptr, at(2, 10) + seconds(1));
  ASSERT_EQ(recorded.kinds(), (std::vector{v1::QuotaEvent::KIND_HARD_REACHED, v1::QuotaEvent::KIND_APPLIED}));
  EXPECT_EQ(recorded.events.back().action(), "preempt");
  EXPECT_EQ(recorded.events.back().workload(), low);
  EXPECT_NE(recorded.events.back().detail().find(high + " (priority 10, this one 1) on GPU GPU-0"), std::string::npos)
      << recorded.events.back().detail();
  EXPECT_TRUE(wait_until([&] { return frozen(); }, 20s));

  // It ends (lets go of the GPU): the lower one is thawed. A frozen process keeps its GPU memory, so it stays a holder.
  holders["GPU-0"].erase(high);
  enforcement.pass(nullptr, nullptr, at(2, 10) + seconds(2));
  EXPECT_EQ(recorded.events.back().kind(), v1::QuotaEvent::KIND_UNDONE);
  EXPECT_EQ(recorded.events.back().action(), "preempt");
  EXPECT_TRUE(wait_until([&] { return !frozen(); }, 20s));

  // A workload of the same or a lower priority never preempts it.
  holders["GPU-0"].insert("cgroup:/peer");
  enforcement.pass(nullptr, nullptr, at(2, 10) + seconds(3));
  EXPECT_EQ(recorded.events.back().kind(), v1::QuotaEvent::KIND_UNDONE);
  EXPECT_FALSE(frozen());
}

}  // namespace
}  // namespace tally::agent
