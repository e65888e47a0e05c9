// Where tallyd logs: the journal only when JOURNAL_STREAM names the stderr it actually has.
#include "agent/base/logging.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>

namespace tally::agent {
namespace {

class JournalStream : public ::testing::Test {
 protected:
  void TearDown() override { unsetenv("JOURNAL_STREAM"); }
};

TEST_F(JournalStream, MatchingDeviceAndInodeMeansJournal) {
  struct stat st {};
  ASSERT_EQ(fstat(STDERR_FILENO, &st), 0);
  const std::string value = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  setenv("JOURNAL_STREAM", value.c_str(), 1);
  EXPECT_TRUE(stderr_is_journal());
}

TEST_F(JournalStream, InheritedValueForAnotherStreamIsIgnored) {
  struct stat st {};
  ASSERT_EQ(fstat(STDERR_FILENO, &st), 0);
  // A child whose stderr was redirected inherits the variable: it must not log to the journal then.
  const std::string value = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino + 1);
  setenv("JOURNAL_STREAM", value.c_str(), 1);
  EXPECT_FALSE(stderr_is_journal());
}

TEST_F(JournalStream, AbsentOrGarbageMeansStderr) {
  unsetenv("JOURNAL_STREAM");
  EXPECT_FALSE(stderr_is_journal());
  setenv("JOURNAL_STREAM", "not-a-pair", 1);
  EXPECT_FALSE(stderr_is_journal());
}

TEST(LogLevel, ParsesKnownNamesOnly) {
  EXPECT_EQ(parse_log_level("debug"), spdlog::level::debug);
  EXPECT_EQ(parse_log_level("off"), spdlog::level::off);
  EXPECT_FALSE(parse_log_level("loud"));
}

// A hostile local user can make the agent refuse it thousands of times a second: one line per uid per window, the
// next saying how many were not logged; other uids are not silenced by it.
TEST(LogThrottle, OneLinePerKeyPerWindowAndTheNextCountsTheRest) {
  using namespace std::chrono_literals;
  LogThrottle throttle(10s);
  const LogThrottle::Clock::time_point t0{};
  EXPECT_EQ(throttle.admit(65534, t0 + 1s), 0u);
  for (int i = 0; i < 4999; ++i) EXPECT_FALSE(throttle.admit(65534, t0 + 2s));
  EXPECT_EQ(throttle.admit(1000, t0 + 2s), 0u);  // another key has its own window
  EXPECT_FALSE(throttle.admit(65534, t0 + 10s));
  EXPECT_EQ(throttle.admit(65534, t0 + 11s), 5000u);
  EXPECT_EQ(throttle.admit(65534, t0 + 21s), 0u);  // nothing suppressed since
}

TEST(LogThrottle, QuietKeysAreForgottenButNotTheirUntoldCounts) {
  using namespace std::chrono_literals;
  LogThrottle throttle(10s);
  const LogThrottle::Clock::time_point t0{};
  for (std::uint64_t key = 0; key < 1000; ++key) EXPECT_EQ(throttle.admit(key, t0 + 1s), 0u);
  EXPECT_FALSE(throttle.admit(7, t0 + 2s));
  EXPECT_EQ(throttle.admit(5000, t0 + 30s), 0u);
  EXPECT_EQ(throttle.keys(), 2u);  // key 7 still has one to tell, and the new key
  EXPECT_EQ(throttle.admit(7, t0 + 31s), 1u);
}

}  // namespace
}  // namespace tally::agent
