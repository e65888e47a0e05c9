// Fake NVML for tests: implements the NVML calls tally uses, with the official prototypes from
// collectors/nvml/nvml_api.h, answering from a JSON scenario (TALLY_FAKE_NVML_SCENARIO). See README.md for the
// format. State is process-global and reference-counted, as in the real library: the first nvmlInit_v2 loads the
// scenario, the last nvmlShutdown drops it; calls may come from several threads (topology and GPU accounting).
// The scenario moves in steps: the number in the file TALLY_FAKE_NVML_STEP, read again at each
// nvmlDeviceGetCount_v2 (the start of a pass), selects how many of each GPU's "steps" patches are in force.

#include <sys/time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "collectors/nvml/nvml_api.h"

struct nvmlDevice_st {
  std::size_t gpu = 0;  // index into the scenario's "gpus"
  int mig = -1;         // index into that GPU's "mig_instances"; -1 for the GPU itself
};

namespace {

struct Gpu {
  nlohmann::json base;       // as in the scenario, without "steps"
  nlohmann::json steps;      // merge patches, applied in order up to the current step
  nlohmann::json effective;  // base with the patches in force
  nvmlDevice_st handle;
  std::deque<nvmlDevice_st> migs;  // deque: stable addresses for handles
};

struct State {
  std::recursive_mutex mutex;
  unsigned references = 0;  // nvmlInit_v2 calls not yet shut down
  nlohmann::json scenario;
  std::deque<Gpu> gpus;
  std::string step_path;
  long step = -1;
  unsigned long long samples_origin_us = 0;  // when "samples" were first asked for: their t_us count from here
};

State& state() {
  static State instance;
  return instance;
}

unsigned long long now_us() {
  timeval tv{};
  ::gettimeofday(&tv, nullptr);
  return static_cast<unsigned long long>(tv.tv_sec) * 1'000'000ull + static_cast<unsigned long long>(tv.tv_usec);
}

void apply_step(long step) {
  State& s = state();
  if (step == s.step) return;
  s.step = step;
  for (Gpu& gpu : s.gpus) {
    gpu.effective = gpu.base;
    for (long i = 0; i <= step && i < static_cast<long>(gpu.steps.size()); ++i) gpu.effective.merge_patch(gpu.steps[i]);
  }
}

void read_step_file() {
  State& s = state();
  if (s.step_path.empty()) return;
  std::ifstream in(s.step_path);
  long step = 0;
  if (in >> step) apply_step(step);
}

const nlohmann::json& gpu_config(nvmlDevice_t device) { return state().gpus[device->gpu].effective; }

// The GPU's own configuration, or its MIG instance's.
const nlohmann::json& config(nvmlDevice_t device) {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  const nlohmann::json& gpu = gpu_config(device);
  if (device->mig < 0) return gpu;
  const auto it = gpu.find("mig_instances");
  if (it == gpu.end() || static_cast<std::size_t>(device->mig) >= it->size()) return kEmpty;
  return (*it)[static_cast<std::size_t>(device->mig)];
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

// An error injected for `call` on this device (or, for MIG devices, on their parent GPU); every call on a GPU the
// current step marks "lost" answers GPU_IS_LOST, as a GPU that fell off the bus does.
bool injected(nvmlDevice_t device, const char* call, nvmlReturn_t& result) {
  const nlohmann::json& gpu = gpu_config(device);
  if (gpu.value("lost", false)) {
    result = NVML_ERROR_GPU_IS_LOST;
    return true;
  }
  const auto errors = gpu.find("errors");
  if (errors == gpu.end() || !errors->contains(call)) return false;
  result = parse_return((*errors)[call].get<std::string>());
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
  const nlohmann::json& gpu = config(device);
  const auto links = gpu.find("nvlinks");
  if (links == gpu.end()) return nullptr;
  return link < links->size() ? &(*links)[link] : nullptr;
}

// The processes of one list ("processes", "graphics_processes", "mps_processes") on a GPU; on a MIG device, its
// entry of the GPU's "mig_processes" (or the instance's own "processes").
nlohmann::json processes(nvmlDevice_t device, const char* list) {
  const nlohmann::json& gpu = gpu_config(device);
  if (device->mig >= 0) {
    if (std::strcmp(list, "processes") != 0) return nlohmann::json::array();
    const auto per_slice = gpu.find("mig_processes");
    if (per_slice != gpu.end() && static_cast<std::size_t>(device->mig) < per_slice->size()) {
      return (*per_slice)[static_cast<std::size_t>(device->mig)];
    }
    return config(device).value("processes", nlohmann::json::array());
  }
  return gpu.value(list, nlohmann::json::array());
}

// Drivers 535.43.02 to 535.86.05 wrote 32-byte entries (nvmlProcessInfo_v3_535_t) through the _v3 calls.
std::size_t process_entry_size() {
  unsigned major = 0, minor = 0, patch = 0;
  const std::string version = state().scenario.value("driver_version", "550.54.15");
  if (std::sscanf(version.c_str(), "%u.%u.%u", &major, &minor, &patch) != 3 || major != 535) {
    return sizeof(nvmlProcessInfo_t);
  }
  const unsigned at = minor * 1000 + patch;
  return at >= 43'002 && at <= 86'005 ? sizeof(nvmlProcessInfo_v3_535_t) : sizeof(nvmlProcessInfo_t);
}

nvmlReturn_t running_processes(nvmlDevice_t device, const char* list, unsigned* count, nvmlProcessInfo_t* infos) {
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const nlohmann::json found = processes(device, list);
  if (*count < found.size() || infos == nullptr) {
    *count = static_cast<unsigned>(found.size());
    return found.empty() ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
  }
  const std::size_t stride = process_entry_size();
  auto* bytes = reinterpret_cast<unsigned char*>(infos);
  for (std::size_t i = 0; i < found.size(); ++i) {
    nvmlProcessInfo_v3_535_t entry{};
    entry.pid = found[i].value("pid", 0u);
    entry.usedGpuMemory = found[i].value("used_gpu_memory", 0ull);
    entry.gpuInstanceId = found[i].value("gpu_instance_id", 0xffffffffu);
    entry.computeInstanceId = found[i].value("compute_instance_id", 0xffffffffu);
    std::memcpy(bytes + i * stride, &entry, stride);
  }
  *count = static_cast<unsigned>(found.size());
  return NVML_SUCCESS;
}

#define FAKE_NVML_ENTER()                                  \
  std::lock_guard<std::recursive_mutex> lock(state().mutex); \
  if (state().references == 0) return NVML_ERROR_UNINITIALIZED;

#define FAKE_NVML_CHECK_DEVICE(device, call)                   \
  FAKE_NVML_ENTER();                                           \
  if ((device) == nullptr) return NVML_ERROR_INVALID_ARGUMENT; \
  if (nvmlReturn_t injected_result; injected(device, call, injected_result)) return injected_result;

#define FAKE_NVML_EXPORT extern "C" __attribute__((visibility("default")))

}  // namespace

FAKE_NVML_EXPORT nvmlReturn_t nvmlInit_v2(void) {
  State& s = state();
  std::lock_guard<std::recursive_mutex> lock(s.mutex);
  if (s.references > 0) {  // as the real library: counted, the state stays
    ++s.references;
    return NVML_SUCCESS;
  }
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
  for (const auto& config : s.scenario.value("gpus", nlohmann::json::array())) {
    Gpu& gpu = s.gpus.emplace_back();
    gpu.base = config;
    gpu.base.erase("steps");
    gpu.steps = config.value("steps", nlohmann::json::array());
    gpu.handle = {s.gpus.size() - 1, -1};
    const std::size_t slices = config.value("mig_instances", nlohmann::json::array()).size();
    for (std::size_t m = 0; m < slices; ++m) gpu.migs.push_back({s.gpus.size() - 1, static_cast<int>(m)});
  }
  const char* step_path = std::getenv("TALLY_FAKE_NVML_STEP");
  s.step_path = step_path != nullptr ? step_path : "";
  s.step = -1;
  s.samples_origin_us = 0;
  apply_step(0);
  read_step_file();
  s.references = 1;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlShutdown(void) {
  FAKE_NVML_ENTER();
  --state().references;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT const char* nvmlErrorString(nvmlReturn_t result) {
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

FAKE_NVML_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char* version, unsigned int length) {
  FAKE_NVML_ENTER();
  return copy_string(state().scenario.value("driver_version", "550.54.15"), version, length);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int* deviceCount) {
  FAKE_NVML_ENTER();
  if (deviceCount == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  read_step_file();
  *deviceCount = static_cast<unsigned>(state().gpus.size());
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t* device) {
  FAKE_NVML_ENTER();
  if (device == nullptr || index >= state().gpus.size()) return NVML_ERROR_INVALID_ARGUMENT;
  *device = &state().gpus[index].handle;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t* pci) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetPciInfo_v3");
  if (pci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const nlohmann::json& gpu = gpu_config(device);
  fill_pci(gpu.value("bus_id", ""), gpu.value("pci_device_id", 0u), pci);
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char* uuid, unsigned int length) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetUUID");
  return copy_string(config(device).value("uuid", ""), uuid, length);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char* name, unsigned int length) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetName");
  return copy_string(config(device).value("name", "NVIDIA Fake GPU"), name, length);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t* memory) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMemoryInfo");
  if (memory == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  memory->total = config(device).value("memory_total", 0ull);
  memory->used = config(device).value("memory_used", 0ull);
  memory->free = memory->total - memory->used;
  return NVML_SUCCESS;
}

#ifndef FAKE_NVML_MISSING_SYMBOLS
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int* currentMode,
                                                   unsigned int* pendingMode) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMigMode");
  if (currentMode == nullptr || pendingMode == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0 || !config(device).contains("mig_mode")) return NVML_ERROR_NOT_SUPPORTED;  // pre-Ampere
  *currentMode = config(device)["mig_mode"].get<unsigned>();
  *pendingMode = *currentMode;
  return NVML_SUCCESS;
}
#endif

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int* count) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMaxMigDeviceCount");
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0 || !config(device).contains("mig_mode")) return NVML_ERROR_NOT_SUPPORTED;
  *count = 7;  // A100/H100: up to 7 instances
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                                  nvmlDevice_t* migDevice) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMigDeviceHandleByIndex");
  if (migDevice == nullptr || device->mig >= 0) return NVML_ERROR_INVALID_ARGUMENT;
  auto& migs = state().gpus[device->gpu].migs;
  if (index >= migs.size()) return NVML_ERROR_NOT_FOUND;
  *migDevice = &migs[index];
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int* id) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetGpuInstanceId");
  if (id == nullptr || device->mig < 0) return NVML_ERROR_INVALID_ARGUMENT;
  *id = config(device).value("gpu_instance_id", 0u);
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int* id) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetComputeInstanceId");
  if (id == nullptr || device->mig < 0) return NVML_ERROR_INVALID_ARGUMENT;
  *id = config(device).value("compute_instance_id", 0u);
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                                       nvmlEnableState_t* isActive) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetNvLinkState");
  if (isActive == nullptr || link >= NVML_NVLINK_MAX_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
  const nlohmann::json* entry = nvlink(device, link);
  if (entry == nullptr) return NVML_ERROR_NOT_SUPPORTED;
  *isActive = entry->value("active", true) ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
  return NVML_SUCCESS;
}

