// Which kernel uevents make tallyd republish its topology. Datagrams are in the kernel's format
// ("ACTION@DEVPATH\0KEY=VALUE\0..."), as `udevadm monitor --kernel --property` shows them.
#include "collectors/topology/topology_watch.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace tally::collectors {
namespace {

std::string uevent(const std::string& action, const std::string& devpath, const std::string& subsystem) {
  std::string datagram = action + "@" + devpath;
  datagram += '\0';
  for (const std::string& field :
       std::vector<std::string>{"ACTION=" + action, "DEVPATH=" + devpath, "SUBSYSTEM=" + subsystem, "SEQNUM=4711"}) {
    datagram += field;
    datagram += '\0';
  }
  return datagram;
}

TEST(TopologyUevent, PciFunctionsNicsAndRdmaDevicesComingAndGoing) {
  EXPECT_TRUE(is_topology_uevent(uevent("add", "/devices/pci0000:00/0000:00:02.0/0000:3b:00.0", "pci")));
  EXPECT_TRUE(is_topology_uevent(uevent("remove", "/devices/pci0000:00/0000:00:02.0/0000:3b:00.0", "pci")));
  EXPECT_TRUE(is_topology_uevent(uevent("bind", "/devices/pci0000:00/0000:00:02.0/0000:3b:00.0", "pci")));
  EXPECT_TRUE(is_topology_uevent(uevent("unbind", "/devices/pci0000:00/0000:00:02.0/0000:3b:00.0", "pci")));
  EXPECT_TRUE(is_topology_uevent(uevent("add", "/devices/pci0000:00/0000:00:03.0/net/eth1", "net")));
  EXPECT_TRUE(is_topology_uevent(uevent("remove", "/devices/pci0000:80/0000:82:00.0/infiniband/mlx5_0", "infiniband")));
}

TEST(TopologyUevent, OtherEventsAreIgnored) {
  EXPECT_FALSE(is_topology_uevent(uevent("change", "/devices/pci0000:00/0000:00:02.0/0000:3b:00.0", "pci")));
  EXPECT_FALSE(is_topology_uevent(uevent("change", "/devices/virtual/net/lo", "net")));
  EXPECT_FALSE(is_topology_uevent(uevent("add", "/devices/virtual/block/loop0", "block")));
  EXPECT_FALSE(is_topology_uevent(uevent("add", "/devices/system/cpu/cpu1", "cpu")));
  EXPECT_FALSE(is_topology_uevent(""));
  EXPECT_FALSE(is_topology_uevent(std::string("libudev\0\xfe\xed\xca\xfe", 12)));  // udev's re-broadcast
}

TEST(DeviceEventMonitor, OpensANonBlockingSocketThatDrainsEmpty) {
  auto monitor = DeviceEventMonitor::open();
  if (!monitor) GTEST_SKIP() << "no uevent socket here: " << monitor.error().message;
  EXPECT_GE(monitor->fd(), 0);
  // Nothing or unrelated events pending: returns at once (non-blocking), whatever it found.
  (void)monitor->drain();
  DeviceEventMonitor moved = std::move(*monitor);
  EXPECT_GE(moved.fd(), 0);
  EXPECT_EQ(monitor->fd(), -1);
}

}  // namespace
}  // namespace tally::collectors
