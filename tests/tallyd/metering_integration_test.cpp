// The real tallyd metering real writer processes over shared memory, checked on the feed: exact totals from
// 8 processes x 4 threads, tiny lanes with the agent stopped, the agent killed and restarted, percentiles within
// 1%, an agent that appears after the workload, a hostile segment quarantined without harm to the others, tenant
// restrictions, and `tallyctl top`. Label `integration` (not `concurrent`: under TSan the feed subscriber reports
// false races inside the uninstrumented libzmq; the concurrent parts are covered by shm_client_test).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <thread>

#include "agent/base/histogram.hpp"
#include "shm/format/segment_format.hpp"
#include "tests/support/workload_gen.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/feed_subscriber.hpp"
#include "tests/support/tallyd_process.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;
using Totals = std::map<std::string, std::map<std::string, std::uint64_t>>;  // label text -> counter -> value

constexpr std::uint32_t kLabels = 5;

struct WriterSpec {
  std::uint32_t process = 0, threads = 4;
  std::uint64_t iterations = 4000;
  std::uint64_t seed = 7;
};

// What the writers wrote, computed from the same generator.
void add_expected(const WriterSpec& w, std::uint64_t from, std::uint64_t to, Totals& totals) {
  for (std::uint32_t t = 0; t < w.threads; ++t) {
    for (std::uint64_t i = from; i < to; ++i) {
      const auto g = generate(w.seed, w.process, t, i, kLabels);
      add_written_counters(g, totals[label_text(g.label_index)]);
    }
  }
  for (auto& [text, counters] : totals) {
    for (auto it = counters.begin(); it != counters.end();) it = it->second == 0 ? counters.erase(it) : std::next(it);
  }
}

std::string text_of(const v1::LabelSetUsage& ls) {
  std::string text;
  for (const auto& l : ls.labels()) text += (text.empty() ? "" : "\n") + l.key() + "=" + l.value();
  return text;
}

bool is_writer(const v1::WorkloadUsage& w) {
  return std::find(w.names().begin(), w.names().end(), "shm-test-writer") != w.names().end();
}

// A counter the client reported, as the feed carries it (0 when absent).
std::uint64_t client_total(const google::protobuf::RepeatedPtrField<v1::CounterTotal>& totals, const std::string& name) {
  for (const auto& t : totals) {
    if (t.name() == name && t.source() == v1::VALUE_SOURCE_CLIENT) return t.total();
  }
  return 0;
}

// The writers' totals in a snapshot report (which carries every workload and label set).
Totals feed_totals(const v1::UsageReport& report) {
  Totals totals;
  for (const auto& w : report.workloads()) {
    if (!is_writer(w)) continue;
    for (const auto& ls : w.label_sets()) {
      for (const auto& t : ls.totals()) {
        if (t.source() == v1::VALUE_SOURCE_CLIENT && t.total() != 0) totals[text_of(ls)][t.name()] += t.total();
      }
    }
  }
  return totals;
}

class Metering : public ::testing::Test {
 protected:
  std::string config(std::uint32_t usage_ms = 100, const std::string& more = "", std::uint32_t drain_ms = 10) const {
    // Snapshots every few reports: the tests read whole workloads from them.
    return test_config(1000, usage_ms,
                       fmt::format("[metering]\nsocket = \"{}\"\nruntime_dir = \"{}\"\nstate_dir = \"{}\"\n"
                                   "drain_interval_ms = {}\n{}",
                                   socket().string(), (dir_ / "run").string(), (dir_ / "state").string(), drain_ms,
                                   more),
                       3 * usage_ms);
  }
  std::filesystem::path socket() const { return dir_ / "tally.sock"; }

  std::unique_ptr<TallydProcess> start_agent(const std::string& config_text) {
    auto agent = std::make_unique<TallydProcess>(config_text);
    endpoint_ = agent->wait_ready();
    EXPECT_TRUE(endpoint_) << agent->process().stderr_text();
    subscriber_ = std::make_unique<FeedSubscriber>(*endpoint_, "usage");
    return agent;
  }

