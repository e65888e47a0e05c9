// Allowances, client side (segment_format.hpp, BudgetEntry): tally_reserve and tally_commit against the real
// registration server, with the agent's part played through set_allowance on the control file and read back
// through the agent's reader. No agent and no allowance enforce nothing; a governed label set and counter is held
// to what was granted, commits give back what was not used and count overshoot in full, and four threads cannot
// spend past a grant between them. Label `concurrent`: CI runs it under TSan.
#include "tally/client.h"

#include <stdlib.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <thread>
#include <vector>

#include "shm/segments/segment_file.hpp"
#include "tally/client.hpp"
#include "tests/shm/client/segment_probe.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/in_process_agent.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::test {
namespace {

using shm::MappedFile;
using shm::format::allowance_word;

// One attached client, its segment through the agent's reader and its control file as the agent writes it.
class BudgetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("TALLY_SOCKET", agent_.socket_path().c_str(), 1);
    ::setenv("TALLY_OPEN_TIMEOUT_MS", "5000", 1);
    client_.emplace("budgets");
    ASSERT_TRUE(client_->attached()) << client_->last_error();
    chat_ = client_->intern({{"tenant", "acme"}, {"use_case", "chat"}});
    ASSERT_NE(chat_, 0u);
    const auto registration = agent_.wait_for_registrations(1).at(0);
    probe_.emplace(registration);
    auto control = MappedFile::open(registration.control_path, sizeof(shm::format::ControlHeader), 1u << 30);
    ASSERT_TRUE(control) << control.error().message;
    control_ = std::move(*control);
  }
  void TearDown() override {
    client_.reset();
    ::unsetenv("TALLY_SOCKET");
    ::unsetenv("TALLY_OPEN_TIMEOUT_MS");
  }
  void grant(tally_counter counter, std::uint64_t granted) {
    shm::set_allowance(control_, chat_, allowance_word(counter, granted));
  }
  shm::format::BudgetEntry entry() const { return probe_->reader->budget_entry(chat_); }
  std::uint64_t total(tally_counter counter) {
    probe_->drain();
    return probe_->total(chat_, counter);
  }

  InProcessAgent agent_;
  std::optional<Client> client_;
  std::uint32_t chat_ = 0;
  std::optional<SegmentProbe> probe_;
  MappedFile control_;
};

TEST_F(BudgetTest, TheAgentsHelpersWriteAndReadTheAllowanceWord) {
  EXPECT_EQ(shm::allowance(control_, chat_), 0u);
  grant(TALLY_TOKENS_OUT, 1000);
  EXPECT_EQ(shm::allowance(control_, chat_), allowance_word(TALLY_TOKENS_OUT, 1000));
  EXPECT_EQ(shm::format::allowance_counter(shm::allowance(control_, chat_)), std::uint32_t{TALLY_TOKENS_OUT});
  EXPECT_EQ(shm::format::allowance_granted(shm::allowance(control_, chat_)), 1000u);
  // Out of range: ignored on write, 0 on read; the reader's entries likewise.
  const std::uint32_t capacity = probe_->reader->header().label_capacity;
  for (const std::uint32_t handle : {capacity, UINT32_MAX}) {
    shm::set_allowance(control_, handle, allowance_word(TALLY_TOKENS_OUT, 5));
    EXPECT_EQ(shm::allowance(control_, handle), 0u);
    EXPECT_EQ(probe_->reader->budget_entry(handle).claimed, 0u);
  }
  EXPECT_EQ(probe_->reader->budget_entry(0).committed, 0u);
}

