#include "agent/tallyd/daemon.hpp"

#include <grp.h>
#include <sys/epoll.h>

#include <chrono>
#include <csignal>
#include <deque>
#include <memory>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include "agent/base/clock.hpp"
#include "agent/base/files.hpp"
#include "agent/base/logging.hpp"
#include "agent/base/proc.hpp"
#include "agent/base/version.hpp"
#include "agent/checkpoint/checkpoint.hpp"
#include "agent/feed/publisher.hpp"
#include "agent/feed/topology_message.hpp"
#include "agent/feed/usage_report.hpp"
#include "agent/ledger/ledger.hpp"
#include "agent/tallyd/budget_enforcement.hpp"
#include "agent/tallyd/client_usage.hpp"
#include "agent/tallyd/control_server.hpp"
#include "agent/tallyd/event_loop.hpp"
#include "agent/tallyd/gpu_partitioning.hpp"
#include "agent/tallyd/gpu_usage.hpp"
#include "agent/tallyd/kernel_usage.hpp"
#include "agent/tallyd/self_usage.hpp"
#include "collectors/gpu/gpu_source.hpp"
#include "collectors/kernel/kernel_source.hpp"
#include "collectors/topology/topology.hpp"
#include "collectors/topology/topology_watch.hpp"
#include "shm/segments/metering.hpp"

namespace tally::agent {
namespace {

using partitioning::PartitionPlan;
using std::chrono::milliseconds;

// How late a timer may fire (sd-event coalesces wake-ups within it). Draining is what keeps client lanes from
// filling, reports carry the intervals: a few milliseconds. The heartbeat can wait a little longer.
constexpr milliseconds kDrainAccuracy{1};
constexpr milliseconds kReportAccuracy{2};
constexpr milliseconds kHeartbeatAccuracy{20};
constexpr milliseconds kDeviceSettle{200};  // quiet time after the last device event
constexpr milliseconds kDeviceSettleAccuracy{10};
constexpr milliseconds kPartitionResync{1000};  // new cgroups matched again at most once a second

budgets::Seconds budget_clock() { return std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()); }

void fill_probe_state(const collectors::ProbeState& state, v1::ProbeState& out) {
  switch (state.state) {
    case collectors::ProbeState::State::attached: out.set_state(v1::ProbeState::STATE_ATTACHED); break;
    case collectors::ProbeState::State::off: out.set_state(v1::ProbeState::STATE_OFF); break;
    case collectors::ProbeState::State::disabled: out.set_state(v1::ProbeState::STATE_DISABLED); break;
  }
  out.set_reason(state.reason);
  for (const auto& program : state.programs) out.add_programs(program);
  out.set_events_dropped(state.stats.ring_full);
  out.set_map_entries(state.stats.entries);
  out.set_map_capacity(state.stats.capacity);
  out.set_map_full(state.stats.map_full);
  out.set_pinned(state.pinned);
  out.set_adopted(state.adopted);
  out.set_epoch(state.epoch);
}

class Daemon {
 public:
  Daemon(DaemonOptions options, Config config, std::unique_ptr<EventLoop> loop,
         std::unique_ptr<FeedPublisher> publisher)
      : options_(std::move(options)),
        config_(std::move(config)),
        loop_(std::move(loop)),
        publisher_(std::move(publisher)),
        started_(std::chrono::steady_clock::now()),
        interval_start_ns_(unix_time_ns()) {}

  Result<void> start() {
    TALLY_TRY(publisher_->set_endpoints(config_.feed.bind, config_.feed.connect));
    // Signals first: they are blocked for the process here, before any thread of ours starts.
    auto on_stop = [this] { stop(); };
    for (int signal_number : {SIGTERM, SIGINT}) {
      auto source = loop_->add_signal(signal_number, on_stop);
      if (!source) return source.error();
      signal_sources_.push_back(std::move(*source));
    }
    auto hangup = loop_->add_signal(SIGHUP, [this] { reload(); });
    if (!hangup) return hangup.error();
    signal_sources_.push_back(std::move(*hangup));

    restore_ledger();
    TALLY_TRY(start_budgets());
    TALLY_TRY(start_checkpoints());
    TALLY_TRY(arm_timers());
    watch_devices();
    start_kernel_source();
    start_partitioning();
    start_control();
    start_metering();
    start_gpu_accounting();
    publish_topology();
    // READY=1 only now: the feed socket is bound and accepts subscribers.
    sd_notifyf(0, "READY=1\nSTATUS=%s", status_line().c_str());
    spdlog::info("tallyd {} started: node {}, instance {}; {}", kVersion, publisher_->identity().node_id,
                 publisher_->identity().instance_id, status_line());
    return {};
  }

