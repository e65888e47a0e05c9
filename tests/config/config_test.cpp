// Config parsing: defaults, a full valid file, the shipped default file, and every class of bad input, each of
// which must name the file, the line and the key.
#include "agent/config/config.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/support/temp_dir.hpp"

namespace tally::agent {
namespace {

std::string parse_error(std::string_view text) {
  auto result = parse_config(text, "test.toml");
  EXPECT_FALSE(result.has_value()) << "expected an error for:\n" << text;
  return result.has_value() ? std::string() : result.error().message;
}

TEST(Config, EmptyFileGivesDefaults) {
  auto config = parse_config("", "empty.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(*config, Config{});
  EXPECT_EQ(config->feed.bind, std::vector<std::string>{"tcp://127.0.0.1:7600"});
  EXPECT_TRUE(config->feed.connect.empty());
  EXPECT_EQ(config->feed.heartbeat_interval_ms, 5000u);
  EXPECT_EQ(config->feed.usage_interval_ms, 1000u);
  EXPECT_EQ(config->agent.log_level, "info");
  EXPECT_EQ(config->agent.node_id, "");
}

TEST(Config, MissingDefaultFileGivesDefaults) {
  test::TempDir dir;
  auto config = load_config(dir / "absent.toml", /*must_exist=*/false);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(*config, Config{});
}

TEST(Config, MissingExplicitFileIsAnError) {
  test::TempDir dir;
  auto config = load_config(dir / "absent.toml", /*must_exist=*/true);
  ASSERT_FALSE(config.has_value());
  EXPECT_NE(config.error().message.find("absent.toml"), std::string::npos) << config.error().message;
}

TEST(Config, FullValidFile) {
  auto config = parse_config(R"(
[agent]
node_id = "gpu-node-17"
log_level = "debug"

[feed]
bind = ["tcp://127.0.0.1:7601", "ipc:///run/tally/feed.sock", "tcp://*:*"]
connect = ["tcp://aggregator.example:7700", "tcp://[fd00::1]:7700"]
heartbeat_interval_ms = 250
usage_interval_ms = 100
send_high_water_mark = 5000
)", "full.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->agent.node_id, "gpu-node-17");
  EXPECT_EQ(config->agent.log_level, "debug");
  EXPECT_EQ(config->feed.bind,
            (std::vector<std::string>{"tcp://127.0.0.1:7601", "ipc:///run/tally/feed.sock", "tcp://*:*"}));
  EXPECT_EQ(config->feed.connect, (std::vector<std::string>{"tcp://aggregator.example:7700", "tcp://[fd00::1]:7700"}));
  EXPECT_EQ(config->feed.heartbeat_interval_ms, 250u);
  EXPECT_EQ(config->feed.usage_interval_ms, 100u);
  EXPECT_EQ(config->feed.send_high_water_mark, 5000u);
}

TEST(Config, ShippedDefaultFileParsesToTheBuiltInDefaults) {
  auto config = load_config(std::string(TALLY_SOURCE_DIR) + "/agent/config/tally.toml", true);
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(*config, Config{});
}

TEST(Config, SyntaxErrorNamesFileAndLine) {
  const std::string message = parse_error("[feed]\nbind = [\"tcp://127.0.0.1:1\"\n");
  EXPECT_NE(message.find("test.toml:"), std::string::npos) << message;
  EXPECT_EQ(message.rfind("test.toml:2:", 0), 0u) << message;  // the unterminated array
  EXPECT_NE(message.find("array"), std::string::npos) << message;
}

TEST(Config, UnknownKeyNamesFileLineAndKey) {
  const std::string message = parse_error("[feed]\nusage_interval_ms = 100\nbnid = []\n");
  EXPECT_EQ(message.rfind("test.toml:3:", 0), 0u) << message;
  EXPECT_NE(message.find("feed.bnid"), std::string::npos) << message;
  EXPECT_NE(message.find("unknown key"), std::string::npos) << message;
}

TEST(Config, UnknownSectionIsAnError) {
  const std::string message = parse_error("\n[feeds]\nbind = []\n");
  EXPECT_EQ(message.rfind("test.toml:2:", 0), 0u) << message;
  EXPECT_NE(message.find("feeds"), std::string::npos) << message;
}

TEST(Config, SectionThatIsNotATable) {
  const std::string message = parse_error("feed = 3\n");
  EXPECT_NE(message.find("feed: expected a table"), std::string::npos) << message;
}

TEST(Config, WrongTypes) {
  EXPECT_NE(parse_error("[feed]\nusage_interval_ms = \"1s\"\n").find("feed.usage_interval_ms: expected an integer"),
            std::string::npos);
  EXPECT_NE(parse_error("[feed]\nbind = \"tcp://127.0.0.1:1\"\n").find("feed.bind: expected an array"),
            std::string::npos);
  EXPECT_NE(parse_error("[feed]\nbind = [1]\n").find("feed.bind[0]: expected a string"), std::string::npos);
  EXPECT_NE(parse_error("[agent]\nlog_level = 3\n").find("agent.log_level: expected a string"), std::string::npos);
}

TEST(Config, OutOfRangeValues) {
  const std::string low = parse_error("[feed]\nheartbeat_interval_ms = 0\n");
  EXPECT_NE(low.find("feed.heartbeat_interval_ms: 0 is out of range [10, 3600000]"), std::string::npos) << low;
  EXPECT_EQ(low.rfind("test.toml:2:", 0), 0u) << low;
  const std::string high = parse_error("[feed]\nusage_interval_ms = 99999999999\n");
  EXPECT_NE(high.find("feed.usage_interval_ms"), std::string::npos) << high;
  const std::string negative = parse_error("[feed]\nsend_high_water_mark = -5\n");
  EXPECT_NE(negative.find("feed.send_high_water_mark: -5 is out of range"), std::string::npos) << negative;
  const std::string level = parse_error("[agent]\nlog_level = \"loud\"\n");
  EXPECT_EQ(level.rfind("test.toml:2:", 0), 0u) << level;
  EXPECT_NE(level.find("agent.log_level: 'loud' is not one of"), std::string::npos) << level;
  const std::string node = parse_error("[agent]\nnode_id = \"has space\"\n");
  EXPECT_NE(node.find("agent.node_id"), std::string::npos) << node;
}

TEST(Config, InvalidEndpoints) {
  struct Case {
    const char* text;
    const char* expected;
  };
  const Case cases[] = {
      {"[feed]\nbind = [\"udp://127.0.0.1:1\"]\n", "feed.bind[0]: invalid endpoint 'udp://127.0.0.1:1'"},
      {"[feed]\nbind = [\"tcp://127.0.0.1\"]\n", "missing ':PORT'"},
      {"[feed]\nbind = [\"tcp://127.0.0.1:70000\"]\n", "port '70000' is not in 0-65535"},
      {"[feed]\nbind = [\"tcp://:5\"]\n", "missing host"},
      {"[feed]\nbind = [\"tcp://bad host:5\"]\n", "bad character ' ' in host"},
      {"[feed]\nbind = [\"ipc://\"]\n", "ipc endpoint has no path"},
      {"[feed]\nconnect = [\"tcp://aggregator:*\"]\n", "feed.connect[0]: invalid endpoint 'tcp://aggregator:*': a connect endpoint needs a port"},
      {"[feed]\nbind = [\"tcp://127.0.0.1:1\", \"tcp://127.0.0.1:1\"]\n", "feed.bind[1]: duplicate endpoint"},
      {"[feed]\nbind = []\n", "bind and connect are both empty"},
  };
  for (const Case& c : cases) {
    const std::string message = parse_error(c.text);
    EXPECT_NE(message.find(c.expected), std::string::npos) << "input:\n" << c.text << "message: " << message;
    EXPECT_EQ(message.rfind("test.toml:", 0), 0u) << message;
  }
}

TEST(Config, EndpointErrorPointsAtTheOffendingLine) {
  const std::string message = parse_error("[feed]\nbind = [\n  \"tcp://127.0.0.1:1\",\n  \"tcp://x\",\n]\n");
  EXPECT_EQ(message.rfind("test.toml:4:", 0), 0u) << message;
}

TEST(Config, UnreadableFileIsAnError) {
  test::TempDir dir;
  std::filesystem::create_directory(dir / "a-directory.toml");
  auto config = load_config(dir / "a-directory.toml", true);
  ASSERT_FALSE(config.has_value());
  EXPECT_NE(config.error().message.find("a-directory.toml"), std::string::npos) << config.error().message;
}

TEST(Config, ProbesSection) {
  EXPECT_TRUE(parse_config("", "test.toml")->probes.enabled);
  auto off = parse_config("[probes]\nenabled = false\n", "test.toml");
  ASSERT_TRUE(off.has_value()) << off.error().message;
  EXPECT_FALSE(off->probes.enabled);
  EXPECT_NE(parse_error("[probes]\nenabled = \"yes\"\n").find("test.toml:2:11: probes.enabled: expected true or false"),
            std::string::npos)
      << parse_error("[probes]\nenabled = \"yes\"\n");
  EXPECT_NE(parse_error("[probes]\nkprobes = true\n").find("probes.kprobes: unknown key"), std::string::npos);
  EXPECT_NE(parse_error("probes = 1\n").find("probes: expected a table"), std::string::npos);
}

// [topology] (issue 5): which NVML library tallyd loads.
TEST(ConfigTopology, DefaultsToTheDriversSoname) {
  auto config = parse_config("", "test.toml");
  ASSERT_TRUE(config.has_value()) << config.error().message;
  EXPECT_EQ(config->topology.nvml_library, "libnvidia-ml.so.1");
}

TEST(ConfigTopology, AcceptsAnAbsolutePathASonameOrNothing) {
  for (const std::string value : {"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "libnvidia-ml.so.1", ""}) {
    auto config = parse_config("[topology]\nnvml_library = \"" + value + "\"\n", "test.toml");
    ASSERT_TRUE(config.has_value()) << config.error().message;
    EXPECT_EQ(config->topology.nvml_library, value);
  }
}

TEST(ConfigTopology, RejectsARelativePathNamingTheKeyAndLine) {
  const std::string message = parse_error("[topology]\nnvml_library = \"lib/libnvidia-ml.so.1\"\n");
  EXPECT_NE(message.find("topology.nvml_library"), std::string::npos) << message;
  EXPECT_NE(message.find("test.toml:2"), std::string::npos) << message;
}

TEST(ConfigTopology, RejectsUnknownKeysAndWrongTypes) {
  EXPECT_NE(parse_error("[topology]\nnvml = \"x\"\n").find("topology.nvml"), std::string::npos);
  EXPECT_NE(parse_error("[topology]\nnvml_library = 1\n").find("expected a string"), std::string::npos);
}

// [gpu] (issue 11): GPU accounting's sampling and idle detection.
TEST(ConfigGpu, ReadsEveryKeyAndRejectsWhatIsOutOfRange) {
  auto config = parse_config("[gpu]\nenabled = false\ninterval_ms = 250\nidle_threshold_percent = 5\n"
                             "idle_window_s = 600\nidle_min_samples = 3\n",
                             "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->gpu, (GpuSection{false, 250, 5, 600, 3}));
  EXPECT_NE(parse_error("[gpu]\ninterval_ms = 5\n").find("gpu.interval_ms"), std::string::npos);
  EXPECT_NE(parse_error("[gpu]\nidle_threshold_percent = 101\n").find("gpu.idle_threshold_percent"),
            std::string::npos);
  EXPECT_NE(parse_error("[gpu]\nidle_window_s = 0\n").find("gpu.idle_window_s"), std::string::npos);
  EXPECT_NE(parse_error("[gpu]\nsample_ms = 1\n").find("gpu.sample_ms"), std::string::npos);
}

}  // namespace
}  // namespace tally::agent
