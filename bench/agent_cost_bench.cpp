// What tallyd itself costs while its clients do nothing: its work must follow what changed, and its memory what is
// used, not how many clients are attached. Runs the real tallyd on its defaults (drain every 100 ms, a report every
// second, a snapshot every 5 s, probes on where this process may load them, not pinned) with metering in a temp dir:
//
//   AgentCost/clients:0     an idle agent, no client                          target: under 0.1 % of a core
//   AgentCost/clients:400   400 idle clients x 16 label sets (6,400 label sets, each counted once)
//                                                                             target: under 0.5 % of a core
// and the agent's resident memory with 400 clients (target: under 64 MiB + 256 KiB per client).
//
// CPU is the agent's own, all its threads, from /proc/PID/task/*/schedstat (nanoseconds on a CPU: a clock tick is
// too coarse for a tenth of a percent), over a window after the agent has settled. The baseline of the ratio column
// is the idle agent of the same run. --window_s=N sets the window (default 10 s; the ctest smoke run uses 1).
//
//   RegistrationBurst/clients:1000   1,000 client processes opened at once   target: all attached within 1 s
// timed from the moment they all wake to the last one attached (bench/burst_clients.cpp); the baseline,
// WakeBurst/clients:1000, is the same 1,000 processes waking with no tally at all.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include "bench/median_reporter.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;

double g_window_s = 10;

struct Child {
  pid_t pid = -1;
  int stdin_fd = -1, stdout_fd = -1;
  Child(std::vector<std::string> argv) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) throw std::runtime_error(argv[0]);
    posix_spawn_file_actions_destroy(&actions);
    ::close(in[0]);
    ::close(out[1]);
    stdin_fd = in[1];
    stdout_fd = out[0];
  }
  // Waits (bounded) for a line containing `text` on its stdout.
  bool wait_for(const std::string& text, std::chrono::seconds deadline) {
    std::string seen;
    const auto end = std::chrono::steady_clock::now() + deadline;
    char buffer[256];
    while (seen.find(text) == std::string::npos && std::chrono::steady_clock::now() < end) {
      const ssize_t n = ::read(stdout_fd, buffer, sizeof buffer);
      if (n <= 0) return false;
      seen.append(buffer, static_cast<std::size_t>(n));
    }
    return seen.find(text) != std::string::npos;
  }
  // Reads (bounded) one line from its stdout.
  bool read_line(std::string& line, std::chrono::seconds deadline) {
    line.clear();
    const auto end = std::chrono::steady_clock::now() + deadline;
    char c;
    while (std::chrono::steady_clock::now() < end) {
      if (::read(stdout_fd, &c, 1) != 1) return false;
      if (c == '\n') return true;
      line.push_back(c);
    }
    return false;
  }
  ~Child() {
    ::close(stdin_fd);
    ::kill(pid, SIGTERM);
    ::waitpid(pid, nullptr, 0);
    ::close(stdout_fd);
  }
};

// Nanoseconds the process has spent on a CPU, all threads.
std::uint64_t cpu_ns(pid_t pid) {
  std::uint64_t total = 0;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator(fmt::format("/proc/{}/task", pid), ec)) {
    std::ifstream in(task.path() / "schedstat");
    std::uint64_t on_cpu = 0;
    if (in >> on_cpu) total += on_cpu;
  }
  return total;
}

std::uint64_t rss_bytes(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string key;
  std::uint64_t kib = 0;
  for (std::string line; std::getline(in, line);) {
    if (std::sscanf(line.c_str(), "VmRSS: %lu kB", &kib) == 1) return kib * 1024;
  }
  return 0;
}

struct Measured {
  double cpu_percent = 0;
  double rss_mib = 0;
};

// The real tallyd on its defaults, with its config, socket and state in a temp dir of its own, and its segments on
// a tmpfs as /run is (/dev/shm): removed after.
struct Agent {
  std::filesystem::path dir, runtime;
  std::unique_ptr<Child> process;
  Agent() {
    char tmpl[] = "/tmp/tally-cost-XXXXXX";
    dir = ::mkdtemp(tmpl);
    char runtime_tmpl[] = "/dev/shm/tally-cost-XXXXXX";
    runtime = ::mkdtemp(runtime_tmpl);
    {
      std::ofstream config(dir / "tally.toml");
      config << fmt::format(
          "[agent]\nlog_level = \"warn\"\nnode_id = \"bench\"\nstate_dir = \"{0}/state\"\n"
          "[feed]\nbind = [\"tcp://127.0.0.1:*\"]\n"
          "[probes]\npin_dir = \"\"\n"
          "[metering]\nsocket = \"{0}/tally.sock\"\nruntime_dir = \"{1}\"\n",
          dir.string(), runtime.string());
    }
    process = std::make_unique<Child>(std::vector<std::string>{TALLYD_PATH, "--config", (dir / "tally.toml").string()});
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (!std::filesystem::exists(dir / "tally.sock") && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);  // a benchmark, not a test: waits for the agent to listen, bounded
    }
    ::setenv("TALLY_SOCKET", (dir / "tally.sock").c_str(), 1);
  }
  ~Agent() {
    process.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    std::filesystem::remove_all(runtime, ec);
  }
};

