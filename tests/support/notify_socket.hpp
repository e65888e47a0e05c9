#pragma once
// Stands in for systemd's notification socket: a Unix datagram socket whose path a test passes to a child as
// NOTIFY_SOCKET, collecting the sd_notify() messages (READY=1, STATUS=..., STOPPING=1) in arrival order.

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/temp_dir.hpp"

namespace tally::test {

class NotifySocket {
 public:
  NotifySocket();
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::string& path() const { return path_; }
  // Waits for a datagram containing the line `assignment` (e.g. "READY=1"); returns the whole datagram.
  std::optional<std::string> wait_for(const std::string& assignment, std::chrono::milliseconds deadline);
  const std::vector<std::string>& received() const { return received_; }

 private:
  void drain();
  TempDir dir_;
  std::string path_;
  int fd_ = -1;
  std::vector<std::string> received_;
  std::size_t consumed_ = 0;
};

// Returns the value of `KEY=` in a notify datagram (e.g. STATUS), if present.
std::optional<std::string> notify_field(const std::string& datagram, const std::string& key);

}  // namespace tally::test
