#pragma once
// Wiring: what GPU accounting found, written into the ledger (source NVML), docs/gpu-accounting.md.
//  - A workload's numbers per GPU ("name:<uuid>") and summed ("name"), under the workload as a whole: gpu_sm_ns
//    (measured), gpu_allocated_ns (apportioned), gpu_energy_mj (apportioned on whole GPUs, estimated on MIG),
//    gpu_memory_peak_bytes (a counter that holds the running maximum), and the gauge gpu_memory_bytes, through one
//    contributor per workload and GPU ("nvml:<uuid>:<workload>") that is retired when the workload lets go.
//  - Each GPU is a workload of kind "gpu" ("gpu:<uuid>") holding the device's own figures and the buckets that
//    close the identity: sum of the workloads' gpu_energy_mj:<uuid> + gpu_idle_energy_mj + gpu_unattributed_energy_mj
//    = the GPU's gpu_energy_mj, on every report.
//  - What happens to a GPU is an event (tally.v1.Event) handed to the sink, once: it became idle or busy again, the
//    workloads holding it unused changed, an NVML call started failing. Each is also a line in the journal.

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>

#include "agent/ledger/ledger.hpp"
#include "collectors/gpu/gpu_source.hpp"
#include "tally/v1/event.pb.h"

namespace tally::agent {

class GpuUsageRecorder {
 public:
  // The feed publishes the events; enforcement will attach its actions to them (a GPU idle, held unused).
  using EventSink = std::function<void(const v1::Event&)>;
  GpuUsageRecorder(ledger::Ledger& ledger, collectors::gpu::IdleOptions idle, EventSink on_event = {});
  void record(const collectors::gpu::GpuPass& pass);
  // The workloads holding each GPU (by UUID) as of the last pass: what the budgets' preempt decides by.
  const std::map<std::string, std::set<std::string>>& holders() const { return holding_; }
  // Where the previous agent stood on each GPU, from the ledger's cursors (restored from the checkpoint): the newest
  // utilization sample it took and the energy counter it last read, for GpuSource::Options::resume.
  static std::map<std::string, std::pair<std::optional<std::uint64_t>, std::optional<std::uint64_t>>> resume_points(
      const ledger::Ledger& ledger);

 private:
  void record_gpu(const collectors::gpu::GpuUsage& gpu, const collectors::gpu::GpuPass& pass);
  void report_failures(const collectors::gpu::GpuUsage& gpu);
  void emit(const v1::Event& event);
  void report_idle(const collectors::gpu::GpuUsage& gpu, const std::set<std::string>& holders);
  ledger::CounterId id(const std::string& name, ledger::Kind kind, bool gauge = false);

  ledger::Ledger& ledger_;
  collectors::gpu::IdleOptions idle_;
  EventSink on_event_;
  std::map<std::string, std::set<std::string>> holding_;       // per GPU: workloads with a live contributor
  std::map<std::string, std::map<std::string, std::uint64_t>> memory_;  // per GPU, per workload: held now
  // "uuid\nworkload" and "\nworkload": the maximum seen, while the workload is in the ledger.
  std::map<std::string, std::uint64_t> peak_;
  std::set<std::tuple<std::string, std::string, std::string>> reported_;  // failures logged once
};

}  // namespace tally::agent
