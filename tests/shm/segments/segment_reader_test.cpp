// The agent's segment reader against valid and hostile segments: one test per corruption class. A hostile
// segment must produce an Error naming what is wrong (the caller quarantines it), never a crash or a hang.
#include "shm/segments/segment_reader.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>

#include "shm/segments/segment_file.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::shm {
namespace {

using format::Header;

class SegmentReaderTest : public ::testing::Test {
 protected:
  void SetUp() override { make(SegmentShape{16, 4, 8}); }

  // A segment as the agent makes it; `version` 1 rewrites it as an agent of version 1 made it (the reader reads
  // every version from format::kOldestVersion: segments outlive agents).
  void make(SegmentShape shape, std::uint32_t version = format::kVersion) {
    shape_ = shape;
    const auto path = dir_ / ("seg" + std::to_string(++made_) + ".seg");
    auto created = create_segment(path, dir_ / ("seg" + std::to_string(made_) + ".ctl"), shape,
                                  Producer{::getpid(), ::getuid(), ::getgid(), 1}, "test");
    ASSERT_TRUE(created) << created.error().message;
    layout_ = format::compute_layout(shape.label_capacity, shape.slot_count, shape.lane_records, version);
    if (version != format::kVersion) {
      ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(layout_.segment_size)), 0);
      auto file = MappedFile::open(path, sizeof(Header), 1u << 30);
      ASSERT_TRUE(file) << file.error().message;
      Header& h = *reinterpret_cast<Header*>(file->bytes().data());
      format::init_header(h, shape.label_capacity, shape.slot_count, shape.lane_records, version);
    }
    auto file = MappedFile::open(path, sizeof(Header), 1u << 30);
    ASSERT_TRUE(file) << file.error().message;
    file_ = std::move(*file);
  }
  std::byte* base() { return file_.bytes().data(); }
  Header& header() { return *reinterpret_cast<Header*>(base()); }
  format::SlotHeader& slot(std::uint32_t s) {
    return *reinterpret_cast<format::SlotHeader*>(base() + layout_.slot_header(s));
  }
  std::uint64_t* counters(std::uint32_t s, std::uint32_t handle) {
    return reinterpret_cast<std::uint64_t*>(base() + layout_.slot_counters(s)) + handle * format::kCounterCount;
  }
  format::Record* records(std::uint32_t s) {
    return reinterpret_cast<format::Record*>(base() + layout_.slot_records(s));
  }
  format::LabelEntry& label(std::uint32_t handle) {
    return reinterpret_cast<format::LabelEntry*>(base() + layout_.labels_offset)[handle];
  }
  // Writes a label set the way the client does.
  void add_label(std::uint32_t handle, std::string_view text) {
    std::memcpy(label(handle).text, text.data(), text.size());
    label(handle).length = static_cast<std::uint32_t>(text.size());
    label(handle).committed = 1;
    header().label_count = handle + 1;
  }
  void push_record(std::uint32_t s, std::uint32_t labels, std::uint64_t tokens) {
    const std::uint64_t head = slot(s).head;
    format::Record& r = records(s)[head & (shape_.lane_records - 1)];
    r = format::Record{};
    r.labels = labels;
    r.tokens_in = tokens;
    r.commit = static_cast<std::uint32_t>(head + 1);
    slot(s).head = head + 1;
    if (header().slots_used < s + 1) header().slots_used = s + 1;
  }
  Result<void> attach_and_drain() {
    auto reader = SegmentReader::attach(file_.bytes());
    if (!reader) return reader.error();
    events_.clear();
    auto drained = reader->drain(events_);
    if (drained) reader_.emplace(std::move(*reader));
    return drained;
  }
  static void expect_error(const Result<void>& r, std::string_view needle) {
    ASSERT_FALSE(r) << "expected an error mentioning '" << needle << "'";
    EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
  }

  test::TempDir dir_;
  int made_ = 0;
  SegmentShape shape_;
  format::Layout layout_{};
  MappedFile file_;
  std::optional<SegmentReader> reader_;
  std::vector<RequestEvent> events_;
};

// A thread takes the overflow shard only when every slot is owned (slots_used, a high-water mark, then equals the
// slot count): before that the shard holds nothing, and is not read.
TEST_F(SegmentReaderTest, TheOverflowShardIsReadOnceEverySlotIsOwned) {
  add_label(1, "tenant=acme");
  header().slots_used = 2;
  counters(0, 1)[3] = 5;
  reinterpret_cast<std::uint64_t*>(base() + layout_.overflow_offset)[1 * format::kCounterCount + 3] = 100;
  ASSERT_TRUE(attach_and_drain());
  EXPECT_EQ(reader_->counters(1)[3], 5u);
  header().slots_used = 4;
  ASSERT_TRUE(reader_->drain(events_));
  EXPECT_EQ(reader_->counters(1)[3], 105u);
}

