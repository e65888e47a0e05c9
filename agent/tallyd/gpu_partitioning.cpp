#include "agent/tallyd/gpu_partitioning.hpp"

#include <unistd.h>

#include <algorithm>
#include <utility>
#include <iterator>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "agent/base/proc.hpp"
#include "agent/partitioning/device_holders.hpp"
#include "agent/tallyd/partition_audit.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"
#include "collectors/mig/mig.hpp"

namespace tally::agent {

using nlohmann::json;
using partitioning::CompiledPolicy;
using partitioning::DevicePolicy;
using partitioning::GpuInventory;
using partitioning::PartitionPlan;
using partitioning::PolicyTables;

struct GpuPartitioning::Compiled {
  GpuInventory inventory;
  CompiledPolicy policy;
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::string> node_paths;  // every GPU node of the inventory

  std::string node_name(std::uint32_t major, std::uint32_t minor) const {
    const auto it = node_paths.find({major, minor});
    return it != node_paths.end() ? it->second : fmt::format("c {}:{}", major, minor);
  }
  // The GPUs and slices `grants` opens, by target ("0", "0/mig/1"); "every GPU" for a system client's.
  std::vector<std::string> targets(std::uint64_t grants) const {
    if (grants == partitioning::kAllGrants) return {"every GPU"};
    std::vector<std::string> out;
    for (const auto& grant : policy.grants) {
      if ((grants >> grant.bit) & 1) out.push_back(grant.target);
    }
    return out;
  }
};

namespace {

// Who may open what, in words: what a plan diff compares.
struct Access {
  std::set<std::string> restricted;                          // device nodes open to their holders only
  std::map<std::string, std::set<std::string>> can_open;     // workload → restricted nodes it opens
};

Access access_of(const PolicyTables& tables,
                 const std::map<std::string, std::set<std::string>>& can_open,
                 const std::function<std::string(std::uint32_t, std::uint32_t)>& name) {
  Access access;
  for (const auto& [device, grants] : tables.devices) {
    // A node restricted only to keep revoked workloads out stays open to every other: not "restricted" in words.
    if ((grants & partitioning::kOpenGrant) != 0) continue;
    access.restricted.insert(name(device.first, device.second));
  }
  access.can_open = can_open;
  return access;
}

std::vector<std::string> describe_changes(const Access& before, const Access& after) {
  std::vector<std::string> lines;
  for (const std::string& node : after.restricted) {
    if (!before.restricted.contains(node)) lines.push_back(fmt::format("{} becomes restricted", node));
  }
  for (const std::string& node : before.restricted) {
    if (!after.restricted.contains(node)) lines.push_back(fmt::format("{} becomes open to every workload", node));
  }
  std::set<std::string> workloads;
  for (const auto& [workload, nodes] : before.can_open) workloads.insert(workload);
  for (const auto& [workload, nodes] : after.can_open) workloads.insert(workload);
  static const std::set<std::string> kNone;
  for (const std::string& workload : workloads) {
    const auto b = before.can_open.find(workload);
    const auto a = after.can_open.find(workload);
    const auto& had = b != before.can_open.end() ? b->second : kNone;
    const auto& has = a != after.can_open.end() ? a->second : kNone;
    for (const std::string& node : has) {
      if (!had.contains(node)) lines.push_back(fmt::format("{} may open {}", workload, node));
    }
    for (const std::string& node : had) {
      if (!has.contains(node) && after.restricted.contains(node)) {
        lines.push_back(fmt::format("{} may no longer open {}", workload, node));
      }
    }
  }
  return lines;
}

json slices_json(const partitioning::GpuNodes& gpu) {
  json slices = json::array();
  for (const auto& slice : gpu.slices) {
    json caps = json::array();
    for (const auto& cap : slice.caps) caps.push_back(cap.path);
    slices.push_back({{"index", slice.index},
                      {"gpu_instance_id", slice.gpu_instance_id},
                      {"compute_instance_id", slice.compute_instance_id},
                      {"uuid", slice.uuid},
                      {"caps", caps}});
  }
  return slices;
}

}  // namespace

GpuPartitioning::GpuPartitioning(GpuPartitioningOptions options, Publish publish)
    : options_(std::move(options)), publish_(std::move(publish)) {
  if (options_.nvml_library.empty()) {
    nvml_error_ = "[topology] nvml_library is empty";
    return;
  }
  auto nvml = collectors::NvmlLibrary::open(options_.nvml_library);
  if (nvml) nvml_ = std::move(*nvml);
  else nvml_error_ = nvml.error().message;
}

GpuPartitioning::~GpuPartitioning() = default;

void GpuPartitioning::audit(const v1::PartitionEvent& event, spdlog::level::level_enum level) {
  journal_decision(event, level);
  publish_(event);
}

void GpuPartitioning::audit(v1::PartitionEvent::Kind kind, spdlog::level::level_enum level, std::string gpu,
                            std::string detail, std::string workload) {
  v1::PartitionEvent event;
  event.set_kind(kind);
  event.set_generation(generation_);
  event.set_gpu(std::move(gpu));
  event.set_detail(std::move(detail));
  event.set_workload(std::move(workload));
  audit(event, level);
}

GpuPartitioning::Compiled GpuPartitioning::compile(const PartitionPlan& plan) {
  Compiled compiled;
  compiled.inventory = partitioning::read_gpu_inventory(nvml_.get(), options_.fs);
  for (const auto& gpu : compiled.inventory.gpus) {
    if (gpu.node) compiled.node_paths[{gpu.node->major, gpu.node->minor}] = gpu.node->path;
    for (const auto& node : gpu.also) compiled.node_paths[{node.major, node.minor}] = node.path;
    for (const auto& slice : gpu.slices) {
      for (const auto& cap : slice.caps) compiled.node_paths[{cap.major, cap.minor}] = cap.path;
    }
  }
  list_cgroups();
  std::optional<partitioning::CgroupRef> own;
  if (auto self = identify_process(options_.fs, ::getpid(), options_.identity); self && self->cgroup_path != "/") {
    const auto relative = std::filesystem::path(self->cgroup_path).relative_path();
    if (auto id = collectors::cgroup_id_of(options_.cgroup2_root / relative)) own = {{*id, self->cgroup_path}};
  }
  compiled.policy =
      partitioning::compile_policy(plan, compiled.inventory, cgroup_paths_, options_.identity, own, revoked_);
  return compiled;
}

json GpuPartitioning::reconcile_geometry(const PartitionPlan& plan, bool dry_run) {
  json out = json::array();
  if (plan.gpus.empty()) return out;
  const GpuInventory inventory = partitioning::read_gpu_inventory(nvml_.get(), options_.fs);
  for (const auto& wanted : plan.gpus) {
    json entry{{"select", wanted.select}, {"planned", json::array()}, {"done", json::array()},
               {"refused", json::array()}, {"rolled_back", false}};
    auto refuse = [&](const std::string& reason) {
      entry["refused"].push_back(reason);
      if (dry_run) return;
      audit(v1::PartitionEvent::KIND_REFUSED, spdlog::level::warn, wanted.select,
            fmt::format("{} ({})", reason, wanted.origin));
    };
    const partitioning::GpuNodes* gpu = inventory.find(wanted.select);
    nvmlDevice_t handle = nullptr;
    if (!nvml_) {
      refuse(fmt::format("MIG geometry is set through NVML, which is not loaded: {}", nvml_error_));
    } else if (gpu == nullptr) {
      refuse(fmt::format("GPU '{}' is not on this node", wanted.select));
    } else if (gpu->vendor != "nvidia") {
      refuse(fmt::format("GPU {} is an {} GPU: MIG geometry is NVIDIA's", gpu->index, gpu->vendor));
    } else if (const nvmlReturn_t status = nvml_->api().nvmlDeviceGetHandleByIndex_v2(gpu->index, &handle);
               status != NVML_SUCCESS) {
      refuse(fmt::format("nvmlDeviceGetHandleByIndex_v2({}): {}", gpu->index, nvml_->error_string(status)));
    }
    if (handle == nullptr) {
      out.push_back(std::move(entry));
      continue;
    }
    const std::string target = std::to_string(gpu->index);
    entry["gpu"] = gpu->index;
    const collectors::MigWanted wanted_geometry{wanted.mig, wanted.profiles};
    // NVML lists the processes with a context on an instance; one that holds its capability open has none yet.
    // Neither kind of holder loses its instance: such a GPU is left as it is.
    if (!dry_run) {
      const auto held = held_instances(*gpu, collectors::reconcile_mig(*nvml_, handle, wanted_geometry, true).planned);
      if (!held.empty()) {
        for (const auto& reason : held) refuse(reason);
        out.push_back(std::move(entry));
        continue;
      }
    }
    const collectors::MigOutcome outcome = collectors::reconcile_mig(*nvml_, handle, wanted_geometry, dry_run);
    for (const auto& step : outcome.planned) entry["planned"].push_back(step.describe());
    for (const auto& step : outcome.done) {
      entry["done"].push_back(step.describe());
      audit(v1::PartitionEvent::KIND_RECONCILE_STEP, spdlog::level::info, target, step.describe());
    }
    for (const auto& refusal : outcome.refusals) refuse(refusal.reason);
    if (outcome.rolled_back) {
      entry["rolled_back"] = true;
      entry["error"] = outcome.error;
      audit(v1::PartitionEvent::KIND_ROLLED_BACK, spdlog::level::err, target, outcome.error);
    } else if (!outcome.error.empty()) {
      refuse(outcome.error);
    }
    out.push_back(std::move(entry));
  }
  return out;
}

std::vector<std::string> GpuPartitioning::held_instances(const partitioning::GpuNodes& gpu,
                                                        const std::vector<collectors::MigStep>& steps) const {
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::string> watched;  // capability → the instance it opens
  for (const auto& step : steps) {
    if (step.kind != collectors::MigStep::Kind::destroy_instance) continue;
    for (const auto& slice : gpu.slices) {
      if (slice.gpu_instance_id != step.gpu_instance_id) continue;
      for (const auto& cap : slice.caps) {
        watched[{cap.major, cap.minor}] = fmt::format("GPU instance {} ({})", step.gpu_instance_id, step.profile);
      }
    }
  }
  std::set<std::pair<std::uint32_t, std::uint32_t>> devices;
  for (const auto& [device, instance] : watched) devices.insert(device);
  std::vector<std::string> reasons;
  for (const auto& holder : partitioning::find_device_holders(options_.fs, devices)) {
    reasons.push_back(fmt::format("{} is held open by pid {} ({}) through /dev/nvidia-caps/nvidia-cap{}: not destroyed",
                                  watched.at({holder.major, holder.minor}), holder.pid, holder.comm, holder.minor));
  }
  return reasons;
}

// `previous`: the generation before this apply. An adopted policy's generation is where this agent goes on from.
Result<void> GpuPartitioning::ensure_policy(std::uint64_t& previous) {
  if (policy_) return {};
  auto policy = DevicePolicy::start({options_.cgroup2_root, plan_.pin_dir});
  if (!policy) return policy.error();
  policy_ = std::move(*policy);
  if (policy_->generation() > previous) {
    generation_ += policy_->generation() - previous;
    previous = policy_->generation();
  }
  spdlog::info("partitioning: device policy {} (generation {}){}", policy_->adopted() ? "adopted" : "attached",
               policy_->generation(), plan_.pin_dir.empty() ? "" : fmt::format(", pinned in {}", plan_.pin_dir));
  return {};
}

json GpuPartitioning::apply(const PartitionPlan& plan) {
  // The pin directory is where the running policy lives: it changes with a restart, not a reload.
  const std::string pin_dir = policy_ ? plan_.pin_dir : plan.pin_dir;
  plan_ = plan;
  plan_.pin_dir = pin_dir;
  planned_ = true;
  // Events and log lines of this apply carry the generation it makes; it stays the old one if nothing changes.
  const std::uint64_t previous = generation_;
  ++generation_;
  json report{{"mig", reconcile_geometry(plan_, /*dry_run=*/false)}};
  bool geometry_changed = false;
  for (const auto& gpu : report["mig"]) geometry_changed |= !gpu["done"].empty();

  auto compiled = std::make_unique<Compiled>(compile(plan_));
  report["refused"] = compiled->policy.problems;
  report["problems"] = compiled->inventory.problems;
  for (const auto& problem : compiled->policy.problems) {
    audit(v1::PartitionEvent::KIND_REFUSED, spdlog::level::warn, "", problem);
  }
  for (const auto& problem : compiled->inventory.problems) spdlog::warn("partitioning: {}", problem);
  const auto changed = bring_into_force(std::move(compiled), report, previous, geometry_changed);
  if (changed && report["enforcing"] == true && (*changed || geometry_changed)) {
    const std::string detail =
        fmt::format("{} device nodes restricted, {} cgroups hold grants, {} cgroup paths awaited{}{}",
                    in_force_->policy.tables.devices.size(), in_force_->policy.tables.cgroups.size(),
                    in_force_->policy.tables.paths.size(), report["changes"].empty() ? "" : ": ",
                    fmt::join(report["changes"].get<std::vector<std::string>>(), "; "));
    audit(v1::PartitionEvent::KIND_APPLIED, spdlog::level::info, "", detail);
  }
  return report;
}

Result<bool> GpuPartitioning::bring_into_force(std::unique_ptr<Compiled> compiled, json& report,
                                               std::uint64_t previous, bool geometry_changed) {
  report["changes"] = json::array();
  report["generation"] = generation_;
  if (!policy_ && compiled->policy.tables.devices.empty() && !DevicePolicy::pinned(plan_.pin_dir)) {
    if (!geometry_changed) generation_ = previous;
    in_force_ = std::move(compiled);
    report["enforcing"] = false;
    report["generation"] = generation_;
    spdlog::info("partitioning: the plan restricts no GPU here: no device policy attached");
    return false;
  }
  auto refuse = [&](const std::string& reason) -> Error {
    audit(v1::PartitionEvent::KIND_REFUSED, spdlog::level::err, "", reason);
    report["refused"].push_back(reason);
    return Error{ErrorCode::io, reason};
  };
  if (auto started = ensure_policy(previous); !started) {
    if (!geometry_changed) generation_ = previous;
    report["enforcing"] = false;
    report["generation"] = generation_;
    in_force_ = std::move(compiled);
    return refuse(fmt::format("device policy not attached: {}", started.error().message));
  }
  auto name = [&](std::uint32_t major, std::uint32_t minor) { return compiled->node_name(major, minor); };
  Access before;
  if (in_force_) {
    before = access_of(in_force_->policy.tables, in_force_->policy.can_open, name);
  } else if (auto installed = policy_->installed()) {
    before = access_of(*installed, {}, name);
  }
  const Access after = access_of(compiled->policy.tables, compiled->policy.can_open, name);
  report["changes"] = describe_changes(before, after);

  auto installed = policy_->installed();
  const bool tables_changed = !installed || *installed != compiled->policy.tables;
  if (!tables_changed && !geometry_changed) generation_ = previous;
  auto change = policy_->install(compiled->policy.tables, generation_);
  report["enforcing"] = true;
  report["generation"] = generation_;
  if (!change) {
    in_force_.reset();  // what the maps hold is not known: the next apply compares with what is installed
    return refuse(fmt::format("device policy not updated: {}", change.error().message));
  }
  in_force_ = std::move(compiled);
  return tables_changed;
}

Result<json> GpuPartitioning::set_revoked(std::set<std::string> workloads) {
  std::vector<std::string> revoking, restoring;
  std::set_difference(workloads.begin(), workloads.end(), revoked_.begin(), revoked_.end(),
                      std::back_inserter(revoking));
  std::set_difference(revoked_.begin(), revoked_.end(), workloads.begin(), workloads.end(),
                      std::back_inserter(restoring));
  std::set<std::string> before = std::exchange(revoked_, std::move(workloads));
  json report{{"revoked", revoked_}, {"changes", json::array()}, {"refused", json::array()},
              {"generation", generation_}, {"enforcing", policy_ != nullptr}};
  if (revoking.empty() && restoring.empty()) return report;
  if (planned_) {
    const std::uint64_t previous = generation_;
    ++generation_;
    if (auto changed = bring_into_force(std::make_unique<Compiled>(compile(plan_)), report, previous, false);
        !changed) {
      // Not in force: the set stays what is in force, so that a retry of the same set tries again.
      revoked_ = std::move(before);
      return changed.error();
    }
  }
  // Said per workload, with the generation that brought it into force: what budgets decided, and what it means.
  for (const std::string& workload : revoking) {
    audit(v1::PartitionEvent::KIND_APPLIED, spdlog::level::warn, "",
          fmt::format("GPU access revoked from {}: new opens of GPU device nodes by its cgroups fail (EPERM); "
                      "files it has open stay open",
                      workload),
          workload);
  }
  for (const std::string& workload : restoring) {
    audit(v1::PartitionEvent::KIND_APPLIED, spdlog::level::info, "",
          fmt::format("GPU access restored to {}", workload), workload);
  }
  return report;
}

json GpuPartitioning::preview(const PartitionPlan& plan) {
  json report{{"mig", reconcile_geometry(plan, /*dry_run=*/true)}};
  const Compiled compiled = compile(plan);
  report["refused"] = compiled.policy.problems;
  report["problems"] = compiled.inventory.problems;
  for (const auto& gpu : report["mig"]) {
    for (const auto& reason : gpu["refused"]) report["refused"].push_back(reason);
  }
  auto name = [&](std::uint32_t major, std::uint32_t minor) { return compiled.node_name(major, minor); };
  Access before;
  if (in_force_ && policy_) before = access_of(in_force_->policy.tables, in_force_->policy.can_open, name);
  report["changes"] =
      describe_changes(before, access_of(compiled.policy.tables, compiled.policy.can_open, name));
  report["generation"] = generation_;
  return report;
}

json GpuPartitioning::show() {
  const GpuInventory inventory = partitioning::read_gpu_inventory(nvml_.get(), options_.fs);
  json gpus = json::array();
  for (const auto& gpu : inventory.gpus) {
    json entry{{"index", gpu.index}, {"vendor", gpu.vendor}, {"uuid", gpu.uuid}, {"bus_id", gpu.bus_id}, {"name", gpu.name},
               {"node", gpu.node ? gpu.node->path : ""}, {"mig", gpu.mig_enabled}, {"slices", slices_json(gpu)}};
    nvmlDevice_t handle = nullptr;
    if (nvml_ && gpu.mig_enabled && nvml_->api().nvmlDeviceGetHandleByIndex_v2(gpu.index, &handle) == NVML_SUCCESS) {
      if (auto geometry = collectors::read_mig_geometry(*nvml_, handle)) {
        json instances = json::array();
        for (const auto& instance : geometry->instances) {
          instances.push_back({{"gpu_instance_id", instance.gpu_instance_id},
                               {"profile", instance.profile_name},
                               {"placement_start", instance.placement_start},
                               {"busy", !instance.pids.empty()}});
        }
        entry["instances"] = std::move(instances);
      }
    }
    gpus.push_back(std::move(entry));
  }
  json assignments = json::array();
  for (const auto& assignment : plan_.assignments) {
    assignments.push_back({{"workload", assignment.workload}, {"gpus", assignment.gpus}, {"origin", assignment.origin}});
  }
  json out{{"generation", generation_},
           {"enforcing", policy_ != nullptr},
           {"adopted", policy_ && policy_->adopted()},
           {"pin_dir", plan_.pin_dir},
           {"default", partitioning::to_string(plan_.default_access)},
           {"on_stop", partitioning::to_string(plan_.on_stop)},
           {"mig_isolation", partitioning::to_string(inventory.mig_isolation)},
           {"gpus", std::move(gpus)},
           {"assignments", std::move(assignments)},
           {"system_clients", plan_.system_clients},
           {"revoked", revoked_},
           {"problems", inventory.problems},
           {"can_open", json::object()},
           {"cgroups", json::array()},
           {"denials", json::array()}};
  if (!in_force_) return out;
  out["refused"] = in_force_->policy.problems;
  for (const auto& [workload, nodes] : in_force_->policy.can_open) out["can_open"][workload] = nodes;
  for (const auto& cgroup : in_force_->policy.cgroups) {
    out["cgroups"].push_back(
        {{"path", cgroup.path}, {"workload", cgroup.workload}, {"gpus", in_force_->targets(cgroup.grants)}});
  }
  if (policy_) {
    if (auto denials = policy_->denials()) {
      for (const auto& [key, count] : *denials) {
        const auto& [cgroup_id, major, minor] = key;
        out["denials"].push_back({{"workload", workload_of(cgroup_id)},
                                  {"device", in_force_->node_name(major, minor)},
                                  {"count", count}});
      }
    }
  }
  return out;
}

json GpuPartitioning::clear() {
  json out{{"generation", generation_}};
  if (policy_) {
    auto released = policy_->release();
    policy_.reset();
    if (!released) {
      out["error"] = released.error().message;
      return out;
    }
    out["released"] = true;
  } else {
    auto removed = DevicePolicy::remove_pinned(plan_.pin_dir);
    if (!removed) {
      out["error"] = removed.error().message;
      return out;
    }
    out["released"] = *removed;
  }
  in_force_.reset();
  audit(v1::PartitionEvent::KIND_RELEASED, spdlog::level::info, "", "tallyctl plan clear");
  return out;
}

void GpuPartitioning::stop() {
  if (!policy_) return;
  if (plan_.on_stop == partitioning::OnStop::keep && !plan_.pin_dir.empty()) {
    spdlog::info("partitioning: generation {} stays in force while tallyd is stopped (pinned in {}; on_stop = "
                 "\"keep\")", generation_, plan_.pin_dir);
    return;
  }
  if (auto released = policy_->release(); !released) {
    spdlog::error("partitioning: device policy not released: {}", released.error().message);
    return;
  }
  policy_.reset();
  const std::string why = plan_.pin_dir.empty() ? "tallyd stopped and the policy is not pinned (pin_dir = \"\")"
                                                : "tallyd stopped with on_stop = \"release\"";
  audit(v1::PartitionEvent::KIND_RELEASED, spdlog::level::info, "", why);
}

int GpuPartitioning::events_fd() const { return policy_ ? policy_->events_fd() : -1; }

void GpuPartitioning::list_cgroups() {
  cgroup_paths_ = collectors::list_cgroups(options_.cgroup2_root);
  listed_size_ = cgroup_paths_.size();
  last_listed_ = std::chrono::steady_clock::now();
}

std::string GpuPartitioning::workload_of(std::uint64_t cgroup_id) {
  auto it = cgroup_paths_.find(cgroup_id);
  // Every v2 mkdir is seen, so a miss is a cgroup made while events were lost: walk the tree again, at most once
  // a second (denials from many fresh cgroups cannot keep the agent walking).
  if (it == cgroup_paths_.end() && std::chrono::steady_clock::now() - last_listed_ >= std::chrono::seconds(1)) {
    list_cgroups();
    it = cgroup_paths_.find(cgroup_id);
  }
  if (it == cgroup_paths_.end()) return fmt::format("cgroup-id:{}", cgroup_id);  // gone already
  return identify_cgroup(it->second, options_.identity).id;
}

void GpuPartitioning::on_events() {
  if (!policy_) return;
  const std::function<void(const partitioning::PolicyEvent&)> handle = [&](const partitioning::PolicyEvent& raw) {
    v1::PartitionEvent event;
    event.set_generation(generation_);
    switch (raw.type) {
      case partitioning::PolicyEvent::Type::denied: {
        event.set_kind(v1::PartitionEvent::KIND_DENIED);
        event.set_workload(workload_of(raw.cgroup_id));
        if (auto it = cgroup_paths_.find(raw.cgroup_id); it != cgroup_paths_.end()) event.set_cgroup(it->second);
        event.set_device(in_force_ ? in_force_->node_name(raw.major, raw.minor)
                                   : fmt::format("c {}:{}", raw.major, raw.minor));
        event.set_count(raw.count);
        event.set_pid(static_cast<std::uint32_t>(raw.pid));
        event.set_comm(raw.comm);
        audit(event, spdlog::level::warn);
        return;
      }
      case partitioning::PolicyEvent::Type::covered:
      case partitioning::PolicyEvent::Type::mkdir: {
        cgroup_paths_[raw.cgroup_id] = raw.path;
        std::uint64_t grants = raw.count;
        if (raw.type == partitioning::PolicyEvent::Type::mkdir) {
          if (!in_force_) return;
          // An explicit 0 (a revoked workload's new cgroup) is written too: without an entry it would inherit the
          // root's kOpenGrant.
          const auto entry = partitioning::grants_for_path(in_force_->policy, plan_, raw.path, options_.identity);
          if (!entry) return;
          grants = *entry;
          if (auto granted = policy_->grant(raw.cgroup_id, grants); !granted) {
            spdlog::error("partitioning: new cgroup {} not given its grants: {}", raw.path, granted.error().message);
            return;
          }
          resync_wanted_ = true;  // a removed cgroup's entry goes at the next resync
        }
        event.set_kind(v1::PartitionEvent::KIND_COVERED);
        event.set_workload(identify_cgroup(raw.path, options_.identity).id);
        event.set_cgroup(raw.path);
        if (grants == 0) {
          event.set_detail("GPU access revoked");
        } else if (in_force_) {
          event.set_detail(fmt::format("{}", fmt::join(in_force_->targets(grants), ", ")));
        }
        audit(event, spdlog::level::info);
        return;
      }
    }
  };
  if (auto consumed = policy_->consume_events(handle); !consumed) {
    spdlog::warn("partitioning: {}", consumed.error().message);
  }
  // Paths learnt from mkdirs (of every cgroup of the host) are forgotten at the next walk: bounded by twice the tree.
  if (cgroup_paths_.size() > 2 * listed_size_ + 1024) resync_wanted_ = true;
}

void GpuPartitioning::resync() {
  resync_wanted_ = false;
  if (!policy_ || !in_force_) {
    list_cgroups();
    return;
  }
  // The inventory stands (no MIG change happened): only the cgroups are matched again.
  list_cgroups();
  auto compiled = std::make_unique<Compiled>(*in_force_);
  std::optional<partitioning::CgroupRef> own;
  for (const auto& cgroup : in_force_->policy.cgroups) {
    if (cgroup.workload == "tallyd") own = {{cgroup.id, cgroup.path}};
  }
  compiled->policy =
      partitioning::compile_policy(plan_, compiled->inventory, cgroup_paths_, options_.identity, own, revoked_);
  if (auto change = policy_->install(compiled->policy.tables, generation_); !change) {
    spdlog::error("partitioning: generation {}: cgroups not matched again: {}", generation_, change.error().message);
    return;
  }
  in_force_ = std::move(compiled);
}

}  // namespace tally::agent
