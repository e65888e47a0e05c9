#include "shm/segments/registration_server.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "agent/base/files.hpp"
#include "agent/base/proc.hpp"
#include "agent/base/text.hpp"
#include "agent/base/unix_socket.hpp"
#include "shm/format/registration_protocol.hpp"

namespace tally::shm {
namespace {

std::uint32_t clamp_shape(std::uint32_t wished, std::uint32_t fallback, std::uint32_t minimum, std::uint32_t maximum) {
  return std::clamp(wished == 0 ? fallback : wished, minimum, maximum);
}

Result<void> make_directory(const std::filesystem::path& dir, std::filesystem::perms perms) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error(ErrorCode::io, "{}: cannot create directory: {}", dir.string(), ec.message());
  std::filesystem::permissions(dir, perms, ec);  // best effort: it may belong to someone else (tests, /tmp)
  return {};
}

}  // namespace

Result<GrantedRequest> parse_registration_request(std::span<const std::byte> bytes, const SegmentLimits& l) {
  protocol::Request request{};
  if (bytes.size() != sizeof request) {
    return make_error(ErrorCode::invalid_argument, "a registration request is {} bytes, not {}", sizeof request,
                      bytes.size());
  }
  std::memcpy(&request, bytes.data(), sizeof request);
  if (request.magic != protocol::kRequestMagic) {
    return make_error(ErrorCode::invalid_argument, "not a tally registration request");
  }
  if (request.version != protocol::kVersion) {
    return make_error(ErrorCode::unsupported, "protocol version {} is not supported (agent speaks {})",
                      request.version, protocol::kVersion);
  }
  GrantedRequest granted;
  // Lanes are a power of two (the client masks its head with them): the wish rounded up, but never past the cap.
  const std::uint32_t lanes = clamp_shape(request.lane_records, l.default_lane_records, format::kMinLaneRecords,
                                          l.max_lane_records);
  granted.shape.lane_records = std::bit_ceil(std::min(lanes, std::bit_floor(l.max_lane_records)));
  granted.shape.slot_count = clamp_shape(request.slot_count, l.default_slots, 1, l.max_slots);
  granted.shape.label_capacity = clamp_shape(request.label_capacity, l.default_label_sets, 2, l.max_label_sets);
  SegmentShape& shape = granted.shape;
  auto too_big = [&] {
    return format::compute_layout(shape.label_capacity, shape.slot_count, shape.lane_records).segment_size >
           l.max_segment_bytes;
  };
  while (too_big() && shape.lane_records / 2 >= format::kMinLaneRecords) shape.lane_records /= 2;
  while (too_big() && shape.slot_count > 1) shape.slot_count /= 2;
  while (too_big() && shape.label_capacity / 2 >= 2) shape.label_capacity /= 2;
  granted.workload_name =
      printable_ascii(std::string_view(request.workload_name, sizeof request.workload_name - 1));
  return granted;
}

std::filesystem::path control_path_of(const std::filesystem::path& segment_path) {
  auto p = segment_path;
  return p.replace_extension(".ctl");
}

std::filesystem::path meta_path_of(const std::filesystem::path& segment_path) {
  auto p = segment_path;
  return p.replace_extension(".meta");
}

Result<void> write_registration(const Registration& r, const std::filesystem::path& meta_path) {
  const nlohmann::json doc = {{"segment", r.segment_path.string()},
                              {"control", r.control_path.string()},
                              {"pid", r.producer.pid},
                              {"uid", r.producer.uid},
                              {"gid", r.producer.gid},
                              {"start_ticks", r.producer.start_ticks},
                              {"workload_name", r.workload_name},
                              {"identity", to_json(r.identity)}};
  // On tmpfs: atomic against a crash of the agent, nothing to sync.
  return write_file_atomically(meta_path, doc.dump(), Durability::atomic);
}

Result<Registration> read_registration(const std::filesystem::path& meta_path) {
  const auto text = read_file(meta_path);
  if (!text) return make_error(ErrorCode::not_found, "{}: cannot read", meta_path.string());
  try {
    const auto doc = nlohmann::json::parse(*text);
    Registration r;
    r.segment_path = doc.at("segment").get<std::string>();
    r.control_path = doc.at("control").get<std::string>();
    r.producer.pid = doc.at("pid").get<pid_t>();
    r.producer.uid = doc.at("uid").get<uid_t>();
    r.producer.gid = doc.at("gid").get<gid_t>();
    r.producer.start_ticks = doc.at("start_ticks").get<std::uint64_t>();
    r.workload_name = doc.at("workload_name").get<std::string>();
    auto identity = identity_from_json(doc.at("identity"));
    if (!identity) return make_error(ErrorCode::invalid_argument, "{}: {}", meta_path.string(), identity.error().message);
    r.identity = std::move(*identity);
    return r;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::invalid_argument, "{}: {}", meta_path.string(), e.what());
  }
}

