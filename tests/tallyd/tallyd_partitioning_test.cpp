// GPU partitioning end to end: the real tallyd applies a plan from its config and drop-ins, with GPUs from the fake
// NVML (their minors 200+, far from real GPUs'), onto real test cgroups; processes there open character devices of
// NVIDIA's major made in a temp dir (allowed: ENXIO from the absent driver; denied: EPERM). tallyctl talks to it over
// its control socket. The policy is pinned in a private bpffs, so that nothing outlives the test process.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <chrono>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "collectors/kernel/bpf_probes.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/process.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/test_cgroup.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

constexpr unsigned kNvidiaMajor = 195;
constexpr unsigned kFirstMinor = 200;  // GPU n's minor is kFirstMinor + n

class TallydPartitioningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (BPF, mknod, test cgroups)";
    if (auto support = collectors::check_bpf_support(); !support) {
      GTEST_SKIP() << "no BPF here: " << support.error().message;
    }
    auto root = cgroup2_root();
    if (!root) GTEST_SKIP() << "needs cgroup v2 (pure or hybrid)";
    root_ = *root;
    bpffs_ = std::make_unique<PrivateBpffs>();
    if (!bpffs_->error().empty()) GTEST_SKIP() << bpffs_->error();
    parent_ = std::make_unique<TestCgroupParent>(root_);
    a_ = parent_->make_child("a");
    b_ = parent_->make_child("b");
    for (unsigned n : {0u, 1u}) {
      const auto node = dir_ / ("nvidia" + std::to_string(n));
      ASSERT_EQ(::mknod(node.c_str(), S_IFCHR | 0666, makedev(kNvidiaMajor, kFirstMinor + n)), 0);
    }
    json gpus = json::array();
    for (unsigned n : {0u, 1u}) {
      gpus.push_back({{"uuid", fmt::format("GPU-{}", n)},
                      {"bus_id", fmt::format("00000000:3{}:00.0", n)},
                      {"name", "NVIDIA H100 80GB HBM3"},
                      {"memory_total", 80ull << 30},
                      {"minor", kFirstMinor + n}});
    }
    gpus[0]["mig_model"] = "H100-SXM5-80GB";
    gpus[0]["mig_mode"] = 0;
    dir_.write("scenario.json", json{{"driver_version", "550.54.15"}, {"gpus", gpus}}.dump());
    std::filesystem::create_directory(dir_ / "plan.d");
  }

  std::string cgroup_workload(const std::filesystem::path& cgroup) const {
    return "cgroup:/" + cgroup.lexically_relative(root_).generic_string();
  }
  std::filesystem::path pin_dir() const { return bpffs_->path() / "tally-policy"; }

  // A config whose plan gives GPU 0 to cgroup a (plus `plan`, more [partitioning] keys or tables).
  std::string config(const std::string& plan_keys = "", const std::string& plan_tables = "") const {
    return test_config(1000, 1000,
                       fmt::format("[topology]\nnvml_library = \"{}\"\n[gpu]\nenabled = false\n"
                                   "[probes]\nenabled = false\npin_dir = \"\"\n"
                                   "[partitioning]\npin_dir = \"{}\"\ndrop_in_dir = \"{}\"\n{}\n{}",
                                   FAKE_NVML_PATH, pin_dir().string(), (dir_ / "plan.d").string(), plan_keys,
                                   plan_tables));
  }
  std::string assign(const std::filesystem::path& cgroup, const std::string& gpus) const {
    return fmt::format("[[partitioning.assign]]\nworkload = \"{}\"\ngpus = [{}]\n", cgroup_workload(cgroup), gpus);
  }

  std::unique_ptr<TallydProcess> start(const std::string& config_text) const {
    auto tallyd = std::make_unique<TallydProcess>(
        config_text, std::vector<std::string>{},
        std::map<std::string, std::string>{{"TALLY_FAKE_NVML_SCENARIO", (dir_ / "scenario.json").string()}});
    return tallyd;
  }

  // What an open of GPU n's node by a process in `cgroup` gives: 0 or an errno.
  int open_in(const std::filesystem::path& cgroup, unsigned n) const {
    CgroupProcess process(cgroup, {TALLY_EBPF_WORKLOAD, "open", (dir_ / ("nvidia" + std::to_string(n))).string()});
    const auto line = process.read_line(10s);
    process.close_stdin();
    process.wait(10s);
    if (!line || !line->starts_with("open errno ")) return -1;
    return std::stoi(line->substr(11));
  }

  CommandResult tallyctl(TallydProcess& tallyd, std::vector<std::string> args) const {
    std::vector<std::string> argv{TALLYCTL_PATH, "plan", "--socket", tallyd.control_socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, 60s);
  }
  json plan_show(TallydProcess& tallyd) const {
    const auto shown = tallyctl(tallyd, {"--json", "show"});
    EXPECT_EQ(shown.status.code, 0) << shown.output;
    return json::parse(shown.output, nullptr, /*allow_exceptions=*/false);
  }

  std::filesystem::path root_;
  std::unique_ptr<PrivateBpffs> bpffs_;
  std::unique_ptr<TestCgroupParent> parent_;
  TempDir dir_;
  std::filesystem::path a_, b_;
};

