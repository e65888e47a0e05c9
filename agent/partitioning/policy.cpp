#include "agent/partitioning/policy.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace tally::partitioning {

namespace {

std::string join_path(std::string_view root, std::string_view rest) {
  if (root == "/") return fmt::format("/{}", rest);
  return fmt::format("{}/{}", root, rest);
}

// The grants `workload` holds: all of them for a system client.
std::uint64_t grants_of_workload(const std::vector<Grant>& grants, const PartitionPlan& plan,
                                 const std::string& workload) {
  if (std::find(plan.system_clients.begin(), plan.system_clients.end(), workload) != plan.system_clients.end()) {
    return kAllGrants;
  }
  std::uint64_t held = 0;
  for (const Grant& grant : grants) {
    if (grant.workloads.contains(workload)) held |= std::uint64_t{1} << grant.bit;
  }
  return held;
}

// Every node of a GPU and its slices (what a whole-GPU grant opens).
std::vector<DeviceNode> whole_gpu_nodes(const GpuNodes& gpu) {
  std::vector<DeviceNode> nodes;
  if (gpu.node) nodes.push_back(*gpu.node);
  nodes.insert(nodes.end(), gpu.also.begin(), gpu.also.end());
  for (const SliceNodes& slice : gpu.slices) nodes.insert(nodes.end(), slice.caps.begin(), slice.caps.end());
  return nodes;
}

struct Compiler {
  const PartitionPlan& plan;
  const GpuInventory& inventory;
  const IdentityRules& rules;
  CompiledPolicy out;
  std::map<std::string, unsigned> grant_of_target;  // canonical target "index" / "index/mig/n" → bit

  // The grant for a GPU or slice, made on first use; nullopt (and a problem said) when the node cannot honour it.
  std::optional<unsigned> grant(const std::string& text, const std::string& origin) {
    auto selector = parse_gpu_selector(text);
    if (!selector) {
      out.problems.push_back(fmt::format("{}: {}", origin, selector.error().message));
      return std::nullopt;
    }
    const GpuNodes* gpu = inventory.find(selector->gpu);
    if (gpu == nullptr) {
      out.problems.push_back(fmt::format("{}: GPU '{}' is not on this node", origin, selector->gpu));
      return std::nullopt;
    }
    if (!gpu->node) {
      out.problems.push_back(fmt::format("{}: GPU {} has no known device minor: it cannot be restricted", origin,
                                         gpu->index));
      return std::nullopt;
    }
    std::vector<DeviceNode> nodes;
    std::string target = std::to_string(gpu->index);
    if (selector->slice) {
      const auto slice = std::find_if(gpu->slices.begin(), gpu->slices.end(),
                                      [&](const SliceNodes& s) { return s.index == *selector->slice; });
      if (slice == gpu->slices.end()) {
        out.problems.push_back(fmt::format("{}: GPU {} has no MIG slice {}", origin, gpu->index, *selector->slice));
        return std::nullopt;
      }
      if (inventory.mig_isolation != MigIsolation::device_files || slice->caps.empty()) {
        out.problems.push_back(fmt::format(
            "{}: MIG slice {}/mig/{} cannot be isolated by device policy here (MIG isolation: {})", origin,
            gpu->index, slice->index, to_string(inventory.mig_isolation)));
        return std::nullopt;
      }
      target += fmt::format("/mig/{}", slice->index);
      nodes.push_back(*gpu->node);
      nodes.insert(nodes.end(), slice->caps.begin(), slice->caps.end());
    } else {
      nodes = whole_gpu_nodes(*gpu);
    }
    if (auto it = grant_of_target.find(target); it != grant_of_target.end()) return it->second;
    if (out.grants.size() >= kMaxGrants) {
      out.problems.push_back(fmt::format("{}: more than {} GPUs and slices assigned: '{}' left out", origin,
                                         kMaxGrants, text));
      return std::nullopt;
    }
    const unsigned bit = static_cast<unsigned>(out.grants.size());
    out.grants.push_back(Grant{bit, target, std::move(nodes), {}});
    grant_of_target[target] = bit;
    return bit;
  }

