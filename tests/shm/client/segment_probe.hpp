#pragma once
// A reader on a registered segment, the way the agent holds one: the client tests check what reached shared memory
// through the agent's own reader.

#include <optional>
#include <stdexcept>
#include <vector>

#include "shm/segments/registration_server.hpp"
#include "shm/segments/segment_file.hpp"
#include "shm/segments/segment_reader.hpp"

namespace tally::test {

struct SegmentProbe {
  explicit SegmentProbe(const shm::Registration& r) {
    auto f = shm::MappedFile::open(r.segment_path, sizeof(shm::format::Header), 1u << 30);
    if (!f) throw std::runtime_error(f.error().message);
    file = std::move(*f);
    auto rd = shm::SegmentReader::attach(file.bytes());
    if (!rd) throw std::runtime_error(rd.error().message);
    reader.emplace(std::move(*rd));
  }
  void drain() {
    auto ok = reader->drain(events);
    if (!ok) throw std::runtime_error(ok.error().message);
  }
  std::uint64_t total(std::uint32_t handle, std::uint32_t counter) const {
    return handle < reader->label_count() ? reader->counters(handle)[counter] : 0;
  }
  shm::MappedFile file;
  std::optional<shm::SegmentReader> reader;
  std::vector<shm::RequestEvent> events;
};

}  // namespace tally::test
