// Topology discovery against hwloc's own load, on the largest capture (ipa20.xml: 224 PUs, 8 NUMA nodes, ~60 PCI
// functions, 226 KB of XML):
//
//   HwlocLoad:  hwloc_topology_init + set_xml + keep all I/O objects + hwloc_topology_load + destroy. The floor:
//               discovery cannot be cheaper than the load it is built on.
//   Discovery:  collectors::discover_topology() on the same XML, NVML off: the load plus the model (NUMA nodes,
//               PCIe tree, devices, NVLink from hwloc's distances), the link matrix and the nearest NICs.
//
// After the Google Benchmark runs, main() interleaves the two for 41 rounds (so that drift on a shared machine hits
// both sides) and prints the ratio of the medians. Target (issue 5): < 2.0.

#include <benchmark/benchmark.h>
#include <hwloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "collectors/topology/topology.hpp"

namespace {

const char* const kCapture = TALLY_TOPOLOGY_LARGEST_CAPTURE;

void hwloc_load_once() {
  hwloc_topology_t topology = nullptr;
  hwloc_topology_init(&topology);
  hwloc_topology_set_io_types_filter(topology, HWLOC_TYPE_FILTER_KEEP_ALL);
  hwloc_topology_set_xml(topology, kCapture);
  if (hwloc_topology_load(topology) != 0) std::abort();
  benchmark::DoNotOptimize(hwloc_get_root_obj(topology));
  hwloc_topology_destroy(topology);
}

void discover_once() {
  tally::collectors::DiscoveryOptions options;
  options.xml_file = kCapture;
  options.use_nvml = false;
  auto topology = tally::collectors::discover_topology(options);
  if (!topology) std::abort();
  benchmark::DoNotOptimize(topology->links.size());
}

void HwlocLoad(benchmark::State& state) {
  for (auto _ : state) hwloc_load_once();
}
BENCHMARK(HwlocLoad)->Unit(benchmark::kMillisecond);

void Discovery(benchmark::State& state) {
  for (auto _ : state) discover_once();
}
BENCHMARK(Discovery)->Unit(benchmark::kMillisecond);

template <typename F>
double seconds(F&& work) {
  const auto start = std::chrono::steady_clock::now();
  work();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  constexpr int kRounds = 41;
  std::vector<double> hwloc, discovery;
  hwloc_load_once();  // warm the page cache and the allocator
  discover_once();
  for (int round = 0; round < kRounds; ++round) {
    if (round % 2 == 0) {
      hwloc.push_back(seconds(hwloc_load_once));
      discovery.push_back(seconds(discover_once));
    } else {
      discovery.push_back(seconds(discover_once));
      hwloc.push_back(seconds(hwloc_load_once));
    }
  }
  const double ratio = median(discovery) / median(hwloc);
  std::printf(
      "topology discovery / hwloc_topology_load (%s, median of %d interleaved rounds): %.3f ms / %.3f ms = "
      "%.2fx (target < 2.00x)\n",
      kCapture, kRounds, median(discovery) * 1e3, median(hwloc) * 1e3, ratio);
  return 0;
}