// The plan in force from READY=1; a denial is counted and on the feed; a cgroup made later at an assigned path
// opens its GPU at once; SIGKILL leaves the policy enforcing and the next tallyd adopts it; plan clear removes it.
TEST_F(TallydPartitioningTest, EnforcedFromReadyAuditedSurvivesSigkillAndClearRemovesIt) {
  const auto later = parent_->path() / "later";
  const std::string text = config("", assign(a_, "\"0\"") + assign(later, "\"GPU-1\""));
  auto tallyd = start(text);
  const auto endpoint = tallyd->wait_ready();
  ASSERT_TRUE(endpoint) << tallyd->process().stderr_text();
  FeedSubscriber events(*endpoint, "event");
  EXPECT_EQ(open_in(a_, 0), ENXIO) << "assigned: the open reaches the (absent) driver";
  EXPECT_EQ(open_in(b_, 1), EPERM) << "GPU 1 is assigned to `later`, which does not exist yet";
  // The denial is on the feed, with the workload and the node, and in the journal. Subscribing takes a moment:
  // deny again until one arrives (each attempt is counted; the sampled ones are published).
  std::optional<v1::PartitionEvent> denied;
  ASSERT_TRUE(wait_until([&] {
    EXPECT_EQ(open_in(b_, 0), EPERM);
    auto message = events.receive_until([](const FeedMessage& m) {
      const auto& event = m.envelope.event().partition();
      return event.kind() == v1::PartitionEvent::KIND_DENIED && event.device() == "/dev/nvidia200";
    }, 200ms);
    if (message) denied = message->envelope.event().partition();
    return denied.has_value();
  }, 20s));
  EXPECT_EQ(denied->workload(), cgroup_workload(b_));
  EXPECT_EQ(denied->device(), fmt::format("/dev/nvidia{}", kFirstMinor));
  EXPECT_GE(denied->count(), 1u);
  EXPECT_GE(denied->generation(), 1u);
  EXPECT_TRUE(tallyd->process().wait_for_stderr("denied /dev/nvidia200 to " + cgroup_workload(b_), 10s));

  std::filesystem::create_directory(later);
  EXPECT_EQ(open_in(later, 1), ENXIO) << "an awaited path holds its grants from its mkdir";
  EXPECT_EQ(open_in(later, 0), EPERM);

  const json shown = plan_show(*tallyd);
  EXPECT_TRUE(shown.value("enforcing", false)) << shown.dump();
  EXPECT_EQ(shown["can_open"][cgroup_workload(a_)], json::array({"/dev/nvidia200"})) << shown.dump();
  bool counted = false;
  for (const auto& denial : shown["denials"]) {
    counted |= denial["workload"] == cgroup_workload(b_) && denial["count"].get<unsigned>() >= 1;
  }
  EXPECT_TRUE(counted) << shown.dump();
  const auto generation = shown["generation"].get<std::uint64_t>();

  tallyd->process().signal(SIGKILL);
  ASSERT_TRUE(tallyd->process().wait(10s));
  EXPECT_EQ(open_in(b_, 0), EPERM) << "fail-closed: the pinned policy enforces with no agent";
  EXPECT_EQ(open_in(a_, 0), ENXIO);

  auto again = start(text);
  ASSERT_TRUE(again->wait_ready()) << again->process().stderr_text();
  EXPECT_TRUE(again->process().wait_for_stderr("device policy adopted", 10s)) << again->process().stderr_text();
  const json adopted = plan_show(*again);
  EXPECT_TRUE(adopted.value("adopted", false)) << adopted.dump();
  EXPECT_EQ(adopted["generation"], generation) << "the same plan: no new generation";
  EXPECT_EQ(open_in(b_, 0), EPERM);

  const auto cleared = tallyctl(*again, {"clear"});
  EXPECT_EQ(cleared.status.code, 0) << cleared.output;
  EXPECT_EQ(open_in(b_, 0), ENXIO) << "cleared: nothing restricts GPU 0";
  EXPECT_FALSE(std::filesystem::exists(pin_dir() / "maps"));
  again->process().signal(SIGTERM);
  ASSERT_TRUE(again->process().wait(20s));
  EXPECT_EQ(open_in(b_, 0), ENXIO);
}

