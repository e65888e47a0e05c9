// The client library against the real registration server and reader, in one process: exact totals from many
// threads while the reader drains concurrently, slots released by exiting threads, the overflow shard, labels,
// admission, the no-agent path (counts before attaching handed over exactly), a quarantined segment told, and a
// refused client backing off. Label `concurrent`: CI runs it under TSan.
#include "tally/client.h"

#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "shm/segments/segment_file.hpp"
#include "tally/client.hpp"
#include "tests/shm/client/segment_probe.hpp"
#include "tests/support/in_process_agent.hpp"
#include "tests/support/deadline.hpp"
#include "agent/base/unique_fd.hpp"
#include "agent/base/unix_socket.hpp"
#include "shm/format/registration_protocol.hpp"

namespace tally::test {
namespace {

using shm::MappedFile;

using Reader = SegmentProbe;

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("TALLY_SOCKET", agent_.socket_path().c_str(), 1);
    ::setenv("TALLY_OPEN_TIMEOUT_MS", "5000", 1);
  }
  void TearDown() override {
    for (const char* v : {"TALLY_SOCKET", "TALLY_OPEN_TIMEOUT_MS", "TALLY_SLOTS", "TALLY_LANE_RECORDS", "TALLY_RETRY_MS"}) {
      ::unsetenv(v);
    }
  }
  InProcessAgent agent_;
};

TEST_F(ClientTest, ExactTotalsFromManyThreadsWhileTheReaderDrains) {
  ::setenv("TALLY_LANE_RECORDS", "64", 1);  // small lanes: some events drop, totals must not care
  Client client("exact-totals");
  ASSERT_TRUE(client.attached()) << client.last_error();
  const std::uint32_t a = client.intern({{"tenant", "acme"}, {"model", "m1"}});
  const std::uint32_t b = client.intern({{"tenant", "beta"}});
  const tally_counter widgets = client.counter("widgets");
  ASSERT_NE(a, 0u);
  ASSERT_NE(b, 0u);
  ASSERT_NE(widgets, TALLY_COUNTER_INVALID);
  Reader reader(agent_.wait_for_registrations(1).at(0));

  constexpr int kThreads = 6;
  constexpr std::uint64_t kIterations = 20000;
  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < kIterations; ++i) {
        const std::uint32_t h = (i + t) % 3 == 0 ? b : a;
        client.add(h, TALLY_TOKENS_IN, i % 17);
        client.add(h, widgets, 1);
        tally_request r{};
        r.tokens_out = i % 5;
        r.ttft_ns = 1000 + i;
        r.status = i % 10 == 0 ? 1 : 0;
        client.record(h, r);
        client.set(h, TALLY_KV_CACHE_BYTES, i);
      }
      ++finished;
    });
  }
  while (finished.load() < kThreads) reader.drain();  // concurrently with the writers
  for (auto& th : threads) th.join();
  reader.drain();

  std::uint64_t tokens_in = 0, tokens_out = 0, errors = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (std::uint64_t i = 0; i < kIterations; ++i) {
      tokens_in += i % 17;
      tokens_out += i % 5;
      errors += i % 10 == 0 ? 1 : 0;
    }
  }
  const std::uint64_t requests = kThreads * kIterations;
  EXPECT_EQ(reader.total(a, TALLY_TOKENS_IN) + reader.total(b, TALLY_TOKENS_IN), tokens_in);
  EXPECT_EQ(reader.total(a, TALLY_TOKENS_OUT) + reader.total(b, TALLY_TOKENS_OUT), tokens_out);
  EXPECT_EQ(reader.total(a, TALLY_REQUESTS) + reader.total(b, TALLY_REQUESTS), requests);
  EXPECT_EQ(reader.total(a, TALLY_ERRORS) + reader.total(b, TALLY_ERRORS), errors);
  EXPECT_EQ(reader.total(a, widgets) + reader.total(b, widgets), requests);
  EXPECT_EQ(reader.reader->counter_names(), std::vector<std::string>{"widgets"});
  // Every event was either delivered whole or counted as dropped.
  EXPECT_EQ(reader.events.size() + reader.reader->dropped(), requests);
  EXPECT_EQ(reader.reader->dropped(), client.dropped());
  EXPECT_EQ(reader.reader->torn(), 0u);
  EXPECT_EQ(reader.reader->label_set(a).text, "tenant=acme\nmodel=m1");
}

