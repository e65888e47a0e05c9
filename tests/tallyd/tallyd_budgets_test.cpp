// Budgets end to end, with the real tallyd and real client processes (docs/budgets.md):
//  - 16 processes x 4 threads reserve and commit against one budget of B tokens: what they commit never exceeds B
//    and uses it up to within one allowance granularity, and the feed's counter says exactly what they committed;
//  - a soft limit is an event only; a hard limit flips the admission of the label sets it selects and of no
//    others; every crossing is a QuotaEvent on the feed;
//  - `tallyctl quota` shows it; `tallyctl release` lifts it for the workload, audited, not re-applied at the next
//    drain; a restart keeps the window's usage and the action in force.
#include <gtest/gtest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <numeric>

#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/process.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tally/client.h"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

class Budgets : public ::testing::Test {
 protected:
  // `state_dir`: kept across restarts ("": a fresh one).
  std::string config(const std::string& budgets, const std::string& state_dir = "") const {
    return test_config(50, 50,
                       fmt::format("[metering]\nsocket = \"{}\"\nruntime_dir = \"{}\"\ndrain_interval_ms = 10\n{}\n",
                                   socket(), (dir_ / "run").string(),
                                   state_dir.empty() ? "" : fmt::format("state_dir = \"{}\"\n", state_dir)) +
                           budgets);
  }
  std::string socket() const { return (dir_ / "tally.sock").string(); }
  std::unique_ptr<Process> client(std::vector<std::string> args) const {
    args.insert(args.begin(), BUDGET_CLIENT_PATH);
    return std::make_unique<Process>(std::move(args), std::map<std::string, std::string>{{"TALLY_SOCKET", socket()}});
  }
  nlohmann::json tallyctl(const TallydProcess& tallyd, std::vector<std::string> args) const {
    args.insert(args.begin(), TALLYCTL_PATH);
    args.push_back("--socket");
    args.push_back(tallyd.control_socket());
    args.push_back("--json");
    const CommandResult result = run_command(args, 20s);
    EXPECT_TRUE(result.status.exited && result.status.code == 0) << result.output;
    return nlohmann::json::parse(result.output, nullptr, false);
  }
  TempDir dir_;
};

// The decisions a watching client printed: "decision D reason R" lines.
bool saw_decision(Process& watcher, int decision) {
  return watcher.stdout_text().find(fmt::format("decision {} ", decision)) != std::string::npos;
}

std::uint64_t feed_tokens_out(const v1::UsageReport& report, const std::string& team) {
  std::uint64_t sum = 0;
  for (const auto& w : report.workloads()) {
    for (const auto& ls : w.label_sets()) {
      bool match = false;
      for (const auto& l : ls.labels()) match = match || (l.key() == "team" && l.value() == team);
      if (!match) continue;
      for (const auto& t : ls.totals()) {
        if (t.name() == "tokens_out" && t.source() == v1::VALUE_SOURCE_CLIENT) sum += t.total();
      }
    }
  }
  return sum;
}

