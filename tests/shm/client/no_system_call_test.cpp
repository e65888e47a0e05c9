// The hot path makes no system call and reads no clock, in any state: a thread installs a seccomp filter on itself
// (no TSYNC: the client's background thread and the in-process agent are not filtered) that kills the whole
// process on ANY system call, then calls tally_add/tally_set/tally_record/tally_admit/tally_reserve/tally_commit
// millions of times with no agent, while an agent appears, and attached (with an allowance governing the reserves),
// and parks. The process surviving is the proof; main then checks
// that every call counted exactly. vDSO clock reads do not trap, so clock_gettime is interposed below and counts
// the filtered thread's calls. Its own executable: the parked thread spins until the process exits.
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <thread>

#include "shm/segments/segment_file.hpp"
#include "tally/client.h"
#include "tests/shm/client/segment_probe.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/in_process_agent.hpp"
#include "tests/support/temp_dir.hpp"

namespace {

thread_local bool t_counting_clock_reads = false;
std::atomic<std::uint64_t> g_clock_reads{0};
using ClockGettime = int (*)(clockid_t, timespec*);
const ClockGettime g_real_clock_gettime = reinterpret_cast<ClockGettime>(::dlsym(RTLD_NEXT, "clock_gettime"));

}  // namespace

// Every clock_gettime of the process comes here (libstdc++'s clocks included); those of a marked thread are
// counted, then all go on to the real (vDSO) one.
extern "C" int clock_gettime(clockid_t clock, timespec* ts) {
  if (t_counting_clock_reads) g_clock_reads.fetch_add(1, std::memory_order_relaxed);
  if (g_real_clock_gettime == nullptr) return static_cast<int>(::syscall(SYS_clock_gettime, clock, ts));
  return g_real_clock_gettime(clock, ts);
}

namespace tally::test {
namespace {

// From here on any system call of this thread kills the process (SIGSYS).
void forbid_system_calls_on_this_thread() {
  sock_filter kill_all[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS)};
  sock_fprog program{static_cast<unsigned short>(std::size(kill_all)), kill_all};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) std::abort();
  if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) != 0) std::abort();
}

inline void spin() { __builtin_ia32_pause(); }

TEST(NoSystemCall, TheFilterKillsOnAnySystemCallAndTheClockIsInterposed) {
  // The two instruments the next test relies on: a filtered thread that makes a system call takes the process
  // down, and a marked thread's clock reads are counted (libstdc++'s steady_clock goes through clock_gettime).
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        std::thread([] {
          forbid_system_calls_on_this_thread();
          static_cast<void>(::syscall(SYS_getppid));
        }).join();
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGSYS), "");
  std::thread([] {
    t_counting_clock_reads = true;
    static_cast<void>(std::chrono::steady_clock::now());
  }).join();
  EXPECT_EQ(g_clock_reads.exchange(0), 1u);
}

// ThreadSanitizer's runtime makes system calls of its own inside instrumented atomics (it maps memory for its
// sync objects): under it, the filter would kill the process for the sanitizer's doing, not the client's.
#if defined(__SANITIZE_THREAD__)
constexpr bool kUnderThreadSanitizer = true;
#else
constexpr bool kUnderThreadSanitizer = false;
#endif