  int run() { return loop_->run(); }

 private:
  std::string status_line() const {
    std::string line;
    const auto bound = publisher_->bound_endpoints();
    if (!bound.empty()) line += fmt::format("feed bound to {}; ", fmt::join(bound, ", "));
    if (!config_.feed.connect.empty()) line += fmt::format("feed connecting to {}; ", fmt::join(config_.feed.connect, ", "));
    line += fmt::format("heartbeat every {} ms; usage every {} ms; config generation {}",
                        config_.feed.heartbeat_interval_ms, config_.feed.usage_interval_ms, config_generation_);
    if (metering_) {
      line += fmt::format("; metering on {} ({} segments)", config_.metering.socket, metering_->live_segments());
    }
    line += fmt::format("; state in {}", config_.agent.state_dir);
    return line;
  }

  std::filesystem::path checkpoint_path() const {
    return std::filesystem::path(config_.agent.state_dir) / "ledger.checkpoint";
  }

  Result<void> arm_timers() {
    auto heartbeat = loop_->add_periodic(milliseconds(config_.feed.heartbeat_interval_ms), kHeartbeatAccuracy,
                                         [this] { publish_heartbeat(); });
    if (!heartbeat) return heartbeat.error();
    auto usage = loop_->add_periodic(milliseconds(config_.feed.usage_interval_ms), kReportAccuracy,
                                     [this] { publish_usage(false); });
    if (!usage) return usage.error();
    heartbeat_timer_ = std::move(*heartbeat);
    usage_timer_ = std::move(*usage);
    return {};
  }

  // ---- The ledger and its checkpoint -------------------------------------------------------------------------

  void restore_ledger() {
    if (auto loaded = load_checkpoint(ledger_, checkpoint_path()); !loaded) {
      // Losing the saved totals is bad, refusing to meter is worse: say it loudly and start empty.
      spdlog::error("ledger: {}; starting without it", loaded.error().message);
    } else if (!ledger_.workloads().empty()) {
      spdlog::info("ledger: {} workloads restored from {}", ledger_.workloads().size(), checkpoint_path().string());
    }
    const auto legacy = std::filesystem::path(config_.agent.state_dir) / "metering.json";
    std::error_code ec;
    if (std::filesystem::exists(legacy, ec) && !std::filesystem::exists(checkpoint_path(), ec)) {
      spdlog::warn("ledger: {} is the checkpoint of an older tallyd and is not read: the totals of exited workloads "
                   "it held start again", legacy.string());
    }
  }

  // Budgets (docs/budgets.md): configured, then restored as the checkpoint saved them with the totals they counted,
  // before any source adds to the ledger.
  Result<void> start_budgets() {
    Actuators actuators;
    if (auto root = find_cgroup2_mount()) {
      freezer_ = std::make_unique<freezer::Freezer>(freezer::FreezerOptions{*root, config_.identity, true});
      actuators.freezer = freezer_.get();
    } else {
      spdlog::warn("budgets: no cgroup v2 hierarchy, so the freeze action cannot be carried out: {}",
                   root.error().message);
    }
    actuators.revoke_gpu = [this](const std::set<std::string>& workloads) -> Result<void> {
      if (workloads.empty() && !partitioning_) return {};
      if (!ensure_partitioning()) {
        return make_error(ErrorCode::unsupported, "no cgroup v2 hierarchy to attach the GPU device policy to");
      }
      auto revoked = partitioning_->set_revoked(workloads);
      if (!revoked) return revoked.error();
      if (!partitioning_->planned()) {
        // No plan was applied (it restricts nothing): applying it now attaches the policy with the revocations.
        apply_plan(config_.partitioning);
        if (!workloads.empty() && !last_plan_report_.value("enforcing", false)) {
          const auto refused = last_plan_report_.value("refused", nlohmann::json::array());
          return make_error(ErrorCode::unsupported, "the GPU device policy could not be attached{}",
                            refused.empty() ? std::string() : ": " + refused.dump());
        }
      }
      return {};
    };
    actuators.gpu_holders = [this] {
      return gpu_usage_ ? gpu_usage_->holders() : std::map<std::string, std::set<std::string>>{};
    };
    budgets_ = std::make_unique<BudgetEnforcement>(
        ledger_,
        [this](const v1::QuotaEvent& event) {
          v1::Envelope envelope;
          *envelope.mutable_event()->mutable_quota() = event;
          publisher_->publish(envelope);
        },
        std::move(actuators));
    TALLY_TRY(budgets_->configure(config_.quota, budget_clock()));
    budgets_->start(budget_clock());
    return {};
  }

