#include "agent/tallyd/usage_meter.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>

#include <spdlog/spdlog.h>

#include "agent/base/clock.hpp"
#include "agent/base/proc.hpp"
#include "agent/feed/framing.hpp"
#include "tally/client.h"

namespace tally::agent {
namespace {

constexpr std::array<std::string_view, shm::format::kBuiltinCounters> kCounterNames{
    "tokens_in", "tokens_out", "cached_tokens", "requests", "errors", "gpu_time_ns", "tool_calls", "reserved_7"};
constexpr std::array<std::string_view, shm::format::kGaugeCount> kGaugeNames{
    "kv_cache_bytes", "context_tokens", "gauge_2", "gauge_3", "gauge_4", "gauge_5", "gauge_6", "gauge_7"};
constexpr std::size_t kQuarantineHistory = 16;

std::string counter_name(const shm::SegmentReader& reader, std::uint32_t k) {
  if (k < shm::format::kBuiltinCounters) return std::string(kCounterNames[k]);
  const std::uint32_t user = k - shm::format::kBuiltinCounters;
  if (user < reader.counter_names().size()) return reader.counter_names()[user];
  return fmt::format("user_{}", user);
}

void add_counters(const shm::SegmentReader& reader, std::uint32_t handle, CounterMap& into) {
  const shm::CounterArray& values = reader.counters(handle);
  for (std::uint32_t k = 0; k < values.size(); ++k) {
    if (values[k] != 0) into[counter_name(reader, k)] += values[k];
  }
}

void fill_tail(v1::RequestTail& tail, const ExponentialHistogram& h) {
  v1::ExponentialHistogram& out = *tail.mutable_histogram();
  out.set_scale(ExponentialHistogram::kScale);
  out.set_count(h.count());
  out.set_sum(h.sum());
  out.set_zero_count(h.zero_count());
  out.set_offset(h.offset());
  out.set_min(h.min());
  out.set_max(h.max());
  for (std::uint64_t c : h.counts()) out.add_bucket_counts(c);
  tail.set_p50(h.quantile(0.50));
  tail.set_p95(h.quantile(0.95));
  tail.set_p99(h.quantile(0.99));
  tail.set_max(h.max());
}

}  // namespace

Result<std::unique_ptr<UsageMeter>> UsageMeter::start(const MeteringSection& config) {
  shm::install_sigbus_guard();
  auto meter = std::unique_ptr<UsageMeter>(new UsageMeter(config));
  meter->segment_dir_ = std::filesystem::path(config.runtime_dir) / "segments";
  meter->checkpoint_path_ = std::filesystem::path(config.state_dir) / "metering.json";
  shm::RegistrationServer::Options options;
  options.socket_path = config.socket;
  options.segment_dir = meter->segment_dir_;
  options.limits.default_lane_records = config.lane_records;
  options.limits.default_slots = config.slots;
  options.limits.max_slots = std::max<std::uint32_t>(config.slots, 256);
  options.limits.default_label_sets = config.label_sets;
  UsageMeter* raw = meter.get();
  auto server = shm::RegistrationServer::listen(options, [raw](const shm::Registration& r) { return raw->attach(r); });
  if (!server) return server.error();
  meter->server_ = std::move(*server);
  TALLY_TRY(meter->restore());
  return meter;
}

UsageMeter::~UsageMeter() = default;

std::string UsageMeter::status() const {
  return fmt::format("metering on {} ({} segments, state in {})", config_.socket, segments_.size(),
                     checkpoint_path_.string());
}

UsageMeter::Workload& UsageMeter::workload_for(const WorkloadIdentity& identity) {
  auto [it, inserted] = workloads_.try_emplace(identity.id);
  if (inserted || it->second.identity.id.empty()) it->second.identity = identity;
  return it->second;
}

Result<void> UsageMeter::restore() {
  auto checkpoint = read_checkpoint(checkpoint_path_);
  if (!checkpoint) {
    // Losing the retired totals is bad, refusing to meter is worse: say it loudly and start from the segments.
    spdlog::error("metering: {}; starting without it", checkpoint.error().message);
    checkpoint = Checkpoint{};
  }
  retired_segments_ = checkpoint->retired_segments;
  for (auto& [id, saved] : checkpoint->workloads) {
    Workload& w = workload_for(saved.identity);
    w.names = saved.names;
    w.retired_dropped = saved.retired_dropped;
    w.reported_dropped = saved.reported_dropped;
    w.exited_unix_ns = saved.exited_unix_ns;
    for (auto& [text, l] : saved.label_sets) {
      LabelState& state = w.label_sets[text];
      auto parsed = shm::parse_label_text(text);
      if (parsed) state.labels = std::move(*parsed);
      state.refused = l.refused;
      state.retired = l.retired;
      state.reported = l.reported;
    }
  }
  // Segments left by the previous instance: re-attach the live ones, drop those already folded into the totals.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(segment_dir_, ec)) {
    const auto& path = entry.path();
    if (path.extension() != ".seg") continue;
    const std::string name = path.filename().string();
    if (retired_segments_.contains(name)) {
      to_remove_.push_back(path);
      continue;
    }
    auto registration = shm::read_registration(shm::meta_path_of(path));
    if (!registration) {
      // Created but never handed to a client (the agent died in between): nobody wrote to it.
      spdlog::warn("metering: removing {}: {}", path.string(), registration.error().message);
      to_remove_.push_back(path);
      continue;
    }
    registration->segment_path = path;
    registration->control_path = shm::control_path_of(path);
    if (auto attached = attach(*registration); !attached) {
      spdlog::error("metering: cannot re-attach {}: {}", path.string(), attached.error().message);
    }
  }
  spdlog::info("metering: {} workloads from the checkpoint, {} segments re-attached", checkpoint->workloads.size(),
               segments_.size());
  return {};
}

