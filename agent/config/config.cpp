#include "agent/config/config.hpp"

#include "agent/base/files.hpp"

#include <algorithm>
#include <limits>
#include <set>

#include <spdlog/common.h>
#include <toml++/toml.h>

namespace tally::agent {

std::optional<std::uint32_t> socket_mode_of(std::string_view text) {
  if (text.empty() || text.size() > 4) return std::nullopt;
  std::uint32_t mode = 0;
  for (char c : text) {
    if (c < '0' || c > '7') return std::nullopt;
    mode = mode * 8 + static_cast<std::uint32_t>(c - '0');
  }
  if (mode > 0777) return std::nullopt;
  return mode;
}

namespace {

// Walks one parsed document, checking each key against the schema and remembering the first problem with its
// position. Keys are checked in one place so that every section gets the same treatment.
class SchemaReader {
 public:
  explicit SchemaReader(std::string_view source) : source_(source) {}

  Error error_at(const toml::source_region& where, std::string_view key, std::string_view problem) const {
    return make_error(ErrorCode::invalid_argument, "{}:{}:{}: {}: {}", source_, where.begin.line,
                      where.begin.column, key, problem);
  }

  // Fails on any key of `table` not in `known`.
  Result<void> reject_unknown(const toml::table& table, std::string_view prefix,
                              std::initializer_list<std::string_view> known) const {
    for (const auto& [key, node] : table) {
      bool found = false;
      for (auto k : known) found = found || k == key.str();
      if (!found) {
        std::string full = prefix.empty() ? std::string(key.str()) : fmt::format("{}.{}", prefix, key.str());
        return error_at(key.source(), full, "unknown key");
      }
    }
    return {};
  }

  Result<const toml::table*> section(const toml::table& root, std::string_view name) const {
    const toml::node* node = root.get(name);
    if (node == nullptr) return static_cast<const toml::table*>(nullptr);
    if (!node->is_table()) return error_at(node->source(), name, "expected a table");
    return node->as_table();
  }

  Result<void> read_string(const toml::table& table, std::string_view section, std::string_view key,
                           std::string& out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return {};
    if (!node->is_string()) return error_at(node->source(), full(section, key), "expected a string");
    out = node->as_string()->get();
    return {};
  }

  // An absolute path; `allow_empty` for keys where "" turns something off.
  Result<void> read_path(const toml::table& table, std::string_view section, std::string_view key, std::string& out,
                         bool allow_empty = false) const {
    TALLY_TRY(read_string(table, section, key, out));
    const toml::node* node = table.get(key);
    if (node != nullptr && !(allow_empty && out.empty()) && (out.empty() || out.front() != '/')) {
      return error_at(node->source(), full(section, key), allow_empty ? "expected an absolute path or \"\""
                                                                      : "expected an absolute path");
    }
    return {};
  }

  Result<void> read_bool(const toml::table& table, std::string_view section, std::string_view key,
                         bool& out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return {};
    if (!node->is_boolean()) return error_at(node->source(), full(section, key), "expected true or false");
    out = node->as_boolean()->get();
    return {};
  }

  Result<void> read_uint(const toml::table& table, std::string_view section, std::string_view key,
                         std::uint32_t minimum, std::uint32_t maximum, std::uint32_t& out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return {};
    if (!node->is_integer()) return error_at(node->source(), full(section, key), "expected an integer");
    const std::int64_t value = node->as_integer()->get();
    if (value < minimum || value > maximum) {
      return error_at(node->source(), full(section, key),
                      fmt::format("{} is out of range [{}, {}]", value, minimum, maximum));
    }
    out = static_cast<std::uint32_t>(value);
    return {};
  }

  Result<void> read_endpoints(const toml::table& table, std::string_view section, std::string_view key,
                              EndpointRole role, std::vector<std::string>& out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return {};
    if (!node->is_array()) return error_at(node->source(), full(section, key), "expected an array of strings");
    std::vector<std::string> values;
    std::set<std::string> seen;
    const toml::array& array = *node->as_array();
    for (std::size_t i = 0; i < array.size(); ++i) {
      const toml::node& item = array[i];
      const std::string item_key = fmt::format("{}[{}]", full(section, key), i);
      if (!item.is_string()) return error_at(item.source(), item_key, "expected a string");
      const std::string& endpoint = item.as_string()->get();
      if (auto valid = validate_endpoint(endpoint, role); !valid) {
        return error_at(item.source(), item_key, valid.error().message);
      }
      if (!seen.insert(endpoint).second) {
        return error_at(item.source(), item_key, fmt::format("duplicate endpoint '{}'", endpoint));
      }
      values.push_back(endpoint);
    }
    out = std::move(values);
    return {};
  }

