#include "agent/tallyd/control_server.hpp"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "agent/base/unix_socket.hpp"

namespace tally::agent {

namespace {

constexpr std::size_t kMaxRequestBytes = 64 * 1024;
constexpr std::size_t kMaxConnections = 16;
constexpr timeval kSendTimeout{2, 0};

Error errno_error(std::string_view what) {
  return make_error(ErrorCode::io, "{}: {}", what, std::strerror(errno));
}

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::start(const std::filesystem::path& path, EventLoop& loop,
                                                            Handler handler) {
  const auto address = unix_socket_address(path.string());
  if (!address) return make_error(ErrorCode::invalid_argument, "control socket {}: path too long", path.string());
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  std::unique_ptr<ControlServer> server(new ControlServer(path, loop, std::move(handler)));
  server->listener_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!server->listener_) return errno_error("control socket");
  // A socket left by an agent that died is replaced. Its mode is root's only before it listens: nobody else can
  // connect at any moment (a connect before listen() is refused).
  ::unlink(path.c_str());
  if (::bind(server->listener_.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof *address) != 0) {
    return errno_error(fmt::format("bind control socket {}", path.string()));
  }
  if (::chmod(path.c_str(), 0600) != 0) return errno_error(fmt::format("chmod {}", path.string()));
  if (::listen(server->listener_.get(), 8) != 0) return errno_error("listen on the control socket");
  auto source = loop.add_io(server->listener_.get(), EPOLLIN, [raw = server.get()](std::uint32_t) { raw->on_accept(); });
  if (!source) return source.error();
  server->listener_source_ = std::move(*source);
  return server;
}

ControlServer::~ControlServer() {
  connections_.clear();
  listener_source_.reset();
  if (listener_) ::unlink(path_.c_str());
}

void ControlServer::on_accept() {
  while (true) {
    UniqueFd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (!fd) return;  // EAGAIN: all taken; anything else: the next one may do
    ucred peer{};
    socklen_t length = sizeof peer;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &peer, &length) != 0 || peer.uid != 0) {
      // The socket's mode keeps others out already; this holds should the mode be changed by hand.
      spdlog::warn("control socket: refused a connection of uid {} (pid {}): root only", peer.uid, peer.pid);
      continue;
    }
    if (connections_.size() >= kMaxConnections) {
      spdlog::warn("control socket: {} requests open already: refused one of pid {}", connections_.size(), peer.pid);
      continue;
    }
    const int key = fd.get();
    auto source = loop_.add_io(key, EPOLLIN | EPOLLRDHUP, [this, key](std::uint32_t) { on_readable(key); });
    if (!source) {
      spdlog::warn("control socket: {}", source.error().message);
      continue;
    }
    connections_[key] = Connection{std::move(fd), std::move(*source), {}};
  }
}

void ControlServer::on_readable(int key) {
  const auto it = connections_.find(key);
  if (it == connections_.end()) return;
  Connection& connection = it->second;
  char chunk[4096];
  while (true) {
    const ssize_t n = ::recv(key, chunk, sizeof chunk, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // more to come
    if (n <= 0) break;  // closed (or failed) before a whole line: nothing to answer
    connection.request.append(chunk, static_cast<std::size_t>(n));
    const auto newline = connection.request.find('\n');
    if (newline == std::string::npos && connection.request.size() <= kMaxRequestBytes) continue;
    if (newline == std::string::npos || newline > kMaxRequestBytes) {
      answer(connection, {{"error", fmt::format("request longer than {} bytes", kMaxRequestBytes)}});
      break;
    }
    nlohmann::json reply;
    try {
      const auto request = nlohmann::json::parse(connection.request.substr(0, newline));
      reply = request.is_object() ? handler_(request) : nlohmann::json{{"error", "a request is a JSON object"}};
    } catch (const nlohmann::json::exception& err) {
      reply = {{"error", fmt::format("malformed request: {}", err.what())}};
    }
    answer(connection, reply);
    break;
  }
  connections_.erase(it);  // closes it; sd-event frees the source after this callback returns
}

void ControlServer::answer(Connection& connection, const nlohmann::json& reply) {
  const std::string text = reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const int fd = connection.fd.get();
  // Blocking, with a timeout: a client that does not read cannot hold the loop for long.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &kSendTimeout, sizeof kSendTimeout);
  std::size_t sent = 0;
  while (sent < text.size()) {
    const ssize_t n = ::send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      spdlog::warn("control socket: answer not sent: {}", n < 0 ? std::strerror(errno) : "closed");
      return;
    }
    sent += static_cast<std::size_t>(n);
  }
}

}  // namespace tally::agent