  std::unique_ptr<Process> start_writer(const WriterSpec& w, std::vector<std::string> extra = {},
                                        std::map<std::string, std::string> env = {}) {
    std::vector<std::string> argv{SHM_TEST_WRITER_PATH, "--process", std::to_string(w.process), "--threads",
                                  std::to_string(w.threads), "--iterations", std::to_string(w.iterations),
                                  "--labels", std::to_string(kLabels), "--seed", std::to_string(w.seed)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    env.emplace("TALLY_SOCKET", socket().string());
    env.emplace("TALLY_OPEN_TIMEOUT_MS", "5000");
    return std::make_unique<Process>(argv, env);
  }

  static void wait_done(Process& writer) {
    const auto status = writer.wait(60s);
    ASSERT_TRUE(status) << "writer did not finish";
    ASSERT_TRUE(status->exited && status->code == 0) << "writer failed: " << writer.stderr_text();
  }

  // Waits for a snapshot report whose writer totals equal `expected`; returns it (the last snapshot otherwise).
  v1::UsageReport wait_for_totals(const Totals& expected, std::chrono::milliseconds deadline = 30s) {
    v1::UsageReport last;
    subscriber_->receive_until(
        [&](const FeedMessage& m) {
          if (!m.envelope.usage().snapshot()) return false;
          last = m.envelope.usage();
          return feed_totals(last) == expected;
        },
        deadline);
    return last;
  }

  TempDir dir_;
  std::optional<std::string> endpoint_;
  std::unique_ptr<FeedSubscriber> subscriber_;
};

double exact_quantile(std::vector<std::uint64_t> values, double q) {
  std::sort(values.begin(), values.end());
  const auto rank = std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size()))));
  return static_cast<double>(values[rank - 1]);
}

TEST_F(Metering, EightProcessesOfFourThreadsExactTotalsAndPercentilesWithinOnePercent) {
  auto agent = start_agent(config());
  Totals expected;
  std::vector<std::unique_ptr<Process>> writers;
  std::vector<WriterSpec> specs;
  for (std::uint32_t p = 0; p < 8; ++p) {
    specs.push_back({p, 4, 4000, 11});
    add_expected(specs.back(), 0, specs.back().iterations, expected);
    // Lanes larger than all a process writes (threads that come and go hand their lane on): no event can drop,
    // so the histograms hold every request.
    writers.push_back(start_writer(specs.back(), {}, {{"TALLY_LANE_RECORDS", "16384"}, {"TALLY_SLOTS", "8"}}));
  }
  for (auto& w : writers) wait_done(*w);
  const v1::UsageReport report = wait_for_totals(expected);
  ASSERT_EQ(feed_totals(report), expected);

  // Each writer process sits in the root cgroup here: one workload per process, never merged.
  std::set<std::string> ids;
  for (const auto& w : report.workloads()) {
    if (!is_writer(w)) continue;
    ids.insert(w.workload_id());
    EXPECT_EQ(client_total(w.totals(), "events_dropped"), 0u);
    EXPECT_TRUE(w.quarantined().empty());
  }
  EXPECT_EQ(ids.size(), 8u);

  // Percentiles: merge each label set's histograms over the 8 workloads (that is what mergeable buckets are for),
  // then compare with the exact nearest-rank percentiles of every value written.
  for (std::uint32_t k = 0; k < kLabels; ++k) {
    ExponentialHistogram ttft, duration, tokens;
    std::vector<std::uint64_t> ttft_values, duration_values, token_values;
    for (const auto& w : report.workloads()) {
      if (!is_writer(w)) continue;
      for (const auto& ls : w.label_sets()) {
        if (text_of(ls) != label_text(k)) continue;
        auto rebuild = [](const v1::RequestTail& t) {
          const auto& h = t.histogram();
          EXPECT_EQ(h.scale(), 6);
          return ExponentialHistogram::from_parts(h.offset(), {h.bucket_counts().begin(), h.bucket_counts().end()},
                                                       h.zero_count(), h.sum(), h.min(), h.max());
        };
        ttft.merge(rebuild(ls.ttft_ns()));
        duration.merge(rebuild(ls.duration_ns()));
        tokens.merge(rebuild(ls.tokens()));
      }
    }
    for (const auto& spec : specs) {
      for (std::uint32_t t = 0; t < spec.threads; ++t) {
        for (std::uint64_t i = 0; i < spec.iterations; ++i) {
          const auto g = generate(spec.seed, spec.process, t, i, kLabels);
          if (g.label_index != k) continue;
          ttft_values.push_back(g.request.ttft_ns);
          duration_values.push_back(g.request.duration_ns);
          token_values.push_back(g.request.tokens_in + g.request.tokens_out);
        }
      }
    }
    ASSERT_EQ(ttft.count(), ttft_values.size());
    for (double q : {0.5, 0.95, 0.99}) {
      EXPECT_NEAR(ttft.quantile(q), exact_quantile(ttft_values, q), exact_quantile(ttft_values, q) * 0.01) << q;
      EXPECT_NEAR(duration.quantile(q), exact_quantile(duration_values, q), exact_quantile(duration_values, q) * 0.01);
      EXPECT_NEAR(tokens.quantile(q), exact_quantile(token_values, q), exact_quantile(token_values, q) * 0.01);
    }
    EXPECT_EQ(ttft.max(), *std::max_element(ttft_values.begin(), ttft_values.end()));
  }
  // The per-label-set p99 in the feed is the one computed by the agent: check one against the exact value too.
  for (const auto& w : report.workloads()) {
    if (!is_writer(w)) continue;
    const auto& ls = w.label_sets(0);
    EXPECT_GT(ls.ttft_ns().p99(), 0.0);
    EXPECT_GT(ls.top1pct_token_share(), 0.0);
    EXPECT_LT(ls.top1pct_token_share(), 1.0);
  }
}

