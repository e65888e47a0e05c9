#include "agent/feed/publisher.hpp"

#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "agent/base/clock.hpp"
#include "agent/base/version.hpp"
#include "agent/base/protobuf_wire.hpp"

namespace tally::agent {
namespace {
// Bounds how long close waits to flush the final report to subscribers: shutdown must finish within 2 s.
constexpr int kLingerMs = 1000;

bool contains(const std::vector<std::string>& values, const std::string& value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

}  // namespace

FeedPublisher::FeedPublisher(NodeIdentity identity, std::uint32_t send_high_water_mark)
    : identity_(std::move(identity)), socket_(context_, zmq::socket_type::pub) {
  socket_.set(zmq::sockopt::sndhwm, static_cast<int>(send_high_water_mark));
  socket_.set(zmq::sockopt::linger, kLingerMs);
}

FeedPublisher::~FeedPublisher() = default;

Result<void> FeedPublisher::set_endpoints(const std::vector<std::string>& bind,
                                          const std::vector<std::string>& connect) {
  std::vector<std::string> added_binds, added_connects;
  auto roll_back = [&] {
    for (const auto& e : added_binds) {
      socket_.unbind(bound_.at(e));
      bound_.erase(e);
    }
    for (const auto& e : added_connects) socket_.disconnect(e);
  };
  try {
    for (const auto& endpoint : bind) {
      if (bound_.contains(endpoint)) continue;
      socket_.bind(endpoint);
      bound_[endpoint] = socket_.get(zmq::sockopt::last_endpoint);
      added_binds.push_back(endpoint);
      spdlog::info("feed: bound {}", bound_[endpoint]);
    }
    for (const auto& endpoint : connect) {
      if (contains(connected_, endpoint)) continue;
      socket_.connect(endpoint);
      added_connects.push_back(endpoint);
      spdlog::info("feed: connecting to {}", endpoint);
    }
  } catch (const zmq::error_t& e) {
    roll_back();
    return make_error(ErrorCode::io, "feed endpoint: {}", e.what());
  }
  for (auto it = bound_.begin(); it != bound_.end();) {
    if (contains(bind, it->first)) {
      ++it;
      continue;
    }
    socket_.unbind(it->second);
    spdlog::info("feed: unbound {}", it->second);
    it = bound_.erase(it);
  }
  for (const auto& endpoint : connected_) {
    if (!contains(connect, endpoint)) socket_.disconnect(endpoint);
  }
  connected_ = connect;
  return {};
}

std::vector<std::string> FeedPublisher::bound_endpoints() const {
  std::vector<std::string> out;
  for (const auto& [configured, resolved] : bound_) out.push_back(resolved);
  return out;
}

void FeedPublisher::stamp(v1::Envelope& envelope, FeedKind kind) {
  envelope.set_node_id(identity_.node_id);
  envelope.set_instance_id(identity_.instance_id);
  envelope.set_sequence(++sequence_);
  envelope.set_kind_sequence(++kind_sequence_[static_cast<std::size_t>(kind)]);
  envelope.set_timestamp_unix_ns(unix_time_ns());
  envelope.set_hostname(identity_.hostname);
  envelope.set_agent_version(std::string(kVersion));
}

void FeedPublisher::send(FeedKind kind) {
  const std::string_view topic = topic_of(kind);
  // PUB sends never block: with no subscriber, or one past its high-water mark, ZeroMQ drops the message.
  socket_.send(zmq::buffer(topic), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
  socket_.send(zmq::buffer(buffer_), zmq::send_flags::dontwait);
  spdlog::trace("feed: published {} seq={} ({} bytes)", topic, sequence_, buffer_.size());
}

void FeedPublisher::publish(v1::Envelope& envelope) {
  const auto kind = kind_of(envelope);
  if (!kind) {
    spdlog::error("feed: refusing to publish an envelope without a body");
    return;
  }
  stamp(envelope, *kind);
  envelope.SerializeToString(&buffer_);
  send(*kind);
}

void FeedPublisher::publish(FeedKind kind, std::string_view body) {
  v1::Envelope envelope;
  stamp(envelope, kind);
  envelope.SerializeToString(&buffer_);
  // The body is the oneof's field: appending it to the serialized envelope is the same as having set it.
  wire::put_message(buffer_, body_field_of(kind), body);
  send(kind);
}

}  // namespace tally::agent