  // A cgroup path as IdentityRules takes it (check_cgroup_root), or an array of them.
  Result<void> read_cgroup_root(const toml::table& table, std::string_view section, std::string_view key,
                                std::string& out) const {
    TALLY_TRY(read_string(table, section, key, out));
    const toml::node* node = table.get(key);
    if (node == nullptr) return {};
    if (auto valid = check_cgroup_root(out); !valid) {
      return error_at(node->source(), full(section, key), valid.error().message);
    }
    return {};
  }

  Result<void> read_cgroup_roots(const toml::table& table, std::string_view section, std::string_view key,
                                 std::vector<std::string>& out) const {
    const toml::node* node = table.get(key);
    if (node == nullptr) return {};
    if (!node->is_array()) return error_at(node->source(), full(section, key), "expected an array of cgroup paths");
    std::vector<std::string> values;
    const toml::array& array = *node->as_array();
    for (std::size_t i = 0; i < array.size(); ++i) {
      const std::string item_key = fmt::format("{}[{}]", full(section, key), i);
      if (!array[i].is_string()) return error_at(array[i].source(), item_key, "expected a string");
      values.push_back(array[i].as_string()->get());
      if (auto valid = check_cgroup_root(values.back()); !valid) {
        return error_at(array[i].source(), item_key, valid.error().message);
      }
    }
    out = std::move(values);
    return {};
  }

