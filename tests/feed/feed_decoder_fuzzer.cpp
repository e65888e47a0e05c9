// libFuzzer over what every feed subscriber runs on what it receives (tallyctl watch, tallyctl top): decode the
// two frames, follow the sequences, render text and JSON, fold usage into a UsageView. A feed endpoint can be
// reached by anyone who can reach the port, so any frames must give a clean rejection or a message that re-encodes
// to an equal message, and a usage view that holds the last total each report carried.
//
// Input: messages, each [topic selector][4-byte little-endian length][payload]; the selector picks heartbeat,
// usage, topology or a topic that is none of them. Seeds: real messages from a real FeedPublisher (feed_fuzz_seeds).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/util/message_differencer.h>

#include "agent/feed/usage_view.hpp"
#include "agent/feed/watch.hpp"

namespace {

using namespace tally::agent;
using namespace tally;

// Says which invariant broke (the trap alone leaves an inlined frame with no line).
void check_at(bool ok, int line) {
  if (ok) return;
  std::fprintf(stderr, "feed_decoder_fuzzer: the check at line %d failed\n", line);
  __builtin_trap();
}
#define check(ok) check_at((ok), __LINE__)

// The view must hold, for every (workload, label set, counter) a report carried, the last total it carried; after
// a snapshot, only the workloads it carried.
void check_view(const UsageView& view, const v1::UsageReport& report) {
  // workload, label text (nullopt: the workload's own totals), counter name, source, kind
  using Key = std::tuple<std::string, std::optional<std::string>, std::string, int, int>;
  std::map<Key, std::uint64_t> last;
  for (const auto& w : report.workloads()) {
    for (const auto& t : w.totals()) last[{w.workload_id(), std::nullopt, t.name(), t.source(), t.kind()}] = t.total();
    for (const auto& ls : w.label_sets()) {
      for (const auto& t : ls.totals()) last[{w.workload_id(), label_text(ls), t.name(), t.source(), t.kind()}] = t.total();
    }
  }
  for (const auto& [key, total] : last) {
    const auto& [workload, labels, name, source, kind] = key;
    const auto w = view.workloads().find(workload);
    check(w != view.workloads().end());
    const CounterViews* counters = &w->second.totals;
    if (labels) {
      const auto ls = w->second.label_sets.find(*labels);
      check(ls != w->second.label_sets.end());
      counters = &ls->second.counters;
    }
    const auto c = counters->find({name, static_cast<v1::ValueSource>(source), static_cast<v1::ValueKind>(kind)});
    check(c != counters->end() && c->second.total == total && c->second.reported == view.reports());
  }
  if (report.snapshot()) {
    for (const auto& [id, workload] : view.workloads()) {
      bool carried = false;
      for (const auto& w : report.workloads()) carried = carried || w.workload_id() == id;
      check(carried);
    }
  }
}

}  // namespace

// Protobuf logs every string field it rejects for invalid UTF-8: expected here, and noise in CI's log.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string_view kTopics[] = {"heartbeat", "usage", "topology", "usage2"};
  SequenceTracker by_sequence(false), by_kind(true);
  UsageView view;
  while (size >= 5) {
    const std::string_view topic = kTopics[data[0] % 4];
    std::uint32_t length = 0;
    std::memcpy(&length, data + 1, 4);
    data += 5;
    size -= 5;
    length = static_cast<std::uint32_t>(std::min<std::size_t>(length, size));
    const std::string_view payload(reinterpret_cast<const char*>(data), length);
    data += length;
    size -= length;

    const auto envelope = decode_envelope(topic, payload);
    if (!envelope) continue;
    const auto kind = kind_of(*envelope);
    check(kind.has_value() && topic_of(*kind) == topic);
    // What was accepted re-encodes to a message that decodes to an equal message (compared as messages: a map
    // field's entries may be written in another order).
    const auto again = decode_envelope(topic, envelope->SerializeAsString());
    check(again.has_value());
    std::string differences;
    google::protobuf::util::MessageDifferencer differencer;
    differencer.ReportDifferencesToString(&differences);
    if (!differencer.Compare(*again, *envelope)) std::fprintf(stderr, "re-encoded message differs:\n%s", differences.c_str());
    check(differences.empty());

    (void)by_sequence.observe(*envelope);
    for (const FeedNotice& notice : by_kind.observe(*envelope)) {
      check(!format_text(notice).empty());
      check(to_json(notice).at("node_id") == notice.node_id);
    }
    check(!format_text(*envelope).empty());
    check(to_json(*envelope).at("topic") == topic);
    if (envelope->has_usage()) {
      view.apply(envelope->usage());
      check_view(view, envelope->usage());
    }
  }
  return 0;
}
