#pragma once
// Names and defaults the client library and the agent must agree on, once: the built-in counter and gauge names,
// the charset of user-named counters, how a label set is written as text, the default registration socket and the
// default segment shape. Header-only and dependency-free: the client library includes it.

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "shm/format/segment_format.hpp"

namespace tally::shm::format {

inline constexpr std::string_view kDefaultSocketPath = "/run/tally/tally.sock";

// The shape the agent grants when a client asks for none (each can be set in [metering]).
inline constexpr std::uint32_t kDefaultLaneRecords = 1024;
inline constexpr std::uint32_t kDefaultSlots = 64;
inline constexpr std::uint32_t kDefaultLabelSets = 256;

// Counter index -> name, as tally/client.h numbers them (TALLY_TOKENS_IN ...); index 7 is reserved.
inline constexpr std::array<std::string_view, kBuiltinCounters> kBuiltinCounterNames{
    "tokens_in", "tokens_out", "cached_tokens", "requests", "errors", "gpu_time_ns", "tool_calls", "reserved_7"};
// Gauge index -> name (TALLY_KV_CACHE_BYTES ...).
inline constexpr std::array<std::string_view, kGaugeCount> kGaugeNames{
    "kv_cache_bytes", "context_tokens", "gauge_2", "gauge_3", "gauge_4", "gauge_5", "gauge_6", "gauge_7"};

// A user-named counter: 1 to kCounterNameBytes - 1 bytes of [A-Za-z0-9_.].
constexpr bool counter_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
}
constexpr bool valid_counter_name(std::string_view name) {
  if (name.empty() || name.size() >= kCounterNameBytes) return false;
  for (char c : name) {
    if (!counter_name_char(c)) return false;
  }
  return true;
}

// Label text: "key=value" pairs separated by '\n', in the order given. A key is non-empty without '=' or '\n'; a
// value has no '\n'. Appends one pair; false (and nothing appended) when the pair is malformed.
inline bool append_label_pair(std::string& text, std::string_view key, std::string_view value) {
  if (key.empty() || key.find_first_of("=\n") != std::string_view::npos) return false;
  if (value.find('\n') != std::string_view::npos) return false;
  if (!text.empty()) text += '\n';
  text.append(key).append("=").append(value);
  return true;
}

inline std::string hex64(std::uint64_t value) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text = "0x";
  for (int shift = 60; shift >= 0; shift -= 4) text += kDigits[(value >> shift) & 0xf];
  return text;
}

// What is wrong with a segment header whose file is `file_size` bytes, or "" when its layout is one this version
// writes: the one check of the agent's reader and the client's attach. Reads each field once.
inline std::string header_problem(const Header& h, std::uint64_t file_size) {
  using std::to_string;
  if (file_size < sizeof(Header)) {
    return "segment is " + to_string(file_size) + " bytes, smaller than its " + to_string(sizeof(Header)) +
           "-byte header";
  }
  const std::uint64_t magic = load_relaxed(h.magic);
  if (magic != kMagic) return "bad magic " + hex64(magic);
  const std::uint32_t version = load_relaxed(h.version);
  if (version < kOldestVersion || version > kVersion) {
    return "unsupported segment version " + to_string(version) + " (this build reads " + to_string(kOldestVersion) +
           " to " + to_string(kVersion) + ")";
  }
  if (load_relaxed(h.header_size) != sizeof(Header)) return "bad header size " + to_string(load_relaxed(h.header_size));
  if (load_relaxed(h.counter_count) != kCounterCount || load_relaxed(h.gauge_count) != kGaugeCount ||
      load_relaxed(h.record_size) != sizeof(Record)) {
    return "bad counter, gauge or record size in header";
  }
  const std::uint32_t labels = load_relaxed(h.label_capacity);
  const std::uint32_t slots = load_relaxed(h.slot_count);
  const std::uint32_t records = load_relaxed(h.lane_records);
  if (labels < 2 || labels > kMaxLabelSets) {
    return "label capacity " + to_string(labels) + " out of range [2, " + to_string(kMaxLabelSets) + "]";
  }
  if (slots < 1 || slots > kMaxSlots) {
    return "slot count " + to_string(slots) + " out of range [1, " + to_string(kMaxSlots) + "]";
  }
  if (records < kMinLaneRecords || records > kMaxLaneRecords || (records & (records - 1)) != 0) {
    return "lane size " + to_string(records) + " is not a power of two in [" + to_string(kMinLaneRecords) + ", " +
           to_string(kMaxLaneRecords) + "]";
  }
  const Layout layout = compute_layout(labels, slots, records, version);
  const std::uint64_t segment_size = load_relaxed(h.segment_size);
  if (segment_size != file_size || layout.segment_size != segment_size) {
    return "segment size " + to_string(segment_size) + " does not match the file (" + to_string(file_size) +
           ") or layout (" + to_string(layout.segment_size) + ")";
  }
  if (load_relaxed(h.labels_offset) != layout.labels_offset || load_relaxed(h.names_offset) != layout.names_offset ||
      load_relaxed(h.gauges_offset) != layout.gauges_offset ||
      load_relaxed(h.overflow_offset) != layout.overflow_offset ||
      load_relaxed(h.budgets_offset) != layout.budgets_offset || load_relaxed(h.slots_offset) != layout.slots_offset ||
      load_relaxed(h.slot_stride) != layout.slot_stride ||
      (version >= 2 && load_relaxed(h.slot_headers_offset) != layout.slot_headers_offset)) {
    return "region offsets in header do not match the layout";
  }
  return {};
}

}  // namespace tally::shm::format
