#include "collectors/topology/topology_watch.hpp"

#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

namespace tally::collectors {

Result<DeviceEventMonitor> DeviceEventMonitor::open() {
  const int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
  if (fd < 0) {
    return make_error(ErrorCode::unsupported, "socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT): {}", std::strerror(errno));
  }
  sockaddr_nl address{};
  address.nl_family = AF_NETLINK;
  address.nl_groups = 1;  // the kernel's uevent multicast group
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) != 0) {
    const int saved = errno;
    close(fd);
    return make_error(ErrorCode::permission, "bind(NETLINK_KOBJECT_UEVENT, group 1): {}", std::strerror(saved));
  }
  return DeviceEventMonitor(fd);
}

DeviceEventMonitor::~DeviceEventMonitor() {
  if (fd_ >= 0) close(fd_);
}

DeviceEventMonitor& DeviceEventMonitor::operator=(DeviceEventMonitor&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

bool DeviceEventMonitor::drain() {
  bool relevant = false;
  std::array<char, 8192> buffer{};
  while (true) {
    const ssize_t size = recv(fd_, buffer.data(), buffer.size(), 0);
    if (size < 0) {
      if (errno == EINTR) continue;
      break;  // EAGAIN: drained. ENOBUFS: events were lost; the caller republishes anyway when relevant.
    }
    relevant |= is_topology_uevent(std::string_view(buffer.data(), static_cast<std::size_t>(size)));
  }
  return relevant;
}

bool is_topology_uevent(std::string_view datagram) {
  if (datagram.starts_with("libudev")) return false;
  std::string_view action, subsystem;
  std::size_t start = 0;
  while (start < datagram.size()) {
    std::size_t end = datagram.find('\0', start);
    if (end == std::string_view::npos) end = datagram.size();
    const std::string_view field = datagram.substr(start, end - start);
    if (field.starts_with("ACTION=")) action = field.substr(7);
    if (field.starts_with("SUBSYSTEM=")) subsystem = field.substr(10);
    start = end + 1;
  }
  const bool add_or_remove = action == "add" || action == "remove";
  if (subsystem == "pci") return add_or_remove || action == "bind" || action == "unbind";
  if (subsystem == "net" || subsystem == "infiniband") return add_or_remove;
  return false;
}

}  // namespace tally::collectors