#ifndef FAKE_NVML_MISSING_SYMBOLS
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link,
                                                                  nvmlPciInfo_t* pci) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetNvLinkRemotePciInfo_v2");
  const nlohmann::json* entry = nvlink(device, link);
  if (entry == nullptr || pci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  fill_pci(entry->value("remote_bus_id", ""), 0, pci);
  return NVML_SUCCESS;
}
#endif

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t device, unsigned int link,
                                                                  nvmlIntNvLinkDeviceType_t* pNvLinkDeviceType) {
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

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t device1, nvmlDevice_t device2,
                                                     nvmlGpuP2PCapsIndex_t p2pIndex, nvmlGpuP2PStatus_t* p2pStatus) {
  FAKE_NVML_CHECK_DEVICE(device1, "nvmlDeviceGetP2PStatus");
  if (device2 == nullptr || p2pStatus == nullptr || p2pIndex > NVML_P2P_CAPS_INDEX_UNKNOWN) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  const auto peers = config(device1).value("p2p_peers", nlohmann::json::array());
  const std::string other = config(device2).value("bus_id", "");
  *p2pStatus = NVML_P2P_STATUS_NOT_SUPPORTED;
  for (const auto& peer : peers) {
    if (peer.get<std::string>() == other) *p2pStatus = NVML_P2P_STATUS_OK;
  }
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int* infoCount,
                                                                      nvmlProcessInfo_t* infos) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetComputeRunningProcesses_v3");
  return running_processes(device, "processes", infoCount, infos);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int* infoCount,
                                                                       nvmlProcessInfo_t* infos) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetGraphicsRunningProcesses_v3");
  return running_processes(device, "graphics_processes", infoCount, infos);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int* infoCount,
                                                                         nvmlProcessInfo_t* infos) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMPSComputeRunningProcesses_v3");
  return running_processes(device, "mps_processes", infoCount, infos);
}

