// The [metering] section of tallyd's configuration: defaults, values, and errors that name the key.
#include <gtest/gtest.h>

#include "agent/config/config.hpp"

namespace tally::agent {
namespace {

std::string error_of(const std::string& text) {
  auto config = parse_config(text, "test.toml");
  return config ? std::string() : config.error().message;
}

TEST(MeteringConfig, Defaults) {
  const MeteringSection m;
  EXPECT_TRUE(m.enabled);
  EXPECT_EQ(m.socket, "/run/tally/tally.sock");
  EXPECT_EQ(Config{}.agent.state_dir, "/var/lib/tally");
  EXPECT_EQ(m.drain_interval_ms, 100u);
}

TEST(MeteringConfig, Values) {
  auto config = parse_config(
      "[metering]\nsocket = \"/tmp/x.sock\"\nruntime_dir = \"/tmp/run\"\nstate_dir = \"/tmp/state\"\n"
      "drain_interval_ms = 20\nretention_s = 5\nlane_records = 4\n"
      "tenant_rules = [{ uid = 1000, tenants = [\"acme\"] }, { cgroup_prefix = \"/kubepods\", tenants = [\"*\"] }]\n",
      "test.toml");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->metering.socket, "/tmp/x.sock");
  EXPECT_EQ(config->metering.drain_interval_ms, 20u);
  EXPECT_EQ(config->metering.lane_records, 4u);
  ASSERT_EQ(config->metering.tenant_rules.size(), 2u);
  EXPECT_EQ(config->metering.tenant_rules[0].uid, 1000u);
  EXPECT_EQ(config->metering.tenant_rules[1].cgroup_prefix, "/kubepods");
  EXPECT_EQ(config->agent.state_dir, "/tmp/state");  // its old name, still read
}

TEST(MeteringConfig, StateDirIsSetInOnePlace) {
  EXPECT_NE(error_of("[agent]\nstate_dir = \"/a\"\n[metering]\nstate_dir = \"/b\"\n").find("metering.state_dir"),
            std::string::npos);
  EXPECT_NE(error_of("[agent]\nstate_dir = \"relative\"\n").find("agent.state_dir"), std::string::npos);
}

TEST(MeteringConfig, ErrorsNameTheKey) {
  EXPECT_NE(error_of("[metering]\nsocket = \"relative.sock\"\n").find("metering.socket"), std::string::npos);
  EXPECT_NE(error_of("[metering]\ndrain_interval_ms = 0\n").find("metering.drain_interval_ms"), std::string::npos);
  EXPECT_NE(error_of("[metering]\nbogus = 1\n").find("unknown key"), std::string::npos);
  EXPECT_NE(error_of("[metering]\ntenant_rules = [{ tenants = [\"a\"] }]\n").find("needs uid or cgroup_prefix"),
            std::string::npos);
  EXPECT_NE(error_of("[metering]\ntenant_rules = [{ uid = -1, tenants = [] }]\n").find("uid"), std::string::npos);
}

}  // namespace
}  // namespace tally::agent