Result<void> UsageMeter::attach(const shm::Registration& registration) {
  auto segment = std::make_unique<Segment>();
  segment->registration = registration;
  segment->workload = &workload_for(registration.identity);
  segment->workload->names.insert(registration.workload_name);
  segment->workload->exited_unix_ns = 0;
  auto file = shm::MappedFile::open(registration.segment_path, sizeof(shm::format::Header), std::uint64_t{1} << 34);
  if (!file) return file.error();
  segment->file = std::move(*file);
  auto control = shm::MappedFile::open(registration.control_path, sizeof(shm::format::ControlHeader), 1u << 24);
  if (control) segment->control.emplace(std::move(*control));
  auto reader = shm::SegmentReader::attach(segment->file.bytes());
  segments_.push_back(std::move(segment));
  if (!reader) {
    retire(segments_.size() - 1, reader.error().message);
    return {};  // registered (the client is answered), but never read
  }
  segments_.back()->reader.emplace(std::move(*reader));
  return {};
}

std::optional<std::string> UsageMeter::refused_tenant(const Segment& segment, const shm::LabelSet& labels) const {
  if (config_.tenant_rules.empty()) return std::nullopt;
  bool restricted = false, allowed = false;
  const std::string tenant = labels.value_of("tenant");
  for (const TenantRule& rule : config_.tenant_rules) {
    const bool matches = (rule.uid && *rule.uid == segment.registration.producer.uid) ||
                         (!rule.cgroup_prefix.empty() &&
                          segment.registration.identity.cgroup_path.starts_with(rule.cgroup_prefix));
    if (!matches) continue;
    restricted = true;
    for (const auto& t : rule.tenants) allowed = allowed || t == "*" || t == tenant;
  }
  bool has_tenant = false;
  for (const auto& [k, v] : labels.pairs) has_tenant = has_tenant || k == "tenant";
  if (!restricted || !has_tenant || allowed) return std::nullopt;
  return tenant;
}

void UsageMeter::adopt_new_labels(Segment& segment) {
  const shm::SegmentReader& reader = *segment.reader;
  while (segment.label_states.size() < reader.label_count()) {
    const auto handle = static_cast<std::uint32_t>(segment.label_states.size());
    shm::LabelSet labels = reader.label_set(handle);
    bool refused = false;
    if (auto tenant = refused_tenant(segment, labels)) {
      refused = true;
      for (auto& [k, v] : labels.pairs) {
        if (k == "tenant") k = "refused_tenant";
      }
      std::string text;
      for (const auto& [k, v] : labels.pairs) text += (text.empty() ? "" : "\n") + k + "=" + v;
      labels.text = text;
      spdlog::warn("metering: pid {} (uid {}, {}) may not claim tenant '{}': label set {} refused",
                   segment.registration.producer.pid, segment.registration.producer.uid,
                   segment.registration.identity.id, *tenant, handle);
      if (segment.control) shm::set_decision(*segment.control, handle, TALLY_DENY, TALLY_REASON_LABELS_REFUSED);
    }
    LabelState& state = segment.workload->label_sets[labels.text];
    state.refused = refused;
    state.labels = std::move(labels);
    segment.label_states.push_back(&state);
  }
}

