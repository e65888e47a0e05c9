// Fake NVML for tests: implements the NVML calls tally uses, with the official prototypes from
// collectors/nvml_api.h, answering from a JSON scenario (TALLY_FAKE_NVML_SCENARIO). See README.md for the format.
// State is process-global, as in the real library: nvmlInit_v2 loads the scenario, nvmlShutdown drops it.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "collectors/nvml/nvml_api.h"

struct nvmlDevice_st {
  nlohmann::json config;            // the GPU, or the MIG instance
  nvmlDevice_st* parent = nullptr;  // set for MIG devices
};

namespace {

struct State {
  bool initialised = false;
  nlohmann::json scenario;
  std::deque<nvmlDevice_st> gpus;  // deque: stable addresses for handles
  std::deque<nvmlDevice_st> migs;
};

State& state() {
  static State instance;
  return instance;
}

nvmlReturn_t parse_return(const std::string& name) {
  static const std::pair<const char*, nvmlReturn_t> kNames[] = {
      {"SUCCESS", NVML_SUCCESS},
      {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED},
      {"INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT},
      {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED},
      {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
      {"NOT_FOUND", NVML_ERROR_NOT_FOUND},
      {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED},
      {"GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST},
      {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH},
      {"UNKNOWN", NVML_ERROR_UNKNOWN},
  };
  for (const auto& [text, value] : kNames) {
    if (name == text) return value;
  }
  return NVML_ERROR_UNKNOWN;
}

// An error injected for `call` on this device (or, for MIG devices, on their parent GPU).
bool injected(nvmlDevice_t device, const char* call, nvmlReturn_t& result) {
  const nlohmann::json& config = device->parent != nullptr ? device->parent->config : device->config;
  if (!config.contains("errors") || !config["errors"].contains(call)) return false;
  result = parse_return(config["errors"][call].get<std::string>());
  return true;
}

nvmlReturn_t copy_string(const std::string& value, char* out, unsigned length) {
  if (out == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (value.size() + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  std::memcpy(out, value.c_str(), value.size() + 1);
  return NVML_SUCCESS;
}

void fill_pci(const std::string& bus_id, unsigned device_id, nvmlPciInfo_t* pci) {
  std::memset(pci, 0, sizeof(*pci));
  std::snprintf(pci->busId, sizeof(pci->busId), "%s", bus_id.c_str());
  unsigned domain = 0, bus = 0, dev = 0, function = 0;
  std::sscanf(bus_id.c_str(), "%x:%x:%x.%x", &domain, &bus, &dev, &function);
  pci->domain = domain;
  pci->bus = bus;
  pci->device = dev;
  pci->pciDeviceId = device_id;
  std::snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04x:%02x:%02x.%x", domain & 0xffff, bus, dev, function);
}

const nlohmann::json* nvlink(nvmlDevice_t device, unsigned link) {
  if (device == nullptr || !device->config.contains("nvlinks")) return nullptr;
  const auto& links = device->config["nvlinks"];
  return link < links.size() ? &links[link] : nullptr;
}

#define FAKE_NVML_CHECK_DEVICE(device, call)                   \
  if (!state().initialised) return NVML_ERROR_UNINITIALIZED;   \
  if ((device) == nullptr) return NVML_ERROR_INVALID_ARGUMENT; \
  if (nvmlReturn_t injected_result; injected(device, call, injected_result)) return injected_result;

}  // namespace

extern "C" {

__attribute__((visibility("default"))) nvmlReturn_t nvmlInit_v2(void) {
  State& s = state();
  const char* path = std::getenv("TALLY_FAKE_NVML_SCENARIO");
  nlohmann::json scenario = nlohmann::json::object();
  if (path != nullptr) {
    std::ifstream in(path);
    if (!in) return NVML_ERROR_UNKNOWN;
    scenario = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (scenario.is_discarded()) return NVML_ERROR_UNKNOWN;
  }
  if (scenario.contains("init")) {
    if (const nvmlReturn_t result = parse_return(scenario["init"].get<std::string>()); result != NVML_SUCCESS) {
      return result;
    }
  }
  s.scenario = std::move(scenario);
  s.gpus.clear();
  s.migs.clear();
  for (const auto& gpu : s.scenario.value("gpus", nlohmann::json::array())) s.gpus.push_back({gpu, nullptr});
  for (auto& gpu : s.gpus) {
    for (const auto& mig : gpu.config.value("mig_instances", nlohmann::json::array())) s.migs.push_back({mig, &gpu});
  }
  s.initialised = true;
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlShutdown(void) {
  if (!state().initialised) return NVML_ERROR_UNINITIALIZED;
  state().initialised = false;
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) const char* nvmlErrorString(nvmlReturn_t result) {
  switch (result) {
    case NVML_SUCCESS:
      return "Success";
    case NVML_ERROR_UNINITIALIZED:
      return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
      return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED:
      return "Not Supported";
    case NVML_ERROR_NO_PERMISSION:
      return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND:
      return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE:
      return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED:
      return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST:
      return "GPU is lost";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH:
      return "RM has detected an NVML/RM version mismatch.";
    default:
      return "Unknown Error";
  }
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlSystemGetDriverVersion(char* version, unsigned int length) {
  if (!state().initialised) return NVML_ERROR_UNINITIALIZED;
  return copy_string(state().scenario.value("driver_version", "550.54.15"), version, length);
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* deviceCount) {
  if (!state().initialised) return NVML_ERROR_UNINITIALIZED;
  if (deviceCount == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *deviceCount = static_cast<unsigned>(state().gpus.size());
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index,
                                                                                  nvmlDevice_t* device) {
  if (!state().initialised) return NVML_ERROR_UNINITIALIZED;
  if (device == nullptr || index >= state().gpus.size()) return NVML_ERROR_INVALID_ARGUMENT;
  *device = &state().gpus[index];
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t* pci) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetPciInfo_v3");
  if (pci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const nvmlDevice_st* gpu = device->parent != nullptr ? device->parent : device;
  fill_pci(gpu->config.value("bus_id", ""), gpu->config.value("pci_device_id", 0u), pci);
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid,
                                                                      unsigned int length) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetUUID");
  return copy_string(device->config.value("uuid", ""), uuid, length);
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name,
                                                                      unsigned int length) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetName");
  return copy_string(device->config.value("name", "NVIDIA Fake GPU"), name, length);
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t* memory) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMemoryInfo");
  if (memory == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  memory->total = device->config.value("memory_total", 0ull);
  memory->used = device->config.value("memory_used", 0ull);
  memory->free = memory->total - memory->used;
  return NVML_SUCCESS;
}

#ifndef FAKE_NVML_MISSING_SYMBOLS
__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int* currentMode,
                                                                         unsigned int* pendingMode) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMigMode");
  if (currentMode == nullptr || pendingMode == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (!device->config.contains("mig_mode")) return NVML_ERROR_NOT_SUPPORTED;  // pre-Ampere GPU
  *currentMode = device->config["mig_mode"].get<unsigned>();
  *pendingMode = *currentMode;
  return NVML_SUCCESS;
}
#endif

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device,
                                                                                   unsigned int* count) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMaxMigDeviceCount");
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (!device->config.contains("mig_mode")) return NVML_ERROR_NOT_SUPPORTED;
  *count = 7;  // A100/H100: up to 7 instances
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device,
                                                                                        unsigned int index,
                                                                                        nvmlDevice_t* migDevice) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMigDeviceHandleByIndex");
  if (migDevice == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  unsigned seen = 0;
  for (auto& mig : state().migs) {
    if (mig.parent != device) continue;
    if (seen++ == index) {
      *migDevice = &mig;
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int* id) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetGpuInstanceId");
  if (id == nullptr || device->parent == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *id = device->config.value("gpu_instance_id", 0u);
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device,
                                                                                   unsigned int* id) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetComputeInstanceId");
  if (id == nullptr || device->parent == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *id = device->config.value("compute_instance_id", 0u);
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                                                             nvmlEnableState_t* isActive) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetNvLinkState");
  if (isActive == nullptr || link >= NVML_NVLINK_MAX_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
  const nlohmann::json* entry = nvlink(device, link);
  if (entry == nullptr) return NVML_ERROR_NOT_SUPPORTED;
  *isActive = entry->value("active", true) ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
  return NVML_SUCCESS;
}

#ifndef FAKE_NVML_MISSING_SYMBOLS
__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device,
                                                                                        unsigned int link,
                                                                                        nvmlPciInfo_t* pci) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetNvLinkRemotePciInfo_v2");
  const nlohmann::json* entry = nvlink(device, link);
  if (entry == nullptr || pci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  fill_pci(entry->value("remote_bus_id", ""), 0, pci);
  return NVML_SUCCESS;
}
#endif

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(
    nvmlDevice_t device, unsigned int link, nvmlIntNvLinkDeviceType_t* pNvLinkDeviceType) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetNvLinkRemoteDeviceType");
  const nlohmann::json* entry = nvlink(device, link);
  if (entry == nullptr || pNvLinkDeviceType == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const std::string type = entry->value("remote_type", "gpu");
  *pNvLinkDeviceType = type == "switch" ? NVML_NVLINK_DEVICE_TYPE_SWITCH
                       : type == "gpu"  ? NVML_NVLINK_DEVICE_TYPE_GPU
                       : type == "cpu"  ? NVML_NVLINK_DEVICE_TYPE_IBMNPU
                                        : NVML_NVLINK_DEVICE_TYPE_UNKNOWN;
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t device1, nvmlDevice_t device2,
                                                                           nvmlGpuP2PCapsIndex_t p2pIndex,
                                                                           nvmlGpuP2PStatus_t* p2pStatus) {
  FAKE_NVML_CHECK_DEVICE(device1, "nvmlDeviceGetP2PStatus");
  if (device2 == nullptr || p2pStatus == nullptr || p2pIndex > NVML_P2P_CAPS_INDEX_UNKNOWN) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  const auto peers = device1->config.value("p2p_peers", nlohmann::json::array());
  const std::string other = device2->config.value("bus_id", "");
  *p2pStatus = NVML_P2P_STATUS_NOT_SUPPORTED;
  for (const auto& peer : peers) {
    if (peer.get<std::string>() == other) *p2pStatus = NVML_P2P_STATUS_OK;
  }
  return NVML_SUCCESS;
}

__attribute__((visibility("default"))) nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                                                            unsigned int* infoCount,
                                                                                            nvmlProcessInfo_t* infos) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetComputeRunningProcesses_v3");
  if (infoCount == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const auto processes = device->config.value("processes", nlohmann::json::array());
  if (*infoCount < processes.size() || infos == nullptr) {
    *infoCount = static_cast<unsigned>(processes.size());
    return processes.empty() ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
  }
  for (std::size_t i = 0; i < processes.size(); ++i) {
    infos[i].pid = processes[i].value("pid", 0u);
    infos[i].usedGpuMemory = processes[i].value("used_gpu_memory", 0ull);
    infos[i].gpuInstanceId = processes[i].value("gpu_instance_id", 0xffffffffu);
    infos[i].computeInstanceId = processes[i].value("compute_instance_id", 0xffffffffu);
  }
  *infoCount = static_cast<unsigned>(processes.size());
  return NVML_SUCCESS;
}

}  // extern "C"