  Result<void> start_checkpoints() {
    auto writer = CheckpointWriter::start(checkpoint_path());
    if (!writer) return writer.error();
    checkpoints_ = std::move(*writer);
    auto io = loop_->add_io(checkpoints_->fd(), EPOLLIN, [this](std::uint32_t) {
      checkpoints_->on_readable();
      on_checkpoint_durable();
    });
    if (!io) return io.error();
    checkpoint_io_ = std::move(*io);
    return {};
  }

  // Written after the report that carried these totals was published, when something changed, at most every
  // checkpoint_interval_ms unless something retired waits for it (its files or map entries go once it is durable).
  void checkpoint(bool final) {
    if (ledger_.generation() == checkpointed_generation_) return;
    const bool retirements = ledger_.retired() != last_checkpoint_retired_;
    const auto now = std::chrono::steady_clock::now();
    const bool due = final || retirements || now - last_checkpoint_ >= milliseconds(config_.agent.checkpoint_interval_ms);
    if (!due) return;
    const std::uint64_t generation = ++checkpoint_generation_;
    waiting_for_checkpoint_.push_back({generation, {ledger_.retired().begin(), ledger_.retired().end()}});
    last_checkpoint_retired_ = ledger_.retired();
    checkpointed_generation_ = ledger_.generation();
    last_checkpoint_ = now;
    std::string bytes = checkpoint_encoder_.encode(ledger_, unix_time_ns());
    if (!final) {
      checkpoints_->submit(generation, std::move(bytes));
      return;
    }
    if (auto written = checkpoints_->write_now(generation, std::move(bytes)); !written) {
      spdlog::error("ledger: final checkpoint not written: {}", written.error().message);
    }
    on_checkpoint_durable();
  }

  // What was retired before a durable checkpoint is safe there: its source may remove it now.
  void on_checkpoint_durable() {
    if (auto error = checkpoints_->last_error()) {
      spdlog::error("ledger: checkpoint not written (retried with the next one): {}", error->message);
    }
    const std::uint64_t durable = checkpoints_->durable_generation();
    while (!waiting_for_checkpoint_.empty() && waiting_for_checkpoint_.front().generation <= durable) {
      for (const auto& key : waiting_for_checkpoint_.front().retired) {
        if (key.starts_with("shm:")) {
          if (!metering_) continue;  // kept until metering runs again and can remove the segment
          metering_->remove_files(key.substr(4));
          ledger_.forget_retired(key);
        } else if (key.starts_with("nvml:")) {  // nothing of it lives outside the ledger
          ledger_.forget_retired(key);
        } else if (kernel_ && kernel_->forget(key)) {
          ledger_.forget_retired(key);
        }
      }
      waiting_for_checkpoint_.pop_front();
    }
  }

  // ---- Sinks: the feed ---------------------------------------------------------------------------------------