std::optional<std::string> UsageMeter::drain_one(Segment& segment) {
  events_.clear();
  auto drained = segment.reader->drain(events_);
  // A truncated file reads as zeros after the SIGBUS guard stepped in: even this drain's results are suspect.
  if (!segment.file.intact()) return std::string("segment file was truncated or resized by its writer");
  if (!drained) return drained.error().message;
  adopt_new_labels(segment);
  for (const shm::RequestEvent& e : events_) {
    if (e.labels < segment.label_states.size()) segment.label_states[e.labels]->histograms.fold(e);
  }
  return std::nullopt;
}

void UsageMeter::drain() {
  for (std::size_t i = 0; i < segments_.size();) {
    if (auto reason = drain_one(*segments_[i])) {
      retire(i, *reason);
    } else {
      ++i;
    }
  }
}

void UsageMeter::retire(std::size_t index, const std::string& quarantine_reason) {
  std::unique_ptr<Segment> segment = std::move(segments_[index]);
  segments_.erase(segments_.begin() + static_cast<std::ptrdiff_t>(index));
  Workload& w = *segment->workload;
  if (segment->reader) {
    // What was validated stays counted, for a quarantined segment too.
    const shm::SegmentReader& reader = *segment->reader;
    for (std::uint32_t h = 1; h < segment->label_states.size(); ++h) {
      add_counters(reader, h, segment->label_states[h]->retired);
    }
    w.retired_dropped += reader.dropped();
  }
  const std::string name = segment->registration.segment_path.filename().string();
  if (!quarantine_reason.empty()) {
    ++quarantined_total_;
    spdlog::error("metering: segment {} of pid {} ({}) quarantined: {}", segment->registration.segment_path.string(),
                  segment->registration.producer.pid, w.identity.id, quarantine_reason);
    v1::QuarantinedSegment q;
    q.set_segment(segment->registration.segment_path.string());
    q.set_reason(quarantine_reason);
    q.set_pid(static_cast<std::uint32_t>(segment->registration.producer.pid));
    q.set_unix_ns(unix_time_ns());
    w.quarantined.push_back(std::move(q));
    if (w.quarantined.size() > kQuarantineHistory) w.quarantined.erase(w.quarantined.begin());
  }
  retired_segments_.insert(name);
  to_remove_.push_back(segment->registration.segment_path);
  bool live = false;
  for (const auto& s : segments_) live = live || s->workload == &w;
  if (!live) w.exited_unix_ns = unix_time_ns();
}

std::map<std::string, CounterMap> UsageMeter::current_totals(const Workload& workload) const {
  std::map<std::string, CounterMap> totals;
  for (const auto& [text, state] : workload.label_sets) totals[text] = state.retired;
  for (const auto& segment : segments_) {
    if (segment->workload != &workload) continue;
    for (std::uint32_t h = 1; h < segment->label_states.size(); ++h) {
      add_counters(*segment->reader, h, totals[segment->label_states[h]->labels.text]);
    }
  }
  return totals;
}