Result<std::unique_ptr<RegistrationServer>> RegistrationServer::listen(Options options, OnRegistered on_registered) {
  using std::filesystem::perms;
  TALLY_TRY(make_directory(options.socket_path.parent_path(), perms::owner_all | perms::group_read |
                                                                  perms::group_exec | perms::others_read |
                                                                  perms::others_exec));
  // The agent's alone: clients reach their segment only through the descriptor they are handed, so no other
  // process of their uid (another pod, another job) can open a workload's segment by name.
  TALLY_TRY(make_directory(options.segment_dir, perms::owner_all));
  if (::chmod(options.segment_dir.c_str(), 0700) != 0) {
    return make_error(ErrorCode::permission, "{}: cannot make it private to the agent (mode 0700): {}",
                      options.segment_dir.string(), std::strerror(errno));
  }
  const std::string path = options.socket_path.string();
  const auto unix_address = unix_socket_address(path);
  if (!unix_address) return make_error(ErrorCode::invalid_argument, "{}: socket path is empty or too long", path);
  const sockaddr_un& address = *unix_address;

  // A socket file that a live agent answers on is not ours to take; a stale one (nobody listening) is replaced.
  {
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0) {
      return make_error(ErrorCode::io, "{}: another agent is already listening there", path);
    }
    ::unlink(path.c_str());
  }
  auto server = std::unique_ptr<RegistrationServer>(new RegistrationServer(std::move(options), std::move(on_registered)));
  server->listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!server->listener_) return make_error(ErrorCode::io, "socket: {}", std::strerror(errno));
  if (::bind(server->listener_.get(), reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) {
    return make_error(ErrorCode::io, "{}: bind: {}", path, std::strerror(errno));
  }
  // By default any local user may register (who they are comes from SO_PEERCRED); a site may narrow it.
  if (::chmod(path.c_str(), server->options_.socket_mode) != 0 ||
      (server->options_.socket_group && ::chown(path.c_str(), static_cast<uid_t>(-1), *server->options_.socket_group) != 0)) {
    return make_error(ErrorCode::io, "{}: cannot set its mode {:o} or group: {}", path, server->options_.socket_mode,
                      std::strerror(errno));
  }
  // A burst of clients (a fork-heavy server starting) waits in the backlog, not in connect retries.
  if (::listen(server->listener_.get(), SOMAXCONN) != 0) {
    return make_error(ErrorCode::io, "{}: listen: {}", path, std::strerror(errno));
  }
  server->epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!server->epoll_) return make_error(ErrorCode::io, "epoll_create1: {}", std::strerror(errno));
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.fd = server->listener_.get();
  if (::epoll_ctl(server->epoll_.get(), EPOLL_CTL_ADD, server->listener_.get(), &event) != 0) {
    return make_error(ErrorCode::io, "epoll_ctl: {}", std::strerror(errno));
  }
  server->timer_ = UniqueFd(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!server->timer_) return make_error(ErrorCode::io, "timerfd_create: {}", std::strerror(errno));
  event.data.fd = server->timer_.get();
  if (::epoll_ctl(server->epoll_.get(), EPOLL_CTL_ADD, server->timer_.get(), &event) != 0) {
    return make_error(ErrorCode::io, "epoll_ctl: {}", std::strerror(errno));
  }
  server->reserve_ = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  return server;
}

RegistrationServer::~RegistrationServer() {
  for (const auto& [fd, since] : pending_) ::close(fd);
  if (listener_) ::unlink(options_.socket_path.c_str());
}

void RegistrationServer::on_readable() {
  epoll_event events[32];
  const int n = ::epoll_wait(epoll_.get(), events, 32, 0);
  for (int i = 0; i < n; ++i) {
    const int fd = events[i].data.fd;
    if (fd == listener_.get()) {
      accept_all();
    } else if (fd == timer_.get()) {
      std::uint64_t expirations = 0;
      (void)::read(timer_.get(), &expirations, sizeof expirations);
    } else if (pending_.contains(fd)) {
      serve(fd);
    }
  }
  expire_pending();
  arm_timer();
}