TEST(NoSystemCall, HotPathWithNoAgentAnAgentAppearingAndAttached) {
  if (kUnderThreadSanitizer) GTEST_SKIP() << "ThreadSanitizer's runtime makes system calls inside atomics";
  TempDir dir;
  const auto socket = dir / "tally.sock";
  ::setenv("TALLY_SOCKET", socket.c_str(), 1);
  ::setenv("TALLY_RETRY_MS", "20", 1);
  tally_client* client = tally_open("no-syscall");  // starts the background thread: before the filter
  ASSERT_EQ(tally_attached(client), 0);
  const tally_label label{"tenant", "acme"};
  const std::uint32_t h = tally_intern(client, &label, 1);
  const tally_counter widgets = tally_register_counter(client, "widgets");
  ASSERT_NE(h, 0u);

  enum Phase : int { warm_up, no_agent, appearing, attached, parked };
  std::atomic<int> phase{warm_up};
  std::atomic<int> go_on{warm_up};  // main lets the thread into the next phase
  std::atomic<std::uint64_t> calls{0}, clock_reads_seen{0};
  constexpr std::uint64_t kPerPhase = 1'000'000;
  std::thread filtered([&] {
    auto once = [&](std::uint64_t i) {
      tally_add(client, h, TALLY_TOKENS_IN, 1);
      tally_add(client, h, widgets, 3);
      tally_set(client, h, TALLY_KV_CACHE_BYTES, i);
      tally_request r{};
      r.tokens_out = 2;
      tally_record(client, h, &r);
      static_cast<void>(tally_admit(client, h));
      if (tally_reserve(client, h, TALLY_GPU_TIME_NS, 8) != 0) tally_commit(client, h, TALLY_GPU_TIME_NS, 8, 5);
    };
    std::uint64_t i = 0;
    once(i++);  // the warm-up: a thread's first call may make its one system call (its tid)
    t_counting_clock_reads = true;
    forbid_system_calls_on_this_thread();
    phase = no_agent;
    for (std::uint64_t n = 0; n < kPerPhase; ++n) once(i++);
    phase = appearing;
    while (go_on.load(std::memory_order_relaxed) < attached) once(i++);  // until main saw the attach
    phase = attached;
    for (std::uint64_t n = 0; n < kPerPhase; ++n) once(i++);
    calls = i;
    clock_reads_seen = g_clock_reads.load();
    phase = parked;
    while (true) spin();  // exiting would be a system call: the process exit ends this thread
  });
  filtered.detach();

  ASSERT_TRUE(wait_until([&] { return phase.load() >= appearing; }, 120s));
  InProcessAgent agent({}, socket);
  ASSERT_TRUE(wait_until([&] { return tally_attached(client) != 0; })) << tally_last_error(client);
  // The agent grants more than the run can spend: the attached phase takes the governed path (CAS loops) throughout.
  const auto registration = agent.wait_for_registrations(1).at(0);
  auto control = shm::MappedFile::open(registration.control_path, sizeof(shm::format::ControlHeader), 1u << 30);
  ASSERT_TRUE(control) << control.error().message;
  shm::set_allowance(*control, h, shm::format::allowance_word(TALLY_GPU_TIME_NS, shm::format::kAllowanceAmountMask));
  go_on = attached;
  ASSERT_TRUE(wait_until([&] { return phase.load() == parked; }, 120s));

  // Alive: no system call. No clock read either. And every call counted, through all three states.
  EXPECT_EQ(clock_reads_seen.load(), 0u);
  const std::uint64_t n = calls.load();
  SegmentProbe probe(registration);
  // The background thread hands over the calls that saw "not attached" just as it attached, at its next round.
  wait_until([&] {
    probe.drain();
    return probe.total(h, TALLY_TOKENS_IN) == n && probe.total(h, widgets) == 3 * n &&
           probe.total(h, TALLY_REQUESTS) == n && probe.total(h, TALLY_GPU_TIME_NS) == 5 * n &&
           probe.events.size() + probe.reader->dropped() == n;
  });
  EXPECT_EQ(probe.total(h, TALLY_TOKENS_IN), n);
  EXPECT_EQ(probe.total(h, widgets), 3 * n);
  EXPECT_EQ(probe.total(h, TALLY_TOKENS_OUT), 2 * n);
  EXPECT_EQ(probe.total(h, TALLY_REQUESTS), n);
  EXPECT_EQ(probe.total(h, TALLY_GPU_TIME_NS), 5 * n);  // every reserve granted, every commit counted
  const shm::format::BudgetEntry budget = probe.reader->budget_entry(h);
  EXPECT_GE(budget.committed, 5 * kPerPhase);
  // 8 reserved, 5 used: the 3 went back each time. The one reservation taken just before the grant appeared claimed
  // nothing, so its commit released what it could (down to 0), and `committed` may lead by its 5.
  EXPECT_LE(budget.claimed, budget.committed);
  EXPECT_LE(budget.committed - budget.claimed, 5u);
  EXPECT_EQ(probe.reader->gauges(h)[TALLY_KV_CACHE_BYTES], n - 1);
  EXPECT_EQ(probe.events.size() + probe.reader->dropped(), n);
  ::unsetenv("TALLY_SOCKET");
  ::unsetenv("TALLY_RETRY_MS");
  // The parked thread never touches the client again: it can go (and LeakSanitizer sees nothing of it left).
  tally_close(client);
}

}  // namespace
}  // namespace tally::test
