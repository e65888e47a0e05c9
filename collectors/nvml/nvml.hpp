#pragma once
// NVML loaded with dlopen at run time into one function table: tally never links libnvidia-ml, so it starts on
// nodes without an NVIDIA driver, and tests load a fake library (tests/fake_nvml) through this same path.
// Shared by topology discovery and GPU accounting.
//
// Required symbols (init, shutdown, device count, handle, PCI info, error strings) missing: open() fails naming
// the symbol. Optional ones missing: their table entry stays null, `missing_optional()` names them, and callers
// skip that feature with one warning.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "collectors/nvml/nvml_api.h"
#include "agent/base/result.hpp"

namespace tally::collectors {

// Who uses an optional symbol: a missing one is reported only to the feature that needed it (a pre-R550 driver
// lacks nvmlDeviceGetRunningProcessDetailList, which topology never asks for). A bit set: kNvmlBoth stays
// topology|accounting; MIG partitioning (collectors/mig) is a third user of its own.
enum NvmlUse : unsigned {
  kNvmlRequired = 0,
  kNvmlTopology = 1,
  kNvmlAccounting = 2,
  kNvmlBoth = 3,
  kNvmlPartitioning = 4,
};

// X(name, use)
#define TALLY_NVML_FUNCTIONS(X)                                                   \
  X(nvmlInit_v2, kNvmlRequired)                                                   \
  X(nvmlShutdown, kNvmlRequired)                                                  \
  X(nvmlErrorString, kNvmlRequired)                                               \
  X(nvmlDeviceGetCount_v2, kNvmlRequired)                                         \
  X(nvmlDeviceGetHandleByIndex_v2, kNvmlRequired)                                 \
  X(nvmlDeviceGetPciInfo_v3, kNvmlRequired)                                       \
  X(nvmlSystemGetDriverVersion, kNvmlBoth)                                        \
  X(nvmlDeviceGetUUID, kNvmlBoth)                                                 \
  X(nvmlDeviceGetName, kNvmlBoth)                                                 \
  X(nvmlDeviceGetMemoryInfo, kNvmlBoth)                                           \
  X(nvmlDeviceGetMigMode, kNvmlBoth | kNvmlPartitioning)                          \
  X(nvmlDeviceGetMaxMigDeviceCount, kNvmlBoth)                                    \
  X(nvmlDeviceGetMigDeviceHandleByIndex, kNvmlBoth)                               \
  X(nvmlDeviceGetGpuInstanceId, kNvmlBoth)                                        \
  X(nvmlDeviceGetComputeInstanceId, kNvmlBoth)                                    \
  X(nvmlDeviceGetNvLinkState, kNvmlTopology)                                      \
  X(nvmlDeviceGetNvLinkRemotePciInfo_v2, kNvmlTopology)                           \
  X(nvmlDeviceGetNvLinkRemoteDeviceType, kNvmlTopology)                           \
  X(nvmlDeviceGetP2PStatus, kNvmlTopology)                                        \
  X(nvmlDeviceGetComputeRunningProcesses_v3, kNvmlAccounting | kNvmlPartitioning) \
  X(nvmlDeviceGetGraphicsRunningProcesses_v3, kNvmlAccounting)                    \
  X(nvmlDeviceGetMPSComputeRunningProcesses_v3, kNvmlAccounting)                  \
  X(nvmlDeviceGetRunningProcessDetailList, kNvmlAccounting | kNvmlPartitioning)   \
  X(nvmlDeviceGetProcessUtilization, kNvmlAccounting)                             \
  X(nvmlDeviceGetUtilizationRates, kNvmlAccounting)                               \
  X(nvmlDeviceGetTotalEnergyConsumption, kNvmlAccounting)                         \
  X(nvmlDeviceGetPowerUsage, kNvmlAccounting)                                     \
  X(nvmlDeviceGetAccountingMode, kNvmlAccounting)                                 \
  X(nvmlDeviceGetAccountingStats, kNvmlAccounting)                                \
  X(nvmlDeviceGetMinorNumber, kNvmlPartitioning)                                  \
  X(nvmlDeviceSetMigMode, kNvmlPartitioning)                                      \
  X(nvmlDeviceGetGpuInstanceProfileInfo, kNvmlPartitioning)                       \
  X(nvmlDeviceGetGpuInstanceProfileInfoV, kNvmlPartitioning)                      \
  X(nvmlDeviceGetGpuInstancePossiblePlacements_v2, kNvmlPartitioning)             \
  X(nvmlDeviceGetGpuInstanceRemainingCapacity, kNvmlPartitioning)                 \
  X(nvmlDeviceCreateGpuInstance, kNvmlPartitioning)                               \
  X(nvmlDeviceCreateGpuInstanceWithPlacement, kNvmlPartitioning)                  \
  X(nvmlGpuInstanceDestroy, kNvmlPartitioning)                                    \
  X(nvmlDeviceGetGpuInstances, kNvmlPartitioning)                                 \
  X(nvmlDeviceGetGpuInstanceById, kNvmlPartitioning)                              \
  X(nvmlGpuInstanceGetInfo, kNvmlPartitioning)                                    \
  X(nvmlGpuInstanceGetComputeInstanceProfileInfo, kNvmlPartitioning)              \
  X(nvmlGpuInstanceCreateComputeInstance, kNvmlPartitioning)                      \
  X(nvmlComputeInstanceDestroy, kNvmlPartitioning)                                \
  X(nvmlGpuInstanceGetComputeInstances, kNvmlPartitioning)                        \
  X(nvmlComputeInstanceGetInfo_v2, kNvmlPartitioning)

struct NvmlFunctions {
#define TALLY_NVML_MEMBER(name, use) decltype(&::name) name = nullptr;
  TALLY_NVML_FUNCTIONS(TALLY_NVML_MEMBER)
#undef TALLY_NVML_MEMBER
};

class NvmlLibrary {
 public:
  // dlopen()s `library` (a path or a soname searched like the dynamic linker does), resolves the table and calls
  // nvmlInit_v2. Errors name the library and the missing symbol or NVML's own error string.
  static Result<std::unique_ptr<NvmlLibrary>> open(const std::string& library);
  ~NvmlLibrary();  // nvmlShutdown, then dlclose
  NvmlLibrary(const NvmlLibrary&) = delete;
  NvmlLibrary& operator=(const NvmlLibrary&) = delete;

  const NvmlFunctions& api() const { return api_; }
  const std::string& path() const { return path_; }
  // The optional symbols `user` (kNvmlTopology, kNvmlAccounting or kNvmlPartitioning) would call that this library
  // lacks.
  std::vector<std::string> missing_optional(NvmlUse user) const;
  // nvmlErrorString() of `result`, e.g. "GPU is lost".
  std::string error_string(nvmlReturn_t result) const;
  // nvmlSystemGetDriverVersion(), e.g. "535.104.05"; empty when unavailable.
  const std::string& driver_version() const { return driver_version_; }

 private:
  NvmlLibrary(void* handle, std::string path) : handle_(handle), path_(std::move(path)) {}
  void* handle_;
  std::string path_;
  NvmlFunctions api_;
  std::vector<std::pair<std::string, NvmlUse>> missing_optional_;
  std::string driver_version_;
};

}  // namespace tally::collectors
