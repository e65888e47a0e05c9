#pragma once
// tallyctl's way into the agent (`tallyctl plan show|diff|apply|clear`): a Unix stream socket, mode 0600, that
// answers root only (SO_PEERCRED), since what it changes is who may open which GPU. One request per connection: a
// JSON object on one line ({"command": "plan.apply", ...}); the answer is one JSON object, then the agent closes.
// Requests are read without blocking the loop and are bounded in size and number; answers go out with a short
// send timeout, so a client that stops reading cannot hold the agent.

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/base/result.hpp"
#include "agent/base/unique_fd.hpp"
#include "agent/tallyd/event_loop.hpp"

namespace tally::agent {

class ControlServer {
 public:
  using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;
  // Binds `path` (a stale socket there is replaced) and serves on `loop`.
  static Result<std::unique_ptr<ControlServer>> start(const std::filesystem::path& path, EventLoop& loop,
                                                      Handler handler);
  ~ControlServer();  // unlinks the socket
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

 private:
  struct Connection {
    UniqueFd fd;
    EventSource source;
    std::string request;
  };
  ControlServer(std::filesystem::path path, EventLoop& loop, Handler handler)
      : path_(std::move(path)), loop_(loop), handler_(std::move(handler)) {}
  void on_accept();
  void on_readable(int fd);
  void answer(Connection& connection, const nlohmann::json& reply);

  std::filesystem::path path_;
  EventLoop& loop_;
  Handler handler_;
  UniqueFd listener_;
  EventSource listener_source_;
  std::map<int, Connection> connections_;
};

}  // namespace tally::agent