// on_stop = "keep" leaves the policy in force after a clean stop; "release" takes it away.
TEST_F(TallydPartitioningTest, OnStopKeepsOrReleasesThePolicy) {
  for (const std::string on_stop : {"keep", "release"}) {
    SCOPED_TRACE(on_stop);
    auto tallyd = start(config(fmt::format("on_stop = \"{}\"", on_stop), assign(a_, "\"0\"")));
    ASSERT_TRUE(tallyd->wait_ready()) << tallyd->process().stderr_text();
    ASSERT_EQ(open_in(b_, 0), EPERM);
    tallyd->process().signal(SIGTERM);
    const auto status = tallyd->process().wait(20s);
    ASSERT_TRUE(status && status->exited && status->code == 0) << tallyd->process().stderr_text();
    if (on_stop == "keep") {
      EXPECT_EQ(open_in(b_, 0), EPERM) << "kept in force while no agent runs";
      EXPECT_TRUE(std::filesystem::exists(pin_dir() / "maps"));
    } else {
      EXPECT_EQ(open_in(b_, 0), ENXIO) << "released at stop";
      EXPECT_FALSE(std::filesystem::exists(pin_dir() / "maps"));
    }
  }
  // Nothing left for the next test: what "keep" pinned goes with the private bpffs anyway.
}

