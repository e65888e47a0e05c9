#include "agent/feed/framing.hpp"

namespace tally::agent {

std::string_view topic_of(FeedKind kind) {
  switch (kind) {
    case FeedKind::heartbeat: return "heartbeat";
    case FeedKind::usage: return "usage";
    case FeedKind::topology: return "topology";
    case FeedKind::event: return "event";
  }
  return "unknown";
}

std::optional<FeedKind> kind_from_topic(std::string_view topic) {
  for (FeedKind kind : kAllFeedKinds) {
    if (topic_of(kind) == topic) return kind;
  }
  return std::nullopt;
}

std::uint32_t body_field_of(FeedKind kind) {
  switch (kind) {
    case FeedKind::heartbeat: return v1::Envelope::kHeartbeatFieldNumber;
    case FeedKind::usage: return v1::Envelope::kUsageFieldNumber;
    case FeedKind::topology: return v1::Envelope::kTopologyFieldNumber;
    case FeedKind::event: return v1::Envelope::kEventFieldNumber;
  }
  return 0;
}

std::optional<FeedKind> kind_of(const v1::Envelope& envelope) {
  switch (envelope.body_case()) {
    case v1::Envelope::kHeartbeat: return FeedKind::heartbeat;
    case v1::Envelope::kUsage: return FeedKind::usage;
    case v1::Envelope::kTopology: return FeedKind::topology;
    case v1::Envelope::kEvent: return FeedKind::event;
    case v1::Envelope::BODY_NOT_SET: break;
  }
  return std::nullopt;
}

}  // namespace tally::agent
