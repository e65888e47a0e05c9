// The real tallyd publishes a tally.v1.Topology on the feed (topic "topology") at start and on SIGHUP.
// (On device changes: topology_device_events_test.cpp, which needs root.)
#include <signal.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/support/feed_subscriber.hpp"
#include "tests/support/tallyd_process.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

bool is_topology(const FeedMessage& message) { return message.topic == "topology" && message.envelope.has_topology(); }

// The subscription must reach tallyd before a SIGHUP can be seen; topology is the only kind subscribed, so send
// SIGHUPs until one's republished topology arrives, and return it.
std::optional<FeedMessage> topology_after_sighup(TallydProcess& tallyd, FeedSubscriber& subscriber) {
  std::optional<FeedMessage> message;
  for (int attempt = 0; attempt < 50 && !message; ++attempt) {
    tallyd.process().signal(SIGHUP);
    message = subscriber.receive_until(is_topology, 200ms);
  }
  return message;
}

TEST(TopologyFeed, PublishedAtStartAndOnSighupWithThisHostsTopology) {
  TallydProcess tallyd(test_config(1000, 1000));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedSubscriber subscriber(*endpoint, "topology");
  const auto message = topology_after_sighup(tallyd, subscriber);
  ASSERT_TRUE(message) << "no topology message after SIGHUP; stderr:\n" << tallyd.process().stderr_text();
  // kind_sequence 1 was the topology published at start (before any subscriber could connect).
  EXPECT_GE(message->envelope.kind_sequence(), 2u);
  const v1::Topology& topology = message->envelope.topology();
  EXPECT_EQ(topology.cpu_count(), static_cast<std::uint32_t>(sysconf(_SC_NPROCESSORS_ONLN)));
  EXPECT_GE(topology.numa_node_count(), 1u);
  EXPECT_EQ(topology.numa_nodes_size(), static_cast<int>(topology.numa_node_count()));
  EXPECT_GT(topology.memory_bytes(), 0u);
  utsname name{};
  uname(&name);
  EXPECT_EQ(topology.architecture(), name.machine);
  EXPECT_FALSE(topology.cpus().empty());
}

TEST(TopologyFeed, ConfiguredNvmlLibraryIsLoadedAndItsFindingsPublished) {
  // The fake NVML reports one GPU this host does not have: the published Topology names it in its warnings and
  // carries the fake's driver version, which shows [topology] nvml_library reached discovery.
  TempDir scenario;
  const auto path = scenario.write(
      "scenario.json",
      R"({"driver_version": "535.104.05", "gpus": [{"bus_id": "00000000:AA:00.0", "uuid": "GPU-feed"}]})");
  TallydProcess tallyd(test_config(1000, 1000, "[topology]\nnvml_library = \"" FAKE_NVML_PATH "\"\n"), {},
                       {{"TALLY_FAKE_NVML_SCENARIO", path.string()}});
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  FeedSubscriber subscriber(*endpoint, "topology");
  const auto message = topology_after_sighup(tallyd, subscriber);
  ASSERT_TRUE(message) << tallyd.process().stderr_text();
  const v1::Topology& topology = message->envelope.topology();
  EXPECT_EQ(topology.nvml_driver_version(), "535.104.05");
  ASSERT_EQ(topology.warnings_size(), 1) << tallyd.process().stderr_text();
  EXPECT_NE(topology.warnings(0).find("00000000:AA:00.0"), std::string::npos) << topology.warnings(0);
}

}  // namespace
}  // namespace tally::test