  void publish_heartbeat() {
    const SelfUsage self = read_self_usage();
    v1::Envelope envelope;
    v1::Heartbeat* heartbeat = envelope.mutable_heartbeat();
    heartbeat->set_cpu_user_ns(self.cpu_user_ns);
    heartbeat->set_cpu_system_ns(self.cpu_system_ns);
    heartbeat->set_rss_bytes(self.rss_bytes);
    heartbeat->set_uptime_ns(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - started_).count()));
    heartbeat->set_config_generation(config_generation_);
    if (kernel_) fill_probe_state(kernel_->state(), *heartbeat->mutable_probes());
    publisher_->publish(envelope);
  }

  void publish_usage(bool final) {
    const auto steady = std::chrono::steady_clock::now();
    const bool snapshot =
        final || reports_ == 0 || steady - last_snapshot_ >= milliseconds(config_.feed.snapshot_interval_ms);
    if (snapshot) last_snapshot_ = steady;
    if (metering_) {
      // Lanes first, then the counters: once writers stop, the report whose totals are complete also has every
      // request in its tails (the drain timer may lag behind on a loaded machine; an empty drain costs little).
      // Between snapshots only the segments where something moved are read: idle clients cost nothing.
      metering_->drain();
      metering_->sync(snapshot);
      pace_draining();
    }
    if (kernel_) kernel_usage_->record(kernel_->collect());
    take_gpu_passes();
    budgets_->pass(metering_.get(), client_usage_.get(), budget_clock());
    budgets_->save();
    const std::uint64_t now = unix_time_ns();
    ledger_.expire(now, std::uint64_t{config_.metering.retention_s} * 1'000'000'000ULL);
    publisher_->publish(FeedKind::usage, encoder_.encode(ledger_, {interval_start_ns_, now, snapshot, final}));
    ledger_.mark_reported();
    interval_start_ns_ = now;
    // Every source has had its say once: contributors of a previous run nobody re-attached are gone.
    if (reports_++ == 0) ledger_.drop_unclaimed_contributors();
    checkpoint(final);
  }

  void publish_topology() {
    collectors::DiscoveryOptions discovery;
    // The default library is looked for quietly (a node without NVIDIA GPUs has none); one the operator named
    // is expected to load, and a failure to do so is a warning.
    if (config_.topology.nvml_library != collectors::kDefaultNvmlLibrary) {
      discovery.nvml_library = config_.topology.nvml_library;
    }
    discovery.use_nvml = !config_.topology.nvml_library.empty();
    auto topology = collectors::discover_topology(discovery);
    if (!topology) {
      spdlog::error("topology: not published: {}", topology.error().message);
      return;
    }
    v1::Envelope envelope;
    to_proto(*topology, *envelope.mutable_topology());
    publisher_->publish(envelope);
  }

  // ---- Sources -----------------------------------------------------------------------------------------------

  // Republishes the topology when a PCI function, a network interface or an RDMA device appears or disappears:
  // kernel uevents on a netlink socket (docs/topology.md). One hot-plug emits a burst of events (add, bind,
  // driver nodes), so a one-shot timer coalesces a burst into one publication.
  void watch_devices() {
    auto monitor = collectors::DeviceEventMonitor::open();
    if (!monitor) {
      spdlog::warn("topology: device changes are not watched: {}", monitor.error().message);
      return;
    }
    auto settle = loop_->add_oneshot(kDeviceSettleAccuracy, [this] { publish_topology(); });
    if (!settle) {
      spdlog::warn("topology: device changes are not watched: {}", settle.error().message);
      return;
    }
    device_settle_timer_ = std::move(*settle);
    device_monitor_ = std::make_unique<collectors::DeviceEventMonitor>(std::move(*monitor));
    auto source = loop_->add_io(device_monitor_->fd(), EPOLLIN, [this](std::uint32_t) {
      if (!device_monitor_->drain()) return;
      EventLoop::arm_oneshot(device_settle_timer_.get(), kDeviceSettle);
    });
    if (!source) {
      spdlog::warn("topology: device changes are not watched: {}", source.error().message);
      device_monitor_.reset();
      return;
    }
    device_events_ = std::move(*source);
  }

  // The kernel's counters (docs/ebpf.md): one warning when the probes cannot run here; IO is then sampled.
  void start_kernel_source() {
    collectors::KernelSourceOptions options;
    options.probes_enabled = config_.probes.enabled;
    options.pin_dir = config_.probes.pin_dir;
    options.counters_capacity = config_.probes.counters_capacity;
    options.identity_rules = config_.identity;
    options.instance_id = publisher_->identity().instance_id;
    kernel_ = collectors::KernelSource::start(options);
    kernel_usage_ = std::make_unique<KernelUsageRecorder>(ledger_);
    const collectors::ProbeState& state = kernel_->state();
    if (state.state == collectors::ProbeState::State::off) {
      spdlog::warn("probes off: {}; IO is sampled from /proc/PID/io instead (bytes of exited processes are missed)",
                   state.reason);
    } else if (state.state == collectors::ProbeState::State::attached) {
      spdlog::info("probes {}: {}{}", state.adopted ? "adopted" : "attached", fmt::join(state.programs, ", "),
                   state.pinned ? fmt::format(" (pinned in {})", config_.probes.pin_dir) : "");
      if (!state.pin_error.empty()) {
        spdlog::warn("probes not pinned: {}; they count while tallyd runs, not while it is down", state.pin_error);
      }
    }
    if (kernel_->events_fd() < 0) return;
    auto source = loop_->add_io(kernel_->events_fd(), EPOLLIN, [this](std::uint32_t) { kernel_->consume_events(); });
    if (!source) {
      spdlog::warn("probes: exec/exit/device/cgroup events are not watched: {}", source.error().message);
      return;
    }
    kernel_events_ = std::move(*source);
  }

  // Workload metering (docs/workload-integration.md): a failure here leaves the rest of the agent running, loudly.
  // Its [metering] keys take effect at the next start, not on reload.
  void start_metering() {
    if (!config_.metering.enabled) return;
    client_usage_ = std::make_unique<ClientUsage>(ledger_);
    shm::MeteringSource::Options options;
    options.socket_path = config_.metering.socket;
    options.segment_dir = std::filesystem::path(config_.metering.runtime_dir) / "segments";
    options.limits.default_lane_records = config_.metering.lane_records;
    options.limits.default_slots = config_.metering.slots;
    options.limits.default_label_sets = config_.metering.label_sets;
    const MeteringSection& m = config_.metering;
    options.limits.max_slots = std::max(m.max_slots, m.slots);  // the default shape is always grantable
    options.limits.max_label_sets = std::max(m.max_label_sets, m.label_sets);
    options.limits.max_lane_records = std::max(m.max_lane_records, m.lane_records);
    options.limits.max_segment_bytes = std::uint64_t{m.max_segment_mib} << 20;
    options.max_segments_per_uid = m.max_segments_per_uid;
    options.max_segments_per_cgroup = m.max_segments_per_cgroup;
    options.max_bytes_per_uid = std::uint64_t{m.max_mib_per_uid} << 20;
    options.drain_budget = m.drain_budget;
    options.socket_mode = socket_mode_of(m.socket_mode).value_or(0666);  // checked when the file was read
    if (!m.socket_group.empty()) {
      const group* g = ::getgrnam(m.socket_group.c_str());
      if (g == nullptr) {
        spdlog::error("metering off: [metering] socket_group '{}' is not a group on this node", m.socket_group);
        return;
      }
      options.socket_group = g->gr_gid;
    }
    options.tenant_rules = config_.metering.tenant_rules;
    options.identity_rules = config_.identity;
    options.instance_id = publisher_->identity().instance_id;
    auto metering = shm::MeteringSource::start(options, *client_usage_, [this](const std::string& name) {
      return ledger_.is_retired(ClientUsage::contributor_key(name));
    });
    if (!metering) {
      spdlog::error("metering off: {}", metering.error().message);
      return;
    }
    auto io = loop_->add_io((*metering)->fd(), EPOLLIN, [this](std::uint32_t) {
      metering_->on_readable();
      pace_draining();
    });
    auto tick = loop_->add_periodic(milliseconds(config_.metering.drain_interval_ms), kDrainAccuracy, [this] {
      metering_->drain(/*every=*/false);
      if (budgets_->configured()) {
        // Budgets act within a drain interval: the counters of the segments that moved are read now, and
        // decisions and allowances written back.
        metering_->sync(/*every=*/false);
        budgets_->pass(metering_.get(), client_usage_.get(), budget_clock());
      }
      pace_draining();
    });
    if (!io || !tick) {
      spdlog::error("metering off: {}", !io ? io.error().message : tick.error().message);
      return;
    }
    metering_ = std::move(*metering);
    metering_->set_initial_allowance(budgets_->governs_reservations() ? shm::format::kAllowancePending : 0);
    metering_io_ = std::move(*io);
    metering_timer_ = std::move(*tick);
    pace_draining();
  }

  // GPU accounting (docs/gpu-accounting.md): NVML sampled on the source's own thread; its passes are written into
  // the ledger here, on the loop. A node without NVML runs on without GPU figures, saying so once.
  void start_gpu_accounting() {
    if (!config_.gpu.enabled || config_.topology.nvml_library.empty()) return;
    collectors::gpu::GpuSource::Options options;
    options.library = config_.topology.nvml_library;
    options.interval = milliseconds(config_.gpu.interval_ms);
    options.idle.threshold_percent = config_.gpu.idle_threshold_percent;
    options.idle.window_ns = std::uint64_t{config_.gpu.idle_window_s} * 1'000'000'000ULL;
    options.idle.min_samples = config_.gpu.idle_min_samples;
    options.identity_rules = config_.identity;
    options.resume = GpuUsageRecorder::resume_points(ledger_);  // where the previous agent stood
    auto source = collectors::gpu::GpuSource::start(options);
    if (!source) {
      // The default library is looked for quietly: most nodes have no NVIDIA GPU.
      const bool named = config_.topology.nvml_library != collectors::kDefaultNvmlLibrary;
      if (named) spdlog::warn("GPU accounting off: {}", source.error().message);
      else spdlog::info("GPU accounting off: {}", source.error().message);
      return;
    }
    auto io = loop_->add_io((*source)->fd(), EPOLLIN, [this](std::uint32_t) { take_gpu_passes(); });
    if (!io) {
      spdlog::error("GPU accounting off: {}", io.error().message);
      return;
    }
    gpu_ = std::move(*source);
    gpu_io_ = std::move(*io);
    gpu_usage_ = std::make_unique<GpuUsageRecorder>(ledger_, options.idle, [this](const v1::Event& event) {
      v1::Envelope envelope;
      *envelope.mutable_event() = event;
      publisher_->publish(envelope);
    });
    const auto missing = gpu_->missing_optional();
    spdlog::info("GPU accounting on: NVML driver {}, every {} ms{}", gpu_->driver_version(), config_.gpu.interval_ms,
                 missing.empty() ? "" : fmt::format(" (without {})", fmt::join(missing, ", ")));
  }

  void take_gpu_passes() {
    if (!gpu_) return;
    for (const auto& pass : gpu_->take()) gpu_usage_->record(pass);
  }

  // The drain timer runs only while a segment is attached: an agent with no clients does not wake up for them.
  void pace_draining() {
    EventLoop::set_periodic_running(metering_timer_.get(), metering_->live_segments() > 0);
  }

  // ---- GPU partitioning (docs/partitioning.md) ---------------------------------------------------------------

  // Applied before READY=1, so that units ordered after tallyd (kubelet, slurmd) start with the geometry and the
  // policy in force. A node whose plan restricts nothing, with no policy pinned before, attaches nothing.
  void start_partitioning() {
    const PartitionPlan& plan = config_.partitioning;
    // Revocations a budget made before a restart stay in force from the first apply on: no gap.
    const std::set<std::string> revoked = budgets_->gpu_revoked();
    if (!plan.restricts() && plan.gpus.empty() && revoked.empty() && !partitioning::DevicePolicy::pinned(plan.pin_dir)) {
      return;
    }
    if (!ensure_partitioning()) return;
    if (!revoked.empty()) (void)partitioning_->set_revoked(revoked);  // kept until apply_plan() brings it into force
    apply_plan(plan);
  }

  bool ensure_partitioning() {
    if (partitioning_) return true;
    auto root = find_cgroup2_mount();
    if (!root) {
      spdlog::error("partitioning off: no cgroup v2 hierarchy to attach the GPU device policy to: {}",
                    root.error().message);
      return false;
    }
    GpuPartitioningOptions options;
    options.cgroup2_root = *root;
    options.nvml_library = config_.topology.nvml_library;
    options.identity = config_.identity;
    partitioning_ = std::make_unique<GpuPartitioning>(std::move(options), [this](const v1::PartitionEvent& event) {
      v1::Envelope envelope;
      *envelope.mutable_event()->mutable_partition() = event;
      publisher_->publish(envelope);
    });
    auto resync = loop_->add_oneshot(kDeviceSettleAccuracy, [this] { partitioning_->resync(); });
    if (resync) partition_resync_timer_ = std::move(*resync);
    return true;
  }

  void apply_plan(const PartitionPlan& plan) {
    last_plan_report_ = partitioning_->apply(plan);
    watch_partition_events();
  }

  // The policy's ring buffer changes with the policy (attached, released): watched anew after each change.
  void watch_partition_events() {
    const int fd = partitioning_->events_fd();
    if (fd == partition_events_fd_) return;
    partition_events_.reset();
    partition_events_fd_ = -1;
    if (fd < 0) return;
    auto source = loop_->add_io(fd, EPOLLIN, [this](std::uint32_t) {
      partitioning_->on_events();
      // New cgroups were given their grants (or many were made): all matched again soon, one pass for a burst.
      if (partitioning_->wants_resync() && partition_resync_timer_) {
        EventLoop::arm_oneshot(partition_resync_timer_.get(), kPartitionResync);
      }
    });
    if (!source) {
      spdlog::warn("partitioning: denials and new cgroups are not watched: {}", source.error().message);
      return;
    }
    partition_events_ = std::move(*source);
    partition_events_fd_ = fd;
  }

  void start_control() {
    if (config_.agent.control_socket.empty()) return;
    auto server = ControlServer::start(config_.agent.control_socket, *loop_,
                                       [this](const nlohmann::json& request) { return on_control(request); });
    if (!server) {
      spdlog::error("control socket off (tallyctl plan cannot reach this agent): {}", server.error().message);
      return;
    }
    control_ = std::move(*server);
  }

  nlohmann::json on_control(const nlohmann::json& request) {
    const std::string command = request.value("command", "");
    if (command == "plan.apply") {
      // The same as SIGHUP: the configuration and its plan drop-ins read again, the plan brought into force.
      last_plan_report_ = {{"enforcing", false}, {"changes", nlohmann::json::array()}};
      if (auto error = reload(); !error.empty()) return {{"error", error}};
      return last_plan_report_;
    }
    if (command == "quota.show") return {{"budgets", budgets_->show(budget_clock())}};
    if (command == "quota.release") {
      const std::string workload = request.value("workload", "");
      if (workload.empty()) return {{"error", "quota.release needs a workload"}};
      if (auto released = budgets_->release(workload, request.value("budget", ""), budget_clock()); !released) {
        return {{"error", released.error().message}};
      }
      // In force at once: the next pass writes the workload's admission words without the released action.
      budgets_->pass(metering_.get(), client_usage_.get(), budget_clock());
      return {{"budgets", budgets_->show(budget_clock())}};
    }
    if (command == "plan.diff") {
      auto plan = plan_for_diff(request.value("file", ""));
      if (!plan) return {{"error", plan.error().message}};
      if (!ensure_partitioning()) return {{"error", "no cgroup v2 hierarchy here"}};
      return partitioning_->preview(*plan);
    }
    if (!partitioning_) {
      if (command == "plan.show") return {{"enforcing", false}, {"generation", 0}};
      if (command == "plan.clear") {
        auto removed = partitioning::DevicePolicy::remove_pinned(config_.partitioning.pin_dir);
        if (!removed) return {{"error", removed.error().message}};
        return {{"released", *removed}};
      }
    } else if (command == "plan.show") {
      return partitioning_->show();
    } else if (command == "plan.clear") {
      nlohmann::json reply = partitioning_->clear();
      watch_partition_events();
      return reply;
    }
    return {{"error", fmt::format("unknown command '{}'", command)}};
  }

  // `tallyctl plan diff FILE`: a plan drop-in is previewed as added to the running plan (a drop-in of the same
  // name replaced); any other file as a whole configuration, with its own drop-ins.
  Result<PartitionPlan> plan_for_diff(const std::string& file) {
    if (file.empty() || file.front() != '/') {
      return make_error(ErrorCode::invalid_argument, "plan.diff needs an absolute file path");
    }
    auto text = read_file(file);
    if (!text) return make_error(ErrorCode::io, "{}: cannot be read", file);
    PartitionPlan plan = config_.partitioning;
    const std::filesystem::path name = std::filesystem::path(file).filename();
    const auto drop_ins = plan_drop_in_dir(plan, options_.config_path);
    std::erase_if(plan.gpus, [&](const auto& gpu) { return gpu.origin.starts_with((drop_ins / name).string() + ":"); });
    std::erase_if(plan.assignments,
                  [&](const auto& assign) { return assign.origin.starts_with((drop_ins / name).string() + ":"); });
    if (parse_plan_drop_in(*text, file, plan)) return plan;
    auto config = load_config(file, /*must_exist=*/true);
    if (!config) return config.error();
    return config->partitioning;
  }

  // ---- Life cycle --------------------------------------------------------------------------------------------

  // SIGHUP (and `tallyctl plan apply`): an error leaves the running configuration in force and is returned.
  std::string reload() {
    sd_notifyf(0, "RELOADING=1\nSTATUS=reloading %s", options_.config_path.c_str());
    auto loaded = load_config(options_.config_path, options_.config_path_explicit);
    if (!loaded) {
      spdlog::error("reload: keeping the running configuration: {}", loaded.error().message);
      sd_notifyf(0, "READY=1\nSTATUS=%s (reload failed, see log)", status_line().c_str());
      return loaded.error().message;
    }
    std::string error;
    if (auto applied = apply(std::move(*loaded)); !applied) {
      spdlog::error("reload: keeping the running configuration: {}", applied.error().message);
      error = applied.error().message;
    } else {
      ++config_generation_;
      spdlog::info("reload: configuration {} applied (generation {})", options_.config_path.string(),
                   config_generation_);
      publish_topology();
      const PartitionPlan& plan = config_.partitioning;
      if (partitioning_ || plan.restricts() || !plan.gpus.empty()) {
        if (ensure_partitioning()) apply_plan(plan);
      }
    }
    sd_notifyf(0, "READY=1\nSTATUS=%s", status_line().c_str());
    return error;
  }

  // Applies a new configuration; on error the running one stays in force, untouched. Sources and the state
  // directory keep their start-time settings (docs/configuration.md).
  Result<void> apply(Config next) {
    if (next.agent.node_id != config_.agent.node_id) {
      auto identity = make_node_identity(next.agent.node_id);
      if (!identity) return identity.error();
      publisher_->set_node_id(identity->node_id);
    }
    TALLY_TRY(publisher_->set_endpoints(next.feed.bind, next.feed.connect));
    const bool timers_changed = next.feed.heartbeat_interval_ms != config_.feed.heartbeat_interval_ms ||
                                next.feed.usage_interval_ms != config_.feed.usage_interval_ms;
    next.agent.state_dir = config_.agent.state_dir;
    next.metering = config_.metering;
    next.probes = config_.probes;
    next.gpu = config_.gpu;
    next.agent.control_socket = config_.agent.control_socket;
    config_ = std::move(next);
    if (timers_changed) TALLY_TRY(arm_timers());
    TALLY_TRY(budgets_->configure(config_.quota, budget_clock()));  // its time zone was checked with the file
    if (metering_) {
      metering_->set_initial_allowance(budgets_->governs_reservations() ? shm::format::kAllowancePending : 0);
    }
    if (!options_.log_level_override) {
      if (auto level = parse_log_level(config_.agent.log_level)) spdlog::set_level(*level);
    }
    return {};
  }

  void stop() {
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: publishing the final report");
    if (partitioning_) {
      partition_events_.reset();
      partitioning_->stop();
    }
    publish_usage(true);
    spdlog::info("tallyd stopping: final report published (sequence {})", publisher_->messages_published());
    loop_->exit(0);
  }

  DaemonOptions options_;
  Config config_;
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<FeedPublisher> publisher_;
  std::chrono::steady_clock::time_point started_;
  std::uint64_t interval_start_ns_;
  std::uint32_t config_generation_ = 1;
  EventSource heartbeat_timer_, usage_timer_;
  std::vector<EventSource> signal_sources_;

  // The ledger between the sources and the sinks.
  ledger::Ledger ledger_;
  UsageReportEncoder encoder_;
  std::uint64_t reports_ = 0;
  std::chrono::steady_clock::time_point last_snapshot_;

  // Budgets: usage from the ledger, decisions and allowances into the clients' control files.
  std::unique_ptr<BudgetEnforcement> budgets_;
  std::unique_ptr<freezer::Freezer> freezer_;

  // Its checkpoint; what each submitted checkpoint retired waits for it to be durable.
  struct Retired {
    std::uint64_t generation;
    std::vector<std::string> retired;
  };
  std::unique_ptr<CheckpointWriter> checkpoints_;
  CheckpointEncoder checkpoint_encoder_;
  EventSource checkpoint_io_;
  std::deque<Retired> waiting_for_checkpoint_;
  std::set<std::string> last_checkpoint_retired_;
  std::uint64_t checkpoint_generation_ = 0, checkpointed_generation_ = 0;
  std::chrono::steady_clock::time_point last_checkpoint_{};

  std::unique_ptr<collectors::DeviceEventMonitor> device_monitor_;
  EventSource device_events_, device_settle_timer_;
  // Sources; each one's event sources are destroyed before it.
  std::unique_ptr<collectors::KernelSource> kernel_;
  std::unique_ptr<KernelUsageRecorder> kernel_usage_;
  EventSource kernel_events_;
  std::unique_ptr<collectors::gpu::GpuSource> gpu_;
  std::unique_ptr<GpuUsageRecorder> gpu_usage_;
  EventSource gpu_io_;
  std::unique_ptr<ClientUsage> client_usage_;
  std::unique_ptr<shm::MeteringSource> metering_;
  EventSource metering_io_, metering_timer_;

  // GPU partitioning and tallyctl's control socket.
  std::unique_ptr<GpuPartitioning> partitioning_;
  EventSource partition_events_, partition_resync_timer_;
  int partition_events_fd_ = -1;
  nlohmann::json last_plan_report_;  // what the last apply did (`tallyctl plan apply` answers it)
  std::unique_ptr<ControlServer> control_;
};

}  // namespace

int run_daemon(const DaemonOptions& options, Config config) {
  auto identity = make_node_identity(config.agent.node_id);
  if (!identity) {
    spdlog::critical("{}", identity.error().message);
    return 2;
  }
  auto loop = EventLoop::create();
  if (!loop) {
    spdlog::critical("event loop: {}", loop.error().message);
    return 1;
  }
  auto publisher = std::make_unique<FeedPublisher>(std::move(*identity), config.feed.send_high_water_mark);
  Daemon daemon(options, std::move(config), std::move(*loop), std::move(publisher));
  if (auto started = daemon.start(); !started) {
    spdlog::critical("cannot start: {}", started.error().message);
    sd_notifyf(0, "STATUS=cannot start: %s", started.error().message.c_str());
    return 1;
  }
  return daemon.run();
}

}  // namespace tally::agent
