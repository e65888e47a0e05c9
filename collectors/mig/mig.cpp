#include "collectors/mig/mig.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>

namespace tally::collectors {
namespace {

// ---- Reading ----------------------------------------------------------------------------------------------------

// "GPU 00000000:34:00.0", for messages.
std::string gpu_label(const NvmlLibrary& nvml, nvmlDevice_t gpu) {
  nvmlPciInfo_t pci{};
  if (nvml.api().nvmlDeviceGetPciInfo_v3(gpu, &pci) != NVML_SUCCESS) return "GPU (unknown PCI address)";
  return fmt::format("GPU {}", std::string(pci.busId, strnlen(pci.busId, sizeof pci.busId)));
}

Error nvml_error(const NvmlLibrary& nvml, const std::string& gpu, const char* call, nvmlReturn_t status) {
  const ErrorCode code = status == NVML_ERROR_NO_PERMISSION  ? ErrorCode::permission
                         : status == NVML_ERROR_NOT_SUPPORTED ? ErrorCode::unsupported
                                                              : ErrorCode::io;
  return make_error(code, "{}: {} failed: {}", gpu, call, nvml.error_string(status));
}

// Answers meaning "this driver or GPU has no such profile", skipped while scanning profile indices.
bool no_such_profile(nvmlReturn_t status) {
  return status == NVML_ERROR_NOT_SUPPORTED || status == NVML_ERROR_INVALID_ARGUMENT;
}

struct GpuProcess {
  unsigned pid = 0;
  unsigned gpu_instance_id = 0xffffffffu;  // none
};

// The processes on a GPU (compute, graphics, MPS), each with its GPU instance. In MIG mode the GPU handle answers
// the driver's aggregate view (every instance's processes, tagged). The versioned detail list (R550+) first; else
// the _v3 calls, whose entry size drivers 535.43.02-535.86.05 got wrong: the buffer is filled with a marker and
// counted in 32-byte entries, and a writer that went past 24 bytes an entry shows itself (as GpuSampler does).
Result<std::vector<GpuProcess>> list_processes(const NvmlLibrary& nvml, nvmlDevice_t gpu, const std::string& label) {
  const NvmlFunctions& api = nvml.api();
  std::vector<GpuProcess> out;
  if (api.nvmlDeviceGetRunningProcessDetailList != nullptr) {
    bool answered = true;
    for (unsigned mode : {NVML_PROCESS_MODE_COMPUTE, NVML_PROCESS_MODE_GRAPHICS, NVML_PROCESS_MODE_MPS}) {
      std::vector<nvmlProcessDetail_v1_t> entries(64);
      nvmlProcessDetailList_t list{};
      nvmlReturn_t status = NVML_ERROR_INSUFFICIENT_SIZE;
      for (int attempt = 0; attempt < 4 && status == NVML_ERROR_INSUFFICIENT_SIZE; ++attempt) {
        list = {nvmlProcessDetailList_v1, mode, static_cast<unsigned>(entries.size()), entries.data()};
        status = api.nvmlDeviceGetRunningProcessDetailList(gpu, &list);
        if (status == NVML_ERROR_INSUFFICIENT_SIZE) {
          entries.resize(std::max<std::size_t>(list.numProcArrayEntries, entries.size() * 2));
        }
      }
      if (status == NVML_ERROR_NOT_SUPPORTED || status == NVML_ERROR_ARGUMENT_VERSION_MISMATCH) {
        answered = false;
        break;
      }
      if (status != NVML_SUCCESS) return nvml_error(nvml, label, "nvmlDeviceGetRunningProcessDetailList", status);
      for (unsigned i = 0; i < std::min<std::size_t>(list.numProcArrayEntries, entries.size()); ++i) {
        out.push_back({entries[i].pid, entries[i].gpuInstanceId});
      }
    }
    if (answered) return out;
    out.clear();
  }
  const std::pair<decltype(api.nvmlDeviceGetComputeRunningProcesses_v3), const char*> calls[] = {
      {api.nvmlDeviceGetComputeRunningProcesses_v3, "nvmlDeviceGetComputeRunningProcesses_v3"},
      {api.nvmlDeviceGetGraphicsRunningProcesses_v3, "nvmlDeviceGetGraphicsRunningProcesses_v3"},
      {api.nvmlDeviceGetMPSComputeRunningProcesses_v3, "nvmlDeviceGetMPSComputeRunningProcesses_v3"}};
  if (calls[0].first == nullptr) {
    // Refusing to change partitions blind: a busy instance could not be told from an idle one.
    return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlDeviceGetComputeRunningProcesses_v3", label);
  }
  constexpr unsigned char kMarker = 0xA5;
  for (const auto& [call, name] : calls) {
    if (call == nullptr) continue;
    std::vector<unsigned char> bytes(sizeof(nvmlProcessInfo_v3_535_t) * 64);
    for (int attempt = 0;; ++attempt) {
      const auto capacity = static_cast<unsigned>(bytes.size() / sizeof(nvmlProcessInfo_v3_535_t));
      std::memset(bytes.data(), kMarker, bytes.size());
      unsigned count = capacity;
      const nvmlReturn_t status = call(gpu, &count, reinterpret_cast<nvmlProcessInfo_t*>(bytes.data()));
      if (status == NVML_ERROR_INSUFFICIENT_SIZE && attempt < 4) {
        bytes.resize(std::max(count, capacity * 2) * sizeof(nvmlProcessInfo_v3_535_t));
        continue;
      }
      if (status != NVML_SUCCESS) return nvml_error(nvml, label, name, status);
      count = std::min(count, capacity);
      const auto end24 = static_cast<std::ptrdiff_t>(count * sizeof(nvmlProcessInfo_t));
      const auto end32 = static_cast<std::ptrdiff_t>(count * sizeof(nvmlProcessInfo_v3_535_t));
      const bool wider = std::any_of(bytes.begin() + end24, bytes.begin() + end32,
                                     [](unsigned char b) { return b != kMarker; });
      const std::size_t stride = wider ? sizeof(nvmlProcessInfo_v3_535_t) : sizeof(nvmlProcessInfo_t);
      for (unsigned i = 0; i < count; ++i) {
        nvmlProcessInfo_t entry;
        std::memcpy(&entry, bytes.data() + i * stride, sizeof entry);
        out.push_back({entry.pid, entry.gpuInstanceId});
      }
      break;
    }
  }
  return out;
}

// "MIG 3g.40gb" (the driver's spelling) -> "3g.40gb".
std::string profile_name(const char* name, std::size_t size) {
  std::string text(name, strnlen(name, size));
  if (text.rfind("MIG ", 0) == 0) text.erase(0, 4);
  return text;
}

// Drivers without the V call: "<slices>g.<GiB rounded up>gb", which may differ from NVIDIA's own name (it cannot
// tell 1g.10gb from 1g.10gb+me, and A100-80GB's 7g reads 79gb). Documented in docs/mig.md.
std::string derived_name(unsigned slices, unsigned long long memory_mib) {
  return fmt::format("{}g.{}gb", slices, static_cast<unsigned long long>(std::ceil(memory_mib / 1024.0)));
}

Result<std::vector<MigProfile>> read_profiles(const NvmlLibrary& nvml, nvmlDevice_t gpu, const std::string& label) {
  const NvmlFunctions& api = nvml.api();
  std::vector<MigProfile> profiles;
  bool use_v = api.nvmlDeviceGetGpuInstanceProfileInfoV != nullptr;
  for (unsigned index = 0; index < TALLY_NVML_GPU_INSTANCE_PROFILE_SCAN; ++index) {
    MigProfile profile;
    profile.nvml_profile = index;
    nvmlReturn_t status = NVML_ERROR_FUNCTION_NOT_FOUND;
    if (use_v) {
      nvmlGpuInstanceProfileInfo_v2_t info{};
      info.version = nvmlGpuInstanceProfileInfo_v2;
      status = api.nvmlDeviceGetGpuInstanceProfileInfoV(gpu, index, &info);
      if (status == NVML_ERROR_ARGUMENT_VERSION_MISMATCH || status == NVML_ERROR_FUNCTION_NOT_FOUND) {
        use_v = false;  // an older driver: the plain call, with derived names
      } else if (status == NVML_SUCCESS) {
        profile.id = info.id;
        profile.name = profile_name(info.name, sizeof info.name);
        profile.slices = info.sliceCount;
        profile.instance_count = info.instanceCount;
        profile.memory_mib = info.memorySizeMB;
      }
    }
    if (!use_v) {
      if (api.nvmlDeviceGetGpuInstanceProfileInfo == nullptr) {
        return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlDeviceGetGpuInstanceProfileInfo", label);
      }
      nvmlGpuInstanceProfileInfo_t info{};
      status = api.nvmlDeviceGetGpuInstanceProfileInfo(gpu, index, &info);
      if (status == NVML_SUCCESS) {
        profile.id = info.id;
        profile.name = derived_name(info.sliceCount, info.memorySizeMB);
        profile.slices = info.sliceCount;
        profile.instance_count = info.instanceCount;
        profile.memory_mib = info.memorySizeMB;
      }
    }
    if (no_such_profile(status)) continue;
    if (status != NVML_SUCCESS) {
      return nvml_error(nvml, label,
                        use_v ? "nvmlDeviceGetGpuInstanceProfileInfoV" : "nvmlDeviceGetGpuInstanceProfileInfo", status);
    }
    if (api.nvmlDeviceGetGpuInstancePossiblePlacements_v2 == nullptr) {
      return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlDeviceGetGpuInstancePossiblePlacements_v2", label);
    }
    std::array<nvmlGpuInstancePlacement_t, 16> placements{};
    auto count = static_cast<unsigned>(placements.size());
    status = api.nvmlDeviceGetGpuInstancePossiblePlacements_v2(gpu, profile.id, placements.data(), &count);
    if (status != NVML_SUCCESS) {
      return nvml_error(nvml, label, "nvmlDeviceGetGpuInstancePossiblePlacements_v2", status);
    }
    for (unsigned i = 0; i < std::min<std::size_t>(count, placements.size()); ++i) {
      profile.placements.push_back(placements[i].start);
      profile.placement_size = placements[i].size;
    }
    profiles.push_back(std::move(profile));
  }
  return profiles;
}

// The compute-instance profiles a GPU instance offers, each with its profile ID and slices.
std::vector<nvmlComputeInstanceProfileInfo_t> ci_profiles(const NvmlLibrary& nvml, nvmlGpuInstance_t gi) {
  std::vector<nvmlComputeInstanceProfileInfo_t> out;
  for (unsigned index = 0; index < TALLY_NVML_COMPUTE_INSTANCE_PROFILE_SCAN; ++index) {
    nvmlComputeInstanceProfileInfo_t info{};
    if (nvml.api().nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                                                                 &info) == NVML_SUCCESS) {
      out.push_back(info);
    }
  }
  return out;
}

struct ComputeInstanceOf {
  nvmlComputeInstance_t handle = nullptr;
  unsigned id = 0, profile_id = 0;
};

Result<std::vector<ComputeInstanceOf>> compute_instances(const NvmlLibrary& nvml, nvmlGpuInstance_t gi,
                                                         const std::string& label) {
  std::vector<ComputeInstanceOf> out;
  for (const auto& profile : ci_profiles(nvml, gi)) {
    std::vector<nvmlComputeInstance_t> handles(std::max(profile.instanceCount, 1u) + 8);
    auto count = static_cast<unsigned>(handles.size());
    const nvmlReturn_t status = nvml.api().nvmlGpuInstanceGetComputeInstances(gi, profile.id, handles.data(), &count);
    if (status != NVML_SUCCESS) return nvml_error(nvml, label, "nvmlGpuInstanceGetComputeInstances", status);
    for (unsigned i = 0; i < std::min<std::size_t>(count, handles.size()); ++i) {
      nvmlComputeInstanceInfo_t info{};
      const nvmlReturn_t got = nvml.api().nvmlComputeInstanceGetInfo_v2(handles[i], &info);
      if (got != NVML_SUCCESS) return nvml_error(nvml, label, "nvmlComputeInstanceGetInfo_v2", got);
      out.push_back({handles[i], info.id, info.profileId});
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

// The partitioning calls every reconcile makes (the profile-info pair and the process listings are checked where
// they are used, since either of two will do).
std::optional<std::string> missing_partitioning_symbol(const NvmlFunctions& api) {
  const std::pair<const void*, const char*> needed[] = {
      {reinterpret_cast<const void*>(api.nvmlDeviceGetGpuInstances), "nvmlDeviceGetGpuInstances"},
      {reinterpret_cast<const void*>(api.nvmlDeviceGetGpuInstanceById), "nvmlDeviceGetGpuInstanceById"},
      {reinterpret_cast<const void*>(api.nvmlGpuInstanceGetInfo), "nvmlGpuInstanceGetInfo"},
      {reinterpret_cast<const void*>(api.nvmlGpuInstanceGetComputeInstanceProfileInfo),
       "nvmlGpuInstanceGetComputeInstanceProfileInfo"},
      {reinterpret_cast<const void*>(api.nvmlGpuInstanceGetComputeInstances), "nvmlGpuInstanceGetComputeInstances"},
      {reinterpret_cast<const void*>(api.nvmlComputeInstanceGetInfo_v2), "nvmlComputeInstanceGetInfo_v2"},
  };
  for (const auto& [symbol, name] : needed) {
    if (symbol == nullptr) return name;
  }
  return std::nullopt;
}

std::string join_pids(const std::vector<unsigned>& pids) {
  std::string out;
  for (const unsigned pid : pids) out += (out.empty() ? "" : ", ") + std::to_string(pid);
  return out;
}

}  // namespace

Result<MigGeometry> read_mig_geometry(const NvmlLibrary& nvml, nvmlDevice_t gpu) {
  const NvmlFunctions& api = nvml.api();
  const std::string label = gpu_label(nvml, gpu);
  MigGeometry geometry;
  if (api.nvmlDeviceGetMigMode == nullptr) {
    return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlDeviceGetMigMode", label);
  }
  unsigned current = 0, pending = 0;
  if (const nvmlReturn_t status = api.nvmlDeviceGetMigMode(gpu, &current, &pending); status != NVML_SUCCESS) {
    if (status == NVML_ERROR_NOT_SUPPORTED) return geometry;  // no MIG on this GPU: nothing more to read
    return nvml_error(nvml, label, "nvmlDeviceGetMigMode", status);
  }
  geometry.supported = true;
  geometry.enabled = current == NVML_DEVICE_MIG_ENABLE;
  geometry.pending_enabled = pending == NVML_DEVICE_MIG_ENABLE;
  auto processes = list_processes(nvml, gpu, label);
  if (!processes) return processes.error();
  if (geometry.enabled) {
    if (const auto missing = missing_partitioning_symbol(api)) {
      return make_error(ErrorCode::unsupported, "{}: NVML lacks {}", label, *missing);
    }
    auto profiles = read_profiles(nvml, gpu, label);
    if (!profiles) return profiles.error();
    geometry.profiles = std::move(*profiles);
    for (const MigProfile& profile : geometry.profiles) {
      // The driver writes up to instanceCount handles; room for more costs nothing.
      std::vector<nvmlGpuInstance_t> handles(profile.instance_count + 8);
      auto count = static_cast<unsigned>(handles.size());
      const nvmlReturn_t status = api.nvmlDeviceGetGpuInstances(gpu, profile.id, handles.data(), &count);
      if (status != NVML_SUCCESS) return nvml_error(nvml, label, "nvmlDeviceGetGpuInstances", status);
      for (unsigned i = 0; i < std::min<std::size_t>(count, handles.size()); ++i) {
        nvmlGpuInstanceInfo_t info{};
        const nvmlReturn_t got = api.nvmlGpuInstanceGetInfo(handles[i], &info);
        if (got != NVML_SUCCESS) return nvml_error(nvml, label, "nvmlGpuInstanceGetInfo", got);
        MigGpuInstance instance{info.id, info.profileId, profile.name, info.placement.start, info.placement.size, {}, {}};
        auto cis = compute_instances(nvml, handles[i], label);
        if (!cis) return cis.error();
        for (const auto& ci : *cis) instance.compute_instance_ids.push_back(ci.id);
        geometry.instances.push_back(std::move(instance));
      }
    }
    std::sort(geometry.instances.begin(), geometry.instances.end(),
              [](const MigGpuInstance& a, const MigGpuInstance& b) { return a.placement_start < b.placement_start; });
  }
  for (const GpuProcess& process : *processes) {
    auto on = std::find_if(geometry.instances.begin(), geometry.instances.end(),
                           [&](const MigGpuInstance& i) { return i.gpu_instance_id == process.gpu_instance_id; });
    std::vector<unsigned>& pids = on != geometry.instances.end() ? on->pids : geometry.gpu_pids;
    if (std::find(pids.begin(), pids.end(), process.pid) == pids.end()) pids.push_back(process.pid);
  }
  return geometry;
}

// ---- Planning ---------------------------------------------------------------------------------------------------

std::string MigStep::describe() const {
  switch (kind) {
    case Kind::enable_mig:
      return "enable MIG mode";
    case Kind::disable_mig:
      return "disable MIG mode";
    case Kind::destroy_instance:
      return fmt::format("destroy GPU instance {} ({} at slice {})", gpu_instance_id, profile, placement_start);
    case Kind::create_instance:
      return fmt::format("create {} at slice {}", profile, placement_start);
  }
  return "?";
}

namespace {

const MigProfile* find_profile(const std::vector<MigProfile>& profiles, const std::string& name) {
  for (const MigProfile& profile : profiles) {
    if (profile.name == name) return &profile;
  }
  return nullptr;
}

// Memory slices taken, one bit each (8 on every MIG GPU so far; 64 leaves room).
using Occupancy = std::uint64_t;
Occupancy span(unsigned start, unsigned size) {
  return size >= 64 ? ~Occupancy{0} : ((Occupancy{1} << size) - 1) << start;
}

// Depth-first search, in the order given (larger profiles first), each profile at its lowest free start first:
// the first complete assignment found, so the same input always gives the same layout.
bool place(const std::vector<const MigProfile*>& todo, std::size_t next, Occupancy taken,
           std::vector<unsigned>& starts) {
  if (next == todo.size()) return true;
  const MigProfile& profile = *todo[next];
  for (const unsigned start : profile.placements) {
    const Occupancy mine = span(start, profile.placement_size);
    if ((taken & mine) != 0) continue;
    starts[next] = start;
    if (place(todo, next + 1, taken | mine, starts)) return true;
  }
  return false;
}

std::string names_of(const std::vector<const MigProfile*>& profiles) {
  std::string out;
  for (const MigProfile* profile : profiles) out += (out.empty() ? "" : ", ") + profile->name;
  return out;
}

MigPlan refuse(std::string reason) {
  MigPlan plan;
  plan.refusals.push_back({std::move(reason)});
  return plan;
}

}  // namespace

MigPlan plan_mig(const MigGeometry& now, const MigWanted& wanted) {
  if (!now.supported) {
    return wanted.mig ? refuse("this GPU does not support MIG") : MigPlan{};
  }
  if (now.pending_enabled != now.enabled) {
    return refuse(fmt::format("MIG mode change needs a GPU reset (pending mode differs: {} now, {} after a reset)",
                              now.enabled ? "enabled" : "disabled", now.pending_enabled ? "enabled" : "disabled"));
  }
  std::vector<unsigned> all_pids = now.gpu_pids;
  for (const MigGpuInstance& instance : now.instances) {
    all_pids.insert(all_pids.end(), instance.pids.begin(), instance.pids.end());
  }
  if (wanted.mig != now.enabled && !all_pids.empty()) {
    return refuse(fmt::format("MIG mode change refused: the GPU is in use by pid {}", join_pids(all_pids)));
  }

  MigPlan plan;
  if (!wanted.mig) {  // whole GPU: every instance goes, then the mode
    if (!now.enabled) return plan;
    for (const MigGpuInstance& instance : now.instances) {
      plan.steps.push_back({MigStep::Kind::destroy_instance, instance.gpu_instance_id, instance.profile_name,
                            instance.placement_start});
    }
    plan.steps.push_back({MigStep::Kind::disable_mig, 0, {}, 0});
    return plan;
  }
  if (!now.enabled) {
    plan.steps.push_back({MigStep::Kind::enable_mig, 0, {}, 0});
    if (now.profiles.empty()) {
      plan.replan_after_enable = true;
      return plan;
    }
  }

  // Which wanted profiles exist already (busy instances first, so the ones kept are the ones in use).
  std::vector<const MigProfile*> missing;
  std::map<std::string, unsigned> still_wanted;
  for (const std::string& name : wanted.profiles) {
    const MigProfile* profile = find_profile(now.profiles, name);
    if (profile == nullptr) {
      std::string offered;
      for (const MigProfile& p : now.profiles) offered += (offered.empty() ? "" : ", ") + p.name;
      return refuse(fmt::format("profile {} is not offered by this GPU (offered: {})", name, offered));
    }
    ++still_wanted[name];
  }
  for (const auto& [name, count] : still_wanted) {
    const MigProfile* profile = find_profile(now.profiles, name);
    if (count > profile->instance_count) {
      return refuse(fmt::format("the wanted profiles do not fit: {} x {}, this GPU allows {}", count, name,
                                profile->instance_count));
    }
  }
  std::vector<const MigGpuInstance*> existing;
  for (const MigGpuInstance& instance : now.instances) existing.push_back(&instance);
  std::stable_sort(existing.begin(), existing.end(),
                   [](const MigGpuInstance* a, const MigGpuInstance* b) { return !a->pids.empty() && b->pids.empty(); });
  std::vector<const MigGpuInstance*> kept, destroyed;
  for (const MigGpuInstance* instance : existing) {
    auto it = still_wanted.find(instance->profile_name);
    if (it != still_wanted.end() && it->second > 0) {
      --it->second;
      kept.push_back(instance);
    } else {
      destroyed.push_back(instance);
    }
  }
  for (const std::string& name : wanted.profiles) {
    if (auto it = still_wanted.find(name); it->second > 0) {
      --it->second;
      missing.push_back(find_profile(now.profiles, name));
    }
  }
  for (const MigGpuInstance* instance : destroyed) {
    if (!instance->pids.empty()) {
      return refuse(fmt::format("GPU instance {} ({}) is in use by pid {}", instance->gpu_instance_id,
                                instance->profile_name, join_pids(instance->pids)));
    }
  }

  // Place the missing ones around the kept ones; failing that, move the idle kept ones too.
  const auto larger_first = [](const MigProfile* a, const MigProfile* b) {
    return std::tie(b->placement_size, b->slices, a->name) < std::tie(a->placement_size, a->slices, b->name);
  };
  std::stable_sort(missing.begin(), missing.end(), larger_first);
  const auto occupancy = [](const std::vector<const MigGpuInstance*>& instances) {
    Occupancy taken = 0;
    for (const MigGpuInstance* instance : instances) taken |= span(instance->placement_start, instance->placement_size);
    return taken;
  };
  std::vector<unsigned> starts(missing.size());
  if (!place(missing, 0, occupancy(kept), starts)) {
    std::vector<const MigGpuInstance*> staying;
    for (const MigGpuInstance* instance : kept) {
      if (!instance->pids.empty()) {
        staying.push_back(instance);
        continue;
      }
      destroyed.push_back(instance);
      missing.push_back(find_profile(now.profiles, instance->profile_name));
    }
    std::stable_sort(missing.begin(), missing.end(), larger_first);
    starts.assign(missing.size(), 0);
    if (!place(missing, 0, occupancy(staying), starts)) {
      std::vector<const MigProfile*> busy;
      for (const MigGpuInstance* instance : staying) busy.push_back(find_profile(now.profiles, instance->profile_name));
      return refuse(fmt::format("the wanted profiles do not fit: {}{}", names_of(missing),
                                busy.empty() ? std::string() : " beside the busy " + names_of(busy)));
    }
    kept = std::move(staying);
  }

  std::sort(destroyed.begin(), destroyed.end(),
            [](const MigGpuInstance* a, const MigGpuInstance* b) { return a->placement_start < b->placement_start; });
  for (const MigGpuInstance* instance : destroyed) {
    plan.steps.push_back({MigStep::Kind::destroy_instance, instance->gpu_instance_id, instance->profile_name,
                          instance->placement_start});
  }
  for (std::size_t i = 0; i < missing.size(); ++i) {
    plan.steps.push_back({MigStep::Kind::create_instance, 0, missing[i]->name, starts[i]});
    plan.layout.push_back({missing[i]->name, starts[i]});
  }
  for (const MigGpuInstance* instance : kept) plan.layout.push_back({instance->profile_name, instance->placement_start});
  std::sort(plan.layout.begin(), plan.layout.end(),
            [](const MigPlacement& a, const MigPlacement& b) { return a.placement_start < b.placement_start; });
  return plan;
}

// ---- Applying ---------------------------------------------------------------------------------------------------

namespace {

// What one applied step changed, so that it can be undone.
struct Applied {
  MigStep step;
  std::optional<unsigned> created_id;  // create: the GPU instance the driver made
  unsigned profile_id = 0;            // destroy: what to make again
  unsigned placement_size = 0;        //   "
  std::vector<unsigned> ci_profiles;  //   its compute instances' profile IDs
};

class Applier {
 public:
  Applier(const NvmlLibrary& nvml, nvmlDevice_t gpu)
      : nvml_(nvml), api_(nvml.api()), gpu_(gpu), label_(gpu_label(nvml, gpu)) {}

  // A mode change, with the driver's verdict: an error (the call failed), a refusal (the driver would not do it
  // now; the pending mode is put back so a later reset does not do it behind our back), or done.
  Result<std::optional<MigRefusal>> set_mode(bool enable) {
    if (api_.nvmlDeviceSetMigMode == nullptr) {
      return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlDeviceSetMigMode", label_);
    }
    unsigned before = 0, pending = 0;
    if (const nvmlReturn_t status = api_.nvmlDeviceGetMigMode(gpu_, &before, &pending); status != NVML_SUCCESS) {
      return nvml_error(nvml_, label_, "nvmlDeviceGetMigMode", status);
    }
    nvmlReturn_t activation = NVML_SUCCESS;
    const nvmlReturn_t status =
        api_.nvmlDeviceSetMigMode(gpu_, enable ? NVML_DEVICE_MIG_ENABLE : NVML_DEVICE_MIG_DISABLE, &activation);
    const nvmlReturn_t verdict = status != NVML_SUCCESS ? status : activation;
    unsigned after = before;
    if (verdict == NVML_SUCCESS && api_.nvmlDeviceGetMigMode(gpu_, &after, &pending) != NVML_SUCCESS) after = before;
    const bool took = verdict == NVML_SUCCESS && after == (enable ? 1u : 0u);
    if (took) return std::optional<MigRefusal>{};
    std::string reason;
    if (verdict == NVML_ERROR_IN_USE) {
      reason = fmt::format("MIG mode change refused: the GPU is in use by another client (nvmlDeviceSetMigMode: {})",
                           nvml_.error_string(verdict));
    } else if (verdict == NVML_ERROR_RESET_REQUIRED || verdict == NVML_SUCCESS) {
      reason = "MIG mode change needs a GPU reset (pending mode differs)";
    } else if (status != NVML_SUCCESS) {
      return nvml_error(nvml_, label_, "nvmlDeviceSetMigMode", status);
    } else {
      return make_error(ErrorCode::io, "{}: nvmlDeviceSetMigMode could not activate the mode: {}", label_,
                        nvml_.error_string(activation));
    }
    nvmlReturn_t ignored = NVML_SUCCESS;
    api_.nvmlDeviceSetMigMode(gpu_, before, &ignored);  // the pending mode back to what is current
    return std::optional<MigRefusal>{MigRefusal{std::move(reason)}};
  }

  // A GPU instance of `profile` at `start`, with one compute instance of the largest profile it offers (the whole
  // GPU instance) or of each of `ci_profiles`. The id is reported as soon as the GPU instance exists, so that a
  // failure after it still leaves something to undo.
  Result<void> create(unsigned profile_id, unsigned start, unsigned size,
                      const std::vector<unsigned>& ci_profiles_wanted, std::optional<unsigned>& created_id) {
    if (api_.nvmlDeviceCreateGpuInstanceWithPlacement == nullptr) {
      return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlDeviceCreateGpuInstanceWithPlacement", label_);
    }
    if (api_.nvmlGpuInstanceCreateComputeInstance == nullptr) {
      return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlGpuInstanceCreateComputeInstance", label_);
    }
    const nvmlGpuInstancePlacement_t placement{start, size};
    nvmlGpuInstance_t gi = nullptr;
    nvmlReturn_t status = api_.nvmlDeviceCreateGpuInstanceWithPlacement(gpu_, profile_id, &placement, &gi);
    if (status != NVML_SUCCESS) return nvml_error(nvml_, label_, "nvmlDeviceCreateGpuInstanceWithPlacement", status);
    nvmlGpuInstanceInfo_t info{};
    status = api_.nvmlGpuInstanceGetInfo(gi, &info);
    if (status != NVML_SUCCESS) return nvml_error(nvml_, label_, "nvmlGpuInstanceGetInfo", status);
    created_id = info.id;
    std::vector<unsigned> cis = ci_profiles_wanted;
    if (cis.empty()) {
      const auto offered = ci_profiles(nvml_, gi);
      const auto largest = std::max_element(offered.begin(), offered.end(), [](const auto& a, const auto& b) {
        return a.sliceCount < b.sliceCount;
      });
      if (largest == offered.end()) {
        return make_error(ErrorCode::io, "{}: GPU instance {} offers no compute instance profile", label_, info.id);
      }
      cis.push_back(largest->id);
    }
    for (const unsigned ci_profile : cis) {
      nvmlComputeInstance_t ci = nullptr;
      status = api_.nvmlGpuInstanceCreateComputeInstance(gi, ci_profile, &ci);
      if (status != NVML_SUCCESS) return nvml_error(nvml_, label_, "nvmlGpuInstanceCreateComputeInstance", status);
    }
    return {};
  }

  // Destroys a GPU instance and its compute instances, first noting what it takes to make it again.
  Result<void> destroy(unsigned id, Applied* record) {
    if (api_.nvmlGpuInstanceDestroy == nullptr || api_.nvmlComputeInstanceDestroy == nullptr) {
      return make_error(ErrorCode::unsupported, "{}: NVML lacks nvmlGpuInstanceDestroy", label_);
    }
    nvmlGpuInstance_t gi = nullptr;
    nvmlReturn_t status = api_.nvmlDeviceGetGpuInstanceById(gpu_, id, &gi);
    if (status != NVML_SUCCESS) return nvml_error(nvml_, label_, "nvmlDeviceGetGpuInstanceById", status);
    nvmlGpuInstanceInfo_t info{};
    status = api_.nvmlGpuInstanceGetInfo(gi, &info);
    if (status != NVML_SUCCESS) return nvml_error(nvml_, label_, "nvmlGpuInstanceGetInfo", status);
    auto cis = compute_instances(nvml_, gi, label_);
    if (!cis) return cis.error();
    if (record != nullptr) {
      record->profile_id = info.profileId;
      record->placement_size = info.placement.size;
      for (const auto& ci : *cis) record->ci_profiles.push_back(ci.profile_id);
    }
    for (const auto& ci : *cis) {
      status = api_.nvmlComputeInstanceDestroy(ci.handle);
      if (status != NVML_SUCCESS) return nvml_error(nvml_, label_, "nvmlComputeInstanceDestroy", status);
    }
    status = api_.nvmlGpuInstanceDestroy(gi);
    if (status != NVML_SUCCESS) return nvml_error(nvml_, label_, "nvmlGpuInstanceDestroy", status);
    return {};
  }

 private:
  const NvmlLibrary& nvml_;
  const NvmlFunctions& api_;
  nvmlDevice_t gpu_;
  std::string label_;
};

std::string describe_layout(const std::vector<MigPlacement>& layout) {
  std::string out;
  for (const MigPlacement& p : layout) {
    out += fmt::format("{}{} at slice {}", out.empty() ? "" : ", ", p.profile, p.placement_start);
  }
  return out.empty() ? "none" : out;
}

// What NVML reports against what the plan said there would be: the mode, and every instance where it was meant to
// be, each with a compute instance (a GPU instance without one runs nothing).
std::optional<std::string> verify(const MigGeometry& after, const MigWanted& wanted, const MigPlan& plan) {
  if (after.enabled != wanted.mig) {
    return fmt::format("MIG mode is {} after the steps", after.enabled ? "enabled" : "disabled");
  }
  std::vector<MigPlacement> seen;
  for (const MigGpuInstance& instance : after.instances) {
    if (instance.compute_instance_ids.empty()) {
      return fmt::format("GPU instance {} ({}) has no compute instance", instance.gpu_instance_id,
                         instance.profile_name);
    }
    seen.push_back({instance.profile_name, instance.placement_start});
  }
  std::vector<MigPlacement> expected = plan.layout;
  std::sort(seen.begin(), seen.end());
  std::sort(expected.begin(), expected.end());
  if (seen != expected) {
    return fmt::format("NVML reports {}; the plan was {}", describe_layout(seen), describe_layout(expected));
  }
  return std::nullopt;
}

}  // namespace

MigOutcome reconcile_mig(const NvmlLibrary& nvml, nvmlDevice_t gpu, const MigWanted& wanted, bool dry_run) {
  // One reconcile at a time in this process: two would plan from the same geometry and race on the slices.
  static std::mutex one_at_a_time;
  const std::lock_guard<std::mutex> lock(one_at_a_time);

  MigOutcome outcome;
  const auto read = [&]() -> bool {
    auto geometry = read_mig_geometry(nvml, gpu);
    if (!geometry) {
      outcome.error += (outcome.error.empty() ? "" : "; ") + geometry.error().message;
      return false;
    }
    outcome.after = std::move(*geometry);
    return true;
  };
  if (!read()) return outcome;
  MigPlan plan = plan_mig(outcome.after, wanted);
  outcome.planned = plan.steps;
  outcome.refusals = plan.refusals;
  if (!plan.refusals.empty() || plan.steps.empty() || dry_run) return outcome;

  Applier applier(nvml, gpu);
  std::vector<Applied> applied;
  std::string failure;  // an error; a refusal is in outcome.refusals instead
  const auto apply = [&](const MigStep& step) -> bool {
    Applied record{step, std::nullopt, 0, 0, {}};
    Result<void> result;
    switch (step.kind) {
      case MigStep::Kind::enable_mig:
      case MigStep::Kind::disable_mig: {
        auto verdict = applier.set_mode(step.kind == MigStep::Kind::enable_mig);
        if (!verdict) {
          result = verdict.error();
        } else if (*verdict) {
          outcome.refusals.push_back(**verdict);
          return false;
        }
        break;
      }
      case MigStep::Kind::destroy_instance:
        result = applier.destroy(step.gpu_instance_id, &record);
        break;
      case MigStep::Kind::create_instance: {
        const MigProfile* profile = find_profile(outcome.after.profiles, step.profile);
        result = applier.create(profile->id, step.placement_start, profile->placement_size, {}, record.created_id);
        if (record.created_id) applied.push_back(record);  // undo even a half-made one
        if (!result) failure = result.error().message;
        if (result) outcome.done.push_back(step);
        return static_cast<bool>(result);
      }
    }
    if (!result) {
      failure = result.error().message;
      return false;
    }
    applied.push_back(record);
    outcome.done.push_back(step);
    return true;
  };

  bool ok = true;
  for (const MigStep& step : plan.steps) {
    if (!(ok = apply(step))) break;
  }
  if (ok && plan.replan_after_enable) {
    // MIG is on now, so the profiles are known: plan the instances.
    ok = read();
    if (ok) {
      plan = plan_mig(outcome.after, wanted);
      outcome.planned.insert(outcome.planned.end(), plan.steps.begin(), plan.steps.end());
      if (!plan.refusals.empty()) {
        outcome.refusals.insert(outcome.refusals.end(), plan.refusals.begin(), plan.refusals.end());
        ok = false;
      }
      for (std::size_t i = 0; ok && i < plan.steps.size(); ++i) ok = apply(plan.steps[i]);
    } else {
      failure = outcome.error;
    }
  }
  if (ok && read()) {
    if (const auto mismatch = verify(outcome.after, wanted, plan)) {
      failure = "verification failed: " + *mismatch;
      ok = false;
    }
  } else if (ok) {
    failure = outcome.error;
    ok = false;
  }
  if (ok) return outcome;

  // Undo, newest first: what was made goes, what was destroyed comes back where it was, the mode goes back.
  outcome.error = failure;
  std::string rollback_failure;
  for (auto it = applied.rbegin(); it != applied.rend(); ++it) {
    Result<void> undone;
    switch (it->step.kind) {
      case MigStep::Kind::create_instance:
        undone = applier.destroy(*it->created_id, nullptr);
        break;
      case MigStep::Kind::destroy_instance: {
        std::optional<unsigned> ignored;
        undone = applier.create(it->profile_id, it->step.placement_start, it->placement_size, it->ci_profiles, ignored);
        break;
      }
      case MigStep::Kind::enable_mig:
      case MigStep::Kind::disable_mig: {
        auto verdict = applier.set_mode(it->step.kind == MigStep::Kind::disable_mig);
        if (!verdict) undone = verdict.error();
        else if (*verdict) undone = make_error(ErrorCode::io, "{}", (*verdict)->reason);
        break;
      }
    }
    if (!undone) {
      rollback_failure += fmt::format("{}undoing \"{}\": {}", rollback_failure.empty() ? "" : "; ", it->step.describe(),
                                      undone.error().message);
    }
  }
  outcome.rolled_back = rollback_failure.empty() && !applied.empty();
  if (!rollback_failure.empty()) outcome.error += "; rollback failed: " + rollback_failure;
  read();
  return outcome;
}

}  // namespace tally::collectors
