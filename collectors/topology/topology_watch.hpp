#pragma once
// Device appear/disappear detection for topology republishing: a NETLINK_KOBJECT_UEVENT socket bound to the
// kernel's uevent group (the same events udev receives), read without udev or libudev. The agent polls fd() in
// its event loop and calls drain() when readable.
//
// Relevant events: ACTION add/remove/bind/unbind of a PCI function (GPU hot-plug, driver load or unload, SR-IOV
// virtual functions), add/remove of a network interface or an RDMA device. Everything else is ignored.

#include <string_view>

#include "agent/base/result.hpp"

namespace tally::collectors {

class DeviceEventMonitor {
 public:
  // Opens a non-blocking, close-on-exec uevent socket. Errors name the failing call (e.g. in a network namespace
  // without uevent delivery, or under a seccomp filter that denies AF_NETLINK).
  static Result<DeviceEventMonitor> open();
  ~DeviceEventMonitor();
  DeviceEventMonitor(DeviceEventMonitor&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  DeviceEventMonitor& operator=(DeviceEventMonitor&& other) noexcept;
  DeviceEventMonitor(const DeviceEventMonitor&) = delete;
  DeviceEventMonitor& operator=(const DeviceEventMonitor&) = delete;

  int fd() const { return fd_; }
  // Reads every pending event; true when at least one changes the topology.
  bool drain();

 private:
  explicit DeviceEventMonitor(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// One kernel uevent datagram: "ACTION@DEVPATH\0ACTION=add\0DEVPATH=...\0SUBSYSTEM=pci\0...". True when it is one
// of the relevant events above. Datagrams from udev ("libudev" header) are not kernel events and return false.
bool is_topology_uevent(std::string_view datagram);

}  // namespace tally::collectors