  // Restricts every node of every GPU an assignment touches, and with default "deny" every GPU.
  void restrict_devices() {
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint64_t>& devices = out.tables.devices;
    for (const Grant& grant : out.grants) {
      for (const DeviceNode& node : grant.nodes) devices[{node.major, node.minor}] |= std::uint64_t{1} << grant.bit;
    }
    for (const GpuNodes& gpu : inventory.gpus) {
      if (!gpu.node) continue;
      const auto key = std::pair(gpu.node->major, gpu.node->minor);
      const bool touched = devices.contains(key);
      if (plan.default_access == DefaultAccess::deny) {
        for (const DeviceNode& node : whole_gpu_nodes(gpu)) devices[{node.major, node.minor}] |= kSystemGrant;
        continue;
      }
      if (!touched) continue;
      // Default "open": a GPU whose node is granted only through some of its slices stays open where another slice
      // is nobody's (its users need the GPU's node), and those slices' capabilities are not restricted.
      const bool whole_granted = std::any_of(out.grants.begin(), out.grants.end(), [&](const Grant& g) {
        return g.target == std::to_string(gpu.index);
      });
      const bool every_slice_granted =
          !gpu.slices.empty() && std::all_of(gpu.slices.begin(), gpu.slices.end(), [&](const SliceNodes& s) {
            return grant_of_target.contains(fmt::format("{}/mig/{}", gpu.index, s.index));
          });
      if (!whole_granted && !every_slice_granted) devices.erase(key);
    }
    if (!out.revoked.empty()) close_open_gpus();
    for (auto& [key, grants] : devices) grants |= kSystemGrant;
  }

  // While a revocation is in force, a GPU's node that nothing restricts gets kOpenGrant, which every cgroup but a
  // revoked workload's holds: there is no other way to keep one workload from a node open to all. Only the GPU's
  // own nodes: nvidiactl, nvidia-uvm and free slices' capabilities stay as they are (they open no GPU without it).
  // Restricted nodes keep their grants (a revoked workload's cgroups hold none of them).
  void close_open_gpus() {
    for (const GpuNodes& gpu : inventory.gpus) {
      std::vector<DeviceNode> nodes = gpu.also;
      if (gpu.node) nodes.push_back(*gpu.node);
      for (const DeviceNode& node : nodes) out.tables.devices.try_emplace({node.major, node.minor}, kOpenGrant);
    }
  }
};

// The workload a cgroup path stands for in the plan: "cgroup:<path>" when an assignment names it so, else its
// identity's id.
std::string workload_at(const PartitionPlan& plan, std::string_view path, const IdentityRules& rules) {
  const std::string as_cgroup = fmt::format("cgroup:{}", path);
  for (const Assignment& assignment : plan.assignments) {
    if (assignment.workload == as_cgroup) return as_cgroup;
  }
  if (std::find(plan.system_clients.begin(), plan.system_clients.end(), as_cgroup) != plan.system_clients.end()) {
    return as_cgroup;
  }
  return identify_cgroup(path, rules).id;
}

// The revoked workload the cgroup at `path` belongs to, if any: named as "cgroup:<path>" or by its identity (the
// same rules as assignments, so a cgroup cannot pass for another workload to escape a revocation, nor be made to).
std::optional<std::string> revoked_at(const std::set<std::string>& revoked, std::string_view path,
                                      const IdentityRules& rules) {
  if (revoked.empty()) return std::nullopt;
  if (std::string as_cgroup = fmt::format("cgroup:{}", path); revoked.contains(as_cgroup)) return as_cgroup;
  if (std::string id = identify_cgroup(path, rules).id; revoked.contains(id)) return id;
  return std::nullopt;
}

// What a cgroup's entry holds: the grants of its workload's assignments, with kOpenGrant while a revocation is in
// force (so it keeps opening open GPUs); an explicit 0 for a revoked workload's (a revocation wins over an
// assignment); nullopt when it needs no entry (it inherits its nearest ancestor's, in the end the root's).
struct CgroupEntry {
  std::string workload;
  std::optional<std::uint64_t> grants;
};

CgroupEntry entry_at(const CompiledPolicy& policy, const PartitionPlan& plan, std::string_view path,
                     const IdentityRules& rules) {
  if (auto revoked = revoked_at(policy.revoked, path, rules)) return {*revoked, 0};
  std::string workload = workload_at(plan, path, rules);
  std::uint64_t grants = grants_of_workload(policy.grants, plan, workload);
  if (grants == 0) return {std::move(workload), std::nullopt};
  if (!policy.revoked.empty()) grants |= kOpenGrant;
  return {std::move(workload), grants};
}

// What an awaited path of `workload` holds. Every workload awaited but a revoked one holds kOpenGrant while a
// revocation is in force: one whose assignments were all refused must not lose the open GPUs by having an entry.
std::uint64_t awaited_grants(const CompiledPolicy& policy, const PartitionPlan& plan, const std::string& workload) {
  if (policy.revoked.contains(workload)) return 0;
  const std::uint64_t grants = grants_of_workload(policy.grants, plan, workload);
  return policy.revoked.empty() ? grants : grants | kOpenGrant;
}

}  // namespace

