#pragma once
// Wiring: what GPU accounting found, written into the ledger (source NVML), docs/gpu-accounting.md.
//  - A workload's numbers per GPU ("name:<uuid>") and summed ("name"), under the workload as a whole: gpu_sm_ns
//    (measured), gpu_allocated_ns (apportioned), gpu_energy_mj (apportioned on whole GPUs, estimated on MIG),
//    gpu_memory_peak_bytes (a counter that holds the running maximum), and the gauge gpu_memory_bytes, through one
//    contributor per workload and GPU ("nvml:<uuid>:<workload>") that is retired when the workload lets go.
//  - Each GPU is a workload of kind "gpu" ("gpu:<uuid>") holding the device's own figures and the buckets that
//    close the identity: sum of the workloads' gpu_energy_mj:<uuid> + gpu_idle_energy_mj + gpu_unattributed_energy_mj
//    = the GPU's gpu_energy_mj, on every report.

#include <functional>
#include <map>
#include <set>
#include <string>
#include <tuple>

#include "agent/ledger/ledger.hpp"
#include "collectors/gpu/gpu_source.hpp"

namespace tally::agent {

class GpuUsageRecorder {
 public:
  // Called when a GPU becomes idle or busy again, or its held-but-unused workloads change: where enforcement will
  // attach its actions.
  using IdleHook = std::function<void(const collectors::gpu::GpuUsage&)>;
  explicit GpuUsageRecorder(ledger::Ledger& ledger, IdleHook on_idle = {});
  void record(const collectors::gpu::GpuPass& pass);

 private:
  void record_gpu(const collectors::gpu::GpuUsage& gpu, const collectors::gpu::GpuPass& pass);
  void report_failures(const collectors::gpu::GpuUsage& gpu);
  ledger::CounterId id(const std::string& name, ledger::Kind kind, bool gauge = false);

  ledger::Ledger& ledger_;
  IdleHook on_idle_;
  std::map<std::string, std::set<std::string>> holding_;       // per GPU: workloads with a live contributor
  std::map<std::string, std::map<std::string, std::uint64_t>> memory_;  // per GPU, per workload: held now
  std::map<std::string, std::uint64_t> peak_;                   // "uuid\nworkload" and "\nworkload": the maximum seen
  std::set<std::tuple<std::string, std::string, std::string>> reported_;  // failures logged once
};

}  // namespace tally::agent
