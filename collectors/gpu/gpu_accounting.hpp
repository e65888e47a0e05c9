#pragma once
// Successive NodeReadings turned into usage per workload and GPU, conserved: on every GPU and in every pass, the
// workloads' shares plus the GPU's idle and unattributed buckets equal what the device itself counted.
// docs/gpu-accounting.md explains the method; in short:
//
//  - SM time: each per-process sample covers the driver's sample period ending at its timestamp, or the time since
//    that process's previous sample if shorter, so no stretch of time is counted twice or skipped across passes.
//    SM ns = smUtil% x that time. The samples of one period (one timestamp) are scaled down together when they sum
//    past the device's utilization (MPS, concurrent kernels): workloads never get more SM time than the device was
//    busy, and what was scaled off is counted on the GPU.
//  - Energy: the device's counter difference (a counter that went down is a driver reload: what it counted since
//    then is the difference). Busy energy = energy x the device's utilization, shared by SM time; the rest is idle;
//    busy energy that no sample explains is unattributed. Integer arithmetic throughout: nothing is lost to rounding
//    (remainders go to the unattributed bucket).
//  - MIG: NVML has no utilization there. A slice's share of the GPU (its memory over the GPU's) is what its holders
//    are allocated (apportioned) and the energy they are charged (estimated); energy of empty slices is idle.
//  - Allocated time: on a whole GPU, a workload that holds memory on it is allocated the pass's elapsed time.
//
// Pure logic: no NVML, no threads. Who a pid belongs to is the caller's `resolve` (empty: the pid is gone), asked
// for each process and sample: the caller keeps its answers for the pass (GpuPasses does).

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "collectors/gpu/gpu_reading.hpp"

namespace tally::collectors::gpu {

// One workload on one GPU over one pass.
struct HolderUsage {
  std::string workload;
  std::uint64_t sm_ns = 0;         // measured (scaled where samples summed past the device)
  std::uint64_t allocated_ns = 0;  // apportioned: the share of the GPU it held x the pass's time
  std::uint64_t energy_mj = 0;     // apportioned (whole GPU, by SM time) or estimated (MIG, by slice share)
  std::uint64_t memory_bytes = 0;  // held now
  // The most one of its processes held in its life, where the driver keeps accounting stats (0: not known).
  std::uint64_t peak_memory_bytes = 0;
  bool holds_memory = false;
};

struct GpuUsage {
  std::uint32_t index = 0;
  std::string uuid, name, bus_id;
  bool mig = false;
  bool lost = false;
  std::uint64_t elapsed_ns = 0;  // since the previous pass that read this GPU (0 the first time)
  std::uint64_t busy_ns = 0;     // device utilization x elapsed (whole GPUs with utilization)
  std::uint64_t energy_mj = 0;   // the device's counter difference
  std::optional<std::uint64_t> energy_counter_mj;  // the counter as read (a cursor for the next agent)
  std::uint64_t last_sample_us = 0;                // the newest utilization sample taken (a cursor too)
  bool energy_reset = false;     // the counter went down (driver reloaded)
  std::uint64_t idle_energy_mj = 0;          // energy x (1 - utilization); on MIG, the energy of empty slices
  // Busy energy no workload's sample explains, rounding remainders, and energy spent while nobody watched (the
  // agent down, the GPU lost).
  std::uint64_t unattributed_energy_mj = 0;
  std::uint64_t unattributed_sm_ns = 0;      // SM time of processes whose workload is unknown (gone)
  std::uint64_t sm_scaled_off_ns = 0;        // what the samples claimed past the device's utilization
  std::uint64_t memory_total = 0, memory_used = 0;
  std::optional<std::uint32_t> power_mw, utilization_percent;
  std::uint32_t future_samples = 0;
  std::vector<GpuFailure> failures;
  std::vector<HolderUsage> holders;  // by workload, sorted
  // Idle tracking: under the threshold for the window (with enough samples), ended by a few busy samples in a row.
  bool idle = false;
  bool idle_changed = false;               // started or ended this pass
  std::vector<std::string> idle_holders;   // workloads holding memory with no SM time for the window
  bool idle_holders_changed = false;
};

struct IdleOptions {
  std::uint32_t threshold_percent = 10;
  std::uint64_t window_ns = 2ull * 3600 * 1'000'000'000;
  std::uint32_t min_samples = 10;  // readings needed within the window
  std::uint32_t busy_to_end = 3;   // readings at or over the threshold in a row that end it (hysteresis)
};

class GpuAccounting {
 public:
  using Resolve = std::function<std::string(pid_t)>;
  explicit GpuAccounting(IdleOptions idle = {}) : idle_(idle) {}
  std::vector<GpuUsage> account(const NodeReading& reading, const Resolve& resolve);
  // After a restart: the GPU's energy counter as last read by the previous agent. The energy since then was not
  // observed: the next pass counts it in full, as unattributed (no workload is billed for what nobody saw).
  void resume_energy(const std::string& uuid, std::uint64_t energy_mj);

  static constexpr std::uint64_t kDefaultPeriodUs = 1'000'000;  // before a shorter one is seen

 private:
  struct GpuState {
    std::int64_t last_monotonic_ns = 0;
    std::optional<std::uint64_t> last_energy_mj;
    bool energy_unobserved = false;  // the next difference spans time nobody watched (a restart, a lost GPU)
    std::uint64_t period_us = kDefaultPeriodUs;  // the driver's sample period: the shortest gap seen
    std::map<pid_t, std::uint64_t> last_sample_us;
    // idle
    std::int64_t below_since_ns = -1;
    std::uint32_t below_readings = 0, busy_in_row = 0;
    bool idle = false;
    std::map<std::string, std::int64_t> unused_since_ns;  // holders with no SM time, since when
    std::set<std::string> idle_holders;
  };
  void account_whole(const GpuReading& gpu, GpuState& state, GpuUsage& usage, const Resolve& resolve);
  void account_mig(const GpuReading& gpu, GpuUsage& usage, const Resolve& resolve);
  void track_idle(const GpuReading& gpu, std::int64_t now_ns, GpuState& state, GpuUsage& usage);

  IdleOptions idle_;
  std::map<std::string, GpuState> gpus_;
};

}  // namespace tally::collectors::gpu