TEST_F(BudgetTest, NothingIsEnforcedWhereNoAllowanceGoverns) {
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, UINT64_MAX));
  client_->commit(chat_, TALLY_TOKENS_OUT, 100, 30);
  EXPECT_EQ(total(TALLY_TOKENS_OUT), 30u);  // counted all the same
  EXPECT_EQ(entry().claimed, 0u);
  EXPECT_EQ(entry().committed, 0u);
  // Bad handles and counters: granted, no-ops, even where an allowance exists for the label set.
  grant(TALLY_TOKENS_OUT, 10);
  EXPECT_TRUE(client_->reserve(0, TALLY_TOKENS_OUT, 1000));
  EXPECT_TRUE(client_->reserve(9999, TALLY_TOKENS_OUT, 1000));
  EXPECT_TRUE(client_->reserve(chat_, static_cast<tally_counter>(77), 1000));
  EXPECT_TRUE(client_->reserve(chat_, TALLY_COUNTER_INVALID, 1000));
  client_->commit(chat_, static_cast<tally_counter>(77), 1000, 1000);
  EXPECT_EQ(entry().claimed, 0u);
  grant(static_cast<tally_counter>(77), 10);  // a word naming a counter past the limit governs nothing either
  EXPECT_TRUE(client_->reserve(chat_, static_cast<tally_counter>(77), 1000));
  EXPECT_EQ(entry().claimed, 0u);
  EXPECT_EQ(tally_reserve(nullptr, chat_, TALLY_TOKENS_OUT, 1000), 1);
  tally_commit(nullptr, chat_, TALLY_TOKENS_OUT, 1000, 1000);
}

TEST_F(BudgetTest, AWordForAnotherCounterDoesNotGovern) {
  grant(TALLY_TOKENS_IN, 100);
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 1000));
  client_->commit(chat_, TALLY_TOKENS_OUT, 1000, 1000);
  EXPECT_EQ(entry().claimed, 0u);
  EXPECT_EQ(entry().committed, 0u);
  EXPECT_EQ(total(TALLY_TOKENS_OUT), 1000u);
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_IN, 101));  // the one it names
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_IN, 100));
}

TEST_F(BudgetTest, ReservesAreHeldToTheGrantAndCommitsGiveBackWhatWasNotUsed) {
  grant(TALLY_TOKENS_OUT, 100);
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 60));
  EXPECT_EQ(entry().claimed, 60u);
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_OUT, 50));  // 110 > 100: refused, and nothing claimed
  EXPECT_EQ(entry().claimed, 60u);
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 40));  // exactly up to the grant
  EXPECT_EQ(entry().claimed, 100u);
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_OUT, 1));
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_OUT, UINT64_MAX));  // no wrap-around past the grant

  // The 60 cost 20: the 40 not used go back, and the refused reservation of 30 now fits.
  client_->commit(chat_, TALLY_TOKENS_OUT, 60, 20);
  EXPECT_EQ(entry().committed, 20u);
  EXPECT_EQ(entry().claimed, 60u);
  EXPECT_EQ(total(TALLY_TOKENS_OUT), 20u);
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 30));
  EXPECT_EQ(entry().claimed, 90u);

  // A commit of a reservation this segment never held releases nothing it does not hold: never below 0.
  client_->commit(chat_, TALLY_TOKENS_OUT, 40, 40);
  client_->commit(chat_, TALLY_TOKENS_OUT, 30, 0);
  EXPECT_EQ(entry().claimed, 60u);
  client_->commit(chat_, TALLY_TOKENS_OUT, 1000, 0);
  EXPECT_EQ(entry().claimed, 0u);
  EXPECT_EQ(entry().committed, 60u);
  EXPECT_EQ(total(TALLY_TOKENS_OUT), 60u);
}

TEST_F(BudgetTest, OvershootIsCountedInFullAndHoldsReservesUntilTheGrantGrows) {
  grant(TALLY_TOKENS_OUT, 100);
  ASSERT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 100));
  client_->commit(chat_, TALLY_TOKENS_OUT, 100, 150);
  EXPECT_EQ(total(TALLY_TOKENS_OUT), 150u);
  EXPECT_EQ(entry().committed, 150u);
  EXPECT_EQ(entry().claimed, 150u);  // above the grant
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_OUT, 1));
  grant(TALLY_TOKENS_OUT, 170);  // still below what was spent plus this: refused
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_OUT, 21));
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 20));
  grant(TALLY_TOKENS_OUT, 1170);  // the agent grants more: reserves go through again
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 1000));
  EXPECT_EQ(entry().claimed, 1170u);
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_OUT, 1));
}

TEST_F(BudgetTest, APendingWordHoldsEveryReserveBackUntilTheAgentDecides) {
  shm::set_allowance(control_, chat_, shm::format::kAllowancePending);
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_OUT, 1));
  EXPECT_FALSE(client_->reserve(chat_, TALLY_TOKENS_IN, 1));  // whatever the counter: none is known to be free
  client_->commit(chat_, TALLY_TOKENS_OUT, 10, 7);  // granted before the word came: counted, releases nothing held
  EXPECT_EQ(total(TALLY_TOKENS_OUT), 7u);
  EXPECT_EQ(entry().claimed, 0u);
  grant(TALLY_TOKENS_OUT, 100);  // the agent's next pass decides
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_OUT, 100));
  EXPECT_TRUE(client_->reserve(chat_, TALLY_TOKENS_IN, 1000));
}

