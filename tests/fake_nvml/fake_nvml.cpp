// Fake NVML for tests: implements the NVML calls tally uses, with the official prototypes from
// collectors/nvml/nvml_api.h, answering from a JSON scenario (TALLY_FAKE_NVML_SCENARIO). See README.md for the
// format. State is process-global and reference-counted, as in the real library: the first nvmlInit_v2 loads the
// scenario, the last nvmlShutdown drops it; calls may come from several threads (topology and GPU accounting).
// The scenario moves in steps: the number in the file TALLY_FAKE_NVML_STEP, read again at each
// nvmlDeviceGetCount_v2 (the start of a pass), selects how many of each GPU's "steps" patches are in force.
// A GPU with "mig_model" carries MIG state that the partitioning calls mutate (mode, GPU and compute instances),
// kept in memory for the life of the process's NVML state, outside the steps.

#include <sys/time.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "collectors/nvml/nvml_api.h"

struct nvmlDevice_st {
  std::size_t gpu = 0;  // index into the scenario's "gpus"
  int mig = -1;         // index into that GPU's "mig_instances"; -1 for the GPU itself
  // A MIG device of a "mig_model" GPU (mig >= 0): the GPU and compute instance it stands for, and what it answers.
  bool modelled = false;
  unsigned gi = 0, ci = 0;
  nlohmann::json model = nlohmann::json::object();
};

// Handles name instances by id, so a handle to a destroyed instance answers INVALID_ARGUMENT instead of dangling.
struct nvmlGpuInstance_st {
  std::size_t gpu = 0;
  unsigned id = 0;
};
struct nvmlComputeInstance_st {
  std::size_t gpu = 0;
  unsigned gi = 0;
  unsigned id = 0;
};