// Segments outlive agents and clients outlive upgrades: a version 1 segment (slot headers at the front of each
// slot) is read like a current one.
TEST_F(SegmentReaderTest, ReadsASegmentOfTheOldestVersion) {
  make(SegmentShape{16, 4, 8}, format::kOldestVersion);
  ASSERT_NE(layout_.slot_header(1), format::compute_layout(16, 4, 8).slot_header(1)) << "the versions differ";
  add_label(1, "tenant=acme");
  counters(1, 1)[3] = 7;
  push_record(1, 1, 10);
  push_record(1, 1, 20);
  ASSERT_TRUE(attach_and_drain());
  EXPECT_EQ(reader_->counters(1)[3], 7u);
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[0].tokens_in + events_[1].tokens_in, 30u);
  EXPECT_EQ(slot(1).tail, 2u);
  EXPECT_EQ(reader_->lane_heads().first_head + reader_->lane_heads().stride,
            base() + layout_.slot_header(1) + offsetof(format::SlotHeader, head));
}

TEST_F(SegmentReaderTest, ReadsLabelsCountersGaugesAndEvents) {
  add_label(1, "tenant=acme\nmodel=llama");
  add_label(2, "tenant=beta");
  header().slots_used = 4;  // every slot owned: later threads share the overflow shard
  counters(0, 1)[3] = 5;
  counters(1, 1)[3] = 7;
  reinterpret_cast<std::uint64_t*>(base() + layout_.overflow_offset)[1 * format::kCounterCount + 3] = 100;
  reinterpret_cast<std::uint64_t*>(base() + layout_.gauges_offset)[2 * format::kGaugeCount + 1] = 4096;
  push_record(0, 1, 10);
  push_record(1, 2, 20);
  slot(1).dropped = 3;
  ASSERT_TRUE(attach_and_drain());
  ASSERT_EQ(reader_->label_count(), 3u);
  EXPECT_EQ(reader_->label_set(1).value_of("model"), "llama");
  EXPECT_EQ(reader_->counters(1)[3], 112u);
  EXPECT_EQ(reader_->gauges(2)[1], 4096u);
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[0].tokens_in + events_[1].tokens_in, 30u);
  EXPECT_EQ(reader_->dropped(), 3u);
  EXPECT_EQ(slot(0).tail, 1u);  // consumed records are handed back to the writer

  // Incremental: only new events the next time.
  push_record(0, 2, 5);
  events_.clear();
  ASSERT_TRUE(reader_->drain(events_));
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].labels, 2u);
}

TEST_F(SegmentReaderTest, TooSmall) {
  std::vector<std::byte> tiny(64);
  auto r = SegmentReader::attach(tiny);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("smaller than"), std::string::npos);
}

TEST_F(SegmentReaderTest, BadMagic) {
  header().magic = 0x1234;
  expect_error(attach_and_drain(), "bad magic");
}

TEST_F(SegmentReaderTest, BadVersion) {
  header().version = 99;
  expect_error(attach_and_drain(), "unsupported segment version 99");
}

TEST_F(SegmentReaderTest, SizeDisagreesWithTheFile) {
  header().segment_size += 64;
  expect_error(attach_and_drain(), "does not match");
}

TEST_F(SegmentReaderTest, CapacitiesOutOfRange) {
  header().label_capacity = 1u << 20;
  expect_error(attach_and_drain(), "label capacity");
  make({16, 4, 8});
  header().slot_count = 0;
  expect_error(attach_and_drain(), "slot count");
  make({16, 4, 8});
  header().lane_records = 12;
  expect_error(attach_and_drain(), "power of two");
}

TEST_F(SegmentReaderTest, OffsetsDisagreeWithTheLayout) {
  header().gauges_offset += 64;
  expect_error(attach_and_drain(), "offsets");
}

TEST_F(SegmentReaderTest, LabelCountBeyondCapacity) {
  header().label_count = 17;
  expect_error(attach_and_drain(), "label count 17 exceeds capacity 16");
}

TEST_F(SegmentReaderTest, LabelLengthBeyondEntry) {
  add_label(1, "tenant=a");
  label(1).length = 4000;
  expect_error(attach_and_drain(), "length 4000");
}

