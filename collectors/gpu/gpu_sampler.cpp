#include "collectors/gpu/gpu_sampler.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include "agent/base/clock.hpp"

namespace tally::collectors::gpu {
namespace {

// A sample stamped further ahead than this is from a clock that stepped: not taken (it would hide later samples).
constexpr std::uint64_t kFutureSlackUs = 1'000'000;

bool fine(nvmlReturn_t status) { return status == NVML_SUCCESS; }

// Not a failure: the GPU or driver does not have this (pre-Ampere MIG calls, energy on consumer boards...).
bool capability_less(nvmlReturn_t status) {
  return status == NVML_ERROR_NOT_SUPPORTED || status == NVML_ERROR_FUNCTION_NOT_FOUND;
}

void merge_process(std::vector<ProcessOnGpu>& out, pid_t pid, std::uint64_t memory) {
  for (auto& p : out) {
    if (p.pid == pid) {  // in two lists (compute and graphics, or an MPS client): its memory once
      p.memory_bytes = std::max(p.memory_bytes, memory);
      return;
    }
  }
  out.push_back({pid, memory, 0});
}

}  // namespace

GpuSampler::GpuSampler(const NvmlLibrary& nvml)
    : nvml_(nvml), api_(nvml.api()), started_us_(unix_time_ns() / 1000) {}

bool GpuSampler::check(nvmlReturn_t status, const char* call, GpuReading& gpu) {
  // In MIG mode other calls answer (on the MIG devices) than without: a GPU's answers are kept per mode.
  const std::string asked = gpu.uuid + (gpu.mig ? "\nmig" : "");
  if (fine(status)) {
    answered_.emplace(asked, call);
    return true;
  }
  if (status == NVML_ERROR_NOT_FOUND) return false;
  // NOT_SUPPORTED from a call that answered on this GPU before is the GPU starting to fail, not a capability less.
  if (capability_less(status) && !answered_.contains({asked, call})) return false;
  if (status == NVML_ERROR_GPU_IS_LOST) gpu.lost = true;
  gpu.failures.push_back({call, nvml_.error_string(status)});
  return false;
}

NodeReading GpuSampler::sample() {
  NodeReading reading;
  reading.monotonic_ns = monotonic_ns();
  reading.unix_us = unix_time_ns() / 1000;
  unsigned count = 0;
  if (const nvmlReturn_t status = api_.nvmlDeviceGetCount_v2(&count); !fine(status)) {
    reading.failures.push_back({"nvmlDeviceGetCount_v2", nvml_.error_string(status)});
    return reading;
  }
  reading.gpus.reserve(count);
  for (unsigned index = 0; index < count; ++index) {
    GpuReading& gpu = reading.gpus.emplace_back();
    gpu.index = index;
    gpu.uuid = "nvml-index:" + std::to_string(index);
    nvmlDevice_t device = nullptr;
    if (!check(api_.nvmlDeviceGetHandleByIndex_v2(index, &device), "nvmlDeviceGetHandleByIndex_v2", gpu)) continue;
    read_gpu(device, gpu, reading.unix_us);
  }
  return reading;
}

void GpuSampler::read_gpu(nvmlDevice_t device, GpuReading& gpu, std::uint64_t now_us) {
  if (api_.nvmlDeviceGetUUID != nullptr) {
    std::array<char, NVML_DEVICE_UUID_V2_BUFFER_SIZE> uuid{};
    if (check(api_.nvmlDeviceGetUUID(device, uuid.data(), uuid.size()), "nvmlDeviceGetUUID", gpu) && uuid[0] != 0) {
      gpu.uuid.assign(uuid.data(), strnlen(uuid.data(), uuid.size()));
      known_uuids_[gpu.index] = gpu.uuid;
    } else if (auto known = known_uuids_.find(gpu.index); known != known_uuids_.end()) {
      gpu.uuid = known->second;
    }
  }
  if (gpu.lost) return;
  if (api_.nvmlDeviceGetName != nullptr) {
    std::array<char, NVML_DEVICE_NAME_V2_BUFFER_SIZE> name{};
    if (check(api_.nvmlDeviceGetName(device, name.data(), name.size()), "nvmlDeviceGetName", gpu)) {
      gpu.name.assign(name.data(), strnlen(name.data(), name.size()));
    }
  }
  nvmlPciInfo_t pci{};
  if (check(api_.nvmlDeviceGetPciInfo_v3(device, &pci), "nvmlDeviceGetPciInfo_v3", gpu)) {
    gpu.bus_id.assign(pci.busId, strnlen(pci.busId, sizeof pci.busId));
  }
  if (gpu.lost) return;
  if (api_.nvmlDeviceGetMigMode != nullptr) {
    unsigned current = 0, pending = 0;
    if (check(api_.nvmlDeviceGetMigMode(device, &current, &pending), "nvmlDeviceGetMigMode", gpu)) {
      gpu.mig = current == NVML_DEVICE_MIG_ENABLE;
    }
  }
  if (api_.nvmlDeviceGetMemoryInfo != nullptr) {
    nvmlMemory_t memory{};
    if (check(api_.nvmlDeviceGetMemoryInfo(device, &memory), "nvmlDeviceGetMemoryInfo", gpu)) {
      gpu.memory_total = memory.total;
      gpu.memory_used = memory.used;
    }
  }
  if (api_.nvmlDeviceGetTotalEnergyConsumption != nullptr) {
    unsigned long long energy = 0;
    if (check(api_.nvmlDeviceGetTotalEnergyConsumption(device, &energy), "nvmlDeviceGetTotalEnergyConsumption",
              gpu)) {
      gpu.energy_mj = energy;
    }
  }
  if (api_.nvmlDeviceGetPowerUsage != nullptr) {
    unsigned power = 0;
    if (check(api_.nvmlDeviceGetPowerUsage(device, &power), "nvmlDeviceGetPowerUsage", gpu)) gpu.power_mw = power;
  }
  if (gpu.lost) return;
  if (gpu.mig) {  // NVML has neither device nor per-process utilization here: processes per slice
    read_slices(device, gpu);
    return;
  }
  if (api_.nvmlDeviceGetUtilizationRates != nullptr) {
    nvmlUtilization_t utilization{};
    if (check(api_.nvmlDeviceGetUtilizationRates(device, &utilization), "nvmlDeviceGetUtilizationRates", gpu)) {
      gpu.utilization_percent = std::min(utilization.gpu, 100u);
    }
  }
  gpu.processes = read_processes(device, gpu);
  read_accounting(device, gpu);
  read_samples(device, gpu, now_us);
}

void GpuSampler::read_accounting(nvmlDevice_t device, GpuReading& gpu) {
  if (api_.nvmlDeviceGetAccountingMode == nullptr || api_.nvmlDeviceGetAccountingStats == nullptr) return;
  nvmlEnableState_t mode = NVML_FEATURE_DISABLED;
  if (!check(api_.nvmlDeviceGetAccountingMode(device, &mode), "nvmlDeviceGetAccountingMode", gpu) ||
      mode != NVML_FEATURE_ENABLED) {
    return;
  }
  for (ProcessOnGpu& p : gpu.processes) {
    nvmlAccountingStats_t stats{};
    // NOT_FOUND: the driver has no record of it (started before accounting was turned on, or its buffer rolled).
    if (check(api_.nvmlDeviceGetAccountingStats(device, static_cast<unsigned>(p.pid), &stats),
              "nvmlDeviceGetAccountingStats", gpu)) {
      p.peak_memory_bytes = stats.maxMemoryUsage;
    }
  }
}

void GpuSampler::read_slices(nvmlDevice_t device, GpuReading& gpu) {
  if (api_.nvmlDeviceGetMaxMigDeviceCount == nullptr || api_.nvmlDeviceGetMigDeviceHandleByIndex == nullptr) return;
  unsigned max = 0;
  if (!check(api_.nvmlDeviceGetMaxMigDeviceCount(device, &max), "nvmlDeviceGetMaxMigDeviceCount", gpu)) return;
  for (unsigned i = 0; i < max && !gpu.lost; ++i) {
    nvmlDevice_t mig = nullptr;
    const nvmlReturn_t status = api_.nvmlDeviceGetMigDeviceHandleByIndex(device, i, &mig);
    if (status == NVML_ERROR_NOT_FOUND || status == NVML_ERROR_INVALID_ARGUMENT) continue;  // no slice there
    if (!check(status, "nvmlDeviceGetMigDeviceHandleByIndex", gpu)) continue;
    MigSlice& slice = gpu.slices.emplace_back();
    if (api_.nvmlDeviceGetUUID != nullptr) {
      std::array<char, NVML_DEVICE_UUID_V2_BUFFER_SIZE> uuid{};
      if (check(api_.nvmlDeviceGetUUID(mig, uuid.data(), uuid.size()), "nvmlDeviceGetUUID", gpu)) {
        slice.uuid.assign(uuid.data(), strnlen(uuid.data(), uuid.size()));
      }
    }
    if (slice.uuid.empty()) slice.uuid = gpu.uuid + "/mig/" + std::to_string(i);
    if (api_.nvmlDeviceGetGpuInstanceId != nullptr) {
      check(api_.nvmlDeviceGetGpuInstanceId(mig, &slice.gpu_instance_id), "nvmlDeviceGetGpuInstanceId", gpu);
    }
    if (api_.nvmlDeviceGetComputeInstanceId != nullptr) {
      check(api_.nvmlDeviceGetComputeInstanceId(mig, &slice.compute_instance_id), "nvmlDeviceGetComputeInstanceId",
            gpu);
    }
    if (api_.nvmlDeviceGetMemoryInfo != nullptr) {
      nvmlMemory_t memory{};
      if (check(api_.nvmlDeviceGetMemoryInfo(mig, &memory), "nvmlDeviceGetMemoryInfo", gpu)) {
        slice.memory_total = memory.total;
      }
    }
    slice.processes = read_processes(mig, gpu);
  }
}

void GpuSampler::read_samples(nvmlDevice_t device, GpuReading& gpu, std::uint64_t now_us) {
  if (api_.nvmlDeviceGetProcessUtilization == nullptr) return;
  auto [it, fresh] = last_seen_us_.try_emplace(gpu.uuid, started_us_);
  std::uint64_t& last_seen = it->second;
  if (now_us + kFutureSlackUs < last_seen) {  // the wall clock went back: start again from now
    gpu.clock_stepped = true;
    last_seen = now_us;
  }
  gpu.last_sample_us = last_seen;
  std::vector<nvmlProcessUtilizationSample_t> buffer(std::max<std::size_t>(gpu.processes.size(), 8) * 4);
  for (int attempt = 0; attempt < 4; ++attempt) {
    unsigned count = static_cast<unsigned>(buffer.size());
    const nvmlReturn_t status = api_.nvmlDeviceGetProcessUtilization(device, buffer.data(), &count, last_seen);
    if (status == NVML_ERROR_NOT_FOUND) return;  // nothing new since last_seen
    if (status == NVML_ERROR_INSUFFICIENT_SIZE) {
      buffer.resize(std::max<std::size_t>(count, buffer.size() * 2));
      continue;
    }
    if (!check(status, "nvmlDeviceGetProcessUtilization", gpu)) return;
    count = std::min<unsigned>(count, static_cast<unsigned>(buffer.size()));
    std::uint64_t newest = last_seen;
    for (unsigned i = 0; i < count; ++i) {
      const nvmlProcessUtilizationSample_t& s = buffer[i];
      if (s.timeStamp <= last_seen) continue;  // a driver that ignores lastSeenTimeStamp: never twice
      if (s.timeStamp > now_us + kFutureSlackUs) {
        ++gpu.future_samples;
        continue;
      }
      gpu.samples.push_back({static_cast<pid_t>(s.pid), s.timeStamp, std::min(s.smUtil, 100u)});
      newest = std::max(newest, static_cast<std::uint64_t>(s.timeStamp));
    }
    last_seen = newest;
    gpu.last_sample_us = last_seen;
    std::stable_sort(gpu.samples.begin(), gpu.samples.end(),
                     [](const auto& a, const auto& b) { return a.timestamp_us < b.timestamp_us; });
    return;
  }
  gpu.failures.push_back({"nvmlDeviceGetProcessUtilization", "the sample count kept growing"});
}

std::vector<ProcessOnGpu> GpuSampler::read_processes(nvmlDevice_t device, GpuReading& gpu) {
  std::vector<ProcessOnGpu> out;
  if (listing_ == ProcessListing::unknown || listing_ == ProcessListing::detail_list) {
    if (api_.nvmlDeviceGetRunningProcessDetailList != nullptr &&
        read_detail_list(device, NVML_PROCESS_MODE_COMPUTE, out, gpu)) {
      listing_ = ProcessListing::detail_list;
      read_detail_list(device, NVML_PROCESS_MODE_GRAPHICS, out, gpu);
      read_detail_list(device, NVML_PROCESS_MODE_MPS, out, gpu);
      return out;
    }
    if (listing_ == ProcessListing::detail_list) return out;  // it worked before: this device failed, recorded
  }
  if (api_.nvmlDeviceGetComputeRunningProcesses_v3 != nullptr) {
    read_v3(api_.nvmlDeviceGetComputeRunningProcesses_v3, "nvmlDeviceGetComputeRunningProcesses_v3", device, out, gpu);
  }
  if (api_.nvmlDeviceGetGraphicsRunningProcesses_v3 != nullptr) {
    read_v3(api_.nvmlDeviceGetGraphicsRunningProcesses_v3, "nvmlDeviceGetGraphicsRunningProcesses_v3", device, out,
            gpu);
  }
  if (api_.nvmlDeviceGetMPSComputeRunningProcesses_v3 != nullptr) {
    read_v3(api_.nvmlDeviceGetMPSComputeRunningProcesses_v3, "nvmlDeviceGetMPSComputeRunningProcesses_v3", device,
            out, gpu);
  }
  return out;
}

bool GpuSampler::read_detail_list(nvmlDevice_t device, unsigned mode, std::vector<ProcessOnGpu>& out,
                                  GpuReading& gpu) {
  std::vector<nvmlProcessDetail_v1_t> entries(16);
  for (int attempt = 0; attempt < 4; ++attempt) {
    nvmlProcessDetailList_t list{};
    list.version = nvmlProcessDetailList_v1;
    list.mode = mode;
    list.numProcArrayEntries = static_cast<unsigned>(entries.size());
    list.procArray = entries.data();
    const nvmlReturn_t status = api_.nvmlDeviceGetRunningProcessDetailList(device, &list);
    if (status == NVML_ERROR_INSUFFICIENT_SIZE) {
      entries.resize(std::max<std::size_t>(list.numProcArrayEntries, entries.size() * 2));
      continue;
    }
    if (status == NVML_ERROR_ARGUMENT_VERSION_MISMATCH || capability_less(status)) return false;
    if (!check(status, "nvmlDeviceGetRunningProcessDetailList", gpu)) return false;
    const unsigned n = std::min<unsigned>(list.numProcArrayEntries, static_cast<unsigned>(entries.size()));
    for (unsigned i = 0; i < n; ++i) merge_process(out, static_cast<pid_t>(entries[i].pid), entries[i].usedGpuMemory);
    return true;
  }
  return false;
}

// The _v3 calls take an array of nvmlProcessInfo_t (24 bytes), but drivers 535.43.02 to 535.86.05 wrote 32-byte
// entries into it. Which one this driver writes is seen, not assumed from its version: the buffer is filled with a
// marker first, and a 24-byte writer leaves the bytes past its last entry untouched where a 32-byte writer does not.
void GpuSampler::read_v3(decltype(&::nvmlDeviceGetComputeRunningProcesses_v3) call, const char* name,
                         nvmlDevice_t device, std::vector<ProcessOnGpu>& out, GpuReading& gpu) {
  constexpr unsigned char kMarker = 0xA5;
  std::vector<unsigned char> bytes(32 * 16);
  for (int attempt = 0; attempt < 4; ++attempt) {
    const unsigned capacity = static_cast<unsigned>(bytes.size() / sizeof(nvmlProcessInfo_v3_535_t));
    std::memset(bytes.data(), kMarker, bytes.size());
    unsigned count = capacity;
    const nvmlReturn_t status = call(device, &count, reinterpret_cast<nvmlProcessInfo_t*>(bytes.data()));
    if (status == NVML_ERROR_INSUFFICIENT_SIZE) {
      bytes.resize(std::max<std::size_t>(count, capacity * 2) * sizeof(nvmlProcessInfo_v3_535_t));
      continue;
    }
    if (!check(status, name, gpu)) return;
    count = std::min(count, capacity);
    if (count == 0) return;
    // The capacity asked for is counted in 32-byte entries, so either writer fits.
    if (listing_ != ProcessListing::v3_32) {
      const std::size_t end24 = count * sizeof(nvmlProcessInfo_t);
      const std::size_t end32 = count * sizeof(nvmlProcessInfo_v3_535_t);
      const bool wider = std::any_of(bytes.begin() + static_cast<std::ptrdiff_t>(end24),
                                     bytes.begin() + static_cast<std::ptrdiff_t>(end32),
                                     [](unsigned char b) { return b != kMarker; });
      listing_ = wider ? ProcessListing::v3_32 : ProcessListing::v3_24;
    }
    const std::size_t stride = listing_ == ProcessListing::v3_32 ? sizeof(nvmlProcessInfo_v3_535_t)
                                                                 : sizeof(nvmlProcessInfo_t);
    for (unsigned i = 0; i < count; ++i) {
      nvmlProcessInfo_t entry;
      std::memcpy(&entry, bytes.data() + i * stride, sizeof entry);
      merge_process(out, static_cast<pid_t>(entry.pid), entry.usedGpuMemory);
    }
    return;
  }
  gpu.failures.push_back({name, "the process count kept growing"});
}

}  // namespace tally::collectors::gpu
