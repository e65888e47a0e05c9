// The metering source under faults and against a neighbour, with real client processes (forked here, each
// registering through the real client library) and the real source in this process:
//  - a segment is retired only when its producer exited for sure: with this process (the agent) so short of file
//    descriptors that registrations, drains and exit checks hit EMFILE, every live segment stays and its totals
//    stay exact;
//  - a process of the same uid in another cgroup cannot open, map or change a workload's segment through the file
//    system (the segment directory is the agent's alone);
//  - a segment the agent quarantines is told so through its control file's state word.
#include "shm/segments/metering.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <map>
#include <set>

#include "tally/client.h"
#include "tests/support/deadline.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/test_cgroup.hpp"

namespace tally::shm {
namespace {

using namespace std::chrono_literals;

constexpr uid_t kNobody = 65534;

// What the source told: live and retired segments, and each one's TALLY_TOKENS_IN total over its label sets.
struct Recorder : MeteringSource::Listener {
  void on_attached(const Segment& s) override { paths[s.registration.producer.pid] = s.registration.segment_path; }
  void on_drained(const Segment& s, std::span<const RequestEvent>) override {
    for (std::uint32_t h : s.changed) per_label[s.registration.producer.pid][h] = s.reader->counters(h)[TALLY_TOKENS_IN];
  }
  void on_retired(const Segment& s, const std::string& reason) override {
    retired[s.registration.producer.pid] = reason;
  }
  std::uint64_t total(pid_t pid) const {
    std::uint64_t sum = 0;
    if (auto it = per_label.find(pid); it != per_label.end()) {
      for (const auto& [h, v] : it->second) sum += v;
    }
    return sum;
  }
  std::map<pid_t, std::filesystem::path> paths;
  std::map<pid_t, std::map<std::uint32_t, std::uint64_t>> per_label;
  std::map<pid_t, std::string> retired;
};

// A client process: registers (as `uid` when set), adds `amount` tokens, says whether it attached ('1' or '0'),
// then waits until released. Forked from this single-threaded test, before it touches its own fd limit.
class Writer {
 public:
  Writer(std::uint64_t amount, std::optional<uid_t> uid = std::nullopt) {
    int report[2], release[2];
    if (::pipe2(report, O_CLOEXEC) != 0 || ::pipe2(release, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      // Only its own two pipe ends: holding another writer's release end would keep that one from exiting.
      for (int fd = 3; fd < 4096; ++fd) {
        if (fd != report[1] && fd != release[0]) ::close(fd);
      }
      if (uid && (::setgid(*uid) != 0 || ::setuid(*uid) != 0)) ::_exit(3);
      tally_client* client = tally_open("fault-test");
      const bool attached = tally_attached(client) != 0;
      const tally_label label{"project", "faults"};
      tally_add(client, tally_intern(client, &label, 1), TALLY_TOKENS_IN, amount);
      const char said = attached ? '1' : '0';
      if (::write(report[1], &said, 1) != 1) ::_exit(4);
      char byte;
      while (::read(release[0], &byte, 1) > 0) {
      }
      ::_exit(0);
    }
    ::close(report[1]);
    ::close(release[0]);
    report_ = report[0];
    release_ = release[1];
  }
  ~Writer() {
    exit_now();
    if (report_ >= 0) ::close(report_);
  }
  pid_t pid() const { return pid_; }
  int report_fd() const { return report_; }
  // Closing the release pipe lets the child exit; then it is reaped.
  void exit_now() {
    if (release_ >= 0) ::close(release_);
    release_ = -1;
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int report_ = -1, release_ = -1;
};

// Serves registrations and exits until `done` holds (or the deadline passes).
template <typename Done>
bool serve_until(MeteringSource& source, Done done, std::chrono::milliseconds deadline = 10s) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    pollfd p{source.fd(), POLLIN, 0};
    if (::poll(&p, 1, 5) > 0) source.on_readable();
  }
  return true;
}

// What the writer said: true attached, false not, nullopt nothing yet (serving the source meanwhile).
std::optional<bool> await_report(MeteringSource& source, const Writer& writer) {
  char said = 0;
  const bool got = serve_until(source, [&] {
    pollfd p{writer.report_fd(), POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && ::read(writer.report_fd(), &said, 1) == 1;
  });
  if (!got) return std::nullopt;
  return said == '1';
}

// Sets RLIMIT_NOFILE so that exactly `free` descriptor numbers are left to open (numbers below the limit not in
// use); returns the limit it replaced.
rlim_t leave_free_fds(int free) {
  rlimit old{};
  ::getrlimit(RLIMIT_NOFILE, &old);
  int seen = 0, limit = 0;
  for (;; ++limit) {
    const bool in_use = ::fcntl(limit, F_GETFD) != -1;
    if (!in_use && seen++ == free) break;
  }
  rlimit tight = old;
  tight.rlim_cur = static_cast<rlim_t>(limit);
  ::setrlimit(RLIMIT_NOFILE, &tight);
  return old.rlim_cur;
}

void restore_fd_limit(rlim_t soft) {
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = soft;
  ::setrlimit(RLIMIT_NOFILE, &r);
}

class MeteringFaults : public ::testing::Test {
 protected:
  void SetUp() override {
    ::chmod(dir_.path().c_str(), 0755);  // the socket's directory: open to every uid, as /run/tally is
    options_.socket_path = dir_ / "tally.sock";
    options_.segment_dir = dir_ / "segments";
    options_.instance_id = "faults";
    ::setenv("TALLY_SOCKET", options_.socket_path.c_str(), 1);
    ::setenv("TALLY_OPEN_TIMEOUT_MS", "2000", 1);
    auto started = MeteringSource::start(options_, recorder_, [](const std::string&) { return false; });
    ASSERT_TRUE(started) << started.error().message;
    source_ = std::move(*started);
  }
  void TearDown() override {
    ::unsetenv("TALLY_SOCKET");
    ::unsetenv("TALLY_OPEN_TIMEOUT_MS");
  }
  void report() {
    source_->drain();
    source_->sync(true);
  }

  test::TempDir dir_;
  MeteringSource::Options options_;
  Recorder recorder_;
  std::unique_ptr<MeteringSource> source_;
};

TEST_F(MeteringFaults, OutOfFileDescriptorsNoLiveSegmentIsRetired) {
#ifdef __SANITIZE_ADDRESS__
  // UBSan's vptr check opens a pipe to test memory before it reads a vtable: with no descriptor left it reports
  // every virtual call as made on an invalid object. The plain build runs this test.
  GTEST_SKIP() << "the sanitizers' runtime needs file descriptors of its own, which this test takes away";
#endif
  // One writer per count of free descriptors, 0 to 7: somewhere in there registration succeeds but watching the
  // producer (pidfd_open, reading /proc) fails with EMFILE, whichever step comes first in the code.
  std::vector<std::unique_ptr<Writer>> writers;
  std::map<pid_t, std::uint64_t> attached;  // pid -> what it added
  for (int free = 0; free < 8; ++free) {
    const std::uint64_t amount = 1000 * (free + 1);
    auto writer = std::make_unique<Writer>(amount);
    const rlim_t saved = leave_free_fds(free);
    const auto said = await_report(*source_, *writer);
    report();  // drains, syncs and exit checks while out of descriptors, too
    source_->on_readable();
    restore_fd_limit(saved);
    ASSERT_TRUE(said.has_value()) << "writer with " << free << " free fds never answered";
    if (*said) attached[writer->pid()] = amount;
    writers.push_back(std::move(writer));
  }
  ASSERT_GE(attached.size(), 2u) << "too few registrations succeeded under the limit to show anything";

  // An exit elsewhere makes the source check every producer; then reports with descriptors to spare.
  Writer trigger(1);
  ASSERT_EQ(await_report(*source_, trigger), std::optional<bool>(true));
  const pid_t trigger_pid = trigger.pid();
  trigger.exit_now();
  ASSERT_TRUE(serve_until(*source_, [&] { return recorder_.retired.contains(trigger_pid); }));
  report();

  for (const auto& [pid, amount] : attached) {
    EXPECT_FALSE(recorder_.retired.contains(pid)) << "live pid " << pid << " was retired: " << recorder_.retired[pid];
    EXPECT_EQ(recorder_.total(pid), amount) << "pid " << pid;
  }
  EXPECT_EQ(source_->quarantined(), 0u);

  // And when they do exit, each is retired (watched since descriptors came back), its totals exact.
  for (auto& w : writers) w->exit_now();
  ASSERT_TRUE(serve_until(*source_, [&] {
    for (const auto& [pid, amount] : attached) {
      if (!recorder_.retired.contains(pid)) return false;
    }
    return true;
  })) << "an exited producer was never retired";
  for (const auto& [pid, amount] : attached) EXPECT_EQ(recorder_.total(pid), amount) << "pid " << pid;
}

TEST_F(MeteringFaults, ASameUidProcessInAnotherCgroupCannotReachTheSegment) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (to run the workloads as uid 65534)";
  const auto root = test::cgroup2_root();
  if (!root) GTEST_SKIP() << "needs cgroup v2";
  test::TestCgroupParent cgroups(*root);
  const auto elsewhere = cgroups.make_child("neighbour");

  Writer workload(4242, kNobody);
  ASSERT_EQ(await_report(*source_, workload), std::optional<bool>(true));
  const std::filesystem::path segment = recorder_.paths.at(workload.pid());
  report();
  ASSERT_EQ(recorder_.total(workload.pid()), 4242u);

  // The neighbour: uid 65534 too, in its own cgroup. Each bit of its exit status is one thing it managed to do.
  const pid_t neighbour = ::fork();
  ASSERT_GE(neighbour, 0);
  if (neighbour == 0) {
    std::ofstream(elsewhere / "cgroup.procs") << ::getpid() << std::flush;
    if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) ::_exit(128);
    int reached = 0;
    const int rw = ::open(segment.c_str(), O_RDWR);
    if (rw >= 0) {
      reached |= 1;
      void* map = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rw, 0);
      if (map != MAP_FAILED) reached |= 2;
    }
    if (::open(segment.c_str(), O_RDONLY) >= 0) reached |= 4;
    if (::truncate(segment.c_str(), 0) == 0) reached |= 8;
    if (::opendir(segment.parent_path().c_str()) != nullptr) reached |= 16;
    if (::unlink(control_path_of(segment).c_str()) == 0) reached |= 32;
    if (::open(meta_path_of(segment).c_str(), O_RDONLY) >= 0) reached |= 64;
    ::_exit(reached);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(neighbour, &status, 0), neighbour);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the neighbour reached the segment (bits: 1 open rw, 2 mmap, 4 open ro, "
                                       "8 truncate, 16 list the directory, 32 unlink the control file, 64 read meta)";
  struct stat dir {};
  ASSERT_EQ(::stat(segment.parent_path().c_str(), &dir), 0);
  EXPECT_EQ(dir.st_mode & 07777, 0700u);
  EXPECT_EQ(dir.st_uid, 0u);

  report();
  EXPECT_FALSE(recorder_.retired.contains(workload.pid()));
  EXPECT_EQ(recorder_.total(workload.pid()), 4242u);
}

TEST_F(MeteringFaults, AQuarantinedSegmentIsToldThroughItsControlFile) {
  Writer workload(7);
  ASSERT_EQ(await_report(*source_, workload), std::optional<bool>(true));
  const std::filesystem::path segment = recorder_.paths.at(workload.pid());
  report();
  ASSERT_EQ(recorder_.total(workload.pid()), 7u);
  auto control = MappedFile::open(control_path_of(segment), sizeof(format::ControlHeader), 1u << 24);
  ASSERT_TRUE(control) << control.error().message;
  const auto& header = *reinterpret_cast<const format::ControlHeader*>(control->bytes().data());
  EXPECT_EQ(format::load_acquire(header.state), format::kSegmentLive);

  // A writer breaking the format: its first lane's head goes backwards.
  {
    auto file = MappedFile::open(segment, sizeof(format::Header), std::uint64_t{1} << 34);
    ASSERT_TRUE(file) << file.error().message;
    auto& h = *reinterpret_cast<format::Header*>(file->bytes().data());
    const format::Layout layout = format::compute_layout(h.label_capacity, h.slot_count, h.lane_records, h.version);
    format::store_release(h.slots_used, std::max<std::uint32_t>(h.slots_used, 1));
    auto& slot = *reinterpret_cast<format::SlotHeader*>(file->bytes().data() + layout.slot_header(0));
    format::store_release(slot.head, std::uint64_t{1} << 40);
  }
  source_->drain();
  ASSERT_TRUE(recorder_.retired.contains(workload.pid()));
  EXPECT_FALSE(recorder_.retired[workload.pid()].empty()) << "retired, but not as a quarantine";
  EXPECT_EQ(format::load_acquire(header.state), format::kSegmentRetired) << "the client was not told";
  EXPECT_EQ(recorder_.total(workload.pid()), 7u) << "what was counted before the quarantine is kept";
}

}  // namespace
}  // namespace tally::shm
