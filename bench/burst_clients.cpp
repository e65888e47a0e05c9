// burst_clients N [--no-client]: N processes opened at once, as a fork-heavy server starts. Forks N children that
// wait at a gate; opens the gate (all wake together), and each child calls tally_open and waits until its client is
// attached (tally_open's bounded wait, set to 10 s: no polling), then says when (CLOCK_MONOTONIC). Prints one line:
//   clients=N attached=A median_ms=M p99_ms=P all_ms=X
// times counted from the gate's opening. With --no-client the children only wake and say so: the baseline, what
// waking N processes costs on this machine with no tally at all. The children stay until stdin closes.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tally/client.h"

namespace {

std::uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

[[noreturn]] void child(int gate, int results, bool with_client) {
  char byte;
  while (::read(gate, &byte, 1) > 0) {
  }  // end of file: the gate opened
  std::uint64_t when = 0;  // 0: never attached
  tally_client* client = nullptr;
  if (with_client) {
    client = tally_open("burst");  // waits for the reply (TALLY_OPEN_TIMEOUT_MS, set by main) without a busy loop
    const std::uint64_t give_up = now_ns() + 30'000'000'000u;
    while (!tally_attached(client) && now_ns() < give_up) {  // refused at first: the client's own retries
      const timespec pause{0, 10'000'000};
      ::nanosleep(&pause, nullptr);
    }
    if (tally_attached(client)) when = now_ns();
  } else {
    when = now_ns();
  }
  (void)::write(results, &when, sizeof when);  // under PIPE_BUF: never interleaved
  while (::read(STDIN_FILENO, &byte, 1) > 0) {
  }
  tally_close(client);
  ::_exit(0);
}

double ms(std::uint64_t ns) { return static_cast<double>(ns) / 1e6; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: burst_clients N [--no-client]\n");
    return 2;
  }
  const int n = std::stoi(argv[1]);
  const bool with_client = !(argc > 2 && std::strcmp(argv[2], "--no-client") == 0);
  ::setenv("TALLY_OPEN_TIMEOUT_MS", "10000", 0);  // as a workload that must report from its first call would
  int gate[2], results[2];
  if (::pipe(gate) != 0 || ::pipe(results) != 0) return 3;
  std::vector<pid_t> children;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) break;
    if (pid == 0) {
      ::close(gate[1]);
      ::close(results[0]);
      child(gate[0], results[1], with_client);
    }
    children.push_back(pid);
  }
  ::close(gate[0]);
  ::close(results[1]);
  const std::uint64_t opened = now_ns();
  ::close(gate[1]);  // every child wakes now
  std::vector<std::uint64_t> latencies;
  std::uint64_t when = 0;
  for (std::size_t told = 0; told < children.size() && ::read(results[0], &when, sizeof when) == sizeof when; ++told) {
    if (when != 0) latencies.push_back(when - opened);  // 0: that child gave up after 30 s
  }
  std::sort(latencies.begin(), latencies.end());
  auto at = [&](double q) {
    return latencies.empty() ? 0.0 : ms(latencies[static_cast<std::size_t>(q * static_cast<double>(latencies.size() - 1))]);
  };
  std::printf("clients=%zu attached=%zu median_ms=%.1f p99_ms=%.1f all_ms=%.1f\n", children.size(), latencies.size(),
              at(0.5), at(0.99), latencies.empty() ? 0.0 : ms(latencies.back()));
  std::fflush(stdout);
  char byte;
  while (::read(STDIN_FILENO, &byte, 1) > 0) {
  }
  for (const pid_t pid : children) ::kill(pid, SIGTERM);  // they wait on our stdin, which they share
  for (const pid_t pid : children) ::waitpid(pid, nullptr, 0);
  return latencies.size() == children.size() ? 0 : 1;
}