TEST_F(ClientTest, ExitedThreadsReleaseTheirSlots) {
  ::setenv("TALLY_SLOTS", "2", 1);
  Client client("slots");
  ASSERT_TRUE(client.attached());
  const std::uint32_t h = client.intern({{"tenant", "acme"}});
  for (int round = 0; round < 50; ++round) {
    std::thread([&] { client.add(h, TALLY_REQUESTS, 1); }).join();
  }
  Reader reader(agent_.wait_for_registrations(1).at(0));
  reader.drain();
  EXPECT_EQ(reader.total(h, TALLY_REQUESTS), 50u);
  EXPECT_EQ(reader.reader->header().slots_used, 1u);  // one slot, handed from thread to thread
}

TEST_F(ClientTest, MoreThreadsThanSlotsStayExact) {
  ::setenv("TALLY_SLOTS", "1", 1);
  Client client("overflow");
  ASSERT_TRUE(client.attached());
  const std::uint32_t h = client.intern({{"tenant", "acme"}});
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      client.add(h, TALLY_REQUESTS, 1);  // take a slot (or the overflow) and keep it while others start
      ++started;
      while (started.load() < 4) std::this_thread::yield();
      for (int i = 0; i < 10000; ++i) {
        client.add(h, TALLY_TOKENS_IN, 3);
        tally_request r{};
        r.tokens_out = 2;
        client.record(h, r);
      }
    });
  }
  for (auto& th : threads) th.join();
  Reader reader(agent_.wait_for_registrations(1).at(0));
  reader.drain();
  EXPECT_EQ(reader.total(h, TALLY_TOKENS_IN), 4u * 10000 * 3);
  EXPECT_EQ(reader.total(h, TALLY_TOKENS_OUT), 4u * 10000 * 2);
  EXPECT_EQ(reader.total(h, TALLY_REQUESTS), 4u + 4u * 10000);
  EXPECT_EQ(reader.events.size() + reader.reader->dropped(), 4u * 10000);
}

TEST_F(ClientTest, LabelsAndCounters) {
  Client client("labels");
  const std::uint32_t a = client.intern({{"tenant", "acme"}, {"use_case", "chat"}});
  EXPECT_EQ(client.intern({{"tenant", "acme"}, {"use_case", "chat"}}), a);
  EXPECT_NE(client.intern({{"tenant", "other"}}), a);
  EXPECT_EQ(client.intern({{"", "x"}}), 0u);
  EXPECT_EQ(client.intern({{"a=b", "x"}}), 0u);
  EXPECT_EQ(client.intern({{"k", "line\nbreak"}}), 0u);
  const std::string big(300, 'x');
  EXPECT_EQ(client.intern({{"k", big.c_str()}}), 0u);
  EXPECT_EQ(tally_intern(client.native(), nullptr, 1), 0u);
  EXPECT_EQ(client.counter("bad name"), TALLY_COUNTER_INVALID);
  const tally_counter first = client.counter("c0");
  EXPECT_EQ(client.counter("c0"), first);
  for (int i = 1; i < 8; ++i) EXPECT_NE(client.counter(("c" + std::to_string(i)).c_str()), TALLY_COUNTER_INVALID);
  EXPECT_EQ(client.counter("one_too_many"), TALLY_COUNTER_INVALID);
  // Handles 0 and unknown, counters out of range: no-ops, no crash.
  client.add(0, TALLY_TOKENS_IN, 1);
  client.add(9999, TALLY_TOKENS_IN, 1);
  client.add(a, static_cast<tally_counter>(77), 1);
  client.set(a, static_cast<tally_gauge>(77), 1);
}