Measured measure(int clients, int label_sets) {
  Measured result;
  Agent agent;
  std::unique_ptr<Child> idle;
  if (clients > 0) {
    idle = std::make_unique<Child>(
        std::vector<std::string>{IDLE_CLIENTS_PATH, std::to_string(clients), std::to_string(label_sets)});
    if (!idle->wait_for("ready", 120s)) throw std::runtime_error("idle clients never got ready");
  }
  std::this_thread::sleep_for(6s);  // past the first drains, reports, a snapshot and a checkpoint
  const std::uint64_t before = cpu_ns(agent.process->pid);
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(g_window_s));
  const std::uint64_t after = cpu_ns(agent.process->pid);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.cpu_percent = static_cast<double>(after - before) / 1e9 / elapsed * 100.0;
  result.rss_mib = static_cast<double>(rss_bytes(agent.process->pid)) / (1024.0 * 1024.0);
  return result;
}

void BM_AgentCost(benchmark::State& state) {
  const int clients = static_cast<int>(state.range(0));
  Measured m;
  for (auto _ : state) {
    m = measure(clients, 16);
    state.SetIterationTime(g_window_s);
  }
  state.counters["cpu_percent"] = m.cpu_percent;
  state.counters["rss_mib"] = m.rss_mib;
}
BENCHMARK(BM_AgentCost)->ArgName("clients")->Arg(0)->Arg(400)->Iterations(1)->UseManualTime()->Unit(benchmark::kSecond);

// A burst: N client processes opened at once (bench/burst_clients.cpp), against the real agent; the baseline is the
// same N processes waking with no tally at all, on the same machine in the same run.
void run_burst(benchmark::State& state, bool with_client) {
  const int clients = static_cast<int>(state.range(0));
  std::optional<Agent> agent;
  if (with_client) agent.emplace();
  std::vector<std::string> argv{BURST_CLIENTS_PATH, std::to_string(clients)};
  if (!with_client) argv.push_back("--no-client");
  for (auto _ : state) {
    Child burst(argv);
    std::string line;
    if (!burst.read_line(line, 120s)) throw std::runtime_error("burst_clients said nothing");
    std::size_t n = 0, attached = 0;
    double median = 0, p99 = 0, all = 0;
    if (std::sscanf(line.c_str(), "clients=%zu attached=%zu median_ms=%lf p99_ms=%lf all_ms=%lf", &n, &attached,
                    &median, &p99, &all) != 5) {
      throw std::runtime_error("burst_clients: " + line);
    }
    state.SetIterationTime(all / 1e3);
    state.counters["attached"] = static_cast<double>(attached);
    state.counters["median_ms"] = median;
    state.counters["p99_ms"] = p99;
    state.counters["all_ms"] = all;
  }
}
void BM_RegistrationBurst(benchmark::State& state) { run_burst(state, true); }
void BM_WakeBurst(benchmark::State& state) { run_burst(state, false); }
BENCHMARK(BM_WakeBurst)->ArgName("clients")->Arg(1000)->Iterations(1)->Repetitions(3)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RegistrationBurst)->ArgName("clients")->Arg(1000)->Iterations(1)->Repetitions(3)->UseManualTime()->Unit(benchmark::kMillisecond);

// Prints medians against the targets.
class Summary : public tally::bench::MedianReporter {
 public:
  void Finalize() override {
    MedianReporter::Finalize();
    std::printf("\nagent cost while its clients sit idle (window %.0f s)\n", g_window_s);
    const tally::bench::Median* idle = find("BM_AgentCost/clients:0/");
    const tally::bench::Median* busy = find("BM_AgentCost/clients:400/");
    if (idle != nullptr) {
      std::printf("  no client:                  %.3f %% of a core (target < 0.1 %%), %.1f MiB\n",
                  idle->counters.at("cpu_percent"), idle->counters.at("rss_mib"));
    }
    if (busy != nullptr) {
      std::printf("  400 clients x 16 label sets: %.3f %% of a core (target < 0.5 %%), %.1f MiB (target < %.0f MiB)",
                  busy->counters.at("cpu_percent"), busy->counters.at("rss_mib"), 64.0 + 400 * 0.25);
      if (idle != nullptr && idle->counters.at("cpu_percent") > 0) {
        std::printf(", %.1fx the idle agent", busy->counters.at("cpu_percent") / idle->counters.at("cpu_percent"));
      }
      std::printf("\n");
    }
    const tally::bench::Median* wake = find("BM_WakeBurst/clients:1000/");
    const tally::bench::Median* burst = find("BM_RegistrationBurst/clients:1000/");
    if (burst != nullptr) {
      std::printf("\n1,000 clients opened at once: %.0f attached, all within %.0f ms (median client %.0f ms, p99 %.0f ms;"
                  " target: all within 1,000 ms)",
                  burst->counters.at("attached"), burst->counters.at("all_ms"), burst->counters.at("median_ms"),
                  burst->counters.at("p99_ms"));
      if (wake != nullptr && wake->counters.at("all_ms") > 0) {
        std::printf(", %.1fx waking 1,000 processes with no tally (%.0f ms)",
                    burst->counters.at("all_ms") / wake->counters.at("all_ms"), wake->counters.at("all_ms"));
      }
      std::printf("\n");
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--window_s=", 11) == 0) g_window_s = std::stod(argv[i] + 11);
  }
  benchmark::Initialize(&argc, argv);
  Summary summary;
  benchmark::RunSpecifiedBenchmarks(&summary);
  benchmark::Shutdown();
  return 0;
}