// tallyctl plan diff previews a drop-in (changing nothing, naming what would be refused); apply brings the drop-ins
// into force through the agent.
TEST_F(TallydPartitioningTest, DiffChangesNothingAndApplyBringsDropInsIntoForce) {
  auto tallyd = start(config());
  ASSERT_TRUE(tallyd->wait_ready()) << tallyd->process().stderr_text();
  EXPECT_EQ(open_in(b_, 0), ENXIO) << "nothing assigned yet";
  const auto file = dir_.write("job.toml", assign(a_, "\"0\""));
  const auto diff = tallyctl(*tallyd, {"diff", file.string()});
  EXPECT_EQ(diff.status.code, 0) << diff.output;
  EXPECT_NE(diff.output.find("/dev/nvidia200 becomes restricted"), std::string::npos) << diff.output;
  EXPECT_NE(diff.output.find(cgroup_workload(a_) + " may open /dev/nvidia200"), std::string::npos) << diff.output;
  EXPECT_EQ(open_in(b_, 0), ENXIO) << "diff changes nothing";

  const auto absent = dir_.write("absent.toml", assign(a_, "\"7\""));
  const auto refused = tallyctl(*tallyd, {"diff", absent.string()});
  EXPECT_EQ(refused.status.code, 2) << refused.output;
  EXPECT_NE(refused.output.find("GPU '7' is not on this node"), std::string::npos) << refused.output;

  std::filesystem::copy_file(file, dir_ / "plan.d" / "job.toml");
  const auto applied = tallyctl(*tallyd, {"apply"});
  EXPECT_EQ(applied.status.code, 0) << applied.output;
  EXPECT_NE(applied.output.find("/dev/nvidia200 becomes restricted"), std::string::npos) << applied.output;
  EXPECT_EQ(open_in(b_, 0), EPERM);
  EXPECT_EQ(open_in(a_, 0), ENXIO);
  EXPECT_TRUE(tallyd->process().wait_for_stderr("applied", 10s));

  std::filesystem::remove(dir_ / "plan.d" / "job.toml");
  tallyd->process().signal(SIGHUP);  // SIGHUP does what apply does
  EXPECT_TRUE(wait_until([&] { return open_in(b_, 0) == ENXIO; }, 20s)) << tallyd->process().stderr_text();
}

// [[partitioning.gpu]]: the MIG geometry is reconciled through NVML before READY=1, each step audited; a slice
// that device files cannot isolate here (no nvidia-caps) is refused with the reason, the rest applied.
TEST_F(TallydPartitioningTest, MigGeometryIsReconciledAtStartAndUnisolableSlicesAreRefused) {
  auto tallyd = start(config("", "[[partitioning.gpu]]\nselect = \"GPU-0\"\nmode = \"mig\"\n"
                                 "profiles = [\"3g.40gb\", \"3g.40gb\"]\n" + assign(a_, "\"0/mig/0\"")));
  ASSERT_TRUE(tallyd->wait_ready()) << tallyd->process().stderr_text();
  const std::string log = tallyd->process().stderr_text();
  EXPECT_NE(log.find("GPU 0: enable MIG"), std::string::npos) << log;
  EXPECT_NE(log.find("GPU 0: create 3g.40gb"), std::string::npos) << log;
  EXPECT_NE(log.find("cannot be isolated by device policy here"), std::string::npos) << log;
  const json shown = plan_show(*tallyd);
  ASSERT_EQ(shown["gpus"].size(), 2u) << shown.dump();
  EXPECT_TRUE(shown["gpus"][0]["mig"].get<bool>());
  ASSERT_EQ(shown["gpus"][0]["instances"].size(), 2u) << shown.dump();
  EXPECT_EQ(shown["gpus"][0]["instances"][0]["profile"], "3g.40gb");
  EXPECT_EQ(open_in(b_, 0), ENXIO) << "the refused slice restricted nothing";
}

