// A writer process killed with SIGKILL in the middle of writing: the reader never reads a torn record. Every field
// of the writer's records derives from tokens_in (see shm_test_writer --forever), so a record mixing two writes
// or missing a field is detected, and each lane yields the writer's sequence in order. Label `concurrent`: the reader
// runs while the writer's threads write; the in-process variant puts writers and reader in one process for TSan.
#include <signal.h>

#include <atomic>
#include <map>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "shm/segments/segment_file.hpp"
#include "shm/segments/segment_reader.hpp"
#include "tally/client.hpp"
#include "tests/support/in_process_agent.hpp"
#include "tests/support/process.hpp"
#include "tests/support/workload_gen.hpp"

namespace tally::test {
namespace {

bool whole(const shm::RequestEvent& e) {
  const std::uint64_t v = e.tokens_in;
  return e.tokens_out == v * 3 && e.ttft_ns == v * 5 && e.duration_ns == v * 7 && e.gpu_time_ns == v * 11 &&
         e.tool_calls == static_cast<std::uint32_t>(v & 0xffff) && e.status == static_cast<std::uint32_t>(v >> 16);
}

// Each writer thread has its own lane and writes tokens_in = (i << 8) | thread for i = 1, 2, 3 ... into one label
// set (shm_test_writer --forever, and the in-process writers below). What a lane yields must rise strictly:
// nothing read twice or out of order. Returns how many numbers were skipped over all lanes: each must be a record
// the writer counted dropped (its lane was full). Fails the test (ADD_FAILURE) otherwise.
std::uint64_t lanes_in_order(const std::vector<shm::RequestEvent>& events, std::uint64_t threads) {
  std::map<std::uint64_t, std::uint64_t> last_of_thread, read_of_thread;
  std::map<std::uint64_t, std::uint32_t> label_of_thread;
  for (const auto& e : events) {
    const std::uint64_t thread = e.tokens_in & 0xff, i = e.tokens_in >> 8;
    if (thread >= threads) {
      ADD_FAILURE() << "a record no writer thread wrote: tokens_in " << e.tokens_in;
      return 0;
    }
    const auto [label, first] = label_of_thread.try_emplace(thread, e.labels);
    if (label->second != e.labels) {
      ADD_FAILURE() << "thread " << thread << " wrote into label set " << label->second << " only, not " << e.labels;
      return 0;
    }
    std::uint64_t& last = last_of_thread[thread];
    if (i <= last) {
      ADD_FAILURE() << "thread " << thread << ": record " << i << " came after record " << last;
      return 0;
    }
    last = i;
    ++read_of_thread[thread];
  }
  std::uint64_t skipped = 0;
  for (const auto& [thread, last] : last_of_thread) skipped += last - read_of_thread[thread];
  return skipped;
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
    EXPECT_LE(lanes_in_order(events, 3), reader->dropped())
        << "records missing from a lane that were never counted dropped";
  }
}

// The same records written by threads of this process through the real client library while a reader in this
// process drains the segment: TSan sees the writers' and the reader's accesses to the shared memory. Every record
// whole, each lane in order, and totals exact: every record delivered or counted dropped, counters to the unit.
TEST(TornRecords, InProcessWritersAndReaderAgreeExactly) {
  InProcessAgent agent;
  ::setenv("TALLY_SOCKET", agent.socket_path().c_str(), 1);
  ::setenv("TALLY_OPEN_TIMEOUT_MS", "5000", 1);
  ::setenv("TALLY_LANE_RECORDS", "256", 1);
  Client client("torn-in-process");
  ::unsetenv("TALLY_LANE_RECORDS");
  ASSERT_TRUE(client.attached()) << client.last_error();
  constexpr std::uint64_t kThreads = 3, kRecords = 20000;
  std::uint32_t handles[kThreads];
  for (std::uint64_t t = 0; t < kThreads; ++t) {
    const std::string tenant = "t" + std::to_string(t);
    handles[t] = client.intern({{"tenant", tenant.c_str()}});
    ASSERT_NE(handles[t], 0u);
  }
  auto file = shm::MappedFile::open(agent.wait_for_registrations(1).at(0).segment_path, sizeof(shm::format::Header),
                                    1u << 30);
  ASSERT_TRUE(file) << file.error().message;
  auto reader = shm::SegmentReader::attach(file->bytes());
  ASSERT_TRUE(reader) << reader.error().message;

  std::atomic<std::uint64_t> finished{0};
  std::vector<std::thread> writers;
  for (std::uint64_t t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      for (std::uint64_t i = 1; i <= kRecords; ++i) {
        client.record(handles[t], self_checking_request(i, t));
      }
      ++finished;
    });
  }
  std::vector<shm::RequestEvent> events;
  while (finished.load() < kThreads) ASSERT_TRUE(reader->drain(events));  // concurrently with the writers
  for (auto& w : writers) w.join();
  ASSERT_TRUE(reader->drain(events));

  for (const auto& e : events) ASSERT_TRUE(whole(e)) << "torn record: tokens_in " << e.tokens_in;
  EXPECT_EQ(reader->torn(), 0u);
  const std::uint64_t skipped = lanes_in_order(events, kThreads);
  EXPECT_LE(skipped, reader->dropped());
  EXPECT_EQ(events.size() + reader->dropped(), kThreads * kRecords) << "a record neither delivered nor dropped";
  EXPECT_EQ(reader->dropped(), client.dropped());
  std::uint64_t requests = 0, tokens_in = 0, expected_tokens_in = 0;
  for (std::uint64_t t = 0; t < kThreads; ++t) {
    requests += reader->counters(handles[t])[TALLY_REQUESTS];
    tokens_in += reader->counters(handles[t])[TALLY_TOKENS_IN];
    for (std::uint64_t i = 1; i <= kRecords; ++i) expected_tokens_in += (i << 8) | t;
  }
  EXPECT_EQ(requests, kThreads * kRecords);
  EXPECT_EQ(tokens_in, expected_tokens_in);
  ::unsetenv("TALLY_SOCKET");
  ::unsetenv("TALLY_OPEN_TIMEOUT_MS");
}

}  // namespace
}  // namespace tally::test
