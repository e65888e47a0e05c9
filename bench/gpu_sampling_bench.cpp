// GPU accounting's cost (issue 11): one pass over 8 GPUs x 64 processes each (512 real, sleeping processes), with 6
// new utilization samples per process per pass (a driver sampling every 1/6 s, read at 1 Hz), through the fake
// libnvidia-ml.so.1 loaded by the production dlopen path:
//
//   ResolveOnly:  reading each of the 512 processes' cgroup into its workload identity, once: the floor of any
//                 per-process GPU attribution (what NVML gives is a pid).
//   Pass:         GpuPasses::next(): every NVML call of a pass, the per-process samples, pid -> workload (once per
//                 pid and pass), the accounting (SM time, scaling, energy split, MIG, idle tracking).
//
// Printed last: the pass's CPU time as a share of one core at the default 1 Hz (target: under 1 %), and its ratio to
// the ResolveOnly baseline of the same run. The fake answers from memory where a real driver makes an ioctl per
// call: this measures tally's side of a pass, not the driver's.

#include <benchmark/benchmark.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "bench/median_reporter.hpp"
#include "collectors/gpu/gpu_source.hpp"

namespace {

constexpr int kGpus = 8;
constexpr int kProcessesPerGpu = 64;

std::vector<pid_t> g_children;

void start_processes() {
  for (int i = 0; i < kGpus * kProcessesPerGpu; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives the bench
      ::pause();
      ::_exit(0);
    }
    if (pid < 0) std::abort();
    g_children.push_back(pid);
  }
}

void stop_processes() {
  for (pid_t pid : g_children) ::kill(pid, SIGKILL);
  for (pid_t pid : g_children) ::waitpid(pid, nullptr, 0);
}

std::filesystem::path write_scenario() {
  nlohmann::json gpus = nlohmann::json::array();
  for (int g = 0; g < kGpus; ++g) {
    nlohmann::json processes = nlohmann::json::array();
    for (int p = 0; p < kProcessesPerGpu; ++p) {
      processes.push_back({{"pid", g_children[static_cast<std::size_t>(g * kProcessesPerGpu + p)]},
                           {"used_gpu_memory", 1ull << 30}});
    }
    gpus.push_back({{"uuid", "GPU-bench-" + std::to_string(g)},
                    {"bus_id", "00000000:" + std::to_string(10 + g) + ":00.0"},
                    {"memory_total", 80ull << 30},
                    {"utilization_gpu", 90},
                    {"energy_mj", 1'000'000},
                    {"power_mw", 400'000},
                    {"processes", processes},
                    {"synthetic_samples", {{"count", 6}, {"sm", 1}}}});
  }
  const auto path = std::filesystem::temp_directory_path() / ("tally-gpu-bench-" + std::to_string(::getpid()) + ".json");
  std::ofstream(path) << nlohmann::json{{"driver_version", "550.54.15"}, {"gpus", gpus}}.dump();
  return path;
}

std::unique_ptr<tally::collectors::NvmlLibrary> g_nvml;

void ResolveOnly(benchmark::State& state) {
  const tally::FsRoot fs;
  const tally::IdentityRules rules;
  for (auto _ : state) {
    for (pid_t pid : g_children) benchmark::DoNotOptimize(tally::identify_process(fs, pid, rules));
  }
}
BENCHMARK(ResolveOnly)->Unit(benchmark::kMicrosecond)->MeasureProcessCPUTime();

void Pass(benchmark::State& state) {
  tally::collectors::gpu::GpuPasses passes(*g_nvml, {}, tally::FsRoot{}, tally::IdentityRules{});
  passes.next();  // the baseline pass
  std::size_t holders = 0;
  for (auto _ : state) {
    const auto pass = passes.next();
    for (const auto& gpu : pass.gpus) holders += gpu.holders.size();
  }
  state.counters["holders_per_pass"] = static_cast<double>(holders) / static_cast<double>(state.iterations());
}
BENCHMARK(Pass)->Unit(benchmark::kMicrosecond)->MeasureProcessCPUTime();

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  start_processes();
  const auto scenario = write_scenario();
  ::setenv("TALLY_FAKE_NVML_SCENARIO", scenario.c_str(), 1);
  auto nvml = tally::collectors::NvmlLibrary::open(TALLY_FAKE_NVML_PATH);
  if (!nvml) {
    std::fprintf(stderr, "error: %s\n", nvml.error().message.c_str());
    stop_processes();
    return 1;
  }
  g_nvml = std::move(*nvml);
  tally::bench::MedianReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  g_nvml.reset();
  stop_processes();
  std::filesystem::remove(scenario);

  const auto* pass = reporter.find("Pass");
  const auto* resolve = reporter.find("ResolveOnly");
  if (pass != nullptr) {
    std::printf("\nGPU accounting, %d GPUs x %d processes, 6 samples per process per pass:\n", kGpus, kProcessesPerGpu);
    std::printf("  one pass: %.0f us CPU (median) = %.3f %% of a core at 1 Hz (target < 1 %%)\n", pass->cpu_ns / 1e3,
                pass->cpu_ns / 1e9 * 100.0);
    if (resolve != nullptr && resolve->cpu_ns > 0) {
      std::printf("  vs resolving the %d pids alone (%.0f us): %.2fx\n", kGpus * kProcessesPerGpu,
                  resolve->cpu_ns / 1e3, pass->cpu_ns / resolve->cpu_ns);
    }
  }
  return 0;
}
