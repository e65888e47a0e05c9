#pragma once
// A process held by descriptor (pidfd, Linux 5.3+): unlike its pid, a pidfd never names a later process that reuses
// the number, so "is the process I looked at still there" has an exact answer.

#include <poll.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "agent/base/unique_fd.hpp"

namespace tally {

// pidfd_open, the raw system call: glibc 2.36's <sys/pidfd.h> declares it without C linkage. Invalid (check with
// operator bool) where the process is gone, the kernel is older, or descriptors ran out.
inline UniqueFd open_pidfd(pid_t pid) { return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))); }

enum class ProcessState { alive, exited, unknown };

// Without waiting: a pidfd is readable once its process has exited.
inline ProcessState process_state(const UniqueFd& pidfd) {
  pollfd p{pidfd.get(), POLLIN, 0};
  const int ready = ::poll(&p, 1, 0);
  return ready > 0 ? ProcessState::exited : ready == 0 ? ProcessState::alive : ProcessState::unknown;
}

}  // namespace tally