TEST_F(Budgets, SixteenProcessesTimesFourThreadsNeverCommitPastTheBudget) {
  constexpr std::uint64_t kBudget = 400'000, kGranule = 5'000, kMaxReservation = 64;
  static_assert(16 * kMaxReservation < kGranule, "what the clients cannot use (less than a reservation each) fits");
  TallydProcess tallyd(config(fmt::format("[[budgets]]\nname = \"team-a\"\nselect = {{ team = \"a\" }}\n"
                                          "resource = \"tokens_out\"\nwindow = \"day\"\nsoft = {}\nhard = {}\n"
                                          "action = \"deny\"\nallowance = {}\n",
                                          kBudget / 2, kBudget, kGranule)));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedSubscriber feed(*endpoint);
  std::vector<std::unique_ptr<Process>> clients;
  for (int p = 0; p < 16; ++p) {
    clients.push_back(client({"spend", "team=a,model=m", "4", std::to_string(kMaxReservation), "60", std::to_string(p)}));
  }
  std::uint64_t committed = 0;
  for (auto& c : clients) {
    const auto status = c->wait(90s);
    ASSERT_TRUE(status && status->exited && status->code == 0) << c->stderr_text();
    std::uint64_t mine = 0;
    ASSERT_EQ(std::sscanf(c->stdout_text().c_str(), "committed %lu", &mine), 1) << c->stdout_text();
    committed += mine;
  }
  std::printf("16 processes x 4 threads committed %lu of a budget of %lu (granularity %lu)\n", committed, kBudget,
              kGranule);
  EXPECT_LE(committed, kBudget) << "allowances never let the clients spend past the budget";
  EXPECT_GE(committed, kBudget - kGranule) << "and the budget is used up to within one allowance granularity";
  // The counter never lies: the feed carries exactly what was committed.
  const auto exact = feed.receive_until(
      [&](const FeedMessage& m) {
        return m.envelope.has_usage() && feed_tokens_out(m.envelope.usage(), "a") == committed;
      },
      20s);
  EXPECT_TRUE(exact) << "the feed never showed " << committed << " tokens_out for team a";
  const auto quota = tallyctl(tallyd, {"quota"});
  ASSERT_TRUE(quota.is_object());
  EXPECT_EQ(quota["budgets"][0]["used"].get<std::uint64_t>(), committed);
}

