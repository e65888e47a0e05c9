// The metering source's pacing, with the real client in this process: between snapshots a report reads only the
// segments where something moved (lane events, or counters that moved at their last read); a snapshot reads every
// segment, so a client that only adds to counters after a quiet spell is picked up there.
#include "shm/segments/metering.hpp"

#include <poll.h>
#include <stdlib.h>

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "tally/client.h"
#include "tests/support/temp_dir.hpp"

namespace tally::shm {
namespace {

struct Recorder : MeteringSource::Listener {
  void on_attached(const Segment&) override { ++attached; }
  void on_drained(const Segment& segment, std::span<const RequestEvent> read) override {
    ++drained;
    changed = segment.changed;
    events += read.size();
  }
  void on_retired(const Segment&, const std::string&) override { ++retired; }
  int attached = 0, drained = 0, retired = 0;
  std::vector<std::uint32_t> changed;
  std::size_t events = 0;
};

class MeteringPacing : public ::testing::Test {
 protected:
  void SetUp() override {
    MeteringSource::Options options;
    options.socket_path = dir_ / "tally.sock";
    options.segment_dir = dir_ / "segments";
    options.instance_id = "test";
    auto started = MeteringSource::start(options, recorder_, [](const std::string&) { return false; });
    ASSERT_TRUE(started) << started.error().message;
    metering_ = std::move(*started);
    ::setenv("TALLY_SOCKET", options.socket_path.c_str(), 1);
    ::setenv("TALLY_OPEN_TIMEOUT_MS", "5000", 1);
    // tally_open waits for the registration reply: serve it meanwhile, then hand the source back to this thread.
    std::atomic<bool> opened{false};
    std::thread serve([&] {
      while (!opened) {
        pollfd p{metering_->fd(), POLLIN, 0};
        if (::poll(&p, 1, 5) > 0) metering_->on_readable();
      }
    });
    client_ = tally_open("metering-test");
    opened = true;
    serve.join();
    ASSERT_TRUE(tally_attached(client_));
    ASSERT_EQ(recorder_.attached, 1);
  }
  void TearDown() override {
    tally_close(client_);
    ::unsetenv("TALLY_SOCKET");
    ::unsetenv("TALLY_OPEN_TIMEOUT_MS");
  }
  // A report's reading: lanes, then counters (of every segment, or of the active ones); true when the listener
  // heard of a change.
  bool report(bool every) {
    const int before = recorder_.drained;
    metering_->drain();
    metering_->sync(every);
    return recorder_.drained != before;
  }

  test::TempDir dir_;
  Recorder recorder_;
  std::unique_ptr<MeteringSource> metering_;
  tally_client* client_ = nullptr;
};

TEST_F(MeteringPacing, IdleSegmentsAreReadAtSnapshotsAndBusyOnesAtEveryReport) {
  const tally_label labels[] = {{"tenant", "acme"}};
  const std::uint32_t h = tally_intern(client_, labels, 1);
  ASSERT_NE(h, 0u);
  tally_add(client_, h, TALLY_REQUESTS, 1);
  ASSERT_TRUE(report(false)) << "a new segment is read";
  EXPECT_FALSE(report(false)) << "nothing moved";

  // Quiet since its last read: a counter that moves now waits for the next snapshot.
  tally_add(client_, h, TALLY_TOKENS_IN, 5);
  EXPECT_FALSE(report(false)) << "an idle segment was read between snapshots";
  ASSERT_TRUE(report(true));
  EXPECT_EQ(recorder_.changed, std::vector<std::uint32_t>{h});

  // Its counters moved at that read: it is read at the next report too, and goes quiet again after one still read.
  tally_add(client_, h, TALLY_TOKENS_IN, 5);
  EXPECT_TRUE(report(false));
  EXPECT_FALSE(report(false));

  // A request event makes it active at once: the same report reads its counters.
  tally_request request{};
  request.tokens_in = 7;
  tally_record(client_, h, &request);
  EXPECT_TRUE(report(false));
  EXPECT_EQ(recorder_.events, 1u);
  EXPECT_EQ(recorder_.changed, std::vector<std::uint32_t>{h}) << "the record's counters came with its event";
}

// The drain timer's pass looks at each segment's lane heads and drains only those that moved: events of the thread
// that already had a slot, and of a thread that takes a new one, both arrive; a pass with nothing new reads nothing.
TEST_F(MeteringPacing, ADrainPassFindsTheLanesThatMoved) {
  const tally_label labels[] = {{"tenant", "acme"}};
  const std::uint32_t h = tally_intern(client_, labels, 1);
  tally_request request{};
  request.tokens_in = 3;
  tally_record(client_, h, &request);
  metering_->drain(/*every=*/false);
  EXPECT_EQ(recorder_.events, 1u);
  const int drained = recorder_.drained;
  metering_->drain(false);
  EXPECT_EQ(recorder_.drained, drained) << "nothing new, nothing told";

  std::thread other([&] { tally_record(client_, h, &request); });  // a second slot
  other.join();
  metering_->drain(false);
  EXPECT_EQ(recorder_.events, 2u);
  tally_record(client_, h, &request);
  tally_record(client_, h, &request);
  metering_->drain(false);
  EXPECT_EQ(recorder_.events, 4u);
}

}  // namespace
}  // namespace tally::shm
