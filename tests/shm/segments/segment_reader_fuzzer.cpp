// libFuzzer over the agent's segment reader: any bytes as a segment must give a clean Error or a clean drain,
// never a crash, a hang or a sanitizer report. Seeds with valid segments are easy to reach: inputs shorter than
// a header are padded into a valid header of a small shape, then overwritten by the input.
#include <cstring>
#include <vector>

#include "agent/base/histogram.hpp"
#include "shm/segments/segment_reader.hpp"

namespace {

using namespace tally::shm;

std::vector<std::byte> valid_small_segment() {
  const format::Layout l = format::compute_layout(8, 2, 4);
  std::vector<std::byte> bytes(l.segment_size);
  auto* h = reinterpret_cast<format::Header*>(bytes.data());
  format::init_header(*h, 8, 2, 4);
  h->magic = format::kMagic;
  return bytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Mode bit: 0 = the input is the whole segment; 1 = the input patches a valid small segment from byte 192 on
  // (the client-written part of the header and beyond), which reaches the drain logic far more often.
  if (size == 0) return 0;
  const bool patch = (data[0] & 1) != 0;
  ++data;
  --size;
  std::vector<std::byte> storage;
  if (patch) {
    storage = valid_small_segment();
    const std::size_t n = std::min(size, storage.size() - 192);
    std::memcpy(storage.data() + 192, data, n);
  } else {
    storage.resize(size);
    if (size != 0) std::memcpy(storage.data(), data, size);
  }
  // The reader wants a 64-byte aligned mapping, as mmap gives it.
  std::vector<std::byte> aligned(storage.size() + 64);
  auto* base = reinterpret_cast<std::byte*>((reinterpret_cast<std::uintptr_t>(aligned.data()) + 63) & ~std::uintptr_t{63});
  if (!storage.empty()) std::memcpy(base, storage.data(), storage.size());
  auto reader = SegmentReader::attach({base, storage.size()});
  if (!reader) return 0;
  std::vector<RequestEvent> events;
  tally::ExponentialHistogram tokens, durations;  // what the agent folds events into
  for (int round = 0; round < 2; ++round) {
    if (!reader->drain(events)) return 0;
    for (const auto& e : events) {
      tokens.record(e.tokens_in + e.tokens_out);
      durations.record(e.duration_ns);
    }
    events.clear();
  }
  (void)tokens.quantile(0.99);
  (void)tokens.top_share(0.01);
  (void)durations.quantile(0.5);
  return 0;
}
