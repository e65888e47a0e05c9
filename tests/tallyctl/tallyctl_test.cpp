// The real tallyctl binary: `watch` against a real tallyd, and against a publisher the test controls so that
// gaps, restarts and malformed messages can be injected.
#include <signal.h>

#include <gtest/gtest.h>

#include <iterator>
#include <sstream>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "agent/base/workload_identity.hpp"
#include "agent/feed/usage_report.hpp"
#include "agent/ledger/ledger.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/tallyd_process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tally/v1/feed.pb.h"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

std::vector<nlohmann::json> parse_lines(const std::vector<std::string>& lines) {
  std::vector<nlohmann::json> out;
  for (const auto& line : lines) {
    auto parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(parsed.is_discarded()) << "not JSON: " << line;
    out.push_back(std::move(parsed));
  }
  return out;
}

// A stand-in agent: a PUB socket on an ephemeral port sending hand-made envelopes.
class FakeAgent {
 public:
  FakeAgent() : socket_(context_, zmq::socket_type::pub) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("tcp://127.0.0.1:*");
    endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  }
  const std::string& endpoint() const { return endpoint_; }

  void send_heartbeat(const std::string& instance, std::uint64_t sequence) {
    v1::Envelope envelope;
    envelope.set_node_id("node-a");
    envelope.set_instance_id(instance);
    envelope.set_sequence(sequence);
    envelope.set_kind_sequence(sequence);
    envelope.set_timestamp_unix_ns(1'700'000'000'000'000'000ULL + sequence);
    envelope.mutable_heartbeat()->set_rss_bytes(1 << 20);
    send_raw("heartbeat", envelope.SerializeAsString());
  }
  void send_raw(const std::string& topic, const std::string& payload) { send_frames({topic, payload}); }
  void send_frames(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      socket_.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

 private:
  zmq::context_t context_{1};
  zmq::socket_t socket_;
  std::string endpoint_;
};

// Starts `tallyctl watch --json` on the fake agent and sends heartbeats of `instance` until tallyctl shows the
// first one (ZeroMQ subscriptions take a moment to propagate). Returns the last sequence sent.
std::uint64_t warm_up(FakeAgent& agent, Process& watch, const std::string& instance) {
  std::uint64_t sequence = 0;
  const bool seen = wait_until([&] {
    agent.send_heartbeat(instance, ++sequence);
    return !watch.stdout_text().empty();
  }, 20s, 20ms);
  EXPECT_TRUE(seen) << "tallyctl printed nothing; stderr:\n" << watch.stderr_text();
  // Everything up to `sequence` may or may not have arrived; wait until the last one has.
  const std::string marker = "\"sequence\":\"" + std::to_string(sequence) + "\"";
  EXPECT_TRUE(wait_until([&] { return watch.stdout_text().find(marker) != std::string::npos; }))
      << watch.stdout_text();
  return sequence;
}

TEST(TallyctlWatch, JsonLinesFromARealAgent) {
  TallydProcess tallyd(test_config(20, 20));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint);
  Process watch({TALLYCTL_PATH, "watch", "--json", "--endpoint", *endpoint, "--count", "12"});
  const auto status = watch.wait(30s);
  ASSERT_TRUE(status) << "tallyctl watch --count 12 did not finish; stderr:\n" << watch.stderr_text();
  EXPECT_EQ(status->code, 0) << watch.stderr_text();
  const auto lines = watch.wait_for_stdout_lines(12, 1s);
  ASSERT_EQ(lines.size(), 12u) << watch.stdout_text();
  std::uint64_t previous = 0;
  for (const auto& json : parse_lines(lines)) {
    ASSERT_TRUE(json.contains("topic")) << json.dump();  // no notices: a live agent loses nothing
    const auto& envelope = json.at("envelope");
    EXPECT_EQ(envelope.at("node_id"), "test-node");
    EXPECT_TRUE(envelope.contains(json.at("topic") == "usage" ? "usage" : json.at("topic").get<std::string>()))
        << json.dump();
    const auto sequence = std::stoull(envelope.at("sequence").get<std::string>());  // uint64 is a JSON string
    if (previous != 0) {
      EXPECT_EQ(sequence, previous + 1);
    }
    previous = sequence;
  }
}

