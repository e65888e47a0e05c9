#pragma once
// The feed's framing, shared by the publisher (tallyd) and subscribers (tallyctl, tests): two frames per message,
// a topic naming the kind, then a serialized tally.v1.Envelope. See docs/protocol.md.

#include <array>
#include <cstdint>
#include <optional>
#include <string_view>

#include "tally/v1/feed.pb.h"

namespace tally::agent {

enum class FeedKind { heartbeat, usage, topology, event };
inline constexpr std::array kAllFeedKinds{FeedKind::heartbeat, FeedKind::usage, FeedKind::topology, FeedKind::event};

std::string_view topic_of(FeedKind kind);
std::optional<FeedKind> kind_from_topic(std::string_view topic);
std::optional<FeedKind> kind_of(const v1::Envelope& envelope);
// The Envelope field that carries a body of this kind.
std::uint32_t body_field_of(FeedKind kind);

}  // namespace tally::agent
