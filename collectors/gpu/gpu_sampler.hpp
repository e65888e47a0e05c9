#pragma once
// One pass over NVML: every device it reports, read into a NodeReading. Runs on the GPU source's own thread, never
// on the event loop (an NVML call can block for seconds when a GPU falls off the bus).
//
// Every NVML symbol beyond the loader's required ones is optional: a missing one, or NOT_SUPPORTED, is a
// capability less (the field stays empty), not a failure. Per-process samples are asked for with the newest
// timestamp already taken for that GPU, so a sample is read once; the first pass asks for samples newer than the
// sampler's start, so samples an earlier agent instance took are not taken again, or (resume_samples) after the
// newest one the previous agent took, so none is skipped across a restart either.

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "collectors/gpu/gpu_reading.hpp"
#include "collectors/nvml/nvml.hpp"

namespace tally::collectors::gpu {

class GpuSampler {
 public:
  explicit GpuSampler(const NvmlLibrary& nvml);
  NodeReading sample();
  // After a restart: the newest sample the previous agent took on that GPU. Samples after it that the driver still
  // holds are taken, none before it (instead of starting from this sampler's start).
  void resume_samples(const std::string& uuid, std::uint64_t last_seen_us) { last_seen_us_[uuid] = last_seen_us; }

  // How the running-process lists are read: the versioned detail list (R550+), else the _v3 calls with the entry
  // size each call is seen to write (24 bytes, or 32 on the R535 drivers that wrote a larger struct).
  enum class ProcessListing { unknown, detail_list, v3_24, v3_32 };
  ProcessListing process_listing() const { return listing_; }

 private:
  void read_gpu(nvmlDevice_t device, GpuReading& gpu, std::uint64_t now_us);
  void read_slices(nvmlDevice_t device, GpuReading& gpu);
  void read_samples(nvmlDevice_t device, GpuReading& gpu, std::uint64_t now_us);
  void read_accounting(nvmlDevice_t device, GpuReading& gpu);
  // The processes on `device` (a GPU or a MIG device): compute, graphics and MPS clients, one entry per pid.
  std::vector<ProcessOnGpu> read_processes(nvmlDevice_t device, GpuReading& gpu);
  bool read_detail_list(nvmlDevice_t device, unsigned mode, std::vector<ProcessOnGpu>& out, GpuReading& gpu);
  void read_v3(decltype(&::nvmlDeviceGetComputeRunningProcesses_v3) call, const char* name, nvmlDevice_t device,
               std::vector<ProcessOnGpu>& out, GpuReading& gpu);
  // Records a failed call; true when `status` is success. NOT_FOUND is not a failure, nor is NOT_SUPPORTED from a
  // call that never answered on that GPU (a capability it lacks).
  bool check(nvmlReturn_t status, const char* call, GpuReading& gpu);

  const NvmlLibrary& nvml_;
  const NvmlFunctions& api_;
  std::uint64_t started_us_;
  std::map<std::string, std::uint64_t> last_seen_us_;  // per GPU uuid: the newest sample timestamp taken
  // Per NVML index, the uuid last read: a GPU that fell off the bus may not say it any more, and is still that GPU.
  std::map<std::uint32_t, std::string> known_uuids_;
  std::set<std::pair<std::string, std::string>> answered_;  // (GPU uuid and MIG mode, call) that succeeded once
  ProcessListing listing_ = ProcessListing::unknown;
};

}  // namespace tally::collectors::gpu
