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

// X(name, required)
#define TALLY_NVML_FUNCTIONS(X)                 \
  X(nvmlInit_v2, true)                          \
  X(nvmlShutdown, true)                         \
  X(nvmlErrorString, true)                      \
  X(nvmlDeviceGetCount_v2, true)                \
  X(nvmlDeviceGetHandleByIndex_v2, true)        \
  X(nvmlDeviceGetPciInfo_v3, true)              \
  X(nvmlSystemGetDriverVersion, false)          \
  X(nvmlDeviceGetUUID, false)                   \
  X(nvmlDeviceGetName, false)                   \
  X(nvmlDeviceGetMemoryInfo, false)             \
  X(nvmlDeviceGetMigMode, false)                \
  X(nvmlDeviceGetMaxMigDeviceCount, false)      \
  X(nvmlDeviceGetMigDeviceHandleByIndex, false) \
  X(nvmlDeviceGetGpuInstanceId, false)          \
  X(nvmlDeviceGetComputeInstanceId, false)      \
  X(nvmlDeviceGetNvLinkState, false)            \
  X(nvmlDeviceGetNvLinkRemotePciInfo_v2, false) \
  X(nvmlDeviceGetNvLinkRemoteDeviceType, false) \
  X(nvmlDeviceGetP2PStatus, false)              \
  X(nvmlDeviceGetComputeRunningProcesses_v3, false)

struct NvmlFunctions {
#define TALLY_NVML_MEMBER(name, required) decltype(&::name) name = nullptr;
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
  const std::vector<std::string>& missing_optional() const { return missing_optional_; }
  bool has(std::string_view symbol) const;
  // nvmlErrorString() of `result`, e.g. "GPU is lost".
  std::string error_string(nvmlReturn_t result) const;
  // nvmlSystemGetDriverVersion(), e.g. "535.104.05"; empty when unavailable.
  const std::string& driver_version() const { return driver_version_; }

 private:
  NvmlLibrary(void* handle, std::string path) : handle_(handle), path_(std::move(path)) {}
  void* handle_;
  std::string path_;
  NvmlFunctions api_;
  std::vector<std::string> missing_optional_;
  std::string driver_version_;
};

// Size in bytes of one entry written by nvmlDeviceGetComputeRunningProcesses_v3 for a driver version string:
// 32 for 535.43.02 through 535.86.05 (which wrote nvmlProcessInfo_v3_535_t), 24 otherwise.
std::size_t nvml_process_info_entry_size(std::string_view driver_version);

}  // namespace tally::collectors