TEST_F(BudgetTest, DegradeComesWithItsMaxTokensHint) {
  shm::set_decision(control_, chat_, TALLY_DEGRADE, TALLY_REASON_BUDGET | (512u << 8));
  tally_admission a = client_->admit(chat_);
  EXPECT_EQ(a.decision, TALLY_DEGRADE);
  EXPECT_EQ(TALLY_REASON_CODE(a.reason), static_cast<std::uint32_t>(TALLY_REASON_BUDGET));
  EXPECT_EQ(TALLY_DEGRADE_MAX_TOKENS(a.reason), 512u);
  // A decision this library does not know is a denial, never an allowance.
  shm::set_decision(control_, chat_, 4, TALLY_REASON_NONE);
  a = client_->admit(chat_);
  EXPECT_EQ(a.decision, TALLY_DENY);
  EXPECT_EQ(a.reason, static_cast<std::uint32_t>(TALLY_REASON_POLICY));
}

// Threads of one process share the entry: together they cannot spend past the grant, and once each has been
// refused a reservation of 1 the grant is spent. The agent's side reads concurrently: `claimed` never passes the
// grant, and a `committed` it sees is already in the counters. (Each commit spends at least 1, so a thread needs
// far fewer than kGranted rounds: the bound only keeps a broken client from looping forever.)
TEST_F(BudgetTest, ConcurrentThreadsNeverSpendPastTheGrant) {
  constexpr std::uint64_t kGranted = 1'000'000;
  constexpr int kThreads = 4;
  grant(TALLY_TOKENS_OUT, kGranted);
  std::atomic<int> started{0}, finished{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ++started;
      while (started.load() < kThreads) std::this_thread::yield();  // all at once: the entry is contended
      for (std::uint64_t i = t; i < t + kGranted; ++i) {
        const std::uint64_t amount = 1 + i % 8;
        if (!client_->reserve(chat_, TALLY_TOKENS_OUT, amount)) {
          if (amount == 1) break;  // nothing at all left
          continue;
        }
        client_->commit(chat_, TALLY_TOKENS_OUT, amount, 1 + (i / 8) % amount);  // at least 1: progress
      }
      ++finished;
    });
  }
  std::uint64_t most_claimed = 0, committed_not_counted = 0;
  while (finished.load() < kThreads) {
    const shm::format::BudgetEntry seen = entry();
    most_claimed = std::max(most_claimed, seen.claimed);
    if (seen.committed > total(TALLY_TOKENS_OUT)) ++committed_not_counted;  // counters read after `committed`
  }
  for (auto& th : threads) th.join();
  EXPECT_LE(most_claimed, kGranted);
  EXPECT_EQ(committed_not_counted, 0u);
  const shm::format::BudgetEntry last = entry();
  EXPECT_EQ(total(TALLY_TOKENS_OUT), last.committed);
  EXPECT_EQ(last.claimed, last.committed);  // nothing reserved is left held
  EXPECT_LE(last.committed, kGranted);
  EXPECT_GE(last.committed, kGranted - 8 * kThreads);
}

