// SequenceTracker: the gap, restart and backwards rules that `tallyctl watch` applies.
#include "agent/feed/watch.hpp"

#include <limits>

#include <gtest/gtest.h>

namespace tally::agent {
namespace {

v1::Envelope heartbeat(const std::string& node, const std::string& instance, std::uint64_t sequence,
                       std::uint64_t kind_sequence = 0) {
  v1::Envelope envelope;
  envelope.set_node_id(node);
  envelope.set_instance_id(instance);
  envelope.set_sequence(sequence);
  envelope.set_kind_sequence(kind_sequence);
  envelope.mutable_heartbeat();
  return envelope;
}

TEST(SequenceTracker, ConsecutiveSequencesAreQuiet) {
  SequenceTracker tracker(false);
  for (std::uint64_t s = 7; s < 20; ++s) EXPECT_TRUE(tracker.observe(heartbeat("n", "i", s)).empty()) << s;
}

TEST(SequenceTracker, GapReportsWhatWasMissed) {
  SequenceTracker tracker(false);
  EXPECT_TRUE(tracker.observe(heartbeat("n", "i", 1)).empty());
  const auto notices = tracker.observe(heartbeat("n", "i", 5));
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_EQ(notices[0].type, FeedNotice::Type::gap);
  EXPECT_EQ(notices[0].expected, 2u);
  EXPECT_EQ(notices[0].received, 5u);
  EXPECT_EQ(notices[0].missed(), 3u);
  EXPECT_TRUE(tracker.observe(heartbeat("n", "i", 6)).empty());
}

TEST(SequenceTracker, NewInstanceIsARestartNotAGap) {
  SequenceTracker tracker(false);
  EXPECT_TRUE(tracker.observe(heartbeat("n", "old", 40)).empty());
  const auto notices = tracker.observe(heartbeat("n", "new", 1));
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_EQ(notices[0].type, FeedNotice::Type::restart);
  EXPECT_EQ(notices[0].previous_instance_id, "old");
  EXPECT_EQ(notices[0].instance_id, "new");
}

TEST(SequenceTracker, RepeatedSequenceIsBackwards) {
  SequenceTracker tracker(false);
  EXPECT_TRUE(tracker.observe(heartbeat("n", "i", 3)).empty());
  const auto notices = tracker.observe(heartbeat("n", "i", 3));
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_EQ(notices[0].type, FeedNotice::Type::backwards);
}

TEST(SequenceTracker, NodesAreTrackedSeparately) {
  SequenceTracker tracker(false);
  EXPECT_TRUE(tracker.observe(heartbeat("a", "i", 1)).empty());
  EXPECT_TRUE(tracker.observe(heartbeat("b", "j", 100)).empty());
  EXPECT_TRUE(tracker.observe(heartbeat("a", "i", 2)).empty());
  EXPECT_TRUE(tracker.observe(heartbeat("b", "j", 101)).empty());
}

TEST(SequenceTracker, FollowingKindSequenceIgnoresOtherKinds) {
  SequenceTracker tracker(true);
  EXPECT_TRUE(tracker.observe(heartbeat("n", "i", 10, 1)).empty());
  EXPECT_TRUE(tracker.observe(heartbeat("n", "i", 14, 2)).empty());  // global gap: other kinds in between
  EXPECT_EQ(tracker.observe(heartbeat("n", "i", 15, 4)).size(), 1u);  // kind gap
}

TEST(DecodeEnvelope, RejectsGarbageAndTopicMismatch) {
  const std::string good = heartbeat("n", "i", 1).SerializeAsString();
  EXPECT_TRUE(decode_envelope("heartbeat", good));
  EXPECT_FALSE(decode_envelope("usage", good));
  EXPECT_FALSE(decode_envelope("heartbeat", "\xff\xff\xff\xff"));
  EXPECT_FALSE(decode_envelope("heartbeat", ""));
}

// The agent never publishes NaN or infinity; a subscriber refuses a message that carries one, at any depth (a NaN
// would break whatever sorts or sums it).
TEST(DecodeEnvelope, RejectsNumbersThatAreNotFinite) {
  for (const double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    v1::Envelope envelope;
    envelope.set_node_id("n");
    auto* label_set = envelope.mutable_usage()->add_workloads()->add_label_sets();
    label_set->mutable_duration_ns()->set_p50(1.0);
    EXPECT_TRUE(decode_envelope("usage", envelope.SerializeAsString()));
    label_set->mutable_duration_ns()->set_p99(bad);
    EXPECT_FALSE(decode_envelope("usage", envelope.SerializeAsString())) << bad;
    label_set->mutable_duration_ns()->set_p99(2.0);
    label_set->set_top1pct_token_share(-bad);
    EXPECT_FALSE(decode_envelope("usage", envelope.SerializeAsString())) << -bad;
  }
}

TEST(FeedJson, EnvelopeAndNoticeRender) {
  const auto json = to_json(heartbeat("n", "i", 9));
  EXPECT_EQ(json.at("topic"), "heartbeat");
  EXPECT_EQ(json.at("envelope").at("sequence"), "9");
  FeedNotice gap{FeedNotice::Type::gap, "n", "i", "", 3, 5};
  EXPECT_EQ(to_json(gap).at("missed"), 2);
  EXPECT_NE(format_text(gap).find("2 missed"), std::string::npos);
}

}  // namespace
}  // namespace tally::agent
