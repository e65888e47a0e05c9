// The real tallyctl binary: `watch` against a real tallyd, and against a publisher the test controls so that
// gaps, restarts and malformed messages can be injected.
#include <signal.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "tests/support/deadline.hpp"
#include "tests/support/tallyd_process.hpp"
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

TEST(Tallyctl, HelpOnEverySubcommandAndVersion) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {TALLYCTL_PATH, "--help"}, {TALLYCTL_PATH, "watch", "--help"}}) {
    const auto result = run_command(args, 20s);
    EXPECT_EQ(result.status.code, 0) << result.output;
    EXPECT_NE(result.output.find("Usage"), std::string::npos) << result.output;
  }
  const auto version = run_command({TALLYCTL_PATH, "--version"}, 20s);
  EXPECT_EQ(version.status.code, 0);
  EXPECT_NE(version.output.find("0."), std::string::npos) << version.output;
}

TEST(Tallyctl, BadEndpointIsAClearError) {
  const auto result = run_command({TALLYCTL_PATH, "watch", "--endpoint", "tcp://nowhere"}, 20s);
  EXPECT_EQ(result.status.code, 2);
  EXPECT_NE(result.output.find("missing ':PORT'"), std::string::npos) << result.output;
}

}  // namespace
}  // namespace tally::test