void RegistrationServer::accept_all() {
  // Bounded per call, so that a flood of connections shares the loop with the rest of the agent.
  for (int accepted = 0; accepted < 1024; ++accepted) {
    const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd >= 0) {
      accept_one(fd);
      continue;
    }
    if (errno != EMFILE && errno != ENFILE) return;  // EAGAIN, or a connection that went away meanwhile
    // Out of descriptors: a pending connection gives its own up first; failing that, the reserve lets us accept
    // this one to tell it why, so the listener does not stay readable and spin the loop.
    if (!pending_.empty()) {
      evict_oldest(std::nullopt);
      continue;
    }
    if (!reserve_) return;
    reserve_.reset();
    const int refused = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (refused >= 0) {
      ++refused_;
      reply(refused, static_cast<int>(protocol::Status::internal), "the agent is out of file descriptors; retry later",
            nullptr);
      ::close(refused);
    }
    reserve_ = UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    warn_limited(Warning::out_of_descriptors, 0, "registration: out of file descriptors; a client was turned away");
    return;
  }
}

void RegistrationServer::accept_one(int fd) {
  ucred cred{};
  socklen_t cred_size = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_size) != 0) {  // nobody to bill: told why
    ++refused_;
    reply(fd, static_cast<int>(protocol::Status::internal), "SO_PEERCRED failed", nullptr);
    ::close(fd);
    return;
  }
  std::size_t of_uid = 0;
  for (const auto& [other, p] : pending_) of_uid += p.peer.uid == cred.uid;
  if (of_uid >= options_.max_pending_per_uid) evict_oldest(cred.uid);
  if (pending_.size() >= options_.max_pending) evict_oldest(std::nullopt);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP;
  event.data.fd = fd;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
    ::close(fd);
    return;
  }
  Pending& p = pending_[fd];
  p.peer = cred;
  p.since = std::chrono::steady_clock::now();
  serve(fd);  // a client writes its request right after connecting: usually it is here already
}

void RegistrationServer::evict_oldest(std::optional<uid_t> of_uid) {
  auto oldest = pending_.end();
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (of_uid && it->second.peer.uid != *of_uid) continue;
    if (oldest == pending_.end() || it->second.since < oldest->second.since) oldest = it;
  }
  if (oldest == pending_.end()) return;
  warn_limited(Warning::evicted, oldest->second.peer.uid,
               fmt::format("registration: closing an incomplete request of uid {} (too many pending)",
                           oldest->second.peer.uid));
  close_pending(oldest->first);
}

void RegistrationServer::close_pending(int fd) {
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  pending_.erase(fd);
}

void RegistrationServer::expire_pending() {
  const auto now = std::chrono::steady_clock::now();
  std::vector<int> expired;
  for (const auto& [fd, p] : pending_) {
    if (now - p.since > options_.request_timeout) expired.push_back(fd);
  }
  for (int fd : expired) close_pending(fd);
}

void RegistrationServer::arm_timer() {
  // Fires at the oldest pending connection's deadline: an idle half-written request is closed on time without
  // any other traffic, and costs no wake-up before.
  itimerspec when{};
  if (!pending_.empty()) {
    auto oldest = std::chrono::steady_clock::time_point::max();
    for (const auto& [fd, p] : pending_) oldest = std::min(oldest, p.since);
    const auto wait = std::max<std::chrono::nanoseconds>(
        oldest + options_.request_timeout - std::chrono::steady_clock::now() + std::chrono::milliseconds(1),
        std::chrono::milliseconds(1));
    when.it_value.tv_sec = static_cast<time_t>(wait.count() / 1'000'000'000);
    when.it_value.tv_nsec = static_cast<long>(wait.count() % 1'000'000'000);
  }
  ::timerfd_settime(timer_.get(), 0, &when, nullptr);
}

bool RegistrationServer::reply(int fd, int status, const std::string& message, const CreatedSegment* segment) {
  protocol::Reply r{};
  r.magic = protocol::kReplyMagic;
  r.version = protocol::kVersion;
  r.status = static_cast<protocol::Status>(status);
  std::memcpy(r.message, message.data(), std::min(message.size(), sizeof r.message - 1));
  iovec io{&r, sizeof r};
  msghdr msg{};
  msg.msg_iov = &io;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
  if (segment != nullptr) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* h = CMSG_FIRSTHDR(&msg);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(2 * sizeof(int));
    const int fds[2] = {segment->segment.get(), segment->control_read_only.get()};
    std::memcpy(CMSG_DATA(h), fds, sizeof fds);
  }
  return ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) == static_cast<ssize_t>(sizeof r);
}