TEST(TallyctlWatch, TextLinesFromARealAgent) {
  TallydProcess tallyd(test_config(20, 20));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint);
  Process watch({TALLYCTL_PATH, "watch", "--endpoint", *endpoint, "--kind", "heartbeat", "--count", "3"});
  ASSERT_TRUE(watch.wait(30s));
  const auto lines = watch.wait_for_stdout_lines(3, 1s);
  ASSERT_EQ(lines.size(), 3u);
  for (const auto& line : lines) {
    EXPECT_NE(line.find("node=test-nod"), std::string::npos) << line;
    EXPECT_NE(line.find(" heartbeat cpu="), std::string::npos) << line;
  }
}

TEST(TallyctlWatch, ReportsAnInjectedGap) {
  FakeAgent agent;
  Process watch({TALLYCTL_PATH, "watch", "--json", "--endpoint", agent.endpoint()});
  const std::uint64_t last = warm_up(agent, watch, "instance-1");
  agent.send_heartbeat("instance-1", last + 3);  // two messages lost
  ASSERT_TRUE(wait_until([&] { return watch.stdout_text().find("\"notice\":\"gap\"") != std::string::npos; }))
      << watch.stdout_text();
  watch.signal(SIGTERM);
  const auto status = watch.wait(10s);
  ASSERT_TRUE(status);
  EXPECT_EQ(status->code, 0);

  bool found = false;
  for (const auto& json : parse_lines(watch.wait_for_stdout_lines(1, 1s))) {
    if (json.value("notice", "") != "gap") continue;
    found = true;
    EXPECT_EQ(json.at("node_id"), "node-a");
    EXPECT_EQ(json.at("instance_id"), "instance-1");
    EXPECT_EQ(json.at("expected").get<std::uint64_t>(), last + 1);
    EXPECT_EQ(json.at("received").get<std::uint64_t>(), last + 3);
    EXPECT_EQ(json.at("missed").get<std::uint64_t>(), 2u);
  }
  EXPECT_TRUE(found);
}

TEST(TallyctlWatch, ReportsAnAgentRestartAndNoGapAcrossIt) {
  FakeAgent agent;
  Process watch({TALLYCTL_PATH, "watch", "--endpoint", agent.endpoint()});
  // Text mode: warm up by waiting for any line.
  std::uint64_t sequence = 0;
  ASSERT_TRUE(wait_until([&] {
    agent.send_heartbeat("instance-1", ++sequence);
    return !watch.stdout_text().empty();
  }, 20s, 20ms));
  agent.send_heartbeat("instance-2", 1);  // the agent restarted: new instance, sequence starts over
  ASSERT_TRUE(wait_until([&] { return watch.stdout_text().find("! restart") != std::string::npos; }))
      << watch.stdout_text();
  EXPECT_NE(watch.stdout_text().find("instance-1 -> instance-2"), std::string::npos) << watch.stdout_text();
  EXPECT_EQ(watch.stdout_text().find("! gap"), std::string::npos) << watch.stdout_text();
  EXPECT_EQ(watch.stdout_text().find("! backwards"), std::string::npos) << watch.stdout_text();
}

