#include "tests/support/notify_socket.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <sstream>
#include <stdexcept>

#include "tests/support/deadline.hpp"

namespace tally::test {

NotifySocket::NotifySocket() : path_((dir_ / "notify.sock").string()) {
  fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof addr.sun_path) throw std::runtime_error("notify socket path too long: " + path_);
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw std::runtime_error("cannot bind notify socket " + path_ + ": " + std::strerror(errno));
  }
}

NotifySocket::~NotifySocket() {
  if (fd_ >= 0) ::close(fd_);
}

void NotifySocket::drain() {
  char buffer[4096];
  while (true) {
    const ssize_t n = ::recv(fd_, buffer, sizeof buffer, 0);
    if (n <= 0) return;
    received_.emplace_back(buffer, static_cast<std::size_t>(n));
  }
}

std::optional<std::string> NotifySocket::wait_for(const std::string& assignment, std::chrono::milliseconds deadline) {
  std::optional<std::string> found;
  wait_until([&] {
    drain();
    for (; consumed_ < received_.size(); ++consumed_) {
      std::istringstream lines(received_[consumed_]);
      for (std::string line; std::getline(lines, line);) {
        if (line == assignment) {
          found = received_[consumed_++];
          return true;
        }
      }
    }
    return false;
  }, deadline, std::chrono::milliseconds(1));
  return found;
}

std::optional<std::string> notify_field(const std::string& datagram, const std::string& key) {
  std::istringstream lines(datagram);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return std::nullopt;
}

}  // namespace tally::test