TEST_F(SegmentReaderTest, LabelNotUtf8) {
  add_label(1, "tenant=\xff\xfe");
  expect_error(attach_and_drain(), "UTF-8");
}

TEST_F(SegmentReaderTest, LabelNotKeyValue) {
  add_label(1, "tenant");
  expect_error(attach_and_drain(), "not key=value");
}

TEST_F(SegmentReaderTest, UserCounterNameMalformed) {
  header().user_counter_count = 1;
  std::memcpy(base() + layout_.names_offset, "bad name!", 9);
  expect_error(attach_and_drain(), "malformed name");
  make({16, 4, 8});
  header().user_counter_count = 200;
  expect_error(attach_and_drain(), "user counter count");
}

TEST_F(SegmentReaderTest, CounterGoingBackwards) {
  add_label(1, "tenant=a");
  header().slots_used = 1;
  counters(0, 1)[0] = 50;
  ASSERT_TRUE(attach_and_drain());
  counters(0, 1)[0] = 40;
  events_.clear();
  auto r = reader_->drain(events_);
  expect_error(r, "counter tokens_in went backwards from 50 to 40");
}

TEST_F(SegmentReaderTest, SlotsUsedBeyondSlotCount) {
  header().slots_used = 5;
  expect_error(attach_and_drain(), "slots used 5 exceeds slot count 4");
}

TEST_F(SegmentReaderTest, LaneOverrun) {
  add_label(1, "tenant=a");
  header().slots_used = 1;
  slot(0).head = 9;  // 9 unread records in an 8-record lane
  expect_error(attach_and_drain(), "inconsistent");
  make({16, 4, 8});
  add_label(1, "tenant=a");
  ASSERT_TRUE(attach_and_drain());
  header().slots_used = 1;
  slot(0).head = 100;
  events_.clear();
  expect_error(reader_->drain(events_), "overran");
}

TEST_F(SegmentReaderTest, LaneHeadGoingBackwards) {
  add_label(1, "tenant=a");
  push_record(0, 1, 1);
  push_record(0, 1, 1);
  ASSERT_TRUE(attach_and_drain());
  slot(0).head = 1;
  events_.clear();
  expect_error(reader_->drain(events_), "head went backwards");
}

TEST_F(SegmentReaderTest, EventLabelOutOfRange) {
  add_label(1, "tenant=a");
  push_record(0, 9, 1);
  expect_error(attach_and_drain(), "label set 9 out of range");
}

TEST_F(SegmentReaderTest, DroppedGoingBackwards) {
  header().slots_used = 1;
  slot(0).dropped = 10;
  ASSERT_TRUE(attach_and_drain());
  slot(0).dropped = 2;
  events_.clear();
  expect_error(reader_->drain(events_), "dropped count went backwards");
}

TEST_F(SegmentReaderTest, UncommittedRecordIsSkippedNeverRead) {
  add_label(1, "tenant=a");
  push_record(0, 1, 10);
  push_record(0, 1, 20);
  records(0)[1].commit = 0;  // published head without its commit: a torn record
  ASSERT_TRUE(attach_and_drain());
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].tokens_in, 10u);
  EXPECT_EQ(reader_->torn(), 1u);
}

TEST_F(SegmentReaderTest, TruncatedUnderTheReaderIsCaughtNotACrash) {
  install_sigbus_guard();
  make({256, 64, 1024});
  add_label(1, "tenant=a");
  header().slots_used = 64;
  auto reader = SegmentReader::attach(file_.bytes());
  ASSERT_TRUE(reader);
  ASSERT_TRUE(file_.intact());
  ASSERT_EQ(::truncate(file_.path().c_str(), 4096), 0);  // what a hostile client can do with its descriptor
  std::vector<RequestEvent> events;
  (void)reader->drain(events);  // reads past the new end: SIGBUS, caught, zero pages mapped in
  EXPECT_FALSE(file_.intact());
}

TEST(LabelText, Validation) {
  EXPECT_FALSE(parse_label_text("k=caf\xc3").has_value());  // not UTF-8
  EXPECT_TRUE(parse_label_text("k=caf\xc3\xa9").has_value());
  EXPECT_TRUE(parse_label_text("").has_value());
  EXPECT_FALSE(parse_label_text("=v").has_value());
  EXPECT_FALSE(parse_label_text("k=\x01").has_value());
}

}  // namespace
}  // namespace tally::shm
