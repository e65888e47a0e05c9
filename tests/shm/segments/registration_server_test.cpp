// The registration socket under clients that do not finish: pending connections are bounded per uid and in all
// (the oldest closed first), a half-written request costs nothing until its deadline (the loop does not spin on
// it) and is closed then, and an agent out of descriptors still answers a client, saying why, instead of leaving
// the connection in the backlog where the listener would stay readable forever.
#include "shm/segments/registration_server.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "agent/base/unique_fd.hpp"
#include "shm/segments/metering.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::shm {
namespace {

using namespace std::chrono_literals;

protocol::Request request() {
  protocol::Request r{};
  r.magic = protocol::kRequestMagic;
  r.version = protocol::kVersion;
  std::strcpy(r.workload_name, "registration-test");
  return r;
}

bool readable(int fd, int timeout_ms = 0) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) > 0;
}

// Whether the agent closed this connection (end of file after whatever it sent).
bool closed_by_agent(int fd) {
  char byte;
  return readable(fd) && ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

class RegistrationServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (to connect as another uid)";
    ::chmod(dir_.path().c_str(), 0755);  // reachable by every uid, as /run/tally is
    options_.socket_path = dir_ / "tally.sock";
    options_.segment_dir = dir_ / "segments";
    options_.instance_id = "registration";
  }
  void listen() {
    auto server = RegistrationServer::listen(options_, [](const Registration&) -> Result<void> { return {}; });
    ASSERT_TRUE(server) << server.error().message;
    server_ = std::move(*server);
  }
  // A client socket, not connected yet.
  static UniqueFd client_socket() { return UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)); }
  bool connect(const UniqueFd& fd) const {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, options_.socket_path.c_str(), sizeof address.sun_path - 1);
    return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
  }
  // Connects as `uid` (the kernel takes the peer's credentials at connect time) and lets the agent accept it.
  UniqueFd connect_as(uid_t uid) {
    UniqueFd fd = client_socket();
    EXPECT_EQ(::seteuid(uid), 0);
    const bool connected = connect(fd);
    EXPECT_EQ(::seteuid(0), 0);
    EXPECT_TRUE(connected) << std::strerror(errno);
    serve();
    return fd;
  }
  // Lets the agent handle whatever is ready now.
  void serve() {
    for (int round = 0; round < 100 && readable(server_->fd()); ++round) server_->on_readable();
  }
  static protocol::Reply reply_of(int fd) {
    protocol::Reply reply{};
    EXPECT_TRUE(test::wait_until([&] { return readable(fd); }, 10s)) << "no reply";
    EXPECT_EQ(::recv(fd, &reply, sizeof reply, MSG_DONTWAIT), static_cast<ssize_t>(sizeof reply));
    return reply;
  }

  test::TempDir dir_;
  RegistrationServer::Options options_;
  std::unique_ptr<RegistrationServer> server_;
};

TEST_F(RegistrationServerTest, PendingConnectionsAreBoundedPerUidAndInAllOldestClosedFirst) {
  options_.max_pending_per_uid = 3;
  options_.max_pending = 5;
  listen();
  // A fourth silent connection of one uid closes that uid's oldest.
  UniqueFd hostile[4];
  for (auto& fd : hostile) fd = connect_as(65534);
  EXPECT_TRUE(closed_by_agent(hostile[0].get()));
  for (int i = 1; i < 4; ++i) EXPECT_FALSE(closed_by_agent(hostile[i].get())) << i;

  // Another uid is not held back by it, up to the total; past the total the oldest of anyone is closed.
  UniqueFd other[3];
  for (auto& fd : other) fd = connect_as(0);
  EXPECT_TRUE(closed_by_agent(hostile[1].get()));
  for (int i = 2; i < 4; ++i) EXPECT_FALSE(closed_by_agent(hostile[i].get())) << i;
  for (const auto& fd : other) EXPECT_FALSE(closed_by_agent(fd.get()));

  // A pending client that completes its request is served, bounds or not.
  const protocol::Request r = request();
  ASSERT_EQ(::send(other[0].get(), &r, sizeof r, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r));
  serve();
  EXPECT_EQ(reply_of(other[0].get()).status, protocol::Status::ok);
  EXPECT_EQ(server_->accepted(), 1u);
}

