#include "agent/freezer/freezer.hpp"

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>

#include <fmt/format.h>

#include "agent/base/files.hpp"
#include "agent/base/proc.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"

namespace tally::freezer {
namespace {

std::string parent_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == 0 || slash == std::string::npos ? "/" : path.substr(0, slash);
}

// Whether `above` is `path` or one of its ancestors ("/a" is above "/a/b", not above "/ab").
bool is_at_or_above(const std::string& above, const std::string& path) {
  if (above == "/" || above == path) return true;
  return path.starts_with(above) && path.size() > above.size() && path[above.size()] == '/';
}

Result<void> write_freeze(const std::filesystem::path& cgroup, bool frozen) {
  const auto file = cgroup / "cgroup.freeze";
  std::ofstream out(file);
  out << (frozen ? "1" : "0");
  out.flush();
  if (!out) {
    const int error = errno;
    if (!std::filesystem::exists(file)) {
      return make_error(ErrorCode::unsupported, "{} does not exist: this kernel has no cgroup v2 freezer (Linux 5.2+)",
                        file.string());
    }
    return make_error(ErrorCode::io, "cannot write {}: {}", file.string(), std::strerror(error));
  }
  return {};
}

// systemd's Manager.<method>(unit) on the system bus: "" when done, else what went wrong.
std::string call_systemd(const char* method, const std::string& unit) {
  sd_bus* raw = nullptr;
  if (const int r = sd_bus_open_system(&raw); r < 0) return fmt::format("no system bus: {}", std::strerror(-r));
  const std::unique_ptr<sd_bus, decltype(&sd_bus_flush_close_unref)> bus(raw, &sd_bus_flush_close_unref);
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  const int r = sd_bus_call_method(bus.get(), "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                                   "org.freedesktop.systemd1.Manager", method, &error, &reply, "s", unit.c_str());
  std::string problem;
  if (r < 0) problem = error.message != nullptr ? error.message : std::strerror(-r);
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  return problem;
}

}  // namespace

bool systemd_running() { return sd_booted() > 0; }

std::vector<std::string> workload_cgroups(const std::map<std::uint64_t, std::string>& cgroups, std::string_view workload,
                                          const IdentityRules& rules) {
  std::vector<std::string> matching;
  for (const auto& [id, path] : cgroups) {
    if (path == "/" || identify_cgroup(path, rules).id != workload) continue;
    const std::string parent = parent_of(path);
    // Below another cgroup of the same workload: frozen with it.
    if (parent != "/" && identify_cgroup(parent, rules).id == workload) continue;
    matching.push_back(path);
  }
  std::sort(matching.begin(), matching.end());
  return matching;
}

Freezer::Freezer(FreezerOptions options) : options_(std::move(options)) {
  own_cgroup_ = read_process_cgroup(FsRoot(), ::getpid()).value_or("");
}

Result<std::vector<std::string>> Freezer::cgroups_of(std::string_view workload) const {
  if (workload.starts_with("process:")) {
    return make_error(ErrorCode::unsupported,
                      "{} runs in the root cgroup, which cgroup v2 cannot freeze: move it into a cgroup of its own "
                      "(a systemd unit or scope) to make it freezable",
                      workload);
  }
  if (workload.starts_with("gpu:")) return make_error(ErrorCode::invalid_argument, "{} is a GPU, not a workload", workload);
  return workload_cgroups(collectors::list_cgroups(options_.cgroup2_root), workload, options_.identity);
}

Result<void> Freezer::check_freezable(std::string_view workload, const std::vector<std::string>& cgroups) const {
  if (cgroups.empty()) return make_error(ErrorCode::not_found, "{} has no cgroup on this node now", workload);
  for (const auto& path : cgroups) {
    if (!own_cgroup_.empty() && is_at_or_above(path, own_cgroup_)) {
      return make_error(ErrorCode::invalid_argument,
                        "{} is cgroup {}, where tallyd itself runs: freezing it would freeze the agent", workload, path);
    }
  }
  return {};
}

Result<Outcome> Freezer::freeze(std::string_view workload) {
  auto cgroups = cgroups_of(workload);
  if (!cgroups) return cgroups.error();
  TALLY_TRY(check_freezable(workload, *cgroups));
  Outcome outcome{*cgroups, "cgroup.freeze", ""};
  const WorkloadIdentity identity = identify_cgroup(cgroups->front(), options_.identity);
  if (options_.use_systemd && identity.kind == WorkloadKind::systemd_unit && systemd_running()) {
    const std::string unit = identity.attributes.contains("unit") ? identity.attributes.at("unit") : "";
    const std::string problem = call_systemd("FreezeUnit", unit);
    if (problem.empty()) {
      outcome.via = "systemd FreezeUnit";
      return outcome;
    }
    // systemd cannot (hybrid hosts, a unit that is not active): the kernel's freezer still holds.
    outcome.note = fmt::format("systemd FreezeUnit {} failed ({}): frozen through cgroup.freeze", unit, problem);
  }
  for (const auto& path : *cgroups) TALLY_TRY(write_freeze(options_.cgroup2_root / path.substr(1), true));
  return outcome;
}

Result<Outcome> Freezer::thaw(std::string_view workload) {
  auto cgroups = cgroups_of(workload);
  if (!cgroups) return cgroups.error();
  Outcome outcome{*cgroups, "cgroup.freeze", ""};
  if (cgroups->empty()) return outcome;
  const WorkloadIdentity identity = identify_cgroup(cgroups->front(), options_.identity);
  if (options_.use_systemd && identity.kind == WorkloadKind::systemd_unit && systemd_running()) {
    const std::string unit = identity.attributes.contains("unit") ? identity.attributes.at("unit") : "";
    // Thawing what systemd did not freeze is harmless; the cgroup files below then thaw what the kernel froze.
    if (const std::string problem = call_systemd("ThawUnit", unit); problem.empty()) outcome.via = "systemd ThawUnit";
  }
  for (const auto& path : *cgroups) TALLY_TRY(write_freeze(options_.cgroup2_root / path.substr(1), false));
  return outcome;
}

bool Freezer::frozen(std::string_view workload) const {
  auto cgroups = cgroups_of(workload);
  if (!cgroups || cgroups->empty()) return false;
  return std::all_of(cgroups->begin(), cgroups->end(), [&](const std::string& path) {
    const auto events = read_file(options_.cgroup2_root / path.substr(1) / "cgroup.events");
    return events && (events->starts_with("frozen 1") || events->find("\nfrozen 1") != std::string::npos);
  });
}

}  // namespace tally::freezer