// What a label set committed is kept per thread, beside its counters (kFeatureSlotCommitted: counter index 7 of each
// thread's row, in its slot or in the overflow shard). With 2 slots for 6 threads, four threads commit through the
// overflow shard. Whenever the agent's read of the totals runs, committed() (each part read before the counters it
// covers) is never above the counter, index 7 never shows as usage, and at the end committed() is exactly what the
// threads committed, and what a tally_add on index 7 cannot change.
TEST(BudgetSlots, CommittedIsExactAcrossThreadsAndTheOverflowShard) {
  InProcessAgent agent;
  ::setenv("TALLY_SOCKET", agent.socket_path().c_str(), 1);
  ::setenv("TALLY_OPEN_TIMEOUT_MS", "5000", 1);
  ::setenv("TALLY_SLOTS", "2", 1);
  {
    Client client("budgets-slots");
    ASSERT_TRUE(client.attached()) << client.last_error();
    const std::uint32_t h = client.intern({{"tenant", "acme"}});
    const auto registration = agent.wait_for_registrations(1).at(0);
    SegmentProbe probe(registration);
    ASSERT_NE(probe.reader->header().agent_features & shm::format::kFeatureSlotCommitted, 0u);
    auto control = MappedFile::open(registration.control_path, sizeof(shm::format::ControlHeader), 1u << 30);
    ASSERT_TRUE(control) << control.error().message;
    shm::set_allowance(*control, h, allowance_word(TALLY_TOKENS_OUT, shm::format::kAllowanceAmountMask));
    constexpr int kThreads = 6;
    constexpr std::uint64_t kRounds = 20'000;
    std::atomic<int> started{0}, holding{0}, finished{0};
    std::atomic<std::uint64_t> committed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        ++started;
        while (started.load() < kThreads) std::this_thread::yield();
        std::uint64_t mine = 0;
        for (std::uint64_t i = 0; i < kRounds; ++i) {
          const std::uint64_t used = 1 + (i * 7 + static_cast<std::uint64_t>(t)) % 64;
          if (!client.reserve(h, TALLY_TOKENS_OUT, 64)) continue;
          client.commit(h, TALLY_TOKENS_OUT, 64, used);
          client.add(h, static_cast<tally_counter>(shm::format::kCommittedCounter), 1000);  // ignored
          mine += used;
          if (i == 0) {  // every thread holds a slot or the shard before any exits (an exit frees its slot)
            ++holding;
            while (holding.load() < kThreads) std::this_thread::yield();
          }
        }
        committed += mine;
        ++finished;
      });
    }
    std::uint64_t ahead = 0, reads = 0;
    while (finished.load() < kThreads) {
      probe.drain();
      ++reads;
      if (probe.reader->committed(h) > probe.total(h, TALLY_TOKENS_OUT)) ++ahead;
      EXPECT_EQ(probe.total(h, shm::format::kCommittedCounter), 0u);
    }
    for (auto& th : threads) th.join();
    probe.drain();
    EXPECT_EQ(ahead, 0u) << "of " << reads << " reads";
    EXPECT_EQ(probe.reader->committed(h), committed.load());
    EXPECT_EQ(probe.reader->budget_entry(h).committed, committed.load());
    EXPECT_EQ(probe.total(h, TALLY_TOKENS_OUT), committed.load());
    EXPECT_EQ(probe.total(h, shm::format::kCommittedCounter), 0u);
    EXPECT_EQ(probe.reader->budget_entry(h).claimed, committed.load());  // every reservation settled
    EXPECT_EQ(probe.reader->header().slots_used, 2u);  // so the overflow shard took the others
  }
  ::unsetenv("TALLY_SOCKET");
  ::unsetenv("TALLY_OPEN_TIMEOUT_MS");
  ::unsetenv("TALLY_SLOTS");
}

TEST(BudgetNoAgent, EverythingIsGrantedAndCommitsCountExactly) {
  TempDir dir;
  const auto socket = dir / "tally.sock";
  ::setenv("TALLY_SOCKET", socket.c_str(), 1);
  ::setenv("TALLY_RETRY_MS", "20", 1);
  {
    Client client("no-agent");
    const std::uint32_t h = client.intern({{"tenant", "acme"}});
    ASSERT_FALSE(client.attached());
    EXPECT_TRUE(client.reserve(h, TALLY_TOKENS_OUT, UINT64_MAX));
    client.commit(h, TALLY_TOKENS_OUT, 100, 70);  // kept in the client's memory, handed over on attach

    InProcessAgent agent({}, socket);
    ASSERT_TRUE(wait_until([&] { return client.attached(); })) << client.last_error();
    client.commit(h, TALLY_TOKENS_OUT, 100, 5);  // attached, ungoverned: counted
    SegmentProbe probe(agent.wait_for_registrations(1).at(0));
    probe.drain();
    EXPECT_EQ(probe.total(h, TALLY_TOKENS_OUT), 75u);
    EXPECT_EQ(probe.reader->budget_entry(h).claimed, 0u);
  }
  ::unsetenv("TALLY_SOCKET");
  ::unsetenv("TALLY_RETRY_MS");
}

}  // namespace
}  // namespace tally::test