namespace {

// One GPU-instance profile as the driver reports it on a product: the NVML_GPU_INSTANCE_PROFILE_* index it is asked
// by, the profile ID it answers (what nvidia-smi mig -lgip lists), and its placements in memory slices.
struct ModelProfile {
  unsigned index;
  unsigned id;
  const char* name;
  unsigned slices;  // compute slices (sliceCount)
  unsigned count;   // instanceCount: how many may exist at once
  unsigned long long memory_mib;
  std::vector<unsigned> starts;
  unsigned size;  // memory slices each placement spans
};

struct Model {
  const char* name;
  std::vector<ModelProfile> profiles;
};

// The shape is the same on the three products (7 compute slices, 8 memory slices); names and sizes differ. Sources
// are in docs/mig.md.
Model make_model(const char* name, const char* const names[7], const unsigned long long mib[7]) {
  return {name,
          {{NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, names[0], 1, 7, mib[0], {0, 1, 2, 3, 4, 5, 6}, 1},
           {NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, names[1], 1, 1, mib[1], {0, 1, 2, 3, 4, 5, 6}, 1},
           {NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, names[2], 1, 4, mib[2], {0, 2, 4, 6}, 2},
           {NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, names[3], 2, 3, mib[3], {0, 2, 4}, 2},
           {NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, names[4], 3, 2, mib[4], {0, 4}, 4},
           {NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, names[5], 4, 1, mib[5], {0}, 4},
           {NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, names[6], 7, 1, mib[6], {0}, 8}}};
}

const std::vector<Model>& models() {
  static const char* const kA100[7] = {"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"};
  static const unsigned long long kA100Mib[7] = {9856, 9856, 19968, 19968, 40192, 40192, 80384};
  static const char* const kH100[7] = {"1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"};
  static const unsigned long long kH100Mib[7] = {9984, 9984, 20096, 20096, 40448, 40448, 81152};
  static const char* const kH200[7] = {"1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb",
                                       "7g.141gb"};
  static const unsigned long long kH200Mib[7] = {18432, 18432, 35840, 35840, 72704, 72704, 144384};
  static const std::vector<Model> kModels = {make_model("A100-SXM4-80GB", kA100, kA100Mib),
                                             make_model("H100-SXM5-80GB", kH100, kH100Mib),
                                             make_model("H200-SXM5-141GB", kH200, kH200Mib)};
  return kModels;
}

constexpr unsigned kComputeSlices = 7;
constexpr unsigned kMemorySlices = 8;

// Compute-instance profiles by NVML_COMPUTE_INSTANCE_PROFILE_* index: their slice counts (0 where not modelled).
unsigned ci_profile_slices(unsigned profile) {
  static const unsigned kSlices[] = {1, 2, 3, 4, 7};
  return profile < std::size(kSlices) ? kSlices[profile] : 0;
}

unsigned full_ci_profile(unsigned slices) {
  for (unsigned profile = 0; ci_profile_slices(profile) != 0; ++profile) {
    if (ci_profile_slices(profile) == slices) return profile;
  }
  return 0;
}

struct FakeComputeInstance {
  unsigned id = 0;
  unsigned profile = 0;  // NVML_COMPUTE_INSTANCE_PROFILE_* (its ID here too)
};

struct FakeGpuInstance {
  unsigned id = 0;
  const ModelProfile* profile = nullptr;
  unsigned start = 0;
  std::vector<FakeComputeInstance> cis;
  nlohmann::json processes = nlohmann::json::array();  // busy while not empty
};

struct MigState {
  const Model* model = nullptr;  // null: the GPU has no "mig_model"
  unsigned current = 0, pending = 0;
  std::vector<FakeGpuInstance> gis;  // ordered by start
  unsigned creates = 0;              // GPU-instance creations asked for, for "fail_create_after"
};

struct Gpu {
  nlohmann::json base;       // as in the scenario, without "steps"
  nlohmann::json steps;      // merge patches, applied in order up to the current step
  nlohmann::json effective;  // base with the patches in force
  nvmlDevice_st handle;
  std::deque<nvmlDevice_st> migs;  // deque: stable addresses for handles
  MigState mig_state;
  std::deque<nvmlDevice_st> model_migs;  // MIG device handles of a "mig_model" GPU, one per (gi, ci) ever seen
  std::deque<nvmlGpuInstance_st> gi_handles;
  std::deque<nvmlComputeInstance_st> ci_handles;
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

MigState& mig_state(nvmlDevice_t device) { return state().gpus[device->gpu].mig_state; }

// MIG's current mode: the modelled state on a "mig_model" GPU, else the scenario's "mig_mode".
bool mig_enabled(nvmlDevice_t device) {
  const MigState& mig = mig_state(device);
  return mig.model != nullptr ? mig.current == NVML_DEVICE_MIG_ENABLE : gpu_config(device).value("mig_mode", 0u) == 1;
}

FakeGpuInstance* find_gi(MigState& mig, unsigned id) {
  for (FakeGpuInstance& gi : mig.gis) {
    if (gi.id == id) return &gi;
  }
  return nullptr;
}

// The GPU's own configuration, or its MIG instance's.
const nlohmann::json& config(nvmlDevice_t device) {
  static const nlohmann::json kEmpty = nlohmann::json::object();
  const nlohmann::json& gpu = gpu_config(device);
  if (device->mig < 0) return gpu;
  if (device->modelled) return device->model;
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
      {"RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED},
      {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH},
      {"IN_USE", NVML_ERROR_IN_USE},
      {"INSUFFICIENT_RESOURCES", NVML_ERROR_INSUFFICIENT_RESOURCES},
      {"INVALID_STATE", NVML_ERROR_INVALID_STATE},
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

// A modelled GPU instance's processes, as the driver lists them: tagged with their GPU and compute instance.
nlohmann::json tagged_processes(const FakeGpuInstance& gi) {
  nlohmann::json out = nlohmann::json::array();
  for (nlohmann::json process : gi.processes) {
    process["gpu_instance_id"] = gi.id;
    process["compute_instance_id"] = gi.cis.empty() ? 0u : gi.cis.front().id;
    out.push_back(std::move(process));
  }
  return out;
}

// The processes of one list ("processes", "graphics_processes", "mps_processes") on a GPU; on a MIG device, its
// entry of the GPU's "mig_processes" (or the instance's own "processes"). On a "mig_model" GPU a MIG device lists
// its GPU instance's processes, and the GPU itself adds those of every instance (the driver's aggregate view).
nlohmann::json processes(nvmlDevice_t device, const char* list) {
  const nlohmann::json& gpu = gpu_config(device);
  MigState& mig = mig_state(device);
  if (device->modelled) {
    const FakeGpuInstance* gi = find_gi(mig, device->gi);
    if (gi == nullptr || std::strcmp(list, "processes") != 0) return nlohmann::json::array();
    return tagged_processes(*gi);
  }
  if (device->mig < 0 && mig.model != nullptr && std::strcmp(list, "processes") == 0) {
    nlohmann::json all = gpu.value(list, nlohmann::json::array());
    for (const FakeGpuInstance& gi : mig.gis) {
      for (auto& process : tagged_processes(gi)) all.push_back(std::move(process));
    }
    return all;
  }
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

const ModelProfile* profile_by_id(const MigState& mig, unsigned id) {
  for (const ModelProfile& profile : mig.model->profiles) {
    if (profile.id == id) return &profile;
  }
  return nullptr;
}

// Whether a GPU instance of `profile` at `start` fits beside those that exist: its memory slices are free, the
// compute slices suffice, and the profile's own instance count is not reached.
bool fits(const MigState& mig, const ModelProfile& profile, unsigned start) {
  unsigned compute = profile.slices, same = 1;
  for (const FakeGpuInstance& gi : mig.gis) {
    compute += gi.profile->slices;
    if (gi.profile == &profile) ++same;
    if (start < gi.start + gi.profile->size && gi.start < start + profile.size) return false;
  }
  return compute <= kComputeSlices && same <= profile.count && start + profile.size <= kMemorySlices;
}

unsigned lowest_free_gi_id(const MigState& mig) {
  unsigned id = 1;
  while (std::any_of(mig.gis.begin(), mig.gis.end(), [&](const FakeGpuInstance& gi) { return gi.id == id; })) ++id;
  return id;
}

FakeGpuInstance& add_gi(MigState& mig, unsigned id, const ModelProfile& profile, unsigned start) {
  FakeGpuInstance gi;
  gi.id = id;
  gi.profile = &profile;
  gi.start = start;
  const auto at =
      std::find_if(mig.gis.begin(), mig.gis.end(), [&](const FakeGpuInstance& g) { return g.start > start; });
  return *mig.gis.insert(at, std::move(gi));
}

// "mig_model", "mig_mode", "mig_pending_mode" and "gpu_instances" of a GPU's scenario. False: a name is unknown or
// an instance does not fit (a mistake in the scenario, which fails nvmlInit_v2).
bool load_mig_state(const nlohmann::json& config, MigState& mig) {
  const std::string name = config["mig_model"].get<std::string>();
  for (const Model& model : models()) {
    if (name == model.name) mig.model = &model;
  }
  if (mig.model == nullptr) return false;
  mig.current = config.value("mig_mode", 0u);
  mig.pending = config.value("mig_pending_mode", mig.current);
  for (const auto& instance : config.value("gpu_instances", nlohmann::json::array())) {
    const std::string profile_name = instance.value("profile", "");
    const ModelProfile* profile = nullptr;
    for (const ModelProfile& p : mig.model->profiles) {
      if (profile_name == p.name) profile = &p;
    }
    const unsigned start = instance.value("start", 0u);
    if (profile == nullptr || !fits(mig, *profile, start)) return false;
    FakeGpuInstance& gi = add_gi(mig, instance.value("id", lowest_free_gi_id(mig)), *profile, start);
    // One compute instance spans the GPU instance (the usual layout); several are 1-slice ones.
    const unsigned cis = instance.value("compute_instances", 1u);
    for (unsigned c = 0; c < cis; ++c) gi.cis.push_back({c, cis == 1 ? full_ci_profile(profile->slices) : 0u});
    gi.processes = instance.value("processes", nlohmann::json::array());
  }
  return true;
}

// The index-th MIG device of a modelled GPU: its compute instances in order of placement, then id.
nvmlReturn_t modelled_mig_device(nvmlDevice_t device, unsigned index, nvmlDevice_t* out) {
  MigState& mig = mig_state(device);
  Gpu& gpu = state().gpus[device->gpu];
  unsigned n = 0;
  for (const FakeGpuInstance& gi : mig.gis) {
    for (const FakeComputeInstance& ci : gi.cis) {
      if (n++ != index) continue;
      for (nvmlDevice_st& existing : gpu.model_migs) {
        if (existing.gi == gi.id && existing.ci == ci.id) {
          *out = &existing;
          return NVML_SUCCESS;
        }
      }
      nvmlDevice_st& made = gpu.model_migs.emplace_back();
      made.gpu = device->gpu;
      made.mig = static_cast<int>(gpu.model_migs.size() - 1);
      made.modelled = true;
      made.gi = gi.id;
      made.ci = ci.id;
      made.model = {{"uuid", "MIG-fake-" + std::to_string(device->gpu) + "-" + std::to_string(gi.id) + "-" +
                                 std::to_string(ci.id)},
                    {"name", std::string("MIG ") + gi.profile->name},
                    {"memory_total", gi.profile->memory_mib << 20}};
      *out = &made;
      return NVML_SUCCESS;
    }
  }
  return NVML_ERROR_NOT_FOUND;
}

nvmlGpuInstance_t gi_handle(std::size_t gpu, unsigned id) {
  for (nvmlGpuInstance_st& handle : state().gpus[gpu].gi_handles) {
    if (handle.id == id) return &handle;
  }
  return &state().gpus[gpu].gi_handles.emplace_back(nvmlGpuInstance_st{gpu, id});
}

nvmlComputeInstance_t ci_handle(std::size_t gpu, unsigned gi, unsigned id) {
  for (nvmlComputeInstance_st& handle : state().gpus[gpu].ci_handles) {
    if (handle.gi == gi && handle.id == id) return &handle;
  }
  return &state().gpus[gpu].ci_handles.emplace_back(nvmlComputeInstance_st{gpu, gi, id});
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
    if (config.contains("mig_model") && !load_mig_state(config, gpu.mig_state)) return NVML_ERROR_UNKNOWN;
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
    case NVML_ERROR_RESET_REQUIRED:
      return "GPU requires reset";
    case NVML_ERROR_IN_USE:
      return "In use by another client";
    case NVML_ERROR_INSUFFICIENT_RESOURCES:
      return "Ran out of critical resources, other than memory";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
      return "Argument version mismatch";
    case NVML_ERROR_INVALID_STATE:
      return "Invalid state";
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
  if (const MigState& mig = mig_state(device); device->mig < 0 && mig.model != nullptr) {
    *currentMode = mig.current;
    *pendingMode = mig.pending;
    return NVML_SUCCESS;
  }
  if (device->mig >= 0 || !config(device).contains("mig_mode")) return NVML_ERROR_NOT_SUPPORTED;  // pre-Ampere
  *currentMode = config(device)["mig_mode"].get<unsigned>();
  *pendingMode = *currentMode;
  return NVML_SUCCESS;
}
#endif

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int* count) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMaxMigDeviceCount");
  if (count == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0 || (!config(device).contains("mig_mode") && mig_state(device).model == nullptr)) {
    return NVML_ERROR_NOT_SUPPORTED;
  }
  *count = 7;  // A100/H100: up to 7 instances
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                                  nvmlDevice_t* migDevice) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMigDeviceHandleByIndex");
  if (migDevice == nullptr || device->mig >= 0) return NVML_ERROR_INVALID_ARGUMENT;
  if (mig_state(device).model != nullptr) return modelled_mig_device(device, index, migDevice);
  auto& migs = state().gpus[device->gpu].migs;
  if (index >= migs.size()) return NVML_ERROR_NOT_FOUND;
  *migDevice = &migs[index];
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int* id) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetGpuInstanceId");
  if (id == nullptr || device->mig < 0) return NVML_ERROR_INVALID_ARGUMENT;
  *id = device->modelled ? device->gi : config(device).value("gpu_instance_id", 0u);
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int* id) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetComputeInstanceId");
  if (id == nullptr || device->mig < 0) return NVML_ERROR_INVALID_ARGUMENT;
  *id = device->modelled ? device->ci : config(device).value("compute_instance_id", 0u);
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
  if (device->mig >= 0 || mig_enabled(device)) return NVML_ERROR_NOT_SUPPORTED;
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
  if (device->mig >= 0 || mig_enabled(device) || !gpu.contains("utilization_gpu")) {
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

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int* minorNumber) {
  FAKE_NVML_CHECK_DEVICE(device, "nvmlDeviceGetMinorNumber");
  if (minorNumber == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (device->mig >= 0 || !gpu_config(device).contains("minor")) return NVML_ERROR_NOT_SUPPORTED;
  *minorNumber = gpu_config(device)["minor"].get<unsigned>();
  return NVML_SUCCESS;
}

// MIG partitioning, on a GPU with "mig_model" only (others answer NOT_SUPPORTED, as a pre-Ampere GPU does).

#define FAKE_NVML_CHECK_MODEL(device, call)                                                        \
  FAKE_NVML_CHECK_DEVICE(device, call);                                                            \
  if ((device)->mig >= 0 || mig_state(device).model == nullptr) return NVML_ERROR_NOT_SUPPORTED; \
  MigState& mig = mig_state(device);

// A GPU instance handle's GPU and instance, with the GPU's injected errors; a destroyed instance's handle is invalid.
#define FAKE_NVML_CHECK_GI(instance, call)                                                           \
  FAKE_NVML_ENTER();                                                                                 \
  if ((instance) == nullptr) return NVML_ERROR_INVALID_ARGUMENT;                                     \
  nvmlDevice_t parent = &state().gpus[(instance)->gpu].handle;                                       \
  if (nvmlReturn_t injected_result; injected(parent, call, injected_result)) return injected_result; \
  MigState& mig = mig_state(parent);                                                                 \
  FakeGpuInstance* gi = find_gi(mig, (instance)->id);                                                \
  if (gi == nullptr) return NVML_ERROR_INVALID_ARGUMENT;

// The activation outcome comes back in activationStatus, as the driver reports it: a GPU that some client holds
// ("in_use") or one that needs a reset ("mig_mode_needs_reset") keeps its current mode, with the new one pending.
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceSetMigMode(nvmlDevice_t device, unsigned int mode,
                                                   nvmlReturn_t* activationStatus) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceSetMigMode");
  if (activationStatus == nullptr || mode > NVML_DEVICE_MIG_ENABLE) return NVML_ERROR_INVALID_ARGUMENT;
  mig.pending = mode;
  if (mode == mig.current) {
    *activationStatus = NVML_SUCCESS;
  } else if (gpu_config(device).value("in_use", false) || !mig.gis.empty()) {
    *activationStatus = NVML_ERROR_IN_USE;
  } else if (gpu_config(device).value("mig_mode_needs_reset", false)) {
    *activationStatus = NVML_ERROR_RESET_REQUIRED;
  } else {
    mig.current = mode;
    *activationStatus = NVML_SUCCESS;
  }
  return NVML_SUCCESS;
}

namespace {
const ModelProfile* profile_by_index(const MigState& mig, unsigned index) {
  for (const ModelProfile& profile : mig.model->profiles) {
    if (profile.index == index) return &profile;
  }
  return nullptr;
}

template <typename Info>
void fill_profile_info(const ModelProfile& profile, Info& info) {
  info.id = profile.id;
  info.isP2pSupported = 0;
  info.sliceCount = profile.slices;
  info.instanceCount = profile.count;
  info.multiprocessorCount = profile.slices * 16;
  info.copyEngineCount = profile.slices;
  info.memorySizeMB = profile.memory_mib;
}
}  // namespace

// Profiles are known while MIG is on (the driver answers NOT_SUPPORTED otherwise); an index the product lacks is
// NOT_SUPPORTED too.
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfo(nvmlDevice_t device, unsigned int profile,
                                                                  nvmlGpuInstanceProfileInfo_t* info) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceGetGpuInstanceProfileInfo");
  if (info == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  const ModelProfile* found = profile_by_index(mig, profile);
  if (mig.current != NVML_DEVICE_MIG_ENABLE || found == nullptr) return NVML_ERROR_NOT_SUPPORTED;
  *info = {};
  fill_profile_info(*found, *info);
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t device, unsigned int profile,
                                                                   nvmlGpuInstanceProfileInfo_v2_t* info) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceGetGpuInstanceProfileInfoV");
  if (info == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (info->version != nvmlGpuInstanceProfileInfo_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  const ModelProfile* found = profile_by_index(mig, profile);
  if (mig.current != NVML_DEVICE_MIG_ENABLE || found == nullptr) return NVML_ERROR_NOT_SUPPORTED;
  *info = {};
  info->version = nvmlGpuInstanceProfileInfo_v2;
  fill_profile_info(*found, *info);
  std::snprintf(info->name, sizeof(info->name), "MIG %s", found->name);
  return NVML_SUCCESS;
}

// Every placement of the profile, taken or not (as the driver documents); placements == NULL asks for the count.
FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstancePossiblePlacements_v2(nvmlDevice_t device,
                                                                            unsigned int profileId,
                                                                            nvmlGpuInstancePlacement_t* placements,
                                                                            unsigned int* count) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceGetGpuInstancePossiblePlacements_v2");
  const ModelProfile* profile = profile_by_id(mig, profileId);
  if (count == nullptr || profile == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (mig.current != NVML_DEVICE_MIG_ENABLE) return NVML_ERROR_NOT_SUPPORTED;
  const auto n = static_cast<unsigned>(profile->starts.size());
  if (placements == nullptr) {
    *count = n;
    return NVML_SUCCESS;
  }
  if (*count < n) {
    *count = n;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  for (unsigned i = 0; i < n; ++i) placements[i] = {profile->starts[i], profile->size};
  *count = n;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceRemainingCapacity(nvmlDevice_t device, unsigned int profileId,
                                                                        unsigned int* count) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceGetGpuInstanceRemainingCapacity");
  const ModelProfile* profile = profile_by_id(mig, profileId);
  if (count == nullptr || profile == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (mig.current != NVML_DEVICE_MIG_ENABLE) return NVML_ERROR_NOT_SUPPORTED;
  // How many more fit, placing them one after the other at the first free placement.
  MigState trial = mig;
  unsigned more = 0;
  for (bool placed = true; placed;) {
    placed = false;
    for (const unsigned start : profile->starts) {
      if (!fits(trial, *profile, start)) continue;
      add_gi(trial, lowest_free_gi_id(trial), *profile, start);
      ++more;
      placed = true;
      break;
    }
  }
  *count = more;
  return NVML_SUCCESS;
}

namespace {
// Creation, shared by both create calls. "fail_create_after": N fails the (N+1)-th creation asked of this GPU (and
// only that one) with INSUFFICIENT_RESOURCES; "create_misplaced": true puts an instance at another free placement
// than the one asked for (a driver that does not do what it says, for verification).
nvmlReturn_t create_gi(nvmlDevice_t device, MigState& mig, unsigned profileId, const nvmlGpuInstancePlacement_t* asked,
                       nvmlGpuInstance_t* out) {
  const ModelProfile* profile = profile_by_id(mig, profileId);
  if (out == nullptr || profile == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (mig.current != NVML_DEVICE_MIG_ENABLE) return NVML_ERROR_NOT_SUPPORTED;
  if (asked != nullptr && (asked->size != profile->size ||
                           std::find(profile->starts.begin(), profile->starts.end(), asked->start) ==
                               profile->starts.end())) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  const nlohmann::json& gpu = gpu_config(device);
  if (gpu.contains("fail_create_after") && mig.creates++ == gpu["fail_create_after"].get<unsigned>()) {
    return NVML_ERROR_INSUFFICIENT_RESOURCES;
  }
  std::vector<unsigned> candidates;
  if (asked != nullptr && !gpu.value("create_misplaced", false)) candidates.push_back(asked->start);
  for (auto it = profile->starts.rbegin(); it != profile->starts.rend(); ++it) {
    if (asked == nullptr || *it != asked->start) candidates.push_back(*it);
  }
  if (asked == nullptr) std::reverse(candidates.begin(), candidates.end());  // first free, as the driver picks
  for (const unsigned start : candidates) {
    if (!fits(mig, *profile, start)) continue;
    const FakeGpuInstance& made = add_gi(mig, lowest_free_gi_id(mig), *profile, start);
    *out = gi_handle(device->gpu, made.id);
    return NVML_SUCCESS;
  }
  return NVML_ERROR_INSUFFICIENT_RESOURCES;
}
}  // namespace

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceCreateGpuInstance(nvmlDevice_t device, unsigned int profileId,
                                                          nvmlGpuInstance_t* gpuInstance) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceCreateGpuInstance");
  return create_gi(device, mig, profileId, nullptr, gpuInstance);
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceCreateGpuInstanceWithPlacement(nvmlDevice_t device, unsigned int profileId,
                                                                       const nvmlGpuInstancePlacement_t* placement,
                                                                       nvmlGpuInstance_t* gpuInstance) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceCreateGpuInstanceWithPlacement");
  if (placement == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  return create_gi(device, mig, profileId, placement, gpuInstance);
}

// As the driver: IN_USE while compute instances or processes remain on it.
FAKE_NVML_EXPORT nvmlReturn_t nvmlGpuInstanceDestroy(nvmlGpuInstance_t gpuInstance) {
  FAKE_NVML_CHECK_GI(gpuInstance, "nvmlGpuInstanceDestroy");
  if (!gi->cis.empty() || !gi->processes.empty()) return NVML_ERROR_IN_USE;
  mig.gis.erase(mig.gis.begin() + (gi - mig.gis.data()));
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstances(nvmlDevice_t device, unsigned int profileId,
                                                        nvmlGpuInstance_t* gpuInstances, unsigned int* count) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceGetGpuInstances");
  const ModelProfile* profile = profile_by_id(mig, profileId);
  if (gpuInstances == nullptr || count == nullptr || profile == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (mig.current != NVML_DEVICE_MIG_ENABLE) return NVML_ERROR_NOT_SUPPORTED;
  // The buffer holds the profile's instanceCount entries, as the driver requires.
  unsigned n = 0;
  for (const FakeGpuInstance& gi : mig.gis) {
    if (gi.profile == profile) gpuInstances[n++] = gi_handle(device->gpu, gi.id);
  }
  *count = n;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id,
                                                           nvmlGpuInstance_t* gpuInstance) {
  FAKE_NVML_CHECK_MODEL(device, "nvmlDeviceGetGpuInstanceById");
  if (gpuInstance == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (mig.current != NVML_DEVICE_MIG_ENABLE) return NVML_ERROR_NOT_SUPPORTED;
  if (find_gi(mig, id) == nullptr) return NVML_ERROR_NOT_FOUND;
  *gpuInstance = gi_handle(device->gpu, id);
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t* info) {
  FAKE_NVML_CHECK_GI(gpuInstance, "nvmlGpuInstanceGetInfo");
  if (info == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *info = {};
  info->device = parent;
  info->id = gi->id;
  info->profileId = gi->profile->id;
  info->placement = {gi->start, gi->profile->size};
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfo(nvmlGpuInstance_t gpuInstance,
                                                                           unsigned int profile,
                                                                           unsigned int engProfile,
                                                                           nvmlComputeInstanceProfileInfo_t* info) {
  FAKE_NVML_CHECK_GI(gpuInstance, "nvmlGpuInstanceGetComputeInstanceProfileInfo");
  if (info == nullptr || engProfile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED) return NVML_ERROR_INVALID_ARGUMENT;
  const unsigned slices = ci_profile_slices(profile);
  if (slices == 0 || slices > gi->profile->slices) return NVML_ERROR_NOT_SUPPORTED;
  *info = {};
  info->id = profile;
  info->sliceCount = slices;
  info->instanceCount = gi->profile->slices / slices;
  info->multiprocessorCount = slices * 16;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlGpuInstanceCreateComputeInstance(nvmlGpuInstance_t gpuInstance,
                                                                   unsigned int profileId,
                                                                   nvmlComputeInstance_t* computeInstance) {
  FAKE_NVML_CHECK_GI(gpuInstance, "nvmlGpuInstanceCreateComputeInstance");
  const unsigned slices = ci_profile_slices(profileId);
  if (computeInstance == nullptr || slices == 0 || slices > gi->profile->slices) return NVML_ERROR_INVALID_ARGUMENT;
  unsigned used = slices, id = 0;
  for (const FakeComputeInstance& ci : gi->cis) used += ci_profile_slices(ci.profile);
  if (used > gi->profile->slices) return NVML_ERROR_INSUFFICIENT_RESOURCES;
  while (std::any_of(gi->cis.begin(), gi->cis.end(), [&](const FakeComputeInstance& ci) { return ci.id == id; })) ++id;
  gi->cis.push_back({id, profileId});
  *computeInstance = ci_handle(gpuInstance->gpu, gi->id, id);
  return NVML_SUCCESS;
}

namespace {
FakeComputeInstance* find_ci(FakeGpuInstance& gi, unsigned id) {
  for (FakeComputeInstance& ci : gi.cis) {
    if (ci.id == id) return &ci;
  }
  return nullptr;
}
}  // namespace

// IN_USE while processes run on its GPU instance (the fake does not tell compute instances' processes apart).
FAKE_NVML_EXPORT nvmlReturn_t nvmlComputeInstanceDestroy(nvmlComputeInstance_t computeInstance) {
  FAKE_NVML_ENTER();
  if (computeInstance == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  nvmlDevice_t parent = &state().gpus[computeInstance->gpu].handle;
  if (nvmlReturn_t injected_result; injected(parent, "nvmlComputeInstanceDestroy", injected_result)) {
    return injected_result;
  }
  FakeGpuInstance* gi = find_gi(mig_state(parent), computeInstance->gi);
  FakeComputeInstance* ci = gi != nullptr ? find_ci(*gi, computeInstance->id) : nullptr;
  if (ci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  if (!gi->processes.empty()) return NVML_ERROR_IN_USE;
  gi->cis.erase(gi->cis.begin() + (ci - gi->cis.data()));
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstances(nvmlGpuInstance_t gpuInstance,
                                                                 unsigned int profileId,
                                                                 nvmlComputeInstance_t* computeInstances,
                                                                 unsigned int* count) {
  FAKE_NVML_CHECK_GI(gpuInstance, "nvmlGpuInstanceGetComputeInstances");
  if (computeInstances == nullptr || count == nullptr || ci_profile_slices(profileId) == 0) {
    return NVML_ERROR_INVALID_ARGUMENT;
  }
  unsigned n = 0;
  for (const FakeComputeInstance& ci : gi->cis) {
    if (ci.profile == profileId) computeInstances[n++] = ci_handle(gpuInstance->gpu, gi->id, ci.id);
  }
  *count = n;
  return NVML_SUCCESS;
}

FAKE_NVML_EXPORT nvmlReturn_t nvmlComputeInstanceGetInfo_v2(nvmlComputeInstance_t computeInstance,
                                                            nvmlComputeInstanceInfo_t* info) {
  FAKE_NVML_ENTER();
  if (computeInstance == nullptr || info == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  nvmlDevice_t parent = &state().gpus[computeInstance->gpu].handle;
  if (nvmlReturn_t injected_result; injected(parent, "nvmlComputeInstanceGetInfo_v2", injected_result)) {
    return injected_result;
  }
  FakeGpuInstance* gi = find_gi(mig_state(parent), computeInstance->gi);
  FakeComputeInstance* ci = gi != nullptr ? find_ci(*gi, computeInstance->id) : nullptr;
  if (ci == nullptr) return NVML_ERROR_INVALID_ARGUMENT;
  *info = {};
  info->device = parent;
  info->gpuInstance = gi_handle(computeInstance->gpu, gi->id);
  info->id = ci->id;
  info->profileId = ci->profile;
  info->placement = {0, ci_profile_slices(ci->profile)};
  return NVML_SUCCESS;
}
