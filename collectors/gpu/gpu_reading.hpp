#pragma once
// What one pass over NVML found on the node: every GPU NVML reports (whether or not sysfs or hwloc show it), its
// energy counter, power, utilization and memory, the processes holding memory on it (or on each of its MIG
// slices), and the per-process utilization samples newer than the last pass's. Plain data: GpuSampler fills it,
// GpuAccounting turns successive readings into usage.

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tally::collectors::gpu {

struct ProcessOnGpu {
  pid_t pid = 0;
  std::uint64_t memory_bytes = 0;  // NVML's usedGpuMemory (0 where the driver does not say)
  // Where accounting mode is on (nvmlDeviceGetAccountingStats): the most it has held in its life, which sees the
  // spikes between two passes. 0: not known.
  std::uint64_t peak_memory_bytes = 0;
};

// nvmlDeviceGetProcessUtilization: SM utilization of one process over the driver's sample period ending at
// `timestamp_us` (CLOCK_REALTIME, microseconds).
struct UtilizationSample {
  pid_t pid = 0;
  std::uint64_t timestamp_us = 0;
  std::uint32_t sm_percent = 0;
};

// One MIG device (a GPU instance's compute instance).
struct MigSlice {
  std::string uuid;
  std::uint32_t gpu_instance_id = 0;
  std::uint32_t compute_instance_id = 0;
  std::uint64_t memory_total = 0;
  std::vector<ProcessOnGpu> processes;
};

// An NVML call that failed on a GPU, e.g. {"nvmlDeviceGetTotalEnergyConsumption", "GPU is lost"}.
struct GpuFailure {
  std::string call;
  std::string error;
  bool operator==(const GpuFailure&) const = default;
};

struct GpuReading {
  std::uint32_t index = 0;
  std::string uuid;  // "GPU-..."; "nvml-index:<n>" where NVML cannot give one
  std::string name;
  std::string bus_id;
  bool mig = false;  // MIG mode on: no per-process or device utilization, processes per slice
  bool lost = false; // the GPU fell off the bus (GPU_IS_LOST): nothing else of it is read
  std::uint64_t memory_total = 0;
  std::uint64_t memory_used = 0;
  std::optional<std::uint64_t> energy_mj;            // since the driver loaded
  std::optional<std::uint32_t> power_mw;
  std::optional<std::uint32_t> utilization_percent;  // the device's, over its last sample period
  std::vector<ProcessOnGpu> processes;               // whole GPU (compute, graphics and MPS clients, by pid)
  std::vector<UtilizationSample> samples;            // newer than the previous pass's, in timestamp order
  std::uint64_t last_sample_us = 0;  // the newest sample taken so far on this GPU (a cursor for the next agent)
  std::vector<MigSlice> slices;
  std::vector<GpuFailure> failures;  // calls that failed this pass (not those the GPU does not support)
  // The wall clock went back since the last pass: sample timestamps before and after do not compare.
  bool clock_stepped = false;
  std::uint32_t future_samples = 0;  // samples stamped later than now (+1 s): not taken
};

struct NodeReading {
  std::int64_t monotonic_ns = 0;  // when the pass started
  std::uint64_t unix_us = 0;
  std::vector<GpuReading> gpus;
  std::vector<GpuFailure> failures;  // node-wide (device count)
};

}  // namespace tally::collectors::gpu
