#pragma once
// What a subscriber needs to follow the feed: decode a two-frame message, detect gaps and agent restarts, and
// render a message as one text or JSON line. Used by `tallyctl watch`; written from docs/protocol.md.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/feed/framing.hpp"

namespace tally::agent {

struct FeedNotice {
  enum class Type { gap, restart, backwards };
  Type type;
  std::string node_id;
  std::string instance_id;           // the instance the notice is about (the new one for a restart)
  std::string previous_instance_id;  // restart only
  std::uint64_t expected = 0;        // gap/backwards: the sequence that should have come
  std::uint64_t received = 0;        // gap/backwards: the sequence that came
  std::uint64_t missed() const { return received > expected ? received - expected : 0; }
};

// Follows (node, instance, sequence) across messages. When the subscriber filters kinds it must follow
// kind_sequence instead of sequence, because the other kinds' messages never reach it.
class SequenceTracker {
 public:
  explicit SequenceTracker(bool follow_kind_sequence) : by_kind_(follow_kind_sequence) {}
  std::vector<FeedNotice> observe(const v1::Envelope& envelope);

 private:
  struct Position {
    std::string instance_id;
    std::map<std::string, std::uint64_t> last;  // stream ("" or kind topic) -> last sequence
  };
  bool by_kind_;
  std::map<std::string, Position> nodes_;
};

// Parses the envelope frame of a message; nullopt when it is not a valid Envelope, its body does not match the
// topic frame, or it carries a number that is not finite (NaN or infinity: the agent never publishes one).
std::optional<v1::Envelope> decode_envelope(std::string_view topic, std::string_view payload);

std::string format_text(const v1::Envelope& envelope);
std::string format_text(const FeedNotice& notice);
nlohmann::json to_json(const v1::Envelope& envelope);
nlohmann::json to_json(const FeedNotice& notice);

}  // namespace tally::agent
