#pragma once
// A Unix-domain socket address from a path, once for the agent's registration server and the client library.
// Header-only and dependency-free.

#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <optional>
#include <string_view>

namespace tally {

// The address of the socket at `path`; nullopt when the path is empty or does not fit sun_path (with its NUL).
inline std::optional<sockaddr_un> unix_socket_address(std::string_view path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof address.sun_path) return std::nullopt;
  std::memcpy(address.sun_path, path.data(), path.size());
  address.sun_path[path.size()] = '\0';
  return address;
}

}  // namespace tally
