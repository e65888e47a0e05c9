#include "agent/tallyctl/control_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/base/unix_socket.hpp"
#include "agent/base/unique_fd.hpp"

namespace tally::agent {

using nlohmann::json;

Result<json> ask_agent(const std::string& socket_path, const json& request, std::chrono::seconds timeout) {
  const auto address = unix_socket_address(socket_path);
  if (!address) return make_error(ErrorCode::invalid_argument, "{}: not a usable socket path", socket_path);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof *address) != 0) {
    return make_error(ErrorCode::not_found, "cannot reach tallyd at {}: {} (is it running? root only)",
                      socket_path, std::strerror(errno));
  }
  const std::string line = request.dump() + "\n";
  if (::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    return make_error(ErrorCode::io, "send to {}: {}", socket_path, std::strerror(errno));
  }
  std::string answer;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd.get(), POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) == 0) {
      return make_error(ErrorCode::io, "tallyd did not answer within {} s", timeout.count());
    }
    char chunk[65536];
    const ssize_t n = ::recv(fd.get(), chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(ErrorCode::io, "read from {}: {}", socket_path, std::strerror(errno));
    if (n == 0) break;
    answer.append(chunk, static_cast<std::size_t>(n));
  }
  try {
    json reply = json::parse(answer);
    if (reply.contains("error")) return make_error(ErrorCode::invalid_argument, "tallyd: {}", reply["error"].get<std::string>());
    return reply;
  } catch (const json::exception&) {
    return make_error(ErrorCode::io, "tallyd's answer is not JSON ({} bytes)", answer.size());
  }
}

}  // namespace tally::agent
