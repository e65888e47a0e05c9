// A workload that forks after tally_open, for fork_test: the parent reports, forks a child that reports through
// the inherited client (the parent's label-set handles and counter id, plus a label set of its own), the child
// forks a grandchild that execs this binary again (--exec-child: a fresh client), and all three report at once.
// Each process reports `--iterations N` calls per step (see report()); fork_test computes the same totals.
// Exit status 0 when every process attached and exited cleanly.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "tally/client.h"

namespace {

struct Handles {
  std::uint32_t shared = 0, own = 0;
  tally_counter widgets = TALLY_COUNTER_INVALID;
};

// One step: the shared label set's tokens_in, and the process's own label set's widgets and requests.
void report(tally_client* c, const Handles& h, std::uint64_t n) {
  tally_request r{};
  r.tokens_out = 2;
  for (std::uint64_t i = 0; i < n; ++i) {
    tally_add(c, h.shared, TALLY_TOKENS_IN, 1);
    tally_add(c, h.own, h.widgets, 3);
    tally_record(c, h.own, &r);
  }
}

std::uint32_t intern(tally_client* c, const char* key, const char* value) {
  const tally_label label{key, value};
  return tally_intern(c, &label, 1);
}

bool wait_attached(tally_client* c) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (tally_attached(c) == 0) {
    if (std::chrono::steady_clock::now() > end) {
      std::fprintf(stderr, "pid %d never attached: %s\n", static_cast<int>(::getpid()), tally_last_error(c));
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

bool reaped_cleanly(pid_t pid) {
  int status = 0;
  return ::waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t n = 10000;
  bool exec_child = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) n = std::stoull(argv[++i]);
    if (std::strcmp(argv[i], "--exec-child") == 0) exec_child = true;
  }
  tally_client* c = tally_open("fork-writer");
  Handles h{intern(c, "scope", "all"), intern(c, "role", exec_child ? "grandchild" : "parent"),
            tally_register_counter(c, "widgets")};
  if (exec_child) {  // the exec'd grandchild: its own client from the start
    report(c, h, n);
    const bool ok = wait_attached(c);
    tally_close(c);
    return ok ? 0 : 1;
  }
  if (!wait_attached(c)) return 1;  // forks of an attached client: the case that used to share slots
  report(c, h, n);
  std::fflush(nullptr);
  const pid_t child = ::fork();
  if (child < 0) return 2;
  if (child == 0) {
    Handles mine = h;  // the parent's handles and counter id, still valid here
    mine.own = intern(c, "role", "child");
    report(c, mine, n);
    std::fflush(nullptr);
    const pid_t grandchild = ::fork();
    if (grandchild == 0) {
      const std::string count = std::to_string(n);
      ::execl(argv[0], argv[0], "--exec-child", "--iterations", count.c_str(), static_cast<char*>(nullptr));
      ::_exit(3);
    }
    report(c, mine, n);  // at the same time as the parent and the grandchild
    const bool ok = wait_attached(c) && grandchild > 0 && reaped_cleanly(grandchild);
    tally_close(c);
    ::_exit(ok ? 0 : 1);
  }
  report(c, h, n);  // at the same time as the child
  const bool ok = wait_attached(c) && reaped_cleanly(child);
  tally_close(c);
  std::printf("done\n");
  return ok ? 0 : 1;
}
