// Where tallyd logs: the journal only when JOURNAL_STREAM names the stderr it actually has.
#include "agent/base/logging.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace tally::agent
