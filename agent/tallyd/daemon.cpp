#include "agent/tallyd/daemon.hpp"

#include <sys/epoll.h>

#include <csignal>
#include <chrono>
#include <memory>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include "agent/base/clock.hpp"
#include "agent/tallyd/event_loop.hpp"
#include "agent/feed/publisher.hpp"
#include "agent/base/logging.hpp"
#include "agent/tallyd/self_usage.hpp"
#include "agent/tallyd/usage_meter.hpp"
#include "agent/base/version.hpp"
#include "collectors/kernel/kernel_usage.hpp"
#include "collectors/topology/topology.hpp"
#include "agent/feed/topology_message.hpp"
#include "collectors/topology/topology_watch.hpp"

namespace tally::agent {
namespace {

using std::chrono::milliseconds;


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
    TALLY_TRY(arm_timers());
    auto on_stop = [this] { stop(); };
    auto term = loop_->add_signal(SIGTERM, on_stop);
    if (!term) return term.error();
    auto interrupt = loop_->add_signal(SIGINT, on_stop);
    if (!interrupt) return interrupt.error();
    auto hangup = loop_->add_signal(SIGHUP, [this] { reload(); });
    if (!hangup) return hangup.error();
    signal_sources_.push_back(std::move(*term));
    signal_sources_.push_back(std::move(*interrupt));
    signal_sources_.push_back(std::move(*hangup));

    watch_devices();
    start_probes();
    start_metering();
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
    if (meter_) line += "; " + meter_->status();
    return line;
  }