// Budgets' revoke-gpu through the real tallyd (docs/budgets.md, docs/partitioning.md "Revocation"): a client in
// cgroup b goes over its budget's hard limit; from the applied QuotaEvent on, new opens of any GPU by b fail with
// EPERM (GPU 1, open to all by the plan, included), while a keeps its GPU 0 and c still opens GPU 1; tallyctl quota
// and plan show name b; tallyctl release gives the access back (undone) and b opens GPU 1 again.
TEST_F(TallydPartitioningTest, BudgetRevokeGpuWithdrawsAWorkloadsAccessAndReleaseGivesItBack) {
  const auto c = parent_->make_child("c");
  const auto socket = (dir_ / "tally.sock").string();
  // The client finds the agent through TALLY_SOCKET, inherited by the processes started in the test cgroups.
  ::setenv("TALLY_SOCKET", socket.c_str(), 1);
  struct Unset {
    ~Unset() { ::unsetenv("TALLY_SOCKET"); }
  } unset;
  const std::string metering_and_budget = fmt::format(
      "[metering]\nsocket = \"{}\"\nruntime_dir = \"{}\"\ndrain_interval_ms = 10\n"
      "[[budgets]]\nname = \"b-tokens\"\nselect = {{ workload = \"{}\" }}\nresource = \"tokens_out\"\n"
      "window = \"day\"\nhard = 1000\naction = \"revoke-gpu\"\n",
      socket, (dir_ / "run").string(), cgroup_workload(b_));
  auto tallyd = start(config("", assign(a_, "\"0\"") + metering_and_budget));
  const auto endpoint = tallyd->wait_ready();
  ASSERT_TRUE(endpoint) << tallyd->process().stderr_text();
  FeedSubscriber events(*endpoint, "event");
  const auto quota_event = [&](v1::QuotaEvent::Kind kind) {
    return events.receive_until([&](const FeedMessage& m) {
      return m.envelope.event().has_quota() && m.envelope.event().quota().kind() == kind;
    }, 20s);
  };
  const auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), TALLYCTL_PATH);
    args.insert(args.end(), {"--socket", tallyd->control_socket(), "--json"});
    const CommandResult result = run_command(args, 20s);
    EXPECT_TRUE(result.status.exited && result.status.code == 0) << result.output;
    return json::parse(result.output, nullptr, /*allow_exceptions=*/false);
  };
  const auto show_text = [&] {
    const auto shown = tallyctl(*tallyd, {"show"});
    EXPECT_EQ(shown.status.code, 0) << shown.output;
    return shown.output;
  };
  const std::string withdrawn_line = "GPU access withdrawn by budgets: " + cgroup_workload(b_);

  EXPECT_EQ(open_in(b_, 1), ENXIO) << "GPU 1 is open to every workload";
  EXPECT_EQ(open_in(b_, 0), EPERM) << "GPU 0 is a's";
  EXPECT_EQ(show_text().find("GPU access withdrawn"), std::string::npos);

  // watch: adds, then stays attached (its counters stay with the agent) until the test ends it.
  CgroupProcess spender(b_, {BUDGET_CLIENT_PATH, "watch", "team=b", "1500", "120"});
  ASSERT_EQ(spender.read_line(20s), "added 1500");
  const auto applied = quota_event(v1::QuotaEvent::KIND_APPLIED);
  ASSERT_TRUE(applied) << tallyd->process().stderr_text();
  const v1::QuotaEvent& event = applied->envelope.event().quota();
  EXPECT_EQ(event.budget(), "b-tokens");
  EXPECT_EQ(event.action(), "revoke-gpu");
  EXPECT_EQ(event.workload(), cgroup_workload(b_));
  EXPECT_EQ(event.used(), 1500u);
  EXPECT_TRUE(tallyd->process().wait_for_stderr("GPU access revoked from " + cgroup_workload(b_), 10s))
      << tallyd->process().stderr_text();

  EXPECT_EQ(open_in(b_, 1), EPERM) << "revoked: GPU 1 too, though the plan leaves it open to all";
  EXPECT_EQ(open_in(b_, 0), EPERM);
  EXPECT_EQ(open_in(a_, 0), ENXIO) << "a keeps its GPU";
  EXPECT_EQ(open_in(a_, 1), ENXIO) << "GPU 1 stays open to a";
  EXPECT_EQ(open_in(c, 1), ENXIO) << "GPU 1 stays open to everyone else";
  EXPECT_EQ(open_in(c, 0), EPERM);

  const json quota = ctl({"quota"});
  ASSERT_EQ(quota["budgets"].size(), 1u) << quota.dump();
  EXPECT_EQ(quota["budgets"][0]["gpu_revoked"], json::array({cgroup_workload(b_)})) << quota.dump();
  EXPECT_FALSE(quota["budgets"][0].contains("failed")) << quota.dump();
  EXPECT_EQ(plan_show(*tallyd)["revoked"], json::array({cgroup_workload(b_)}));
  const std::string text = show_text();
  EXPECT_NE(text.find(withdrawn_line), std::string::npos) << text;

  // Released: given back, audited, and not withdrawn again at the next passes.
  ctl({"release", cgroup_workload(b_)});
  const auto undone = quota_event(v1::QuotaEvent::KIND_UNDONE);
  ASSERT_TRUE(undone) << tallyd->process().stderr_text();
  EXPECT_EQ(undone->envelope.event().quota().workload(), cgroup_workload(b_));
  EXPECT_EQ(undone->envelope.event().quota().action(), "revoke-gpu");
  EXPECT_EQ(open_in(b_, 1), ENXIO) << "released: b opens GPU 1 again";
  EXPECT_EQ(open_in(b_, 0), EPERM) << "the plan's assignment is untouched";
  EXPECT_EQ(open_in(a_, 0), ENXIO);
  EXPECT_EQ(open_in(c, 1), ENXIO);
  const json released = ctl({"quota"});
  EXPECT_FALSE(released["budgets"][0].contains("gpu_revoked")) << released.dump();
  EXPECT_EQ(plan_show(*tallyd)["revoked"], json::array());
  EXPECT_EQ(show_text().find("GPU access withdrawn"), std::string::npos);
  EXPECT_EQ(open_in(b_, 1), ENXIO) << "still released a moment later";
  ::kill(spender.pid(), SIGKILL);  // watch runs on past stdin's end
}