TEST(TallyctlWatch, MalformedMessagesAreReportedAndSkipped) {
  FakeAgent agent;
  Process watch({TALLYCTL_PATH, "watch", "--json", "--endpoint", agent.endpoint()});
  const std::uint64_t last = warm_up(agent, watch, "instance-1");
  agent.send_raw("heartbeat", "\xff\xff\xff not protobuf");
  agent.send_raw("usage", v1::Envelope().SerializeAsString());  // no body: does not match the topic
  ASSERT_TRUE(watch.wait_for_stderr("not a tally.v1.Envelope", 10s)) << watch.stderr_text();
  v1::Envelope valid;
  valid.mutable_heartbeat();
  agent.send_frames({"heartbeat"});                                           // one frame
  agent.send_frames({"heartbeat", valid.SerializeAsString(), "trailing"});  // three frames
  const auto count_reports = [&] {
    std::size_t n = 0;
    const std::string& text = watch.stderr_text();
    for (auto at = text.find("expected 2 frames"); at != std::string::npos; at = text.find("expected 2 frames", at + 1)) ++n;
    return n;
  };
  ASSERT_TRUE(wait_until([&] { return count_reports() == 2; })) << watch.stderr_text();
  agent.send_heartbeat("instance-1", last + 1);  // and the watch goes on, at a message boundary
  const std::string marker = "\"sequence\":\"" + std::to_string(last + 1) + "\"";
  EXPECT_TRUE(wait_until([&] { return watch.stdout_text().find(marker) != std::string::npos; }));
  EXPECT_TRUE(watch.running());
}

std::string envelope_of(const std::string& report, std::uint64_t sequence) {
  v1::Envelope envelope;
  envelope.set_node_id("node-top");
  envelope.set_instance_id("instance-top");
  envelope.set_sequence(sequence);
  envelope.set_kind_sequence(sequence);
  EXPECT_TRUE(envelope.mutable_usage()->ParseFromString(report));
  return envelope.SerializeAsString();
}

// Runs `tallyctl <command> --plain` on a fake agent that publishes `snapshot` until the screen shows, then `report`
// (whose interval is 2 s); returns the last screen drawn, from its title line on.
std::string last_screen(const std::string& command, const std::string& snapshot, const std::string& report) {
  FakeAgent agent;
  Process screen({TALLYCTL_PATH, command, "--plain", "-e", agent.endpoint()});
  const std::string title = "tally " + command + ": node node-top";
  // Snapshots until it draws one (a subscription takes a moment to propagate), then the report.
  EXPECT_TRUE(wait_until([&] {
    agent.send_raw("usage", snapshot);
    return screen.stdout_text().find(title) != std::string::npos;
  }, 20s, 20ms)) << "tallyctl " << command << " drew nothing; stderr:\n" << screen.stderr_text();
  agent.send_raw("usage", report);
  EXPECT_TRUE(wait_until([&] { return screen.stdout_text().find("interval 2.0s") != std::string::npos; }))
      << screen.stdout_text() << screen.stderr_text();
  screen.signal(SIGTERM);
  EXPECT_TRUE(screen.wait(20s));
  const std::string out = screen.stdout_text();
  const auto at = out.rfind(title);
  return at == std::string::npos ? out : out.substr(at);
}

// The lines of `screen` whose first column starts with `prefix`, as whitespace-separated columns.
std::vector<std::vector<std::string>> rows_of(const std::string& screen, const std::string& prefix) {
  std::istringstream lines(screen);
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream columns(line);
    std::vector<std::string> row{std::istream_iterator<std::string>(columns), {}};
    if (!row.empty() && row[0].starts_with(prefix)) rows.push_back(row);
  }
  return rows;
}

// A GPU's own feed entry, as tallyd's GPU accounting makes it.
WorkloadIdentity gpu_entry(const std::string& uuid, const std::string& index) {
  WorkloadIdentity identity;
  identity.kind = WorkloadKind::gpu;
  identity.id = "gpu:" + uuid;
  identity.attributes = {{"uuid", uuid}, {"index", index}, {"name", "NVIDIA H100"}};
  return identity;
}