void UsageMeter::report(v1::UsageReport& report) {
  // Producers that exited: one last drain, then their totals move to `retired`.
  for (std::size_t i = 0; i < segments_.size();) {
    const shm::Producer& p = segments_[i]->registration.producer;
    const auto ticks = read_process_start_ticks(FsRoot(), p.pid);
    if (ticks && *ticks == p.start_ticks) {
      ++i;
      continue;
    }
    if (auto reason = drain_one(*segments_[i])) {
      retire(i, *reason);
    } else {
      spdlog::info("metering: pid {} ({}) exited; segment drained one last time",
                   p.pid, segments_[i]->workload->identity.id);
      retire(i, "");
    }
  }

  const std::uint64_t now = unix_time_ns();
  for (auto it = workloads_.begin(); it != workloads_.end();) {
    Workload& w = it->second;
    const bool expired = w.exited_unix_ns != 0 &&
                         now - w.exited_unix_ns > std::uint64_t{config_.retention_s} * 1'000'000'000ULL;
    if (expired) {
      it = workloads_.erase(it);
      continue;
    }
    v1::WorkloadUsage& out = *report.add_workloads();
    out.set_workload_id(w.identity.id);
    out.set_kind(std::string(to_string(w.identity.kind)));
    out.set_cgroup_path(w.identity.cgroup_path);
    for (const auto& [k, v] : w.identity.attributes) (*out.mutable_attributes())[k] = v;
    for (const auto& name : w.names) out.add_names(name);
    std::uint64_t dropped = w.retired_dropped;
    std::map<std::string, std::map<std::string, std::uint64_t>> gauges;
    std::uint32_t live = 0;
    for (const auto& segment : segments_) {
      if (segment->workload != &w) continue;
      ++live;
      out.add_pids(static_cast<std::uint32_t>(segment->registration.producer.pid));
      dropped += segment->reader->dropped();
      for (std::uint32_t h = 1; h < segment->label_states.size(); ++h) {
        const shm::GaugeArray& g = segment->reader->gauges(h);
        for (std::uint32_t k = 0; k < g.size(); ++k) {
          if (g[k] != 0) gauges[segment->label_states[h]->labels.text][std::string(kGaugeNames[k])] += g[k];
        }
      }
    }
    out.set_live_segments(live);
    out.set_exited(live == 0);
    out.set_exited_unix_ns(live == 0 ? w.exited_unix_ns : 0);
    out.set_dropped_events(dropped);
    out.set_dropped_events_delta(dropped >= w.reported_dropped ? dropped - w.reported_dropped : 0);
    w.reported_dropped = dropped;
    for (const auto& q : w.quarantined) *out.add_quarantined() = q;

    for (auto& [text, current] : current_totals(w)) {
      LabelState& state = w.label_sets[text];
      v1::LabelSetUsage& ls = *out.add_label_sets();
      for (const auto& [k, v] : state.labels.pairs) {
        v1::Label& label = *ls.add_labels();
        label.set_key(k);
        label.set_value(v);
      }
      for (const auto& [name, value] : current) {
        (*ls.mutable_counters())[name] = value;
        const auto before = state.reported.find(name);
        const std::uint64_t previous = before == state.reported.end() ? 0 : before->second;
        (*ls.mutable_deltas())[name] = value >= previous ? value - previous : 0;
      }
      for (const auto& [name, value] : gauges[text]) (*ls.mutable_gauges())[name] = value;
      ls.set_refused(state.refused);
      const RequestHistograms& h = state.histograms;
      if (h.tokens.count() > 0) {
        fill_tail(*ls.mutable_ttft_ns(), h.ttft_ns);
        fill_tail(*ls.mutable_duration_ns(), h.duration_ns);
        fill_tail(*ls.mutable_tokens(), h.tokens);
        fill_tail(*ls.mutable_gpu_time_ns(), h.gpu_time_ns);
        ls.set_top1pct_token_share(h.tokens.top_share(0.01));
        ls.set_top1pct_gpu_time_share(h.gpu_time_ns.top_share(0.01));
      }
      state.reported = std::move(current);
    }
    ++it;
  }

  // Nothing metered yet (and nothing to forget): leave the state dir alone.
  if (workloads_.empty() && retired_segments_.empty() && to_remove_.empty() && !checkpoint_written_) return;
  checkpoint_written_ = true;
  if (auto written = write_checkpoint(make_checkpoint(), checkpoint_path_); !written) {
    spdlog::error("metering: checkpoint not written (totals of exited workloads are at risk): {}",
                  written.error().message);
    return;  // keep the files: the next checkpoint retires them
  }
  // Now that the checkpoint holds their totals, the files of retired segments can go.
  for (const auto& path : to_remove_) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    std::filesystem::remove(shm::control_path_of(path), ec);
    std::filesystem::remove(shm::meta_path_of(path), ec);
    if (!std::filesystem::exists(path, ec)) retired_segments_.erase(path.filename().string());
  }
  to_remove_.clear();
}

Checkpoint UsageMeter::make_checkpoint() const {
  Checkpoint c;
  c.retired_segments = retired_segments_;
  for (const auto& [id, w] : workloads_) {
    CheckpointWorkload& out = c.workloads[id];
    out.identity = w.identity;
    out.names = w.names;
    out.retired_dropped = w.retired_dropped;
    out.reported_dropped = w.reported_dropped;
    out.exited_unix_ns = w.exited_unix_ns;
    for (const auto& [text, state] : w.label_sets) {
      CheckpointLabelSet& l = out.label_sets[text];
      l.retired = state.retired;
      l.reported = state.reported;
      l.refused = state.refused;
    }
  }
  return c;
}

}  // namespace tally::agent
