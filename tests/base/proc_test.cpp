// The /proc parsers identity rests on, on text as the kernel writes it and as a process can bend it (its command
// name is its own to choose), and on this process's real files. A number that is not plain decimal is malformed:
// "-5" is not 18446744073709551611 and "12abc" is not 12.
#include "agent/base/proc.hpp"

#include <unistd.h>

#include <gtest/gtest.h>

#include "agent/base/files.hpp"

namespace tally {
namespace {

std::string stat_line(const std::string& comm, const std::string& start_ticks) {
  return "4242 (" + comm + ") S 1 4242 4242 0 -1 4194560 1170 0 0 0 12 3 0 0 20 0 1 0 " + start_ticks +
         " 12345678 1024 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n";
}

TEST(ProcStat, StartTicksAreField22AfterTheLastParenthesis) {
  EXPECT_EQ(parse_process_start_ticks(stat_line("python3", "987654")), 987654u);
  // A process may name itself ") S 1 2 3 ...": the fields start after the last ')'.
  EXPECT_EQ(parse_process_start_ticks(stat_line("a) 1 2 (b", "55")), 55u);
  EXPECT_EQ(parse_process_start_ticks(stat_line(") R 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 9 77 (", "66")), 66u);
}

TEST(ProcStat, MalformedIsNothing) {
  EXPECT_FALSE(parse_process_start_ticks(stat_line("x", "-5")));
  EXPECT_FALSE(parse_process_start_ticks(stat_line("x", "12abc")));
  EXPECT_FALSE(parse_process_start_ticks(stat_line("x", "99999999999999999999999")));
  EXPECT_FALSE(parse_process_start_ticks("4242 (x) S 1 2 3\n"));
  EXPECT_FALSE(parse_process_start_ticks("4242 (x"));
  EXPECT_FALSE(parse_process_start_ticks(""));
}

TEST(ProcCgroup, TheV2LineElseSystemdsV1Hierarchy) {
  EXPECT_EQ(parse_process_cgroup("0::/system.slice/vllm.service\n"), "/system.slice/vllm.service");
  EXPECT_EQ(parse_process_cgroup("12:pids:/a\n1:name=systemd:/user.slice/x.scope\n0::/b.scope\n"), "/b.scope");
  EXPECT_EQ(parse_process_cgroup("12:pids:/a\n1:name=systemd:/user.slice/x.scope\n"), "/user.slice/x.scope");
  EXPECT_EQ(parse_process_cgroup("0::/no/newline/at/the/end"), "/no/newline/at/the/end");
  EXPECT_FALSE(parse_process_cgroup("12:pids:/a\n"));
  EXPECT_FALSE(parse_process_cgroup(""));
}

TEST(ProcIo, RcharAndWchar) {
  EXPECT_EQ(parse_process_io("rchar: 323934931\nwchar: 323929600\nsyscr: 632687\nsyscw: 632675\n"
                             "read_bytes: 0\nwrite_bytes: 323932160\ncancelled_write_bytes: 0\n"),
            (IoBytes{323934931, 323929600}));
  EXPECT_FALSE(parse_process_io("rchar: 1\n"));
  EXPECT_FALSE(parse_process_io("rchar: -1\nwchar: 2\n"));
  EXPECT_FALSE(parse_process_io("rchar: 1x\nwchar: 2\n"));
  EXPECT_FALSE(parse_process_io(""));
}

TEST(Proc, ThisProcessesOwnFiles) {
  const FsRoot host;
  const auto ticks = read_process_start_ticks(host, ::getpid());
  ASSERT_TRUE(ticks);
  EXPECT_GT(*ticks, 0u);
  EXPECT_EQ(ticks, parse_process_start_ticks(read_file("/proc/self/stat").value_or("")));
  const auto cgroup = read_process_cgroup(host, ::getpid());
  ASSERT_TRUE(cgroup);
  EXPECT_TRUE(cgroup->starts_with("/")) << *cgroup;
  const auto io = read_process_io(host, ::getpid());
  ASSERT_TRUE(io);
  EXPECT_GT(io->read_bytes, 0u);  // it read its own stat above
}

}  // namespace
}  // namespace tally
