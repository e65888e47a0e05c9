#include "agent/feed/subscription.hpp"

#include <csignal>
#include <set>

#include <fmt/format.h>
#include <zmq.hpp>

#include "agent/feed/endpoint.hpp"
#include "agent/feed/watch.hpp"

namespace tally::agent {
namespace {
volatile std::sig_atomic_t g_stop_requested = 0;
}  // namespace

int receive_feed(std::string_view command, const std::vector<std::string>& endpoints,
                 const std::vector<std::string>& kinds, const std::function<bool(const v1::Envelope&)>& on_message) {
  for (const auto& endpoint : endpoints) {
    if (auto valid = validate_endpoint(endpoint, EndpointRole::connect); !valid) {
      fmt::print(stderr, "{}: --endpoint: {}\n", command, valid.error().message);
      return 2;
    }
  }
  // No SA_RESTART: a blocking receive returns EINTR so that Ctrl-C ends the command at once.
  struct sigaction action {};
  action.sa_handler = [](int) { g_stop_requested = 1; };
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  zmq::context_t context(1);
  zmq::socket_t socket(context, zmq::socket_type::sub);
  socket.set(zmq::sockopt::linger, 0);
  if (kinds.empty()) socket.set(zmq::sockopt::subscribe, "");
  for (const auto& kind : kinds) socket.set(zmq::sockopt::subscribe, kind);
  for (const auto& endpoint : endpoints) socket.connect(endpoint);

  const std::set<std::string, std::less<>> wanted(kinds.begin(), kinds.end());
  while (!g_stop_requested) {
    zmq::message_t topic, payload;
    try {
      if (!socket.recv(topic)) continue;
      const bool two_frames = topic.more() && socket.recv(payload) && !payload.more();
      if (!two_frames) {
        // Skip what is left of it, so that the next receive starts at a message boundary.
        for (zmq::message_t rest; socket.get(zmq::sockopt::rcvmore);) (void)socket.recv(rest);
        fmt::print(stderr, "{}: malformed message: expected 2 frames\n", command);
        continue;
      }
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      fmt::print(stderr, "{}: {}\n", command, e.what());
      return 1;
    }
    // ZeroMQ filters by prefix: "usage" would also pass "usage2"; keep exact topics only.
    if (!wanted.empty() && !wanted.contains(topic.to_string_view())) continue;
    auto envelope = decode_envelope(topic.to_string_view(), payload.to_string_view());
    if (!envelope) {
      fmt::print(stderr, "{}: malformed message on topic '{}' ({} bytes): not a tally.v1.Envelope\n", command,
                 topic.to_string_view(), payload.size());
      continue;
    }
    if (!on_message(*envelope)) break;
  }
  return 0;
}

}  // namespace tally::agent