TEST_F(ClientTest, AdmissionComesFromTheAgentsReadOnlyControlSegment) {
  Client client("admit");
  const std::uint32_t h = client.intern({{"tenant", "acme"}});
  ASSERT_TRUE(client.attached());
  EXPECT_EQ(client.admit(h).decision, TALLY_ALLOW);
  const auto r = agent_.wait_for_registrations(1).at(0);
  auto control = MappedFile::open(r.control_path, sizeof(shm::format::ControlHeader), 1u << 30);
  ASSERT_TRUE(control);
  shm::set_decision(*control, h, TALLY_DENY, TALLY_REASON_LABELS_REFUSED);
  const tally_admission a = client.admit(h);
  EXPECT_EQ(a.decision, TALLY_DENY);
  EXPECT_EQ(a.reason, static_cast<std::uint32_t>(TALLY_REASON_LABELS_REFUSED));
  // The client got the control file read-only: it cannot be opened for writing through its descriptor's mode.
  EXPECT_EQ(std::filesystem::status(r.control_path).permissions() & std::filesystem::perms::others_write,
            std::filesystem::perms::none);
}

TEST_F(ClientTest, AQuarantinedSegmentIsToldAndTheClientRegistersAgain) {
  Client client("quarantined");
  ASSERT_TRUE(client.attached()) << client.last_error();
  const std::uint32_t h = client.intern({{"tenant", "acme"}});
  const tally_counter widgets = client.counter("widgets");
  client.add(h, TALLY_TOKENS_IN, 5);
  const auto first = agent_.wait_for_registrations(1).at(0);
  Reader before(first);
  before.drain();
  EXPECT_EQ(before.total(h, TALLY_TOKENS_IN), 5u);

  // The agent quarantines the segment: it says so in the control file (release), the client stops writing there.
  auto control = MappedFile::open(first.control_path, sizeof(shm::format::ControlHeader), 1u << 30);
  ASSERT_TRUE(control);
  auto* header = reinterpret_cast<shm::format::ControlHeader*>(control->bytes().data());
  shm::format::store_release(header->state, shm::format::kSegmentRetired);
  EXPECT_FALSE(client.attached());
  client.add(h, TALLY_TOKENS_IN, 7);  // while detached: kept in the client's memory, handed over on attach
  client.add(h, widgets, 1);

  // It registers again off the hot path, into a fresh segment, with the same handles and counter ids.
  ASSERT_TRUE(wait_until([&] { return agent_.registrations().size() >= 2 && client.attached(); }))
      << client.last_error();
  client.add(h, TALLY_TOKENS_IN, 11);
  Reader after(agent_.registrations().at(1));
  after.drain();
  EXPECT_EQ(after.total(h, TALLY_TOKENS_IN), 7u + 11u);
  EXPECT_EQ(after.total(h, widgets), 1u);
  EXPECT_EQ(after.reader->label_set(h).text, "tenant=acme");
  EXPECT_EQ(after.reader->counter_names(), std::vector<std::string>{"widgets"});
  before.drain();
  EXPECT_EQ(before.total(h, TALLY_TOKENS_IN), 5u);  // nothing more went into the quarantined one
}

