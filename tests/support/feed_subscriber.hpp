#pragma once
// A real ZeroMQ SUB socket decoding the feed exactly as docs/protocol.md describes it (topic frame, then a
// tally.v1.Envelope), independent of the agent's own code.

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "tally/v1/feed.pb.h"

namespace tally::test {

struct FeedMessage {
  std::string topic;
  v1::Envelope envelope;
};

class FeedSubscriber {
 public:
  // Connects to `endpoint` and subscribes to `topic_prefix` ("" = everything).
  explicit FeedSubscriber(const std::string& endpoint, const std::string& topic_prefix = "");

  // Next message, or nullopt at the deadline. Fails the test (ADD_FAILURE) on a malformed message.
  std::optional<FeedMessage> receive(std::chrono::milliseconds deadline);
  // Receives until `predicate` holds for a message (returned), or nullopt at the deadline.
  template <typename Predicate>
  std::optional<FeedMessage> receive_until(Predicate&& predicate, std::chrono::milliseconds deadline) {
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      auto message = receive(left);
      if (message && predicate(*message)) return message;
    }
  }

 private:
  zmq::context_t context_{1};
  zmq::socket_t socket_;
};

}  // namespace tally::test
