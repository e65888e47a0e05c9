// The budgets' freeze action end to end (docs/budgets.md), with the real tallyd, a real client process burning CPU
// in a test cgroup of its own and another workload's process beside it: past the hard limit the workload is frozen
// (its CPU time stops, the other's goes on), audited on the feed and shown by `tallyctl quota`; it stays frozen
// through an agent restart; `tallyctl release` thaws it. The other workload's CPU time is the clock.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/process.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/test_cgroup.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

class TallydBudgetActions : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (test cgroups)";
    auto root = cgroup2_root();
    if (!root) GTEST_SKIP() << "needs cgroup v2 (pure or hybrid)";
    root_ = *root;
    parent_ = std::make_unique<TestCgroupParent>(root_);
    if (!std::filesystem::exists(parent_->path() / "cgroup.freeze")) GTEST_SKIP() << "no cgroup v2 freezer (Linux 5.2+)";
    // The client finds the agent through TALLY_SOCKET, inherited by the processes started in the test cgroups.
    ::setenv("TALLY_SOCKET", socket().c_str(), 1);
  }
  void TearDown() override { ::unsetenv("TALLY_SOCKET"); }

  std::string workload(const std::filesystem::path& cgroup) const {
    return "cgroup:/" + cgroup.lexically_relative(root_).generic_string();
  }
  std::string socket() const { return (dir_ / "tally.sock").string(); }
  std::string config(const std::string& budgets) const {
    return test_config(50, 50,
                       fmt::format("[metering]\nsocket = \"{}\"\nruntime_dir = \"{}\"\ndrain_interval_ms = 10\n"
                                   "state_dir = \"{}\"\n{}",
                                   socket(), (dir_ / "run").string(), (dir_ / "state").string(), budgets));
  }
  nlohmann::json tallyctl(const TallydProcess& tallyd, std::vector<std::string> args) const {
    args.insert(args.begin(), TALLYCTL_PATH);
    args.insert(args.end(), {"--socket", tallyd.control_socket(), "--json"});
    const CommandResult result = run_command(args, 20s);
    EXPECT_TRUE(result.status.exited && result.status.code == 0) << result.output;
    return nlohmann::json::parse(result.output, nullptr, false);
  }
  static std::optional<FeedMessage> quota_event(FeedSubscriber& feed, v1::QuotaEvent::Kind kind) {
    return feed.receive_until(
        [&](const FeedMessage& m) {
          return m.envelope.has_event() && m.envelope.event().has_quota() && m.envelope.event().quota().kind() == kind;
        },
        20s);
  }
  // While `running` burns another 200 ms of CPU, `cgroup` burns none.
  static void expect_stopped(const std::filesystem::path& cgroup, const std::filesystem::path& running) {
    const std::uint64_t stopped = cgroup_cpu_usec(cgroup);
    const std::uint64_t before = cgroup_cpu_usec(running);
    ASSERT_TRUE(wait_until([&] { return cgroup_cpu_usec(running) >= before + 200'000; }, 30s)) << "the other workload stopped";
    EXPECT_EQ(cgroup_cpu_usec(cgroup), stopped) << "a frozen workload used CPU";
  }

  std::filesystem::path root_;
  std::unique_ptr<TestCgroupParent> parent_;
  TempDir dir_;
};

TEST_F(TallydBudgetActions, FreezeStopsTheWorkloadSurvivesARestartAndReleaseThawsIt) {
  const auto a = parent_->make_child("a");
  const auto b = parent_->make_child("b");
  const std::string budgets = fmt::format(
      "[[budgets]]\nname = \"a-tokens\"\nselect = {{ workload = \"{}\" }}\nresource = \"tokens_out\"\n"
      "window = \"day\"\nhard = 1000\naction = \"freeze\"\n",
      workload(a));
  auto tallyd = std::make_unique<TallydProcess>(config(budgets));
  auto endpoint = tallyd->wait_ready();
  ASSERT_TRUE(endpoint) << tallyd->process().stderr_text();
  auto feed = std::make_unique<FeedSubscriber>(*endpoint);

  CgroupProcess other(b, {BUDGET_CLIENT_PATH, "burn", "team=b", "5000"});  // over no budget of its own
  ASSERT_EQ(other.read_line(20s), "added 5000");
  CgroupProcess spender(a, {BUDGET_CLIENT_PATH, "burn", "team=a", "1500"});
  ASSERT_EQ(spender.read_line(20s), "added 1500");

  auto applied = quota_event(*feed, v1::QuotaEvent::KIND_APPLIED);
  ASSERT_TRUE(applied) << tallyd->process().stderr_text();
  const v1::QuotaEvent& event = applied->envelope.event().quota();
  EXPECT_EQ(event.budget(), "a-tokens");
  EXPECT_EQ(event.action(), "freeze");
  EXPECT_EQ(event.workload(), workload(a));
  EXPECT_EQ(event.used(), 1500u);
  EXPECT_NE(event.detail().find("cgroup.freeze"), std::string::npos) << event.detail();
  ASSERT_TRUE(wait_until([&] { return cgroup_frozen(a); }, 20s));
  EXPECT_FALSE(cgroup_frozen(b));
  expect_stopped(a, b);
  EXPECT_TRUE(tallyd->process().wait_for_stderr("freeze carried out on " + workload(a), 10s));
  auto quota = tallyctl(*tallyd, {"quota"});
  EXPECT_EQ(quota["budgets"][0]["frozen"], nlohmann::json::array({workload(a)})) << quota.dump();

  // The agent stops: the workload stays frozen (nothing thaws it behind the budget's back); the next agent keeps
  // it so, without a second event.
  tallyd->process().signal(SIGTERM);
  ASSERT_TRUE(tallyd->process().wait(20s));
  EXPECT_TRUE(cgroup_frozen(a));
  tallyd = std::make_unique<TallydProcess>(config(budgets));
  endpoint = tallyd->wait_ready();
  ASSERT_TRUE(endpoint) << tallyd->process().stderr_text();
  feed = std::make_unique<FeedSubscriber>(*endpoint);
  ASSERT_TRUE(wait_until([&] {
    quota = tallyctl(*tallyd, {"quota"});
    return quota["budgets"][0].contains("frozen");
  }, 20s)) << quota.dump();
  EXPECT_EQ(quota["budgets"][0]["frozen"], nlohmann::json::array({workload(a)}));
  expect_stopped(a, b);

  // Released: thawed, audited, and not frozen again at the next passes.
  quota = tallyctl(*tallyd, {"release", workload(a)});
  auto undone = quota_event(*feed, v1::QuotaEvent::KIND_UNDONE);
  ASSERT_TRUE(undone) << tallyd->process().stderr_text();
  EXPECT_EQ(undone->envelope.event().quota().workload(), workload(a));
  EXPECT_NE(undone->envelope.event().quota().detail().find("thawed"), std::string::npos);
  ASSERT_TRUE(wait_until([&] { return !cgroup_frozen(a); }, 20s));
  const std::uint64_t thawed = cgroup_cpu_usec(a);
  EXPECT_TRUE(wait_until([&] { return cgroup_cpu_usec(a) >= thawed + 100'000; }, 30s)) << "a did not run again";
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(feed->receive_until([](const FeedMessage& m) { return m.envelope.has_usage(); }, 10s));
  EXPECT_FALSE(cgroup_frozen(a)) << "released for the rest of the window";
}

TEST_F(TallydBudgetActions, AWorkloadThatCannotBeFrozenIsAFailureNamedOnTheFeedAndTheAgentGoesOn) {
  // A budget over everything with the freeze action: this test's own process (in the root cgroup here, or in the
  // agent's own cgroup elsewhere) cannot be frozen; the refusal is audited, once, and the agent keeps running.
  const std::string budgets =
      "[[budgets]]\nname = \"everyone\"\nselect = { team = \"c\" }\nresource = \"tokens_out\"\n"
      "window = \"day\"\nhard = 10\naction = \"freeze\"\n";
  TallydProcess tallyd(config(budgets));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedSubscriber feed(*endpoint);
  Process client({BUDGET_CLIENT_PATH, "watch", "team=c", "50", "60"}, {{"TALLY_SOCKET", socket()}});
  auto failed = quota_event(feed, v1::QuotaEvent::KIND_FAILED);
  ASSERT_TRUE(failed) << tallyd.process().stderr_text();
  const std::string detail = failed->envelope.event().quota().detail();
  EXPECT_TRUE(detail.find("root cgroup") != std::string::npos || detail.find("tallyd itself") != std::string::npos)
      << detail;
  const auto quota = tallyctl(tallyd, {"quota"});
  EXPECT_EQ(quota["budgets"][0]["failed"].size(), 1u) << quota.dump();
  EXPECT_FALSE(quota["budgets"][0].contains("frozen"));
}

}  // namespace
}  // namespace tally::test