 private:
  static std::string full(std::string_view section, std::string_view key) {
    return fmt::format("{}.{}", section, key);
  }
  std::string source_;
};

Result<void> read_agent(const SchemaReader& reader, const toml::table& table, AgentSection& agent) {
  TALLY_TRY(reader.reject_unknown(table, "agent",
                                  {"node_id", "log_level", "state_dir", "checkpoint_interval_ms", "control_socket"}));
  TALLY_TRY(reader.read_string(table, "agent", "node_id", agent.node_id));
  TALLY_TRY(reader.read_string(table, "agent", "log_level", agent.log_level));
  TALLY_TRY(reader.read_path(table, "agent", "state_dir", agent.state_dir));
  TALLY_TRY(reader.read_path(table, "agent", "control_socket", agent.control_socket, /*allow_empty=*/true));
  TALLY_TRY(reader.read_uint(table, "agent", "checkpoint_interval_ms", 100, 3'600'000, agent.checkpoint_interval_ms));
  if (spdlog::level::from_str(agent.log_level) == spdlog::level::off && agent.log_level != "off") {
    return reader.error_at(table.get("log_level")->source(), "agent.log_level",
                           fmt::format("'{}' is not one of trace, debug, info, warn, error, critical, off",
                                       agent.log_level));
  }
  for (char c : agent.node_id) {
    if (c < 0x21 || c > 0x7e) {
      return reader.error_at(table.get("node_id")->source(), "agent.node_id",
                             "must be printable ASCII without spaces");
    }
  }
  return {};
}

Result<void> read_feed(const SchemaReader& reader, const toml::table& table, FeedSection& feed) {
  TALLY_TRY(reader.reject_unknown(table, "feed",
                                  {"bind", "connect", "heartbeat_interval_ms", "usage_interval_ms",
                                   "send_high_water_mark", "snapshot_interval_ms"}));
  TALLY_TRY(reader.read_endpoints(table, "feed", "bind", EndpointRole::bind, feed.bind));
  TALLY_TRY(reader.read_endpoints(table, "feed", "connect", EndpointRole::connect, feed.connect));
  TALLY_TRY(reader.read_uint(table, "feed", "heartbeat_interval_ms", 10, 3'600'000, feed.heartbeat_interval_ms));
  TALLY_TRY(reader.read_uint(table, "feed", "usage_interval_ms", 10, 3'600'000, feed.usage_interval_ms));
  TALLY_TRY(reader.read_uint(table, "feed", "send_high_water_mark", 1, 10'000'000, feed.send_high_water_mark));
  TALLY_TRY(reader.read_uint(table, "feed", "snapshot_interval_ms", 10, 3'600'000, feed.snapshot_interval_ms));
  if (feed.bind.empty() && feed.connect.empty()) {
    const toml::node* where = table.get("bind") ? table.get("bind") : table.get("connect");
    return reader.error_at(where ? where->source() : table.source(), "feed",
                           "bind and connect are both empty: the feed would reach no one");
  }
  return {};
}

Result<void> read_topology(const SchemaReader& reader, const toml::table& table, TopologySection& topology) {
  TALLY_TRY(reader.reject_unknown(table, "topology", {"nvml_library"}));
  TALLY_TRY(reader.read_string(table, "topology", "nvml_library", topology.nvml_library));
  const std::string& library = topology.nvml_library;
  // A relative path with a '/' would depend on tallyd's working directory.
  if (library.find('/') != std::string::npos && library.front() != '/') {
    return reader.error_at(table.get("nvml_library")->source(), "topology.nvml_library",
                           "expected a library name (libnvidia-ml.so.1), an absolute path, or \"\" for no NVML");
  }
  return {};
}

Result<void> read_gpu(const SchemaReader& reader, const toml::table& table, GpuSection& gpu) {
  TALLY_TRY(reader.reject_unknown(
      table, "gpu", {"enabled", "interval_ms", "idle_threshold_percent", "idle_window_s", "idle_min_samples"}));
  TALLY_TRY(reader.read_bool(table, "gpu", "enabled", gpu.enabled));
  TALLY_TRY(reader.read_uint(table, "gpu", "interval_ms", 10, 3'600'000, gpu.interval_ms));
  TALLY_TRY(reader.read_uint(table, "gpu", "idle_threshold_percent", 0, 100, gpu.idle_threshold_percent));
  TALLY_TRY(reader.read_uint(table, "gpu", "idle_window_s", 1, 30 * 86400, gpu.idle_window_s));
  return reader.read_uint(table, "gpu", "idle_min_samples", 1, 1'000'000, gpu.idle_min_samples);
}

Result<void> read_probes(const SchemaReader& reader, const toml::table& table, ProbesSection& probes) {
  TALLY_TRY(reader.reject_unknown(table, "probes", {"enabled", "pin_dir", "counters_capacity"}));
  TALLY_TRY(reader.read_bool(table, "probes", "enabled", probes.enabled));
  TALLY_TRY(reader.read_path(table, "probes", "pin_dir", probes.pin_dir, /*allow_empty=*/true));
  return reader.read_uint(table, "probes", "counters_capacity", 16, 1u << 24, probes.counters_capacity);
}

Result<void> read_identity(const SchemaReader& reader, const toml::table& table, IdentityRules& rules) {
  TALLY_TRY(reader.reject_unknown(table, "identity",
                                  {"kubepods_roots", "slurm_roots", "container_parents", "systemd_root", "user_root"}));
  TALLY_TRY(reader.read_cgroup_roots(table, "identity", "kubepods_roots", rules.kubepods_roots));
  TALLY_TRY(reader.read_cgroup_roots(table, "identity", "slurm_roots", rules.slurm_roots));
  TALLY_TRY(reader.read_cgroup_roots(table, "identity", "container_parents", rules.container_parents));
  TALLY_TRY(reader.read_cgroup_root(table, "identity", "systemd_root", rules.systemd_root));
  return reader.read_cgroup_root(table, "identity", "user_root", rules.user_root);
}

// An array of strings, each checked by `check` (an error names the item).
template <typename Check>
Result<void> read_strings(const SchemaReader& reader, const toml::table& table, std::string_view key,
                          std::string_view full_key, std::vector<std::string>& out, Check check) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return {};
  if (!node->is_array()) return reader.error_at(node->source(), full_key, "expected an array of strings");
  std::vector<std::string> values;
  const toml::array& array = *node->as_array();
  for (std::size_t i = 0; i < array.size(); ++i) {
    const std::string item_key = fmt::format("{}[{}]", full_key, i);
    if (!array[i].is_string()) return reader.error_at(array[i].source(), item_key, "expected a string");
    values.push_back(array[i].as_string()->get());
    if (auto valid = check(values.back()); !valid) {
      return reader.error_at(array[i].source(), item_key, valid.error().message);
    }
  }
  out = std::move(values);
  return {};
}

std::string origin_of(std::string_view source, const toml::source_region& where) {
  return fmt::format("{}:{}", source, where.begin.line);
}

// The tables of an array of tables ([[full]]); none when the key is absent.
Result<std::vector<const toml::table*>> tables_of_array(const SchemaReader& reader, const toml::table& table,
                                                        std::string_view key, const std::string& full) {
  std::vector<const toml::table*> found;
  const toml::node* node = table.get(key);
  if (node == nullptr) return found;
  if (!node->is_array()) return reader.error_at(node->source(), full, fmt::format("expected [[{}]] tables", full));
  for (const auto& item : *node->as_array()) {
    if (!item.is_table()) return reader.error_at(item.source(), full, "expected a table");
    found.push_back(item.as_table());
  }
  return found;
}

// [[partitioning.gpu]] and [[partitioning.assign]], in tally.toml or a drop-in file.
Result<void> read_plan_entries(const SchemaReader& reader, std::string_view source, const toml::table& table,
                               partitioning::PartitionPlan& plan) {
  const auto tables_of = [&](std::string_view key) {
    return tables_of_array(reader, table, key, fmt::format("partitioning.{}", key));
  };
  auto gpus = tables_of("gpu");
  if (!gpus) return gpus.error();
  for (const toml::table* gpu_table : *gpus) {
    const std::string key = "partitioning.gpu";
    TALLY_TRY(reader.reject_unknown(*gpu_table, key, {"select", "mode", "profiles"}));
    partitioning::GpuGeometryPlan gpu;
    gpu.origin = origin_of(source, gpu_table->source());
    TALLY_TRY(reader.read_string(*gpu_table, key, "select", gpu.select));
    if (auto selector = partitioning::parse_gpu_selector(gpu.select); !selector || selector->slice) {
      return reader.error_at(gpu_table->source(), key + ".select",
                             fmt::format("'{}': expected a GPU index, UUID or PCI bus id", gpu.select));
    }
    std::string mode = "whole";
    TALLY_TRY(reader.read_string(*gpu_table, key, "mode", mode));
    if (mode != "whole" && mode != "mig") {
      return reader.error_at(gpu_table->source(), key + ".mode", fmt::format("'{}' is not \"whole\" or \"mig\"", mode));
    }
    gpu.mig = mode == "mig";
    TALLY_TRY(read_strings(reader, *gpu_table, "profiles", key + ".profiles", gpu.profiles,
                           [](const std::string& name) -> Result<void> {
                             if (name.find('g') == std::string::npos || name.find('.') == std::string::npos) {
                               return make_error(ErrorCode::invalid_argument,
                                                 "'{}' is not a MIG profile name such as \"3g.40gb\"", name);
                             }
                             return {};
                           }));
    if (gpu.mig == gpu.profiles.empty()) {
      return reader.error_at(gpu_table->source(), key,
                             gpu.mig ? "mode \"mig\" needs profiles" : "profiles need mode \"mig\"");
    }
    for (const auto& other : plan.gpus) {
      if (other.select == gpu.select) {
        return reader.error_at(gpu_table->source(), key + ".select",
                               fmt::format("GPU '{}' already has a geometry ({})", gpu.select, other.origin));
      }
    }
    plan.gpus.push_back(std::move(gpu));
  }
  auto assigns = tables_of("assign");
  if (!assigns) return assigns.error();
  for (const toml::table* assign_table : *assigns) {
    const std::string key = "partitioning.assign";
    TALLY_TRY(reader.reject_unknown(*assign_table, key, {"workload", "gpus"}));
    partitioning::Assignment assignment;
    assignment.origin = origin_of(source, assign_table->source());
    TALLY_TRY(reader.read_string(*assign_table, key, "workload", assignment.workload));
    if (auto valid = partitioning::check_workload_selector(assignment.workload); !valid) {
      return reader.error_at(assign_table->source(), key + ".workload", valid.error().message);
    }
    TALLY_TRY(read_strings(reader, *assign_table, "gpus", key + ".gpus", assignment.gpus,
                           [](const std::string& gpu) -> Result<void> {
                             auto selector = partitioning::parse_gpu_selector(gpu);
                             if (!selector) return selector.error();
                             return {};
                           }));
    if (assignment.gpus.empty()) {
      return reader.error_at(assign_table->source(), key + ".gpus", "names no GPU");
    }
    plan.assignments.push_back(std::move(assignment));
  }
  return {};
}

Result<void> read_partitioning(const SchemaReader& reader, std::string_view source, const toml::table& table,
                               partitioning::PartitionPlan& plan) {
  TALLY_TRY(reader.reject_unknown(table, "partitioning",
                                  {"default", "on_stop", "drop_in_dir", "pin_dir", "system_clients", "gpu", "assign"}));
  std::string text(to_string(plan.default_access));
  TALLY_TRY(reader.read_string(table, "partitioning", "default", text));
  if (text != "open" && text != "deny") {
    return reader.error_at(table.get("default")->source(), "partitioning.default",
                           fmt::format("'{}' is not \"open\" or \"deny\"", text));
  }
  plan.default_access = text == "open" ? partitioning::DefaultAccess::open : partitioning::DefaultAccess::deny;
  text = std::string(to_string(plan.on_stop));
  TALLY_TRY(reader.read_string(table, "partitioning", "on_stop", text));
  if (text != "keep" && text != "release") {
    return reader.error_at(table.get("on_stop")->source(), "partitioning.on_stop",
                           fmt::format("'{}' is not \"keep\" or \"release\"", text));
  }
  plan.on_stop = text == "keep" ? partitioning::OnStop::keep : partitioning::OnStop::release;
  TALLY_TRY(reader.read_path(table, "partitioning", "drop_in_dir", plan.drop_in_dir, /*allow_empty=*/true));
  TALLY_TRY(reader.read_path(table, "partitioning", "pin_dir", plan.pin_dir, /*allow_empty=*/true));
  TALLY_TRY(read_strings(reader, table, "system_clients", "partitioning.system_clients", plan.system_clients,
                         partitioning::check_workload_selector));
  return read_plan_entries(reader, source, table, plan);
}

Result<void> read_tenant_rules(const SchemaReader& reader, const toml::table& table,
                               std::vector<shm::TenantRule>& rules) {
  const toml::node* node = table.get("tenant_rules");
  if (node == nullptr) return {};
  if (!node->is_array()) return reader.error_at(node->source(), "metering.tenant_rules", "expected an array of tables");
  const toml::array& array = *node->as_array();
  for (std::size_t i = 0; i < array.size(); ++i) {
    const std::string key = fmt::format("metering.tenant_rules[{}]", i);
    if (!array[i].is_table()) return reader.error_at(array[i].source(), key, "expected a table");
    const toml::table& rule_table = *array[i].as_table();
    TALLY_TRY(reader.reject_unknown(rule_table, key, {"uid", "cgroup_prefix", "tenants"}));
    shm::TenantRule rule;
    if (const toml::node* uid = rule_table.get("uid")) {
      if (!uid->is_integer() || uid->as_integer()->get() < 0 || uid->as_integer()->get() > 0xfffffffe) {
        return reader.error_at(uid->source(), key + ".uid", "expected a uid (0 to 4294967294)");
      }
      rule.uid = static_cast<std::uint32_t>(uid->as_integer()->get());
    }
    TALLY_TRY(reader.read_string(rule_table, key, "cgroup_prefix", rule.cgroup_prefix));
    if (!rule.uid && rule.cgroup_prefix.empty()) {
      return reader.error_at(rule_table.source(), key, "needs uid or cgroup_prefix");
    }
    const toml::node* tenants = rule_table.get("tenants");
    if (tenants == nullptr || !tenants->is_array()) {
      return reader.error_at(tenants ? tenants->source() : rule_table.source(), key + ".tenants",
                             "expected an array of tenant names");
    }
    for (const auto& t : *tenants->as_array()) {
      if (!t.is_string()) return reader.error_at(t.source(), key + ".tenants", "expected a string");
      rule.tenants.push_back(t.as_string()->get());
    }
    rules.push_back(std::move(rule));
  }
  return {};
}

Result<void> read_metering(const SchemaReader& reader, const toml::table& table, MeteringSection& m,
                           std::string& state_dir) {
  TALLY_TRY(reader.reject_unknown(table, "metering",
                                  {"enabled", "socket", "runtime_dir", "state_dir", "drain_interval_ms", "retention_s",
                                   "lane_records", "slots", "label_sets", "tenant_rules", "max_slots",
                                   "max_label_sets", "max_lane_records", "max_segment_mib", "max_segments_per_uid",
                                   "max_segments_per_cgroup", "max_mib_per_uid", "drain_budget", "socket_mode",
                                   "socket_group"}));
  TALLY_TRY(reader.read_bool(table, "metering", "enabled", m.enabled));
  TALLY_TRY(reader.read_string(table, "metering", "socket", m.socket));
  TALLY_TRY(reader.read_string(table, "metering", "runtime_dir", m.runtime_dir));
  // Before the ledger, the metering section held the state directory: still read, as [agent] state_dir.
  TALLY_TRY(reader.read_path(table, "metering", "state_dir", state_dir));
  TALLY_TRY(reader.read_uint(table, "metering", "drain_interval_ms", 1, 60'000, m.drain_interval_ms));
  TALLY_TRY(reader.read_uint(table, "metering", "retention_s", 0, 30 * 86'400, m.retention_s));
  TALLY_TRY(reader.read_uint(table, "metering", "lane_records", 2, 65'536, m.lane_records));
  TALLY_TRY(reader.read_uint(table, "metering", "slots", 1, 1024, m.slots));
  TALLY_TRY(reader.read_uint(table, "metering", "label_sets", 2, 4096, m.label_sets));
  TALLY_TRY(reader.read_uint(table, "metering", "max_slots", 1, 1024, m.max_slots));
  TALLY_TRY(reader.read_uint(table, "metering", "max_label_sets", 2, 4096, m.max_label_sets));
  TALLY_TRY(reader.read_uint(table, "metering", "max_lane_records", 2, 65'536, m.max_lane_records));
  TALLY_TRY(reader.read_uint(table, "metering", "max_segment_mib", 1, 16'384, m.max_segment_mib));
  TALLY_TRY(reader.read_uint(table, "metering", "max_segments_per_uid", 1, 1'000'000, m.max_segments_per_uid));
  TALLY_TRY(reader.read_uint(table, "metering", "max_segments_per_cgroup", 1, 1'000'000, m.max_segments_per_cgroup));
  TALLY_TRY(reader.read_uint(table, "metering", "max_mib_per_uid", 1, 1'048'576, m.max_mib_per_uid));
  TALLY_TRY(reader.read_uint(table, "metering", "drain_budget", 1, 16'777'216, m.drain_budget));
  TALLY_TRY(reader.read_string(table, "metering", "socket_mode", m.socket_mode));
  TALLY_TRY(reader.read_string(table, "metering", "socket_group", m.socket_group));
  if (!socket_mode_of(m.socket_mode)) {
    return reader.error_at(table.get("socket_mode")->source(), "metering.socket_mode",
                           "expected an octal mode such as \"0666\" or \"0660\" (at most 0777)");
  }
  for (std::string_view key : {"socket", "runtime_dir"}) {
    const toml::node* node = table.get(key);
    const std::string& value = key == "socket" ? m.socket : m.runtime_dir;
    if (node != nullptr && (value.empty() || value.front() != '/')) {
      return reader.error_at(node->source(), fmt::format("metering.{}", key), "expected an absolute path");
    }
  }
  return read_tenant_rules(reader, table, m.tenant_rules);
}

}  // namespace

namespace {

// Debian's toml++ is built with exceptions: a syntax error arrives as toml::parse_error.
// A limit in the resource's unit (an integer, or a number for resources counted in finer units: 1.5 gpu_seconds),
// in counter units.
Result<std::optional<std::uint64_t>> read_limit(const SchemaReader& reader, const toml::table& table,
                                                std::string_view key, const budgets::Resource& resource) {
  const toml::node* node = table.get(key);
  if (node == nullptr) return std::optional<std::uint64_t>{};
  const std::string full = fmt::format("budgets.{}", key);
  double value = 0;
  if (node->is_integer()) {
    value = static_cast<double>(node->as_integer()->get());
  } else if (node->is_floating_point() && resource.scale > 1) {
    value = node->as_floating_point()->get();
  } else {
    return reader.error_at(node->source(), full,
                           resource.scale > 1 ? "expected a number" : "expected an integer");
  }
  const double scaled = value * static_cast<double>(resource.scale);
  if (!(value >= 0) || scaled >= 9.0e18) {
    return reader.error_at(node->source(), full, fmt::format("{} is out of range [0, {}]", value,
                                                             9'000'000'000'000'000'000ULL / resource.scale));
  }
  return std::optional<std::uint64_t>{static_cast<std::uint64_t>(scaled)};
}

bool budget_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.';
}

// [[budgets]], in tally.toml or a budgets drop-in file.
Result<void> read_budgets(const SchemaReader& reader, std::string_view source, const toml::table& root,
                          QuotaSection& quota) {
  auto tables = tables_of_array(reader, root, "budgets", "budgets");
  if (!tables) return tables.error();
  for (const toml::table* t : *tables) {
    TALLY_TRY(reader.reject_unknown(*t, "budgets", {"name", "select", "resource", "window", "soft", "hard", "action",
                                                    "degrade_max_tokens", "allowance"}));
    budgets::Budget budget;
    budget.origin = origin_of(source, t->source());
    const auto required = [&](std::string_view key) -> Result<void> {
      if (!t->contains(key)) return reader.error_at(t->source(), fmt::format("budgets.{}", key), "is required");
      return {};
    };
    TALLY_TRY(required("name"));
    TALLY_TRY(reader.read_string(*t, "budgets", "name", budget.name));
    if (budget.name.empty() || budget.name.size() > 64 ||
        !std::all_of(budget.name.begin(), budget.name.end(), budget_name_char)) {
      return reader.error_at(t->get("name")->source(), "budgets.name",
                             fmt::format("'{}': expected 1 to 64 of [A-Za-z0-9_.-]", budget.name));
    }
    for (const auto& other : quota.budgets) {
      if (other.name == budget.name) {
        return reader.error_at(t->get("name")->source(), "budgets.name",
                               fmt::format("'{}' is already a budget ({})", budget.name, other.origin));
      }
    }
    TALLY_TRY(required("select"));
    const toml::node* select = t->get("select");
    if (!select->is_table()) {
      return reader.error_at(select->source(), "budgets.select",
                             "expected a table of labels, e.g. { team = \"a\" } or { workload = \"...\" }");
    }
    for (const auto& [key, value] : *select->as_table()) {
      const std::string full = fmt::format("budgets.select.{}", key.str());
      if (!value.is_string()) return reader.error_at(value.source(), full, "expected a string");
      const std::string& text = value.as_string()->get();
      if (key.str() == "workload") {
        if (text.empty()) return reader.error_at(value.source(), full, "names no workload");
        budget.select.workload = text;
        continue;
      }
      if (std::string probe; !shm::format::append_label_pair(probe, key.str(), text)) {
        return reader.error_at(value.source(), full, fmt::format("'{}={}' is not a label a client can send",
                                                                 key.str(), text));
      }
      budget.select.labels.emplace_back(std::string(key.str()), text);
    }
    std::sort(budget.select.labels.begin(), budget.select.labels.end());
    TALLY_TRY(required("resource"));
    std::string text;
    TALLY_TRY(reader.read_string(*t, "budgets", "resource", text));
    auto resource = budgets::parse_resource(text);
    if (!resource) return reader.error_at(t->get("resource")->source(), "budgets.resource", resource.error().message);
    budget.resource = std::move(*resource);
    text = "day";
    TALLY_TRY(reader.read_string(*t, "budgets", "window", text));
    auto window = budgets::parse_window(text);
    if (!window) return reader.error_at(t->get("window")->source(), "budgets.window", window.error().message);
    budget.window = *window;
    auto soft = read_limit(reader, *t, "soft", budget.resource);
    if (!soft) return soft.error();
    auto hard = read_limit(reader, *t, "hard", budget.resource);
    if (!hard) return hard.error();
    budget.soft = *soft;
    budget.hard = *hard;
    if (!budget.soft && !budget.hard) return reader.error_at(t->source(), "budgets", "sets neither soft nor hard");
    if (budget.soft && budget.hard && *budget.soft > *budget.hard) {
      return reader.error_at(t->get("soft")->source(), "budgets.soft", "is above hard");
    }
    if (const toml::node* action = t->get("action")) {
      TALLY_TRY(reader.read_string(*t, "budgets", "action", text));
      auto parsed = budgets::parse_action(text);
      if (!parsed) return reader.error_at(action->source(), "budgets.action", parsed.error().message);
      if (!budget.hard && *parsed != budgets::Action::notify) {
        return reader.error_at(action->source(), "budgets.action", "needs a hard limit");
      }
      budget.action = *parsed;
    } else if (budget.hard) {
      return reader.error_at(t->source(), "budgets.action", "is required with a hard limit");
    }
    if (t->contains("degrade_max_tokens")) {
      if (budget.action != budgets::Action::degrade) {
        return reader.error_at(t->get("degrade_max_tokens")->source(), "budgets.degrade_max_tokens",
                               "only for action \"degrade\"");
      }
      TALLY_TRY(reader.read_uint(*t, "budgets", "degrade_max_tokens", 1, 65535, budget.degrade_max_tokens));
    }
    if (t->contains("allowance")) {
      if (!budget.resource.client_counter) {
        return reader.error_at(t->get("allowance")->source(), "budgets.allowance",
                               fmt::format("resource '{}' is not reserved by clients (tally_reserve): only "
                                           "tokens_in, tokens_out, requests, errors, gpu_seconds and tool_calls are",
                                           budget.resource.name));
      }
      std::uint32_t allowance = 0;
      TALLY_TRY(reader.read_uint(*t, "budgets", "allowance", 1, UINT32_MAX, allowance));
      budget.allowance = allowance;
    }
    quota.budgets.push_back(std::move(budget));
  }
  return {};
}

Result<void> read_quota(const SchemaReader& reader, const toml::table& table, QuotaSection& quota) {
  TALLY_TRY(reader.reject_unknown(table, "quota", {"time_zone", "drop_in_dir", "priorities"}));
  if (const toml::node* node = table.get("priorities")) {
    const toml::table* priorities = node->as_table();
    if (priorities == nullptr) return reader.error_at(node->source(), "quota.priorities", "expected a table of workload = priority");
    for (const auto& [key, value] : *priorities) {
      const std::string item = fmt::format("quota.priorities.\"{}\"", key.str());
      if (!value.is_integer()) return reader.error_at(value.source(), item, "expected an integer priority");
      if (auto valid = partitioning::check_workload_selector(key.str()); !valid) {
        return reader.error_at(key.source(), item, valid.error().message);
      }
      quota.priorities[std::string(key.str())] = value.as_integer()->get();
    }
  }
  TALLY_TRY(reader.read_string(table, "quota", "time_zone", quota.time_zone));
  if (auto zone = budgets::find_time_zone(quota.time_zone); !zone) {
    return reader.error_at(table.get("time_zone")->source(), "quota.time_zone", zone.error().message);
  }
  return reader.read_path(table, "quota", "drop_in_dir", quota.drop_in_dir, /*allow_empty=*/true);
}

Result<toml::table> parse_toml(std::string_view toml_text, std::string_view source_name) {
  try {
    return toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& err) {
    return make_error(ErrorCode::invalid_argument, "{}:{}:{}: {}", source_name, err.source().begin.line,
                      err.source().begin.column, err.description());
  }
}

}  // namespace

Result<Config> parse_config(std::string_view toml_text, std::string_view source_name) {
  auto parsed = parse_toml(toml_text, source_name);
  if (!parsed) return parsed.error();
  const toml::table& root = *parsed;
  const SchemaReader reader(source_name);
  Config config;
  TALLY_TRY(reader.reject_unknown(root, "",
                                  {"agent", "feed", "probes", "metering", "topology", "identity", "gpu", "partitioning",
                                   "quota", "budgets"}));

  auto agent = reader.section(root, "agent");
  if (!agent) return agent.error();
  if (*agent) TALLY_TRY(read_agent(reader, **agent, config.agent));

  auto feed = reader.section(root, "feed");
  if (!feed) return feed.error();
  if (*feed) TALLY_TRY(read_feed(reader, **feed, config.feed));

  auto probes = reader.section(root, "probes");
  if (!probes) return probes.error();
  if (*probes) TALLY_TRY(read_probes(reader, **probes, config.probes));

  auto metering = reader.section(root, "metering");
  if (!metering) return metering.error();
  if (*metering) {
    const bool agent_sets_it = *agent && (**agent).contains("state_dir");
    if (agent_sets_it && (**metering).contains("state_dir")) {
      return reader.error_at((**metering).get("state_dir")->source(), "metering.state_dir",
                             "set agent.state_dir only (metering.state_dir is its old name)");
    }
    TALLY_TRY(read_metering(reader, **metering, config.metering, config.agent.state_dir));
  }

  auto topology = reader.section(root, "topology");
  if (!topology) return topology.error();
  if (*topology) TALLY_TRY(read_topology(reader, **topology, config.topology));

  auto gpu = reader.section(root, "gpu");
  if (!gpu) return gpu.error();
  if (*gpu) TALLY_TRY(read_gpu(reader, **gpu, config.gpu));

  auto identity = reader.section(root, "identity");
  if (!identity) return identity.error();
  if (*identity) TALLY_TRY(read_identity(reader, **identity, config.identity));

  auto plan = reader.section(root, "partitioning");
  if (!plan) return plan.error();
  if (*plan) TALLY_TRY(read_partitioning(reader, source_name, **plan, config.partitioning));

  auto quota = reader.section(root, "quota");
  if (!quota) return quota.error();
  if (*quota) TALLY_TRY(read_quota(reader, **quota, config.quota));
  TALLY_TRY(read_budgets(reader, source_name, root, config.quota));
  return config;
}

Result<void> parse_budgets_drop_in(std::string_view toml_text, std::string_view source_name, QuotaSection& quota) {
  auto parsed = parse_toml(toml_text, source_name);
  if (!parsed) return parsed.error();
  const SchemaReader reader(source_name);
  TALLY_TRY(reader.reject_unknown(*parsed, "", {"budgets"}));
  return read_budgets(reader, source_name, *parsed, quota);
}

std::filesystem::path budgets_drop_in_dir(const QuotaSection& quota, const std::filesystem::path& config_path) {
  if (!quota.drop_in_dir.empty()) return quota.drop_in_dir;
  return config_path.parent_path() / "budgets.d";
}

Result<void> parse_plan_drop_in(std::string_view toml_text, std::string_view source_name,
                                partitioning::PartitionPlan& plan) {
  auto parsed = parse_toml(toml_text, source_name);
  if (!parsed) return parsed.error();
  const toml::table& root = *parsed;
  const SchemaReader reader(source_name);
  TALLY_TRY(reader.reject_unknown(root, "", {"partitioning"}));
  auto section = reader.section(root, "partitioning");
  if (!section) return section.error();
  if (!*section) return {};
  // A drop-in adds GPUs and assignments; how the plan behaves is the main file's to say.
  TALLY_TRY(reader.reject_unknown(**section, "partitioning", {"gpu", "assign"}));
  return read_plan_entries(reader, source_name, **section, plan);
}

std::filesystem::path plan_drop_in_dir(const partitioning::PartitionPlan& plan,
                                       const std::filesystem::path& config_path) {
  if (!plan.drop_in_dir.empty()) return plan.drop_in_dir;
  return config_path.parent_path() / "plan.d";
}

namespace {

// Feeds every *.toml of `dir` (in name order) to `parse`; a missing directory feeds nothing.
template <typename Parse>
Result<void> load_drop_ins(const std::filesystem::path& dir, std::string_view what, Parse parse) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return {};
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".toml" && entry.is_regular_file(ec)) files.push_back(entry.path());
  }
  if (ec) return make_error(ErrorCode::io, "{}: cannot list {} drop-ins: {}", dir.string(), what, ec.message());
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    const auto text = read_file(file);
    if (!text) return make_error(ErrorCode::io, "{}: cannot read {} drop-in", file.string(), what);
    TALLY_TRY(parse(*text, file.string()));
  }
  return {};
}

// The drop-ins of a configuration read from `path` (or the built-in defaults, for a file that is not there).
Result<void> load_all_drop_ins(const std::filesystem::path& path, Config& config) {
  TALLY_TRY(load_plan_drop_ins(plan_drop_in_dir(config.partitioning, path), config.partitioning));
  return load_drop_ins(budgets_drop_in_dir(config.quota, path), "budgets",
                       [&](std::string_view text, std::string_view file) {
                         return parse_budgets_drop_in(text, file, config.quota);
                       });
}

}  // namespace

Result<void> load_plan_drop_ins(const std::filesystem::path& dir, partitioning::PartitionPlan& plan) {
  return load_drop_ins(dir, "plan", [&](std::string_view text, std::string_view file) {
    return parse_plan_drop_in(text, file, plan);
  });
}

Result<Config> load_config(const std::filesystem::path& path, bool must_exist) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    if (must_exist) return make_error(ErrorCode::not_found, "{}: config file not found", path.string());
    Config defaults;
    TALLY_TRY(load_all_drop_ins(path, defaults));
    return defaults;
  }
  if (!std::filesystem::is_regular_file(path, ec)) {
    return make_error(ErrorCode::invalid_argument, "{}: not a regular file", path.string());
  }
  const auto text = read_file(path);
  if (!text) return make_error(ErrorCode::io, "{}: cannot read config file", path.string());
  auto config = parse_config(*text, path.string());
  if (!config) return config;
  TALLY_TRY(load_all_drop_ins(path, *config));
  return config;
}

}  // namespace tally::agent
