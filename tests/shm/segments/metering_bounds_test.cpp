// Bounds per client, against a hostile uid: a process of uid 65534 registers 5,000 times asking for the largest
// shapes, touches every page it was granted, and floods its lanes, while another workload records events. The real
// source runs in this process (the agent) with the real client library in forked children. The other workload's
// events are all drained at every drain and its totals stay exact; the hostile uid gets no more than its bounds;
// the agent's RSS stays under 256 MiB and the segments' tmpfs under the documented bound (max_mib_per_uid per uid
// with segments); the refusals are logged once, not 5,000 times.
#include "shm/segments/metering.hpp"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "agent/base/unix_socket.hpp"
#include "shm/format/registration_protocol.hpp"
#include "tally/client.h"
#include "tests/support/temp_dir.hpp"

namespace tally::shm {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kMiB = 1 << 20;

struct Counter : MeteringSource::Listener {
  void on_attached(const Segment& s) override { ++attached[s.registration.producer.uid]; }
  void on_drained(const Segment& s, std::span<const RequestEvent> read) override {
    const pid_t pid = s.registration.producer.pid;
    events[pid] += read.size();
    if (!s.reader) return;
    CounterArray sum{};
    for (std::uint32_t h = 1; h < s.reader->label_count(); ++h) {
      for (std::size_t c = 0; c < sum.size(); ++c) sum[c] += s.reader->counters(h)[c];
    }
    counters[pid] = sum;  // the client's cumulative counters, as last read
  }
  void on_retired(const Segment&, const std::string&) override {}
  std::map<uid_t, std::size_t> attached;
  std::map<pid_t, std::uint64_t> events;
  std::map<pid_t, CounterArray> counters;
};

// Registers through the raw protocol, as any local process may: returns true when the agent granted a segment.
// Every page of the segment is touched, so that it costs the tmpfs all it can; then the descriptors are closed
// (the segment stays the process's until it exits).
bool register_raw(const std::string& socket_path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::strncpy(address.sun_path, socket_path.c_str(), sizeof address.sun_path - 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return false;
  }
  protocol::Request request{};
  request.magic = protocol::kRequestMagic;
  request.version = protocol::kVersion;
  request.lane_records = UINT32_MAX;  // the largest of everything
  request.slot_count = UINT32_MAX;
  request.label_capacity = UINT32_MAX;
  std::strcpy(request.workload_name, "hostile");
  (void)::send(fd, &request, sizeof request, MSG_NOSIGNAL);
  protocol::Reply reply{};
  UniqueFd fds[2];
  const ssize_t n = receive_with_fds(fd, &reply, sizeof reply, 0, fds);
  for (const UniqueFd& segment : fds) {
    struct stat st {};
    if (!segment || ::fstat(segment.get(), &st) != 0 || st.st_size <= 0) continue;
    const auto size = static_cast<std::size_t>(st.st_size);
    void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, segment.get(), 0);
    if (map == MAP_FAILED) continue;
    auto* bytes = static_cast<volatile std::uint8_t*>(map);
    for (std::size_t at = 0; at < size; at += 4096) bytes[at] = bytes[at];  // allocates the page
    ::munmap(map, size);
  }
  ::close(fd);
  return n == static_cast<ssize_t>(sizeof reply) && reply.status == protocol::Status::ok;
}

std::uint64_t rss_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("VmRSS:")) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

std::uint64_t tmpfs_bytes(const std::filesystem::path& dir) {
  std::uint64_t bytes = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    struct stat st {};
    if (::stat(entry.path().c_str(), &st) == 0) bytes += static_cast<std::uint64_t>(st.st_blocks) * 512;
  }
  return bytes;
}