  Result<void> arm_timers() {
    auto heartbeat =
        loop_->add_periodic(milliseconds(config_.feed.heartbeat_interval_ms), [this] { publish_heartbeat(); });
    if (!heartbeat) return heartbeat.error();
    auto usage = loop_->add_periodic(milliseconds(config_.feed.usage_interval_ms), [this] { publish_usage(false); });
    if (!usage) return usage.error();
    heartbeat_timer_ = std::move(*heartbeat);
    usage_timer_ = std::move(*usage);
    return {};
  }

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
    if (kernel_) *heartbeat->mutable_probes() = kernel_->probe_state();
    publisher_->publish(envelope);
  }

  void publish_usage(bool final) {
    const std::uint64_t now = unix_time_ns();
    v1::Envelope envelope;
    v1::UsageReport* usage = envelope.mutable_usage();
    usage->set_interval_start_unix_ns(interval_start_ns_);
    usage->set_interval_end_unix_ns(now);
    usage->set_final(final);
    if (meter_) meter_->report(*usage);
    add_kernel_usage(*usage);
    interval_start_ns_ = now;
    publisher_->publish(envelope);
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

  // Republishes the topology when a PCI function, a network interface or an RDMA device appears or disappears:
  // kernel uevents on a netlink socket (docs/topology.md). One hot-plug emits a burst of events (add, bind,
  // driver nodes), so a one-shot timer coalesces a burst into one publication.
  void watch_devices() {
    auto monitor = collectors::DeviceEventMonitor::open();
    if (!monitor) {
      spdlog::warn("topology: device changes are not watched: {}", monitor.error().message);
      return;
    }
    auto settle = loop_->add_oneshot([this] { publish_topology(); });
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

  // eBPF probes (docs/ebpf.md): one warning when they cannot run here; kernel usage is then sampled from /proc.
  void start_probes() {
    kernel_ = collectors::KernelUsageCollector::start(config_.probes.enabled);
    const v1::ProbeState& state = kernel_->probe_state();
    if (state.state() == v1::ProbeState::STATE_OFF) {
      spdlog::warn("probes off: {}; IO is sampled from /proc/PID/io instead (bytes of exited processes are missed)",
                   state.reason());
    } else if (state.state() == v1::ProbeState::STATE_ATTACHED) {
      spdlog::info("probes attached: {}", fmt::join(state.programs(), ", "));
    }
    if (kernel_->events_fd() < 0) return;
    auto source = loop_->add_io(kernel_->events_fd(), EPOLLIN, [this](std::uint32_t) { kernel_->consume_events(); });
    if (!source) {
      spdlog::warn("probes: exec/exit/device events are not watched: {}", source.error().message);
      return;
    }
    kernel_events_ = std::move(*source);
  }

  // Adds each workload's kernel usage to its WorkloadUsage entry (made here when no other source reported it).
  void add_kernel_usage(v1::UsageReport& usage) {
    if (!kernel_) return;
    for (auto& [workload_id, kernel] : kernel_->collect()) {
      v1::WorkloadUsage* entry = nullptr;
      for (auto& existing : *usage.mutable_workloads()) {
        if (existing.workload_id() == workload_id) entry = &existing;
      }
      if (entry == nullptr) {
        entry = usage.add_workloads();
        entry->set_workload_id(workload_id);
      }
      *entry->mutable_kernel() = std::move(kernel);
    }
  }

  // Workload metering (docs/workload-integration.md): a failure here leaves the rest of the agent running, loudly.
  // Its [metering] keys take effect at the next start, not on reload.
  void start_metering() {
    if (!config_.metering.enabled) return;
    auto meter = UsageMeter::start(config_.metering);
    if (!meter) {
      spdlog::error("metering off: {}", meter.error().message);
      return;
    }
    auto io = loop_->add_io((*meter)->registration_fd(), EPOLLIN, [this](std::uint32_t) {
      meter_->on_registration_readable();
    });
    auto tick = loop_->add_periodic(milliseconds(config_.metering.drain_interval_ms), [this] { meter_->drain(); });
    if (!io || !tick) {
      spdlog::error("metering off: {}", !io ? io.error().message : tick.error().message);
      return;
    }
    meter_ = std::move(*meter);
    metering_io_ = std::move(*io);
    metering_timer_ = std::move(*tick);
  }

  void reload() {
    sd_notifyf(0, "RELOADING=1\nSTATUS=reloading %s", options_.config_path.c_str());
    auto loaded = load_config(options_.config_path, options_.config_path_explicit);
    if (!loaded) {
      spdlog::error("reload: keeping the running configuration: {}", loaded.error().message);
      sd_notifyf(0, "READY=1\nSTATUS=%s (reload failed, see log)", status_line().c_str());
      return;
    }
    if (auto applied = apply(std::move(*loaded)); !applied) {
      spdlog::error("reload: keeping the running configuration: {}", applied.error().message);
    } else {
      ++config_generation_;
      spdlog::info("reload: configuration {} applied (generation {})", options_.config_path.string(),
                   config_generation_);
      publish_topology();
    }
    sd_notifyf(0, "READY=1\nSTATUS=%s", status_line().c_str());
  }

  // Applies a new configuration; on error the running one stays in force, untouched.
  Result<void> apply(Config next) {
    if (next.agent.node_id != config_.agent.node_id) {
      auto identity = make_node_identity(next.agent.node_id);
      if (!identity) return identity.error();
      publisher_->set_node_id(identity->node_id);
    }
    TALLY_TRY(publisher_->set_endpoints(next.feed.bind, next.feed.connect));
    const bool timers_changed = next.feed.heartbeat_interval_ms != config_.feed.heartbeat_interval_ms ||
                                next.feed.usage_interval_ms != config_.feed.usage_interval_ms;
    config_ = std::move(next);
    if (timers_changed) TALLY_TRY(arm_timers());
    if (!options_.log_level_override) {
      if (auto level = parse_log_level(config_.agent.log_level)) spdlog::set_level(*level);
    }
    return {};
  }

  void stop() {
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: publishing the final report");
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
  static constexpr std::chrono::milliseconds kDeviceSettle{200};  // quiet time after the last device event
  std::unique_ptr<collectors::DeviceEventMonitor> device_monitor_;
  EventSource device_events_, device_settle_timer_;
  std::vector<EventSource> signal_sources_;
  // Destroyed before the loop: the ring buffer's event source first, then the probes (which detaches them all).
  std::unique_ptr<collectors::KernelUsageCollector> kernel_;
  EventSource kernel_events_;
  // Workload metering over shared memory (docs/shm-format.md). Its sources go before it.
  std::unique_ptr<UsageMeter> meter_;
  EventSource metering_io_, metering_timer_;
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