// tallyctl top on known usage: three workloads in usage reports the agent's own encoder made from a ledger,
// published through a PUB socket as the agent does. Rows come in order of cost (GPU time, then tokens per second)
// and show the rates of the last report's interval and the totals, to the digit, with what the GPU driver saw; a
// GPU's own entry is not a workload row.
TEST(TallyctlTop, RowsInOrderOfCostWithTheirRatesAndTotals) {
  using ledger::Kind;
  using ledger::Source;
  ledger::Ledger ledger;
  const auto requests = ledger.counter("requests", Source::client);
  const auto tokens_in = ledger.counter("tokens_in", Source::client);
  const auto tokens_out = ledger.counter("tokens_out", Source::client);
  const auto gpu_ns = ledger.counter("gpu_time_ns", Source::client);
  const auto dropped = ledger.counter("events_dropped", Source::client);
  const auto sm_ns = ledger.counter("gpu_sm_ns", Source::nvml);
  const auto energy = ledger.counter("gpu_energy_mj", Source::nvml, Kind::apportioned);
  const auto energy_mig = ledger.counter("gpu_energy_mj", Source::nvml, Kind::estimated);
  const auto memory = ledger.counter("gpu_memory_bytes", Source::nvml, Kind::measured, true);
  auto& gpu_heavy = ledger.workload(identify_cgroup("/system.slice/gpu-heavy.service"));
  auto& token_heavy = ledger.workload(identify_cgroup("/system.slice/token-heavy.service"));
  auto& light = ledger.workload(identify_cgroup("/system.slice/light.service"));
  auto& device = ledger.workload(gpu_entry("GPU-1", "0"));
  auto& g = ledger.label_set(gpu_heavy, "tenant=a");
  auto& t = ledger.label_set(token_heavy, "tenant=b");
  auto& l = ledger.label_set(light, "tenant=c");
  auto& g_whole = ledger.label_set(gpu_heavy, "");
  // Before the first report: large totals, so that the rates below can only come from the last interval.
  for (auto* ls : {&g, &t, &l}) {
    ledger.add(*ls, requests, 1000);
    ledger.add(*ls, tokens_in, 1'000'000);
  }
  ledger.add(g_whole, sm_ns, 50'000'000'000ULL);
  ledger.add(ledger.label_set(device, ""), ledger.counter("gpu_energy_mj", Source::nvml), 1);
  ledger.add(ledger.label_set(token_heavy, ""), dropped, 7);
  agent::UsageReportEncoder encoder;
  const std::uint64_t t0 = 1'700'000'000'000'000'000ULL;
  const std::string snapshot = envelope_of(encoder.encode(ledger, {t0, t0 + 10'000'000'000ULL, true, false}), 1);
  ledger.mark_reported();
  // The last interval, 2 s: gpu-heavy 3 GPU-seconds (1.50/s) as it reported them, 1 SM-second (0.50/s) and 600 J
  // (300 W: apportioned on a GPU, estimated on a MIG slice) as the driver saw, 2 GiB held, 10 requests, 200 tokens;
  // token-heavy no GPU, 40 requests, 10,000 tokens; light 2 requests, 20 tokens.
  ledger.add(g, gpu_ns, 3'000'000'000ULL);
  ledger.add(g, requests, 10);
  ledger.add(g, tokens_in, 200);
  ledger.add(g_whole, sm_ns, 1'000'000'000ULL);
  ledger.add(g_whole, energy, 400'000);
  ledger.add(g_whole, energy_mig, 200'000);
  ledger::Contributor& driver = ledger.contributor("nvml:GPU-1:gpu-heavy", gpu_heavy, Source::nvml);
  ledger.update(driver, ledger.cell(driver, g_whole, memory), 2ULL << 30);
  ledger.add(t, requests, 40);
  ledger.add(t, tokens_in, 8000);
  ledger.add(t, tokens_out, 2000);
  ledger.add(l, requests, 2);
  ledger.add(l, tokens_in, 20);
  const std::string report =
      envelope_of(encoder.encode(ledger, {t0 + 10'000'000'000ULL, t0 + 12'000'000'000ULL, false, false}), 2);

  const std::string out = last_screen("top", snapshot, report);
  EXPECT_EQ(out.find("gpu:GPU-1"), std::string::npos) << "a GPU is not a workload\n" << out;
  const auto rows = rows_of(out, "systemd:");
  ASSERT_EQ(rows.size(), 3u) << out;
  // WORKLOAD NAME? REQ/s TOK/s GPU SM GPUMEM GPU W ...: no names were given, so the columns start at REQ/s right
  // after the id.
  EXPECT_EQ(rows[0][0], gpu_heavy.identity.id) << out;
  EXPECT_EQ(rows[1][0], token_heavy.identity.id) << out;
  EXPECT_EQ(rows[2][0], light.identity.id) << out;
  EXPECT_EQ((std::vector<std::string>(rows[0].begin() + 1, rows[0].begin() + 7)),
            (std::vector<std::string>{"5.0", "100", "1.50", "0.50", "2.0GiB", "300.0"})) << out;
  EXPECT_EQ((std::vector<std::string>(rows[1].begin() + 1, rows[1].begin() + 7)),
            (std::vector<std::string>{"20.0", "5000", "0.00", "0.00", "-", "0.0"})) << out;
  EXPECT_EQ((std::vector<std::string>{rows[2][1], rows[2][2], rows[2][3]}),
            (std::vector<std::string>{"1.0", "10", "0.00"})) << out;
  // DROPPED, a total: after TTFT p50, TTFT p99, DUR p99 ("-": no requests recorded) and TOP1%TOK.
  EXPECT_EQ(rows[1][11], "7") << out;
  EXPECT_EQ(rows[0][11], "0") << out;
}

// tallyctl gpus: each GPU's own entry with its figures, and below it the workloads holding memory on it or running
// on it in the last interval.
TEST(TallyctlGpus, EachGpuWithItsBucketsAndItsHolders) {
  using ledger::Kind;
  using ledger::Source;
  ledger::Ledger ledger;
  auto& gpu0 = ledger.workload(gpu_entry("GPU-0", "0"));
  auto& gpu1 = ledger.workload(gpu_entry("GPU-1", "99999999999999999999999"));  // not a number: sorts last
  auto& holder = ledger.workload(identify_cgroup("/system.slice/trainer.service"));
  auto& bystander = ledger.workload(identify_cgroup("/system.slice/bystander.service"));
  ledger.add(ledger.label_set(bystander, ""), ledger.counter("io_read_bytes", Source::kernel_probes), 1);
  auto level = [&](ledger::Workload& w, const std::string& key, const std::string& name, std::uint64_t value) {
    ledger::Contributor& c = ledger.contributor(key, w, Source::nvml);
    ledger.update(c, ledger.cell(c, ledger.label_set(w, ""), ledger.counter(name, Source::nvml, Kind::measured, true)),
                  value);
  };
  auto add = [&](ledger::Workload& w, const std::string& name, Kind kind, std::uint64_t amount) {
    ledger.add(ledger.label_set(w, ""), ledger.counter(name, Source::nvml, kind), amount);
  };
  level(gpu0, "nvml:gpu:GPU-0", "gpu_utilization_percent", 37);
  level(gpu0, "nvml:gpu:GPU-0", "gpu_power_mw", 250'500);
  level(gpu0, "nvml:gpu:GPU-0", "gpu_memory_total_bytes", 80ULL << 30);
  level(gpu0, "nvml:gpu:GPU-0", "gpu_memory_used_bytes", 4ULL << 30);
  level(gpu1, "nvml:gpu:GPU-1", "gpu_lost", 1);
  add(gpu0, "gpu_energy_mj", Kind::measured, 10'000'000);
  add(gpu0, "gpu_idle_energy_mj", Kind::apportioned, 4'000'000);
  add(gpu0, "gpu_unattributed_energy_mj", Kind::apportioned, 1'000'000);
  add(gpu1, "gpu_energy_mj", Kind::measured, 1);
  add(holder, "gpu_energy_mj:GPU-0", Kind::apportioned, 5'000'000);
  level(holder, "nvml:GPU-0:trainer", "gpu_memory_bytes:GPU-0", 4ULL << 30);
  agent::UsageReportEncoder encoder;
  const std::uint64_t t0 = 1'700'000'000'000'000'000ULL;
  const std::string snapshot = envelope_of(encoder.encode(ledger, {t0, t0 + 10'000'000'000ULL, true, false}), 1);
  ledger.mark_reported();
  add(holder, "gpu_sm_ns:GPU-0", Kind::measured, 1'000'000'000);  // 0.50 SM-seconds per second over 2 s
  const std::string report =
      envelope_of(encoder.encode(ledger, {t0 + 10'000'000'000ULL, t0 + 12'000'000'000ULL, false, false}), 2);

  const std::string out = last_screen("gpus", snapshot, report);
  EXPECT_NE(out.find("2 GPUs"), std::string::npos) << out;
  std::vector<std::vector<std::string>> lines;  // a GPU's line: its index, then its uuid
  for (const auto& row : rows_of(out, "")) {
    if (row.size() > 1 && row[1].starts_with("GPU-")) lines.push_back(row);
  }
  ASSERT_EQ(lines.size(), 2u) << out;
  // GPU UUID NAME(2 words) UTIL POWER MEMORY ENERGY IDLE UNATTR STATE
  EXPECT_EQ((std::vector<std::string>(lines[0].begin(), lines[0].end())),
            (std::vector<std::string>{"0", "GPU-0", "NVIDIA", "H100", "37%", "250.5", "4.0GiB/80.0GiB", "10000.0",
                                      "4000.0", "1000.0", "ok"})) << out;
  EXPECT_EQ(lines[1].back(), "LOST") << out;
  const auto holders = rows_of(out, "systemd:");
  ASSERT_EQ(holders.size(), 1u) << "the bystander holds nothing\n" << out;
  EXPECT_EQ((std::vector<std::string>(holders[0].begin(), holders[0].end())),
            (std::vector<std::string>{holder.identity.id, "memory", "4.0GiB", "SM", "0.50", "energy", "5000.0", "J"}))
      << out;
}

TEST(Tallyctl, HelpOnEverySubcommandAndVersion) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {TALLYCTL_PATH, "--help"}, {TALLYCTL_PATH, "watch", "--help"}, {TALLYCTL_PATH, "gpus", "--help"},
           {TALLYCTL_PATH, "plan", "--help"}, {TALLYCTL_PATH, "plan", "diff", "--help"},
           {TALLYCTL_PATH, "quota", "--help"}, {TALLYCTL_PATH, "release", "--help"}}) {
    const auto result = run_command(args, 20s);
    EXPECT_EQ(result.status.code, 0) << result.output;
    EXPECT_NE(result.output.find("Usage"), std::string::npos) << result.output;
  }
  const auto version = run_command({TALLYCTL_PATH, "--version"}, 20s);
  EXPECT_EQ(version.status.code, 0);
  EXPECT_NE(version.output.find("0."), std::string::npos) << version.output;
}

// `tallyctl plan` with no tallyd to answer: clear still removes what is pinned (package removal runs it after the
// agent stopped); every other plan command says it cannot reach tallyd, and where it looked.
TEST(TallyctlPlan, WithoutAnAgentClearWorksAndTheRestSayWhy) {
  TempDir dir;
  const std::string socket = (dir / "control.sock").string();
  const auto cleared = run_command({TALLYCTL_PATH, "plan", "--socket", socket, "clear", "--pin-dir",
                                    (dir / "tally-policy").string()}, 20s);
  EXPECT_EQ(cleared.status.code, 0) << cleared.output;
  EXPECT_NE(cleared.output.find("no GPU device policy pinned in"), std::string::npos) << cleared.output;
  const auto shown = run_command({TALLYCTL_PATH, "plan", "--socket", socket, "show"}, 20s);
  EXPECT_EQ(shown.status.code, 1);
  EXPECT_NE(shown.output.find("cannot reach tallyd at " + socket), std::string::npos) << shown.output;
  const auto diff = run_command({TALLYCTL_PATH, "plan", "--socket", socket, "diff"}, 20s);
  EXPECT_NE(diff.status.code, 0) << "diff needs a FILE";
}

TEST(Tallyctl, BadEndpointIsAClearError) {
  const auto result = run_command({TALLYCTL_PATH, "watch", "--endpoint", "tcp://nowhere"}, 20s);
  EXPECT_EQ(result.status.code, 2);
  EXPECT_NE(result.output.find("missing ':PORT'"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace tally::test