std::vector<std::string> foreseeable_paths(std::string_view workload, const IdentityRules& rules) {
  std::vector<std::string> candidates;
  if (workload.starts_with("cgroup:")) return {std::string(workload.substr(7))};
  if (workload.starts_with("systemd:")) {
    const std::string_view unit = workload.substr(8);
    candidates.push_back(join_path(rules.systemd_root, fmt::format("system.slice/{}", unit)));
    if (unit.ends_with(".slice")) candidates.push_back(join_path(rules.systemd_root, unit));
  } else if (workload.starts_with("k8s:pod:") && workload.find(':', 8) == std::string_view::npos) {
    const std::string uid(workload.substr(8));
    std::string underscored = uid;
    std::replace(underscored.begin(), underscored.end(), '-', '_');
    for (const std::string& root : rules.kubepods_roots) {
      candidates.push_back(join_path(root, "pod" + uid));
      candidates.push_back(join_path(root, "kubepods-pod" + underscored + ".slice"));
      for (std::string_view qos : {"burstable", "besteffort"}) {
        candidates.push_back(join_path(root, fmt::format("{}/pod{}", qos, uid)));
        candidates.push_back(
            join_path(root, fmt::format("kubepods-{0}.slice/kubepods-{0}-pod{1}.slice", qos, underscored)));
      }
    }
  } else if (workload.starts_with("slurm:job:")) {
    for (const std::string& root : rules.slurm_roots) {
      candidates.push_back(join_path(root, fmt::format("job_{}", workload.substr(10))));
    }
  } else if (workload.starts_with("docker:")) {
    for (const std::string& parent : rules.container_parents) {
      for (std::string_view engine : {"docker-", "cri-containerd-", "crio-", "libpod-"}) {
        candidates.push_back(join_path(parent, fmt::format("{}{}.scope", engine, workload.substr(7))));
      }
      candidates.push_back(join_path(parent, workload.substr(7)));  // the cgroupfs driver: <parent>/<id>
    }
  } else if (workload.starts_with("user:")) {
    // user:<uid>:<unit>: the user manager puts units in app.slice by default (session.slice, background.slice for
    // those that say so), or directly below it.
    const std::size_t colon = workload.find(':', 5);
    if (colon != std::string_view::npos) {
      const std::string_view uid = workload.substr(5, colon - 5);
      const std::string_view unit = workload.substr(colon + 1);
      const std::string manager = join_path(rules.user_root, fmt::format("user-{0}.slice/user@{0}.service", uid));
      candidates.push_back(join_path(manager, unit));
      for (std::string_view slice : {"app.slice", "session.slice", "background.slice"}) {
        candidates.push_back(join_path(manager, fmt::format("{}/{}", slice, unit)));
      }
    }
  }
  // Only paths the identity rules would give this very workload: a candidate is never a guess.
  std::erase_if(candidates, [&](const std::string& path) {
    return path.size() >= 256 || identify_cgroup(path, rules).id != workload;
  });
  return candidates;
}

