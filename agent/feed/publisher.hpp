#pragma once
// Publishes envelopes on one ZeroMQ PUB socket that binds and/or connects to the configured endpoints.
// A PUB socket never blocks the agent: a subscriber that falls behind by more than the high-water mark loses
// messages, and sees the loss as a gap in `sequence`.

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "agent/feed/framing.hpp"
#include "agent/base/node_identity.hpp"
#include "agent/base/result.hpp"

namespace tally::agent {

class FeedPublisher {
 public:
  FeedPublisher(NodeIdentity identity, std::uint32_t send_high_water_mark);
  ~FeedPublisher();
  FeedPublisher(const FeedPublisher&) = delete;
  FeedPublisher& operator=(const FeedPublisher&) = delete;

  // Makes the socket bind/connect exactly these endpoints, leaving unchanged ones alone so that subscribers stay
  // connected across a reload. On error nothing changes.
  Result<void> set_endpoints(const std::vector<std::string>& bind, const std::vector<std::string>& connect);

  // Bound endpoints as ZeroMQ resolved them (a '*' port replaced by the port it got).
  std::vector<std::string> bound_endpoints() const;

  // Stamps the envelope (node, instance, sequences, time) and sends it with its topic frame.
  void publish(v1::Envelope& envelope);
  // The same for a body already encoded (the bytes of a UsageReport for FeedKind::usage).
  void publish(FeedKind kind, std::string_view body);

  const NodeIdentity& identity() const { return identity_; }
  void set_node_id(std::string node_id) { identity_.node_id = std::move(node_id); }
  std::uint64_t messages_published() const { return sequence_; }

 private:
  void stamp(v1::Envelope& envelope, FeedKind kind);
  void send(FeedKind kind);  // buffer_ holds the envelope

  NodeIdentity identity_;
  zmq::context_t context_{1};
  zmq::socket_t socket_;
  std::map<std::string, std::string> bound_;  // configured endpoint -> resolved endpoint
  std::vector<std::string> connected_;
  std::uint64_t sequence_ = 0;
  std::array<std::uint64_t, kAllFeedKinds.size()> kind_sequence_{};
  std::string buffer_;
};

}  // namespace tally::agent
