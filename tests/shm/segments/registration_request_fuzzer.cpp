// libFuzzer over the agent's registration request parser: any local process can write anything to the registration
// socket. Any bytes must give a clean Error or a granted request the agent can build, never a crash or a sanitizer
// report; and what is granted is a fixed point: sent again, it is granted as is. Seeds: the bytes the real client
// library sends (registration_fuzz_seeds).
#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>

#include "shm/format/registration_protocol.hpp"
#include "shm/segments/registration_server.hpp"

namespace {

using namespace tally::shm;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

// The limits the agent runs with: the defaults, odd default shapes from a config, and caps that are not powers of two.
SegmentLimits limits_variant(unsigned which) {
  SegmentLimits l;
  if (which == 1) {
    l.default_lane_records = 1000;  // not a power of two: rounded up
    l.default_slots = 300;
    l.max_slots = 300;
    l.default_label_sets = 3;
  } else if (which == 2) {
    l.max_lane_records = 1000;  // a cap that is not a power of two: lanes never exceed it
    l.max_label_sets = 100;
  }
  return l;
}

// A template so that the cap on segment bytes is checked where SegmentLimits has one (a requires-expression
// outside a template would not compile without it).
template <typename Limits>
void check_granted(const protocol::Request& sent, const GrantedRequest& g, const Limits& l) {
  // A shape within the limits, lanes a power of two: what create_segment and the reader expect.
  check(g.shape.lane_records >= format::kMinLaneRecords && g.shape.lane_records <= l.max_lane_records);
  check(std::has_single_bit(g.shape.lane_records));
  check(g.shape.slot_count >= 1 && g.shape.slot_count <= l.max_slots);
  check(g.shape.label_capacity >= 2 && g.shape.label_capacity <= l.max_label_sets);
  // Never more than asked (the wish clamped into the limits, lanes rounded to a power of two), and no more
  // segment than the cap allows where the limits have one; a wish for a small segment is granted as asked.
  const std::uint32_t lanes = std::clamp(sent.lane_records == 0 ? l.default_lane_records : sent.lane_records,
                                         format::kMinLaneRecords, l.max_lane_records);
  const SegmentShape wish{std::clamp(sent.label_capacity == 0 ? l.default_label_sets : sent.label_capacity, 2u,
                                     l.max_label_sets),
                          std::clamp(sent.slot_count == 0 ? l.default_slots : sent.slot_count, 1u, l.max_slots),
                          std::bit_ceil(std::min(lanes, std::bit_floor(l.max_lane_records)))};
  check(g.shape.lane_records <= wish.lane_records && g.shape.slot_count <= wish.slot_count &&
        g.shape.label_capacity <= wish.label_capacity);
  const auto bytes_of = [](const SegmentShape& s) {
    return format::compute_layout(s.label_capacity, s.slot_count, s.lane_records).segment_size;
  };
  if constexpr (requires { l.max_segment_bytes; }) check(bytes_of(g.shape) <= l.max_segment_bytes);
  if (bytes_of(wish) <= (std::uint64_t{16} << 20)) {
    check(g.shape.lane_records == wish.lane_records && g.shape.slot_count == wish.slot_count &&
          g.shape.label_capacity == wish.label_capacity);
  }
  // The name: printable ASCII, at most 63 bytes, one for one with what was sent up to its first NUL.
  const std::size_t sent_length = strnlen(sent.workload_name, sizeof sent.workload_name - 1);
  check(g.workload_name.size() == sent_length);
  for (std::size_t i = 0; i < sent_length; ++i) {
    const auto c = static_cast<unsigned char>(g.workload_name[i]);
    check(c >= 0x20 && c < 0x7f);
    if (c != '?') check(g.workload_name[i] == sent.workload_name[i]);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  for (unsigned which = 0; which < 3; ++which) {
    const SegmentLimits limits = limits_variant(which);
    const auto granted = parse_registration_request(bytes, limits);
    if (!granted) {
      check(!granted.error().message.empty());
      continue;
    }
    check(size == sizeof(protocol::Request));
    protocol::Request sent{};
    std::memcpy(&sent, data, sizeof sent);
    check(sent.magic == protocol::kRequestMagic && sent.version == protocol::kVersion);
    check_granted(sent, *granted, limits);
    // Re-encoded as a client would send it, the granted request is granted unchanged.
    protocol::Request again{};
    again.magic = protocol::kRequestMagic;
    again.version = protocol::kVersion;
    again.lane_records = granted->shape.lane_records;
    again.slot_count = granted->shape.slot_count;
    again.label_capacity = granted->shape.label_capacity;
    std::memcpy(again.workload_name, granted->workload_name.data(), granted->workload_name.size());
    const auto regranted =
        parse_registration_request(std::as_bytes(std::span<const protocol::Request, 1>(&again, 1)), limits);
    check(regranted.has_value());
    check(regranted->shape.lane_records == granted->shape.lane_records &&
          regranted->shape.slot_count == granted->shape.slot_count &&
          regranted->shape.label_capacity == granted->shape.label_capacity &&
          regranted->workload_name == granted->workload_name);
  }
  return 0;
}
