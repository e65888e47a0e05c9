// tallyd republishes its Topology when a device appears or disappears: a synthetic kernel uevent (writing "add"
// to a device's `uevent` file, as root) must bring a new topology message on the feed. Needs root and a writable
// sysfs; skips with the reason otherwise.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/feed_subscriber.hpp"
#include "tests/support/tallyd_process.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

bool is_topology(const FeedMessage& message) { return message.topic == "topology" && message.envelope.has_topology(); }

TEST(TopologyFeed, RepublishedWhenADeviceAppears) {
  // A synthetic "add" uevent for the loopback interface, as the kernel sends when a NIC appears.
  std::ofstream probe("/sys/class/net/lo/uevent");
  if (!probe) GTEST_SKIP() << "needs write access to /sys/class/net/lo/uevent (root, writable sysfs)";
  probe.close();
  TallydProcess tallyd(test_config(1000, 1000));
  const auto endpoint = tallyd.wait_ready();
  ASSERT_TRUE(endpoint) << tallyd.process().stderr_text();
  if (tallyd.process().stderr_text().find("device changes are not watched") != std::string::npos) {
    GTEST_SKIP() << "no uevent socket here: " << tallyd.process().stderr_text();
  }
  FeedSubscriber subscriber(*endpoint, "topology");
  std::optional<FeedMessage> message;
  for (int attempt = 0; attempt < 50 && !message; ++attempt) {
    std::ofstream uevent("/sys/class/net/lo/uevent");
    uevent << "add" << std::flush;
    ASSERT_TRUE(uevent.good()) << "writing to /sys/class/net/lo/uevent failed";
    message = subscriber.receive_until(is_topology, 1s);
  }
  ASSERT_TRUE(message) << "no topology message after a device uevent; stderr:\n" << tallyd.process().stderr_text();
  EXPECT_GE(message->envelope.kind_sequence(), 2u);
  EXPECT_GT(message->envelope.topology().cpu_count(), 0u);
}

}  // namespace
}  // namespace tally::test