TEST(ClientNoAgent, CountsBeforeAnAgentAppearsAreHandedOverExactly) {
  TempDir dir;
  const auto socket = dir / "tally.sock";
  ::setenv("TALLY_SOCKET", socket.c_str(), 1);
  ::setenv("TALLY_RETRY_MS", "20", 1);
  tally_client* client = tally_open("late");
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(tally_attached(client), 0);
  EXPECT_NE(std::string(tally_last_error(client)).find("no agent"), std::string::npos);
  tally_label label{"tenant", "acme"};
  const std::uint32_t h = tally_intern(client, &label, 1);
  EXPECT_NE(h, 0u);  // handles work before the agent exists
  const tally_counter widgets = tally_register_counter(client, "widgets");
  tally_request r{};
  r.tokens_out = 2;
  constexpr std::uint64_t kCalls = 100000;
  for (std::uint64_t i = 0; i < kCalls; ++i) {
    tally_add(client, h, TALLY_TOKENS_IN, 1);
    tally_add(client, h, widgets, 3);
    tally_record(client, h, &r);
  }
  tally_set(client, h, TALLY_KV_CACHE_BYTES, 4242);
  EXPECT_EQ(tally_admit(client, h).reason, static_cast<std::uint32_t>(TALLY_REASON_NO_AGENT));

  InProcessAgent agent({}, socket);
  ASSERT_TRUE(wait_until([&] { return tally_attached(client) != 0; }));
  tally_add(client, h, TALLY_TOKENS_IN, 5);
  Reader reader(agent.wait_for_registrations(1).at(0));
  reader.drain();
  // Everything counted before the agent appeared was kept in the client's memory and handed over.
  EXPECT_EQ(reader.total(h, TALLY_TOKENS_IN), kCalls + 5);
  EXPECT_EQ(reader.total(h, TALLY_TOKENS_OUT), 2 * kCalls);
  EXPECT_EQ(reader.total(h, TALLY_REQUESTS), kCalls);
  EXPECT_EQ(reader.total(h, widgets), 3 * kCalls);
  EXPECT_EQ(reader.reader->label_set(h).text, "tenant=acme");
  EXPECT_EQ(reader.reader->counter_names(), std::vector<std::string>{"widgets"});
  // Events: the first ones kept (bounded), the rest counted as dropped, none lost without a trace.
  EXPECT_GT(reader.events.size(), 0u);
  EXPECT_EQ(reader.events.size() + reader.reader->dropped(), kCalls);
  EXPECT_EQ(tally_dropped(client), reader.reader->dropped());
  tally_close(client);
  ::unsetenv("TALLY_SOCKET");
  ::unsetenv("TALLY_RETRY_MS");
}

// An agent that answers every registration with a refusal, counting them.
TEST(ClientNoAgent, ARefusedClientBacksOffExponentially) {
  TempDir dir;
  const auto path = dir / "tally.sock";
  UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const auto address = unix_socket_address(path.string());
  ASSERT_TRUE(listener && address);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof *address), 0);
  ASSERT_EQ(::listen(listener.get(), 64), 0);
  ::setenv("TALLY_SOCKET", path.c_str(), 1);
  ::setenv("TALLY_RETRY_MS", "10", 1);  // an absent agent would be retried every 10 ms: a refusal must not be
  ::setenv("TALLY_OPEN_TIMEOUT_MS", "1000", 1);
  std::atomic<bool> stop{false};
  std::atomic<int> attempts{0};
  std::thread refuser([&] {
    while (!stop) {
      pollfd p{listener.get(), POLLIN, 0};
      if (::poll(&p, 1, 10) <= 0) continue;
      UniqueFd peer(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      shm::protocol::Request request{};
      [[maybe_unused]] const ssize_t got = ::recv(peer.get(), &request, sizeof request, MSG_WAITALL);
      shm::protocol::Reply reply{};
      reply.magic = shm::protocol::kReplyMagic;
      reply.status = shm::protocol::Status::refused;
      std::strcpy(reply.message, "too many clients");
      [[maybe_unused]] const ssize_t sent = ::send(peer.get(), &reply, sizeof reply, MSG_NOSIGNAL);
      ++attempts;
    }
  });
  tally_client* client = tally_open("refused");
  EXPECT_EQ(tally_attached(client), 0);
  EXPECT_NE(std::string(tally_last_error(client)).find("too many clients"), std::string::npos);
  // Backoff from 100 ms, doubling: the 6th attempt comes after 100+200+400+800+1600 ms = 3.1 s at the earliest.
  // Whatever the machine's speed, 1.5 s can hold at most 4 of them (at 10 ms retries it would be ~150).
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_until([&] { return attempts.load() >= 3; }, 30s));
  const auto third = std::chrono::steady_clock::now() - start;
  EXPECT_GE(third, 250ms) << "attempts 2 and 3 came after less than 100 + 200 ms";
  tally_close(client);
  stop = true;
  refuser.join();
  ::unsetenv("TALLY_SOCKET");
  ::unsetenv("TALLY_RETRY_MS");
  ::unsetenv("TALLY_OPEN_TIMEOUT_MS");
}

TEST(ClientNoAgent, NullAndClosedAreSafe) {
  tally_close(nullptr);
  EXPECT_EQ(tally_attached(nullptr), 0);
  EXPECT_EQ(tally_dropped(nullptr), 0u);
}

}  // namespace
}  // namespace tally::test
