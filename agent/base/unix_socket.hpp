#pragma once
// Unix-domain sockets, once for the agent's registration server and the client library: an address from a path, and
// a message received with the descriptors it carries. Header-only and dependency-free.

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <optional>
#include <string_view>

#include "agent/base/unique_fd.hpp"

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

// Receives up to `size` bytes into `buffer` and up to two descriptors passed with them (SCM_RIGHTS, close-on-exec)
// into `fds`; any beyond two are closed. Returns what recvmsg returned.
inline ssize_t receive_with_fds(int socket, void* buffer, std::size_t size, int flags, UniqueFd (&fds)[2]) {
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
  iovec io{buffer, size};
  msghdr msg{};
  msg.msg_iov = &io;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(socket, &msg, flags | MSG_CMSG_CLOEXEC);
  std::size_t kept = 0;
  for (cmsghdr* h = CMSG_FIRSTHDR(&msg); h != nullptr; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
      if (kept < 2) fds[kept++].reset(fd); else ::close(fd);
    }
  }
  return n;
}

}  // namespace tally
