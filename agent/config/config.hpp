#pragma once
// tallyd's configuration: a TOML file whose every key has a built-in default (docs/configuration.md).
// Parsing is strict: an unknown key, a wrong type, an out-of-range value or an invalid endpoint is an error that
// names the file, line and key, so the agent never starts on a configuration it misunderstood.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/result.hpp"
#include "agent/base/workload_identity.hpp"
#include "agent/budgets/budget.hpp"
#include "agent/feed/endpoint.hpp"
#include "agent/partitioning/plan.hpp"
#include "collectors/kernel/bpf_probes.hpp"
#include "shm/format/names.hpp"
#include "shm/segments/metering.hpp"

namespace tally::agent {

inline constexpr std::string_view kDefaultConfigPath = "/etc/tally/tally.toml";

struct AgentSection {
  std::string node_id;              // empty: read /etc/machine-id
  std::string log_level = "info";   // trace, debug, info, warn, error, critical, off
  std::string state_dir = "/var/lib/tally";  // the ledger's checkpoint (ledger.checkpoint)
  // How often the checkpoint is written at most while usage changes (sooner when something retired waits for it).
  std::uint32_t checkpoint_interval_ms = 5000;
  // tallyctl's way in (`tallyctl plan ...`): a Unix socket only root can connect to; "": none. Read at start.
  std::string control_socket = "/run/tally/control.sock";
  bool operator==(const AgentSection&) const = default;
};

struct FeedSection {
  std::vector<std::string> bind{std::string(kDefaultFeedEndpoint)};
  std::vector<std::string> connect;
  std::uint32_t heartbeat_interval_ms = 5000;
  std::uint32_t usage_interval_ms = 1000;
  std::uint32_t send_high_water_mark = 100000;  // messages queued per subscriber before ZeroMQ drops
  // How often a usage report is a snapshot (every workload, changed or not): what a subscriber that joins or
  // loses messages waits at most to have every total.
  std::uint32_t snapshot_interval_ms = 5000;
  bool operator==(const FeedSection&) const = default;
};

// eBPF probes (docs/ebpf.md). When they cannot run here the agent warns once and samples /proc/PID/io instead.
struct ProbesSection {
  bool enabled = true;
  // Where the probes are pinned (a bpffs directory), so they keep counting while the agent is down and the next
  // agent adopts them; "" : not pinned (they go away with the agent).
  std::string pin_dir = "/sys/fs/bpf/tally";
  std::uint32_t counters_capacity = collectors::kDefaultCountersCapacity;  // keys the probes' counters map holds
  bool operator==(const ProbesSection&) const = default;
};

// Workload metering over shared memory (docs/shm-format.md, docs/workload-integration.md).
struct MeteringSection {
  bool enabled = true;
  std::string socket{shm::format::kDefaultSocketPath};  // where clients register
  std::string runtime_dir = "/run/tally";         // segments live in <runtime_dir>/segments (tmpfs)
  std::uint32_t drain_interval_ms = 100;
  std::uint32_t retention_s = 3600;               // how long an exited workload stays in reports
  std::uint32_t lane_records = shm::format::kDefaultLaneRecords;  // events per thread lane (clients may ask 2..65536)
  std::uint32_t slots = shm::format::kDefaultSlots;               // default per-thread slots per client
  std::uint32_t label_sets = shm::format::kDefaultLabelSets;      // default label sets per client
  // Bounds per client (docs/operations.md, "Bounds"): the largest shape a client may ask for, and no segment larger
  // than max_segment_mib; segments and segment bytes per uid, segments per cgroup; events one drain takes from one
  // segment (the rest wait in its lanes).
  std::uint32_t max_slots = 256, max_label_sets = 4096, max_lane_records = 65536, max_segment_mib = 64;
  std::uint32_t max_segments_per_uid = 1024, max_segments_per_cgroup = 1024, max_mib_per_uid = 8192;
  std::uint32_t drain_budget = 65536;
  std::string socket_mode = "0666";  // the registration socket's mode (octal) and group ("": the agent's)
  std::string socket_group;
  std::vector<shm::TenantRule> tenant_rules;
  bool operator==(const MeteringSection&) const = default;
};

// Topology discovery (docs/topology.md).
struct TopologySection {
  // NVML library tallyd dlopen()s: a soname searched like the dynamic linker does, or an absolute path.
  // Empty: do not load NVML (GPUs are still found by PCI class).
  std::string nvml_library = "libnvidia-ml.so.1";
  bool operator==(const TopologySection&) const = default;
};

// GPU accounting from NVML (docs/gpu-accounting.md); the library is [topology] nvml_library. Read at start.
struct GpuSection {
  bool enabled = true;                       // where NVML loads; without it the agent runs on, without GPU figures
  std::uint32_t interval_ms = 1000;          // one pass over NVML
  std::uint32_t idle_threshold_percent = 10; // a GPU under this utilization ...
  std::uint32_t idle_window_s = 7200;        // ... for this long is idle (GpuIdle)
  std::uint32_t idle_min_samples = 10;       // with at least this many readings in the window
  bool operator==(const GpuSection&) const = default;
};

// Budgets ([quota] and [[budgets]], in tally.toml and the budgets drop-ins, docs/budgets.md). Applied at start and
// on every reload.
struct QuotaSection {
  std::string time_zone = "UTC";  // an IANA name: where calendar windows begin (local midnight, month, hour)
  std::string drop_in_dir;        // "": budgets.d beside the configuration file
  std::vector<budgets::Budget> budgets;
  // Workload id → priority, for the preempt action: a workload over a preempt budget is frozen while a workload of a
  // higher priority shares one of its GPUs. Unlisted workloads have priority 0.
  std::map<std::string, std::int64_t> priorities;
  bool operator==(const QuotaSection&) const = default;
};

struct Config {
  AgentSection agent;
  FeedSection feed;
  ProbesSection probes;
  MeteringSection metering;
  TopologySection topology;
  GpuSection gpu;
  // Where each workload manager puts its cgroups ([identity], docs/configuration.md): read at start.
  IdentityRules identity;
  // GPU partitioning ([partitioning] and the plan drop-ins, docs/partitioning.md).
  partitioning::PartitionPlan partitioning;
  QuotaSection quota;
  bool operator==(const Config&) const = default;
};

// [metering] socket_mode as a mode: an octal string of at most 0777 ("0666", "660"); nullopt when it is not one.
std::optional<std::uint32_t> socket_mode_of(std::string_view text);

// Parses TOML text; `source_name` is the file name used in error messages.
Result<Config> parse_config(std::string_view toml_text, std::string_view source_name);

// A plan drop-in file: [[partitioning.gpu]] and [[partitioning.assign]] only, added to `plan`.
Result<void> parse_plan_drop_in(std::string_view toml_text, std::string_view source_name,
                                partitioning::PartitionPlan& plan);
// Where the plan's drop-ins are: [partitioning] drop_in_dir, else plan.d beside the config file.
std::filesystem::path plan_drop_in_dir(const partitioning::PartitionPlan& plan,
                                       const std::filesystem::path& config_path);
// Adds every *.toml of `dir` (in name order) to `plan`; a missing directory adds nothing.
Result<void> load_plan_drop_ins(const std::filesystem::path& dir, partitioning::PartitionPlan& plan);

// A budgets drop-in file: [[budgets]] only, added to `quota` (names stay unique across files).
Result<void> parse_budgets_drop_in(std::string_view toml_text, std::string_view source_name, QuotaSection& quota);
// Where the budgets drop-ins are: [quota] drop_in_dir, else budgets.d beside the config file.
std::filesystem::path budgets_drop_in_dir(const QuotaSection& quota, const std::filesystem::path& config_path);

// Reads and parses a file, then the plan and budgets drop-ins. A missing file is an error only when `must_exist` (the operator
// named it with --config); otherwise the built-in defaults apply.
Result<Config> load_config(const std::filesystem::path& path, bool must_exist);

}  // namespace tally::agent