#ifndef FAKE_NVML_MISSING_SYMBOLS
// R550+. A driver without it lacks the symbol; here the scenario's "detail_list": true turns it on, and without it
// the call answers NOT_SUPPORTED, so the _v3 path is the one taken.
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t device,
                                                                    nvmlProcessDetailList_t* plist) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetRunningProcessDetailList");
  if (!state().scenario.value("detail_list", false)) return NVML_ERROR_NOT_SUPPORTED;
  if (plist == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (plist->version != nvmlProcessDetailList_v1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  static const char* const kLists[] = {"processes", "graphics_processes", "mps_processes"};
  if (plist->mode > NVML_PROCESS_MODE_MPS) return NVML_ERROR_INVALID_ARGUMENT;
  const nlohmann::json found = processes(device, kLists[plist->mode]);
  if (plist->numProcArrayEntries < found.size() || plist->procArray == nullptr) {
    plist->numProcArrayEntries = static_cast<unsigned>(found.size());
    return found.empty() ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
  }
  for (std::size_t i = 0; i < found.size(); ++i) {
    nvmlProcessDetail_v1_t& entry = plist->procArray[i];
    entry = {};
    entry.pid = found[i].value("pid", 0u);
    entry.usedGpuMemory = found[i].value("used_gpu_memory", 0ull);
    entry.gpuInstanceId = found[i].value("gpu_instance_id", 0xffffffffu);
    entry.computeInstanceId = found[i].value("compute_instance_id", 0xffffffffu);
  }
  plist->numProcArrayEntries = static_cast<unsigned>(found.size());
  return NVML_SUCCESS;
}
#endif

// "samples": [{"pid", "t_us", "sm", "mem"}], t_us counted from the first time samples were asked for (so a
// scenario's timestamps are near the caller's clock), or "at_us" (CLOCK_REALTIME, for scenarios that span two
// processes); those newer than lastSeenTimeStamp are returned. Not on MIG.
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                                              nvmlProcessUtilizationSample_t* utilization,
                                                              unsigned int* processSamplesCount,
                                                              unsigned long long lastSeenTimeStamp) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetProcessUtilization");
  if (processSamplesCount == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const nlohmann::json& gpu = gpu_config(device);
  if (device->mig >= 0 || gpu.value("mig_mode", 0u) == 1) return NVML_ERROR_NOT_SUPPORTED;
  State& s = state();
  if (s.samples_origin_us == 0) s.samples_origin_us = now_us();
  std::vector<nvmlProcessUtilizationSample_t> found;
  for (const auto& sample : gpu.value("samples", nlohmann::json::array())) {
    nvmlProcessUtilizationSample_t out{};
    out.pid = sample.value("pid", 0u);
    out.timeStamp = sample.contains("at_us") ? sample["at_us"].get<unsigned long long>()
                                             : s.samples_origin_us + sample.value("t_us", 0ull);
    out.smUtil = sample.value("sm", 0u);
    out.memUtil = sample.value("mem", 0u);
    if (out.timeStamp > lastSeenTimeStamp) found.push_back(out);
  }
  // A driver at work, for benchmarks: every call finds `count` new samples per running process, ending now.
  if (const auto synthetic = gpu.find("synthetic_samples"); synthetic != gpu.end()) {
    const unsigned long long now = now_us();
    const unsigned count = synthetic->value("count", 1u);
    for (const auto& process : gpu.value("processes", nlohmann::json::array())) {
      for (unsigned i = 0; i < count; ++i) {
        nvmlProcessUtilizationSample_t out{};
        out.pid = process.value("pid", 0u);
        out.timeStamp = now - (count - 1 - i);
        out.smUtil = synthetic->value("sm", 0u);
        if (out.timeStamp > lastSeenTimeStamp) found.push_back(out);
      }
    }
  }
  if (found.empty()) return NVML_ERROR_NOT_FOUND;
  if (utilization == nullptr || *processSamplesCount < found.size()) {
    *processSamplesCount = static_cast<unsigned>(found.size());
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  std::memcpy(utilization, found.data(), found.size() * sizeof(found[0]));
  *processSamplesCount = static_cast<unsigned>(found.size());
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t* utilization) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetUtilizationRates");
  if (utilization == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const nlohmann::json& gpu = gpu_config(device);
  if (device->mig >= 0 || gpu.value("mig_mode", 0u) == 1 || !gpu.contains("utilization_gpu")) {
    return NVML_ERROR_NOT_SUPPORTED;
  }
  utilization->gpu = gpu["utilization_gpu"].get<unsigned>();
  utilization->memory = gpu.value("utilization_memory", 0u);
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long* energy) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetTotalEnergyConsumption");
  if (energy == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0 || !gpu_config(device).contains("energy_mj")) return NVML_ERROR_NOT_SUPPORTED;
  *energy = gpu_config(device)["energy_mj"].get<unsigned long long>();
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int* power) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetPowerUsage");
  if (power == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0 || !gpu_config(device).contains("power_mw")) return NVML_ERROR_NOT_SUPPORTED;
  *power = gpu_config(device)["power_mw"].get<unsigned>();
  return NVML_SUCCESS;
}

// "accounting_mode": true turns accounting on; a process's "max_memory" is its lifetime maximum (default: what it
// holds now). Not on MIG devices, as on the real driver.
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetAccountingMode(nvmlDevice_t device, nvmlEnableState_t* mode) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetAccountingMode");
  if (mode == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0) return NVML_ERROR_NOT_SUPPORTED;
  *mode = gpu_config(device).value("accounting_mode", false) ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetAccountingStats(nvmlDevice_t device, unsigned int pid,
                                                           nvmlAccountingStats_t* stats) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetAccountingStats");
  if (stats == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0 || !gpu_config(device).value("accounting_mode", false)) return NVML_ERROR_NOT_SUPPORTED;
  for (const char* list : {"processes", "graphics_processes", "mps_processes"}) {
    for (const auto& process : processes(device, list)) {
      if (process.value("pid", 0u) != pid) continue;
      *stats = {};
      stats->maxMemoryUsage = process.value("max_memory", process.value("used_gpu_memory", 0ull));
      stats->isRunning = 1;
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}
