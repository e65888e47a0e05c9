#include "tests/support/feed_subscriber.hpp"

#include <gtest/gtest.h>

namespace tally::test {

FeedSubscriber::FeedSubscriber(const std::string& endpoint, const std::string& topic_prefix)
    : socket_(context_, zmq::socket_type::sub) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::subscribe, topic_prefix);
  socket_.connect(endpoint);
}

std::optional<FeedMessage> FeedSubscriber::receive(std::chrono::milliseconds deadline) {
  zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq::poll(&item, 1, deadline) == 0) return std::nullopt;
  zmq::message_t topic, payload;
  if (!socket_.recv(topic) || !topic.more() || !socket_.recv(payload) || payload.more()) {
    ADD_FAILURE() << "feed message is not exactly two frames";
    return std::nullopt;
  }
  FeedMessage message;
  message.topic = topic.to_string();
  if (!message.envelope.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
    ADD_FAILURE() << "feed payload on topic '" << message.topic << "' is not a tally.v1.Envelope";
    return std::nullopt;
  }
  return message;
}

}  // namespace tally::test