TEST(MeteringBounds, AHostileUidCannotStarveOrSwampAnotherWorkload) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (to run the hostile client as uid 65534)";
  test::TempDir dir;
  ::chmod(dir.path().c_str(), 0755);
  std::ostringstream log;
  const auto previous_logger = spdlog::default_logger();
  spdlog::set_default_logger(
      std::make_shared<spdlog::logger>("bounds", std::make_shared<spdlog::sinks::ostream_sink_st>(log)));
  MeteringSource::Options options;
  options.socket_path = dir / "tally.sock";
  options.segment_dir = dir / "segments";
  options.instance_id = "bounds";
  options.max_bytes_per_uid = 128 * kMiB;  // the bound under test; the shape bounds are the defaults
  options.drain_budget = 4096;
  Counter counter;
  auto started = MeteringSource::start(options, counter, [](const std::string&) { return false; });
  ASSERT_TRUE(started) << started.error().message;
  MeteringSource& source = **started;
  ::setenv("TALLY_SOCKET", options.socket_path.c_str(), 1);
  ::setenv("TALLY_OPEN_TIMEOUT_MS", "5000", 1);

  // Each child says one byte when ready; the victim records 1,000 events per byte it is sent and answers.
  int hostile_ready[2], victim_cmd[2], victim_ack[2];
  ASSERT_EQ(::pipe2(hostile_ready, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(victim_cmd, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(victim_ack, O_CLOEXEC), 0);
  const pid_t hostile = ::fork();
  ASSERT_GE(hostile, 0);
  if (hostile == 0) {
    for (const int fd : {hostile_ready[0], victim_cmd[0], victim_cmd[1], victim_ack[0], victim_ack[1]}) ::close(fd);
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(3);
    ::setenv("TALLY_LANE_RECORDS", "65536", 1);
    ::setenv("TALLY_SLOTS", "1024", 1);
    ::setenv("TALLY_LABEL_SETS", "4096", 1);
    tally_client* flood = tally_open("hostile-flood");
    int granted = 0;
    for (int i = 0; i < 5000; ++i) granted += register_raw(options.socket_path.string()) ? 1 : 0;
    const char ready = static_cast<char>(granted > 0 ? 'y' : 'n');
    (void)::write(hostile_ready[1], &ready, 1);
    const tally_label label{"project", "flood"};
    const std::uint32_t labels = tally_intern(flood, &label, 1);
    const tally_request r{1, 1, 1, 1, 1, 0, 0};
    for (;;) {
      for (int k = 0; k < 100000; ++k) tally_record(flood, labels, &r);
      if (::getppid() == 1) ::_exit(0);
    }
  }
  auto serve_until = [&](auto done) {
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < until) {
      if (done()) return true;
      pollfd p{source.fd(), POLLIN, 0};
      if (::poll(&p, 1, 5) > 0) source.on_readable();
    }
    return false;
  };
  char hostile_said = 0;
  ASSERT_TRUE(serve_until([&] {
    pollfd p{hostile_ready[0], POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && ::read(hostile_ready[0], &hostile_said, 1) == 1;
  })) << "the hostile client never finished registering";
  EXPECT_EQ(hostile_said, 'y');
  EXPECT_LE(counter.attached[65534] * 64 * kMiB, 128 * kMiB + 64 * kMiB) << "more segments than its bytes allow";
  EXPECT_GE(counter.attached[65534], 1u);

  const pid_t victim = ::fork();
  ASSERT_GE(victim, 0);
  if (victim == 0) {
    for (const int fd : {hostile_ready[0], hostile_ready[1], victim_cmd[1], victim_ack[0]}) ::close(fd);
    tally_client* client = tally_open("victim");
    const tally_label label{"project", "victim"};
    const std::uint32_t labels = tally_intern(client, &label, 1);
    const char attached = tally_attached(client) ? 'y' : 'n';
    (void)::write(victim_ack[1], &attached, 1);
    char byte;
    while (::read(victim_cmd[0], &byte, 1) == 1) {
      const tally_request r{10, 20, 1, 2, 3, 0, 0};
      for (int k = 0; k < 1000; ++k) tally_record(client, labels, &r);
      tally_add(client, labels, TALLY_TOKENS_IN, 1000);
      (void)::write(victim_ack[1], &byte, 1);
    }
    ::_exit(0);
  }
  char ack = 0;
  auto await_ack = [&] {
    return serve_until([&] {
      pollfd p{victim_ack[0], POLLIN, 0};
      return ::poll(&p, 1, 0) > 0 && ::read(victim_ack[0], &ack, 1) == 1;
    });
  };
  ASSERT_TRUE(await_ack());
  ASSERT_EQ(ack, 'y');

  // Every interval: the victim records 1,000 requests (10 tokens in each) and adds 1,000 tokens; one drain pass
  // must take all of its events, flood or not, and its counters are exact at every report.
  for (std::uint64_t interval = 1; interval <= 20; ++interval) {
    ASSERT_EQ(::write(victim_cmd[1], "x", 1), 1);
    ASSERT_TRUE(await_ack());
    const std::uint64_t before = counter.events[victim];
    source.drain(/*every=*/false);
    EXPECT_EQ(counter.events[victim] - before, 1000u) << "interval " << interval;
    source.sync(true);
    EXPECT_EQ(counter.counters[victim][TALLY_REQUESTS], 1000 * interval) << "interval " << interval;
    EXPECT_EQ(counter.counters[victim][TALLY_TOKENS_IN], 11000 * interval) << "interval " << interval;
  }
  EXPECT_GT(counter.events[hostile], 0u);
  EXPECT_LT(rss_bytes(), 256 * kMiB) << "the agent's RSS";
  // The documented bound: max_mib_per_uid per uid with segments. The hostile uid touched every page it got; the
  // victim (root) has one segment of the default shape.
  EXPECT_GT(tmpfs_bytes(options.segment_dir), 64 * kMiB) << "the hostile client did not fill its segments";
  EXPECT_LE(tmpfs_bytes(options.segment_dir), 128 * kMiB + 16 * kMiB) << "tmpfs under the segments";

  std::size_t refusals_logged = 0;
  for (std::size_t at = log.str().find("registration refused"); at != std::string::npos;
       at = log.str().find("registration refused", at + 1)) {
    ++refusals_logged;
  }
  EXPECT_GE(refusals_logged, 1u);
  EXPECT_LE(refusals_logged, 10u) << "a hostile client must not flood the log";
  spdlog::set_default_logger(previous_logger);

  ::close(victim_cmd[1]);
  ::waitpid(victim, nullptr, 0);
  ::kill(hostile, SIGKILL);
  ::waitpid(hostile, nullptr, 0);
  ::unsetenv("TALLY_SOCKET");
  ::unsetenv("TALLY_OPEN_TIMEOUT_MS");
}

}  // namespace
}  // namespace tally::shm