// A node whose plan restricts nothing (no policy attached): a revocation attaches the policy, and is in force.
TEST_F(TallydPartitioningTest, BudgetRevokeGpuWorksWhereNoPlanRestrictsAnything) {
  const auto socket = (dir_ / "tally.sock").string();
  ::setenv("TALLY_SOCKET", socket.c_str(), 1);
  struct Unset {
    ~Unset() { ::unsetenv("TALLY_SOCKET"); }
  } unset;
  auto tallyd = start(config("", fmt::format(
      "[metering]\nsocket = \"{}\"\nruntime_dir = \"{}\"\ndrain_interval_ms = 10\n"
      "[[budgets]]\nname = \"b-tokens\"\nselect = {{ workload = \"{}\" }}\nresource = \"tokens_out\"\n"
      "window = \"day\"\nhard = 1000\naction = \"revoke-gpu\"\n",
      socket, (dir_ / "run").string(), cgroup_workload(b_))));
  const auto endpoint = tallyd->wait_ready();
  ASSERT_TRUE(endpoint) << tallyd->process().stderr_text();
  FeedSubscriber events(*endpoint, "event");
  EXPECT_EQ(open_in(b_, 0), ENXIO) << "nothing is restricted yet";
  CgroupProcess spender(b_, {BUDGET_CLIENT_PATH, "watch", "team=b", "1500", "120"});
  ASSERT_EQ(spender.read_line(20s), "added 1500");
  const auto applied = events.receive_until([&](const FeedMessage& m) {
    const auto& q = m.envelope.event().quota();
    return m.envelope.event().has_quota() &&
           (q.kind() == v1::QuotaEvent::KIND_APPLIED || q.kind() == v1::QuotaEvent::KIND_FAILED);
  }, 20s);
  ASSERT_TRUE(applied) << tallyd->process().stderr_text();
  ASSERT_EQ(applied->envelope.event().quota().kind(), v1::QuotaEvent::KIND_APPLIED)
      << applied->envelope.event().quota().detail();
  EXPECT_EQ(open_in(b_, 0), EPERM) << "revoked: the policy was attached for it";
  EXPECT_EQ(open_in(b_, 1), EPERM);
  EXPECT_EQ(open_in(a_, 0), ENXIO) << "everyone else opens every GPU";
  EXPECT_TRUE(plan_show(*tallyd)["enforcing"].get<bool>());
  ::kill(spender.pid(), SIGKILL);
}

}  // namespace
}  // namespace tally::test
