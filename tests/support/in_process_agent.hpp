#pragma once
// A minimal agent for shm unit tests: the real RegistrationServer in a TempDir, served by one background thread
// (poll on its fd, then on_readable), remembering every registration. Readers are opened by the test itself.

#include <poll.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "shm/segments/registration_server.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::test {

class InProcessAgent {
 public:
  explicit InProcessAgent(shm::SegmentLimits limits = {}, std::filesystem::path socket_path = {})
      : socket_path_(socket_path.empty() ? dir_ / "tally.sock" : socket_path) {
    shm::RegistrationServer::Options options;
    options.socket_path = socket_path_;
    options.segment_dir = dir_ / "segments";
    options.limits = limits;
    auto server = shm::RegistrationServer::listen(options, [this](const shm::Registration& r) -> Result<void> {
      std::lock_guard lock(mutex_);
      registrations_.push_back(r);
      return {};
    });
    if (!server) throw std::runtime_error(server.error().message);
    server_ = std::move(*server);
    thread_ = std::thread([this] {
      while (!stop_) {
        pollfd p{server_->fd(), POLLIN, 0};
        if (::poll(&p, 1, 10) > 0) server_->on_readable();
      }
    });
  }
  ~InProcessAgent() {
    stop_ = true;
    thread_.join();
  }
  std::string socket_path() const { return socket_path_.string(); }
  // Waits until `count` clients registered.
  std::vector<shm::Registration> wait_for_registrations(std::size_t count) {
    wait_until([&] { return registrations().size() >= count; });
    return registrations();
  }
  std::vector<shm::Registration> registrations() {
    std::lock_guard lock(mutex_);
    return registrations_;
  }

 private:
  TempDir dir_;
  std::filesystem::path socket_path_;
  std::unique_ptr<shm::RegistrationServer> server_;
  std::mutex mutex_;
  std::vector<shm::Registration> registrations_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace tally::test