CompiledPolicy compile_policy(const PartitionPlan& plan, const GpuInventory& inventory,
                              const std::map<std::uint64_t, std::string>& cgroups, const IdentityRules& rules,
                              const std::optional<CgroupRef>& own_cgroup, const std::set<std::string>& revoked) {
  Compiler compiler{plan, inventory, rules, {}, {}};
  CompiledPolicy& out = compiler.out;
  out.revoked = revoked;
  for (const Assignment& assignment : plan.assignments) {
    for (const std::string& gpu : assignment.gpus) {
      if (auto bit = compiler.grant(gpu, assignment.origin)) out.grants[*bit].workloads.insert(assignment.workload);
    }
  }
  compiler.restrict_devices();
  if (out.tables.devices.empty()) return out;  // nothing restricted: no cgroup needs an entry

  for (const auto& [id, path] : cgroups) {
    if (path == "/") {
      // The root never holds a plan's grants (every cgroup would inherit them); while a revocation is in force it
      // holds kOpenGrant, so that every cgroup without an entry of its own keeps opening the open GPUs.
      if (!out.revoked.empty()) out.tables.cgroups[id] = kOpenGrant;
      continue;
    }
    CgroupEntry entry = entry_at(out, plan, path, rules);
    if (!entry.grants) continue;
    out.tables.cgroups[id] = *entry.grants;
    out.cgroups.push_back(CgroupGrant{path, id, std::move(entry.workload), *entry.grants});
  }
  if (own_cgroup && own_cgroup->path != "/") {
    out.tables.cgroups[own_cgroup->id] = kAllGrants;
    out.cgroups.push_back(CgroupGrant{own_cgroup->path, own_cgroup->id, "tallyd", kAllGrants});
  } else if (own_cgroup && !out.revoked.empty()) {
    out.tables.cgroups[own_cgroup->id] = kOpenGrant;  // the root, known by tallyd's own cgroup
  }
  std::set<std::string> workloads;
  for (const Assignment& assignment : plan.assignments) workloads.insert(assignment.workload);
  workloads.insert(plan.system_clients.begin(), plan.system_clients.end());
  workloads.insert(out.revoked.begin(), out.revoked.end());
  for (const std::string& workload : workloads) {
    for (const std::string& path : foreseeable_paths(workload, rules)) {
      out.tables.paths[path] = awaited_grants(out, plan, workload);
    }
    if (out.revoked.contains(workload)) continue;  // opens nothing restricted
    const std::uint64_t grants = grants_of_workload(out.grants, plan, workload);
    if (grants == kAllGrants) continue;  // a system client opens everything: saying so per node is noise
    for (const auto& [device, device_grants] : out.tables.devices) {
      if ((device_grants & grants) == 0) continue;
      for (const GpuNodes& gpu : inventory.gpus) {
        for (const DeviceNode& node : whole_gpu_nodes(gpu)) {
          if (node.major == device.first && node.minor == device.second) out.can_open[workload].insert(node.path);
        }
      }
    }
  }
  return out;
}

std::optional<std::uint64_t> grants_for_path(const CompiledPolicy& policy, const PartitionPlan& plan,
                                             std::string_view path, const IdentityRules& rules) {
  if (policy.tables.devices.empty() || path == "/") return std::nullopt;
  return entry_at(policy, plan, path, rules).grants;
}

}  // namespace tally::partitioning