void RegistrationServer::warn_limited(Warning kind, uid_t uid, const std::string& message) {
  const auto suppressed = warnings_.admit(static_cast<std::uint64_t>(kind) | uid);
  if (!suppressed) return;
  if (*suppressed == 0) {
    spdlog::warn("{}", message);
  } else {
    spdlog::warn("{} ({} more like it since the last such line, not logged)", message, *suppressed);
  }
}

void RegistrationServer::serve(int fd) {
  // What came so far stays in the pending entry: the bytes are taken off the socket, so the descriptor is not
  // readable again until more arrive (no busy loop on a half-written request).
  Pending& pending = pending_.at(fd);
  const ssize_t n = ::recv(fd, pending.bytes.data() + pending.have, pending.bytes.size() - pending.have, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  if (n <= 0) {  // hung up before a whole request, or an error
    close_pending(fd);
    return;
  }
  pending.have += static_cast<std::size_t>(n);
  if (pending.have < pending.bytes.size()) return;  // the rest is on its way (or the deadline closes it)
  const auto request = pending.bytes;
  const ucred cred = pending.peer;

  auto refuse = [&](protocol::Status status, const std::string& message) {
    ++refused_;
    warn_limited(Warning::refused, cred.uid,
                 fmt::format("registration refused (pid {}, uid {}): {}", cred.pid, cred.uid, message));
    reply(fd, static_cast<int>(status), message, nullptr);
    close_pending(fd);
  };
  auto parsed = parse_registration_request(request, options_.limits);
  if (!parsed) {
    refuse(parsed.error().code == ErrorCode::unsupported ? protocol::Status::unsupported_version
                                                         : protocol::Status::bad_request,
           parsed.error().message);
    return;
  }
  const FsRoot fs(options_.fs_root);
  const auto start_ticks = read_process_start_ticks(fs, cred.pid);
  auto identity = identify_process(fs, cred.pid, options_.identity_rules);
  if (!start_ticks || !identity) {
    refuse(protocol::Status::internal,
           fmt::format("cannot identify pid {}: {}", cred.pid, identity ? "no start time" : identity.error().message));
    return;
  }
  const SegmentShape& shape = parsed->shape;
  const std::string& name = parsed->workload_name;

  Registration registration;
  registration.segment_path =
      options_.segment_dir /
      fmt::format("{}-{}-{}-{}.seg", cred.pid, *start_ticks, options_.instance_id.substr(0, 8), ++sequence_);
  registration.control_path = control_path_of(registration.segment_path);
  registration.producer = Producer{cred.pid, cred.uid, cred.gid, *start_ticks};
  registration.workload_name = name;
  registration.identity = std::move(*identity);
  if (options_.admit) {
    if (auto admitted = options_.admit(registration.producer, registration.identity, shape); !admitted) {
      refuse(protocol::Status::refused, admitted.error().message);
      return;
    }
  }
  auto created = create_segment(registration.segment_path, registration.control_path, shape, registration.producer,
                                name);
  if (!created) {
    refuse(protocol::Status::internal, created.error().message);
    return;
  }
  auto remove_files = [&] {
    ::unlink(registration.segment_path.c_str());
    ::unlink(registration.control_path.c_str());
    ::unlink(meta_path_of(registration.segment_path).c_str());
  };
  if (auto written = write_registration(registration, meta_path_of(registration.segment_path)); !written) {
    remove_files();
    refuse(protocol::Status::internal, written.error().message);
    return;
  }
  if (auto accepted = on_registered_(registration); !accepted) {
    remove_files();
    refuse(protocol::Status::refused, accepted.error().message);
    return;
  }
  ++accepted_;
  spdlog::info("registered pid {} (uid {}) as {} ('{}'): {}", cred.pid, cred.uid, registration.identity.id, name,
               registration.segment_path.string());
  if (!reply(fd, static_cast<int>(protocol::Status::ok), "", &created.value())) {
    warn_limited(Warning::unanswered, cred.uid,
                 fmt::format("registration: pid {} (uid {}) hung up before its reply: {}; its segment is dropped",
                             cred.pid, cred.uid, std::strerror(errno)));
    if (options_.on_unanswered) options_.on_unanswered(registration);
  }
  close_pending(fd);
}

}  // namespace tally::shm