TEST_F(RegistrationServerTest, AHalfWrittenRequestWaitsWithoutSpinningAndIsClosedAtItsDeadline) {
  options_.request_timeout = 300ms;
  listen();
  const protocol::Request r = request();
  const auto* bytes = reinterpret_cast<const char*>(&r);

  // Written in two halves with the agent serving between them: served as one request.
  UniqueFd patient = connect_as(0);
  ASSERT_EQ(::send(patient.get(), bytes, 40, MSG_NOSIGNAL), 40);
  serve();
  ASSERT_EQ(::send(patient.get(), bytes + 40, sizeof r - 40, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r - 40));
  serve();
  EXPECT_EQ(reply_of(patient.get()).status, protocol::Status::ok);

  // Half a request and nothing more: once its bytes are taken, nothing is ready for the loop until the deadline.
  UniqueFd stalled = connect_as(0);
  ASSERT_EQ(::send(stalled.get(), bytes, 40, MSG_NOSIGNAL), 40);
  server_->on_readable();
  EXPECT_FALSE(readable(server_->fd())) << "the loop would spin on a half-written request";
  EXPECT_FALSE(closed_by_agent(stalled.get()));
  EXPECT_TRUE(test::wait_until(
      [&] {
        if (readable(server_->fd())) server_->on_readable();
        return closed_by_agent(stalled.get());
      },
      10s))
      << "the deadline never closed it";
  EXPECT_EQ(server_->accepted(), 1u);
}

TEST_F(RegistrationServerTest, OutOfDescriptorsAClientIsToldWhyAndTheListenerDoesNotSpin) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "the sanitizers' runtime needs file descriptors of its own, which this test takes away";
#endif
  listen();
  UniqueFd client = client_socket();  // made while descriptors are left: connect() needs none
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &saved), 0);
  int lowest_free = 0;
  while (::fcntl(lowest_free, F_GETFD) != -1) ++lowest_free;
  rlimit tight = saved;
  tight.rlim_cur = static_cast<rlim_t>(lowest_free);  // no descriptor left but those in use
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &tight), 0);
  ASSERT_TRUE(connect(client));
  const protocol::Request r = request();
  ASSERT_EQ(::send(client.get(), &r, sizeof r, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r));
  server_->on_readable();
  const bool spinning = readable(server_->fd());
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &saved), 0);

  EXPECT_FALSE(spinning) << "the connection was left in the backlog";
  const protocol::Reply reply = reply_of(client.get());
  EXPECT_EQ(reply.status, protocol::Status::internal);
  EXPECT_NE(std::string(reply.message).find("out of file descriptors"), std::string::npos) << reply.message;
  EXPECT_EQ(server_->refused(), 1u);

  // With descriptors back (and the reserve taken again), the next client is served.
  UniqueFd next = connect_as(0);
  ASSERT_EQ(::send(next.get(), &r, sizeof r, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r));
  serve();
  EXPECT_EQ(reply_of(next.get()).status, protocol::Status::ok);
}

// A client that hangs up before its reply (it gave up waiting on a loaded agent) never got its segment: the agent
// drops it instead of holding it against the uid's bounds until the process exits.
TEST_F(RegistrationServerTest, ASegmentWhoseClientHungUpBeforeTheReplyIsDropped) {
  std::vector<std::filesystem::path> unanswered;
  options_.on_unanswered = [&](const Registration& r) { unanswered.push_back(r.segment_path); };
  listen();
  const protocol::Request r = request();
  {
    UniqueFd gone = client_socket();
    ASSERT_TRUE(connect(gone));
    ASSERT_EQ(::send(gone.get(), &r, sizeof r, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r));
  }  // hung up with its request sent
  serve();
  ASSERT_EQ(unanswered.size(), 1u);
  UniqueFd stays = connect_as(0);
  ASSERT_EQ(::send(stays.get(), &r, sizeof r, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r));
  serve();
  EXPECT_EQ(reply_of(stays.get()).status, protocol::Status::ok);
  EXPECT_EQ(unanswered.size(), 1u) << "an answered client's segment was dropped";
}

TEST_F(RegistrationServerTest, TheMeteringSourceRetiresAnUnansweredSegment) {
  struct Retired : MeteringSource::Listener {
    void on_attached(const Segment&) override { ++attached; }
    void on_drained(const Segment&, std::span<const RequestEvent>) override {}
    void on_retired(const Segment&, const std::string&) override { ++retired; }
    int attached = 0, retired = 0;
  } listener;
  MeteringSource::Options options;
  options.socket_path = options_.socket_path;
  options.segment_dir = options_.segment_dir;
  options.instance_id = "unanswered";
  auto source = MeteringSource::start(options, listener, [](const std::string&) { return false; });
  ASSERT_TRUE(source) << source.error().message;
  const protocol::Request r = request();
  {
    UniqueFd gone = client_socket();
    ASSERT_TRUE(connect(gone));
    ASSERT_EQ(::send(gone.get(), &r, sizeof r, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof r));
  }
  for (int round = 0; round < 100 && readable((*source)->fd()); ++round) (*source)->on_readable();
  EXPECT_EQ(listener.attached, 1);
  EXPECT_EQ(listener.retired, 1);
  EXPECT_EQ((*source)->live_segments(), 0u);
}

}  // namespace
}  // namespace tally::shm