// A report drains the lanes before it reads the counters: once a writer pauses, the report whose totals hold all
// it wrote also has every one of its requests in the tails, however far behind the drain timer is (here it would
// not fire for a minute).
TEST_F(Metering, AReportsTailsHoldEveryRequestItsTotalsCount) {
  auto agent = start_agent(config(100, "", 60'000));
  const auto gate = dir_ / "gate";
  const WriterSpec spec{0, 2, 2000, 41};
  Totals expected;
  add_expected(spec, 0, spec.iterations / 2, expected);
  auto writer = start_writer(spec, {"--gate", gate.string()}, {{"TALLY_LANE_RECORDS", "4096"}});
  ASSERT_EQ(writer->wait_for_stdout_lines(2, 30s).size(), 2u) << writer->stderr_text();  // attached, half
  const v1::UsageReport report = wait_for_totals(expected);
  ASSERT_EQ(feed_totals(report), expected);
  std::uint64_t histogrammed = 0, requests = 0;
  for (const auto& w : report.workloads()) {
    if (!is_writer(w)) continue;
    for (const auto& ls : w.label_sets()) {
      histogrammed += ls.ttft_ns().histogram().count();
      requests += client_total(ls.totals(), "requests");
    }
  }
  EXPECT_EQ(requests, spec.threads * (spec.iterations / 2));
  EXPECT_EQ(histogrammed, requests);
  std::ofstream(gate).put('1');
  wait_done(*writer);
}

TEST_F(Metering, TinyLanesWithTheAgentStoppedTotalsExactDropsCounted) {
  auto agent = start_agent(config());
  const auto gate = dir_ / "gate";
  Totals expected;
  std::vector<std::unique_ptr<Process>> writers;
  for (std::uint32_t p = 0; p < 2; ++p) {
    WriterSpec spec{p, 4, 4000, 23};
    add_expected(spec, 0, spec.iterations, expected);
    writers.push_back(start_writer(spec, {"--gate", gate.string()}, {{"TALLY_LANE_RECORDS", "4"}}));
  }
  for (auto& w : writers) ASSERT_EQ(w->wait_for_stdout_lines(2, 30s).size(), 2u) << w->stderr_text();  // half
  agent->process().signal(SIGSTOP);
  std::ofstream(gate).put('1');
  for (auto& w : writers) wait_done(*w);  // the agent never ran meanwhile: the lanes overflowed
  agent->process().signal(SIGCONT);
  const v1::UsageReport report = wait_for_totals(expected);
  ASSERT_EQ(feed_totals(report), expected);
  std::uint64_t dropped = 0, histogrammed = 0, requests = 0;
  for (const auto& w : report.workloads()) {
    if (!is_writer(w)) continue;
    dropped += client_total(w.totals(), "events_dropped");
    for (const auto& ls : w.label_sets()) {
      histogrammed += ls.ttft_ns().histogram().count();
      requests += client_total(ls.totals(), "requests");
    }
  }
  EXPECT_GT(dropped, 0u);
  EXPECT_EQ(histogrammed + dropped, requests);  // every request either reached the histograms or was counted
}

// sd-event fires a timer up to its accuracy late; with its default (250 ms) a 100 ms drain could come 350 ms after
// the last. A lane filled to a quarter of its capacity per drain interval must never fill up, even with every CPU
// busy with other work: the drain keeps its cadence.
TEST_F(Metering, AQuarterOfALanePerDrainIntervalDropsNothingOnALoadedMachine) {
  // Reports once a second, as by default: no other timer of the agent wakes it up in between.
  auto agent = start_agent(test_config(
      1000, 1000,
      fmt::format("[metering]\nsocket = \"{}\"\nruntime_dir = \"{}\"\nstate_dir = \"{}\"\ndrain_interval_ms = 100\n"
                  "lane_records = 1024\n",
                  socket().string(), (dir_ / "run").string(), (dir_ / "state").string()),
      1000));
  // Load: two busy processes per CPU, stopped (by their pids) when the test ends.
  std::vector<std::unique_ptr<Process>> burners;
  for (unsigned i = 0; i < 2 * std::max(1u, std::thread::hardware_concurrency()); ++i) {
    burners.push_back(std::make_unique<Process>(std::vector<std::string>{"/bin/sh", "-c", "while :; do :; done"}));
  }
  // 4 threads x 2,560 requests/s: 256 per thread and 100 ms drain interval, a quarter of the 1,024-record lane.
  WriterSpec spec{0, 4, 10240, 13};
  auto writer = start_writer(spec, {"--per-second", "2560"});
  wait_done(*writer);
  burners.clear();
  Totals expected;
  add_expected(spec, 0, spec.iterations, expected);
  const v1::UsageReport report = wait_for_totals(expected);
  ASSERT_EQ(feed_totals(report), expected);
  std::uint64_t histogrammed = 0, dropped = 0;
  for (const auto& w : report.workloads()) {
    if (!is_writer(w)) continue;
    dropped += client_total(w.totals(), "events_dropped");
    for (const auto& ls : w.label_sets()) histogrammed += ls.ttft_ns().histogram().count();
  }
  EXPECT_EQ(dropped, 0u);
  EXPECT_EQ(histogrammed, spec.threads * spec.iterations);
}

TEST_F(Metering, AgentKilledMidRunAndRestartedTotalsExact) {
  auto agent = start_agent(config());
  const auto gate = dir_ / "gate";
  Totals expected;
  std::vector<std::unique_ptr<Process>> writers;
  for (std::uint32_t p = 0; p < 3; ++p) {
    WriterSpec spec{p, 4, 6000, 31};
    add_expected(spec, 0, spec.iterations, expected);
    writers.push_back(start_writer(spec, {"--gate", gate.string()}));
  }
  for (auto& w : writers) ASSERT_EQ(w->wait_for_stdout_lines(2, 30s).size(), 2u) << w->stderr_text();
  agent->process().signal(SIGKILL);
  ASSERT_TRUE(agent->process().wait(20s));
  // The writers finish and exit while no agent runs: their segments wait on tmpfs.
  std::ofstream(gate).put('1');
  for (auto& w : writers) wait_done(*w);

  agent = start_agent(config());
  v1::UsageReport report = wait_for_totals(expected);
  ASSERT_EQ(feed_totals(report), expected) << agent->process().stderr_text();

  // Once more, now that the exited workloads' totals live only in the checkpoint.
  ASSERT_TRUE(wait_until([&] {
    std::error_code ec;
    return std::filesystem::is_empty(dir_ / "run" / "segments", ec);
  })) << "exited segments were not retired";
  agent->process().signal(SIGKILL);
  ASSERT_TRUE(agent->process().wait(20s));
  agent = start_agent(config());
  report = wait_for_totals(expected);
  ASSERT_EQ(feed_totals(report), expected);
  for (const auto& w : report.workloads()) {
    if (is_writer(w)) {
      EXPECT_TRUE(w.exited());
    }
  }
}

// What a workload counts before any agent runs is kept in the client's own memory and handed over when it attaches:
// its totals are exact from the first call.
TEST_F(Metering, NoAgentCallsReturnAndAnAgentStartedLaterGetsEverythingCounted) {
  const auto gate = dir_ / "gate";
  WriterSpec spec{0, 4, 20000, 5};
  auto writer = start_writer(spec, {"--no-wait", "--gate", gate.string()}, {{"TALLY_RETRY_MS", "50"}});
  // With no agent, the first half runs through (every call a no-op) and the writer reaches the gate.
  ASSERT_EQ(writer->wait_for_stdout_lines(1, 30s).size(), 1u) << writer->stderr_text();
  EXPECT_EQ(writer->stdout_text(), "half\n");
  auto agent = start_agent(config());
  std::ofstream(gate).put('1');
  wait_done(*writer);
  EXPECT_NE(writer->stdout_text().find("attached"), std::string::npos);
  Totals expected;
  add_expected(spec, 0, spec.iterations, expected);  // the half before any agent ran, and the half after
  const v1::UsageReport report = wait_for_totals(expected);
  ASSERT_EQ(feed_totals(report), expected);
}

TEST_F(Metering, HostileSegmentIsQuarantinedAndTheOthersAreUnaffected) {
  auto agent = start_agent(config());
  const auto gate = dir_ / "gate";
  WriterSpec good{0, 2, 2000, 3}, bad{1, 2, 2000, 3};
  auto good_writer = start_writer(good);
  auto bad_writer = start_writer(bad, {"--gate", gate.string()});
  ASSERT_EQ(bad_writer->wait_for_stdout_lines(2, 30s).size(), 2u) << bad_writer->stderr_text();
  // Scribble on the bad writer's segment as a hostile client could: its first lane's head jumps far ahead.
  std::filesystem::path victim;
  for (const auto& e : std::filesystem::directory_iterator(dir_ / "run" / "segments")) {
    if (e.path().extension() == ".seg" &&
        e.path().filename().string().starts_with(std::to_string(bad_writer->pid()) + "-")) {
      victim = e.path();
    }
  }
  ASSERT_FALSE(victim.empty());
  {
    const int fd = ::open(victim.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    shm::format::Header h{};
    ASSERT_EQ(::pread(fd, &h, sizeof h, 0), static_cast<ssize_t>(sizeof h));
    const std::uint64_t head = 1'000'000'000;
    const off_t slot0_head = static_cast<off_t>(h.slot_headers_offset + offsetof(shm::format::SlotHeader, head));
    ASSERT_EQ(::pwrite(fd, &head, sizeof head, slot0_head), 8);
    ::close(fd);
  }
  const auto quarantined = subscriber_->receive_until(
      [&](const FeedMessage& m) {
        for (const auto& w : m.envelope.usage().workloads()) {
          if (!w.quarantined().empty()) return true;
        }
        return false;
      },
      30s);
  ASSERT_TRUE(quarantined);
  for (const auto& w : quarantined->envelope.usage().workloads()) {
    if (w.quarantined().empty()) continue;
    EXPECT_EQ(w.attributes().at("pid"), std::to_string(bad_writer->pid()));
    EXPECT_NE(w.quarantined(0).reason().find("overran"), std::string::npos) << w.quarantined(0).reason();
  }
  EXPECT_TRUE(wait_until([&] { return agent->process().stderr_text().find("quarantined") != std::string::npos; }));
  std::ofstream(gate).put('1');
  wait_done(*bad_writer);  // the writer itself never notices
  wait_done(*good_writer);
  Totals expected;
  add_expected(good, 0, good.iterations, expected);
  const auto report = subscriber_->receive_until(
      [&](const FeedMessage& m) {
        if (!m.envelope.usage().snapshot()) return false;  // the one that carries every label set
        for (const auto& w : m.envelope.usage().workloads()) {
          if (w.attributes().count("pid") && w.attributes().at("pid") == std::to_string(good_writer->pid())) {
            Totals t;
            for (const auto& ls : w.label_sets()) {
              for (const auto& c : ls.totals()) {
                if (c.total() != 0) t[text_of(ls)][c.name()] += c.total();
              }
            }
            return t == expected;
          }
        }
        return false;
      },
      30s);
  EXPECT_TRUE(report) << "the well-behaved workload's totals are not exact";
  EXPECT_TRUE(agent->process().running());
}

TEST_F(Metering, RefusedTenantsAreRenamedAndDenied) {
  auto agent = start_agent(config(100, fmt::format("tenant_rules = [{{ uid = {}, tenants = [\"t0\"] }}]\n", ::getuid())));
  WriterSpec spec{0, 1, 500, 9};
  auto writer = start_writer(spec);
  wait_done(*writer);
  const auto report = subscriber_->receive_until(
      [&](const FeedMessage& m) {
        for (const auto& w : m.envelope.usage().workloads()) {
          if (is_writer(w) && w.label_sets_size() == static_cast<int>(kLabels)) return true;
        }
        return false;
      },
      30s);
  ASSERT_TRUE(report);
  int refused = 0, allowed = 0;
  for (const auto& w : report->envelope.usage().workloads()) {
    if (!is_writer(w)) continue;
    for (const auto& ls : w.label_sets()) {
      const std::string text = text_of(ls);
      if (ls.refused()) {
        ++refused;
        EXPECT_EQ(text.rfind("refused_tenant=", 0), 0u) << text;
      } else {
        ++allowed;
        EXPECT_EQ(text.rfind("tenant=t0", 0), 0u) << text;
      }
    }
  }
  EXPECT_EQ(allowed, 2);  // labels 0 and 3 are tenant t0
  EXPECT_EQ(refused, 3);
  EXPECT_TRUE(wait_until([&] { return agent->process().stderr_text().find("may not claim tenant") != std::string::npos; }));
}

TEST_F(Metering, TallyctlTopShowsTheWorkloads) {
  auto agent = start_agent(config(100));
  WriterSpec spec{0, 2, 3000, 4};
  auto writer = start_writer(spec);
  wait_done(*writer);
  ASSERT_TRUE(subscriber_->receive_until([](const FeedMessage& m) { return feed_totals(m.envelope.usage()).size() > 0; }, 30s));
  const auto result = run_command({TALLYCTL_PATH, "top", "--plain", "-n", "2", "-e", *endpoint_}, 30s);
  EXPECT_TRUE(result.status.exited && result.status.code == 0) << result.output;
  EXPECT_NE(result.output.find("WORKLOAD"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("shm-test-writer"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("TTFT p99"), std::string::npos);
}

}  // namespace
}  // namespace tally::test