TEST_F(Budgets, SoftIsAnEventHardFlipsOnlyTheSelectedLabelSetsAndReleaseAndRestartBehave) {
  TempDir state;
  const std::string budgets = fmt::format(
      "[[budgets]]\nname = \"team-a\"\nselect = {{ team = \"a\" }}\nresource = \"tokens_out\"\n"
      "window = \"day\"\nsoft = 100\nhard = 1000\naction = \"deny\"\n"
      "[[budgets]]\nname = \"team-b-degrade\"\nselect = {{ team = \"b\" }}\nresource = \"tokens_out\"\n"
      "window = \"day\"\nhard = 1000000\naction = \"degrade\"\ndegrade_max_tokens = 128\n");
  auto tallyd = std::make_unique<TallydProcess>(config(budgets, state.path().string()));
  auto endpoint = tallyd->wait_ready();
  ASSERT_TRUE(endpoint) << tallyd->process().stderr_text();
  auto feed = std::make_unique<FeedSubscriber>(*endpoint);
  const auto quota_event = [&](FeedSubscriber& f, v1::QuotaEvent::Kind kind) {
    return f.receive_until(
        [&](const FeedMessage& m) {
          return m.envelope.has_event() && m.envelope.event().has_quota() && m.envelope.event().quota().kind() == kind;
        },
        20s);
  };

  // Team a passes its soft limit: an event only.
  auto a = client({"watch", "team=a", "150", "120"});
  auto b = client({"watch", "team=b", "10", "120"});
  auto soft = quota_event(*feed, v1::QuotaEvent::KIND_SOFT_REACHED);
  ASSERT_TRUE(soft) << tallyd->process().stderr_text();
  EXPECT_EQ(soft->envelope.event().quota().budget(), "team-a");
  EXPECT_EQ(soft->envelope.event().quota().used(), 150u);
  EXPECT_FALSE(saw_decision(*a, TALLY_DENY));

  // Past its hard limit: team a's admission flips, team b's does not.
  auto a2 = client({"watch", "team=a", "900", "120"});
  auto hard = quota_event(*feed, v1::QuotaEvent::KIND_HARD_REACHED);
  ASSERT_TRUE(hard);
  const v1::QuotaEvent& event = hard->envelope.event().quota();
  EXPECT_EQ(event.used(), 1050u);
  EXPECT_EQ(event.limit(), 1000u);
  EXPECT_EQ(event.overshoot(), 50u);
  EXPECT_EQ(event.action(), "deny");
  EXPECT_EQ(event.selector(), "team=a");
  EXPECT_LT(event.window_start_unix_s(), event.window_end_unix_s());
  EXPECT_TRUE(wait_until([&] { return saw_decision(*a, TALLY_DENY) && saw_decision(*a2, TALLY_DENY); }, 10s))
      << a->stdout_text();
  EXPECT_TRUE(tallyd->process().wait_for_stderr("hard limit reached: 1050 of 1000 tokens_out", 10s));
  EXPECT_FALSE(saw_decision(*b, TALLY_DENY)) << b->stdout_text();
  EXPECT_FALSE(saw_decision(*b, TALLY_DEGRADE));

  auto quota = tallyctl(*tallyd, {"quota"});
  ASSERT_TRUE(quota.is_object());
  EXPECT_EQ(quota["budgets"][0]["used"].get<std::uint64_t>(), 1050u);
  EXPECT_TRUE(quota["budgets"][0]["in_force"].get<bool>());
  EXPECT_EQ(quota["budgets"][0]["remaining"].get<std::uint64_t>(), 0u);

  // A restart keeps the window's usage and the action in force; nothing is counted twice.
  tallyd->process().signal(SIGTERM);
  ASSERT_TRUE(tallyd->process().wait(20s));
  tallyd = std::make_unique<TallydProcess>(config(budgets, state.path().string()));
  endpoint = tallyd->wait_ready();
  ASSERT_TRUE(endpoint) << tallyd->process().stderr_text();
  feed = std::make_unique<FeedSubscriber>(*endpoint);
  quota = tallyctl(*tallyd, {"quota"});
  EXPECT_EQ(quota["budgets"][0]["used"].get<std::uint64_t>(), 1050u) << quota.dump();
  EXPECT_TRUE(quota["budgets"][0]["in_force"].get<bool>());
  const auto denied_after_restart = a->stdout_text().rfind("decision 2 ");
  EXPECT_NE(denied_after_restart, std::string::npos);
  EXPECT_EQ(a->stdout_text().find("decision 0 ", denied_after_restart), std::string::npos)
      << "the action stayed in force through the restart: " << a->stdout_text();

  // Released for a's workload: allowed again, audited, and not applied again at the next drains; a2 (another
  // process, so another workload where the tests run in the root cgroup, or the same one) follows its workload.
  std::string workload, workload_a2;
  const auto usage = feed->receive_until(
      [&](const FeedMessage& m) {
        if (!m.envelope.has_usage()) return false;
        for (const auto& w : m.envelope.usage().workloads()) {
          for (auto pid : w.pids()) {
            if (static_cast<pid_t>(pid) == a->pid()) workload = w.workload_id();
            if (static_cast<pid_t>(pid) == a2->pid()) workload_a2 = w.workload_id();
          }
        }
        return !workload.empty() && !workload_a2.empty();
      },
      20s);
  ASSERT_TRUE(usage);
  quota = tallyctl(*tallyd, {"release", workload, "--budget", "team-a"});
  EXPECT_EQ(quota["budgets"][0]["released"][0].get<std::string>(), workload) << quota.dump();
  auto released = quota_event(*feed, v1::QuotaEvent::KIND_RELEASED);
  ASSERT_TRUE(released);
  EXPECT_EQ(released->envelope.event().quota().workload(), workload);
  const auto allowed_again = [](Process& p) {
    const std::string& out = p.stdout_text();
    return out.find("decision 0 ", out.rfind("decision 2 ")) != std::string::npos;
  };
  EXPECT_TRUE(wait_until([&] { return allowed_again(*a); }, 10s)) << a->stdout_text();
  // Ten more reports (each with a budget pass, besides the drains): the release holds.
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(feed->receive_until([](const FeedMessage& m) { return m.envelope.has_usage(); }, 10s));
  EXPECT_TRUE(allowed_again(*a)) << "released for the rest of the window: " << a->stdout_text();
  EXPECT_EQ(allowed_again(*a2), workload_a2 == workload) << a2->stdout_text();
  const CommandResult nothing = run_command({TALLYCTL_PATH, "release", "nobody", "--socket", tallyd->control_socket()}, 20s);
  EXPECT_EQ(nothing.status.code, 1);
  EXPECT_NE(nothing.output.find("no workload 'nobody' on this node"), std::string::npos) << nothing.output;
}

}  // namespace
}  // namespace tally::test
