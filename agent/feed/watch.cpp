#include "agent/feed/watch.hpp"

#include <chrono>
#include <cmath>

#include <fmt/chrono.h>
#include <fmt/ranges.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/util/json_util.h>

#include "agent/base/text.hpp"

namespace tally::agent {
namespace {

std::string short_id(const std::string& id) { return id.substr(0, 8); }

std::string_view notice_name(FeedNotice::Type type) {
  switch (type) {
    case FeedNotice::Type::gap: return "gap";
    case FeedNotice::Type::restart: return "restart";
    case FeedNotice::Type::backwards: return "backwards";
  }
  return "unknown";
}

// Whether every float and double in the message, at any depth, is a finite number. The agent never publishes NaN
// or infinity; a message carrying one comes from elsewhere, and a NaN would break whatever sorts or sums it.
bool all_finite(const google::protobuf::Message& message) {
  using google::protobuf::FieldDescriptor;
  const auto* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const FieldDescriptor* field : fields) {
    const int count = field->is_repeated() ? reflection->FieldSize(message, field) : 1;
    for (int i = 0; i < count; ++i) {
      const bool repeated = field->is_repeated();
      switch (field->cpp_type()) {
        case FieldDescriptor::CPPTYPE_DOUBLE:
          if (!std::isfinite(repeated ? reflection->GetRepeatedDouble(message, field, i)
                                      : reflection->GetDouble(message, field))) {
            return false;
          }
          break;
        case FieldDescriptor::CPPTYPE_FLOAT:
          if (!std::isfinite(repeated ? reflection->GetRepeatedFloat(message, field, i)
                                      : reflection->GetFloat(message, field))) {
            return false;
          }
          break;
        case FieldDescriptor::CPPTYPE_MESSAGE:
          if (!all_finite(repeated ? reflection->GetRepeatedMessage(message, field, i)
                                   : reflection->GetMessage(message, field))) {
            return false;
          }
          break;
        default: break;
      }
    }
  }
  return true;
}

std::string gpu_name(const v1::GpuRef& gpu) { return fmt::format("gpu={} ({})", gpu.index(), gpu.uuid()); }

std::string format_event(const v1::Event& event) {
  switch (event.body_case()) {
    case v1::Event::kGpuIdle: {
      const auto& e = event.gpu_idle();
      return fmt::format("event GpuIdle {} idle={} threshold={}% window={}s holders=[{}]", gpu_name(e.gpu()), e.idle(),
                         e.threshold_percent(), e.window_s(), fmt::join(e.holders(), ","));
    }
    case v1::Event::kGpuHeldUnused: {
      const auto& e = event.gpu_held_unused();
      return fmt::format("event GpuHeldUnused {} workloads=[{}]", gpu_name(e.gpu()), fmt::join(e.workloads(), ","));
    }
    case v1::Event::kGpuFailure: {
      const auto& e = event.gpu_failure();
      return fmt::format("event GpuFailure {} call={} error=\"{}\"{}", e.has_gpu() ? gpu_name(e.gpu()) : "node",
                         e.call(), e.error(), e.lost() ? " lost" : "");
    }
    case v1::Event::kPartition: {
      const auto& e = event.partition();
      std::string line = fmt::format("event Partition {} generation={}",
                                     v1::PartitionEvent::Kind_Name(e.kind()).substr(5), e.generation());
      if (!e.workload().empty()) line += fmt::format(" workload={}", e.workload());
      if (!e.gpu().empty()) line += fmt::format(" gpu={}", e.gpu());
      if (!e.device().empty()) line += fmt::format(" device={} count={} pid={} comm={}", e.device(), e.count(), e.pid(),
                                                   e.comm());
      if (!e.cgroup().empty()) line += fmt::format(" cgroup={}", e.cgroup());
      if (!e.detail().empty()) line += fmt::format(" detail=\"{}\"", e.detail());
      return line;
    }
    case v1::Event::kQuota: {
      const auto& e = event.quota();
      std::string line = fmt::format("event Quota {} budget={} selector=\"{}\" resource={} window={} used={} limit={} "
                                     "overshoot={} action={}",
                                     v1::QuotaEvent::Kind_Name(e.kind()).substr(5), e.budget(), e.selector(),
                                     e.resource(), e.window(), e.used(), e.limit(), e.overshoot(), e.action());
      if (!e.workload().empty()) line += fmt::format(" workload={}", e.workload());
      return line;
    }
    case v1::Event::BODY_NOT_SET: break;
  }
  return "event (unknown)";
}

}  // namespace

std::vector<FeedNotice> SequenceTracker::observe(const v1::Envelope& envelope) {
  std::vector<FeedNotice> notices;
  const auto kind = kind_of(envelope);
  const std::string stream = by_kind_ && kind ? std::string(topic_of(*kind)) : std::string();
  const std::uint64_t sequence = by_kind_ ? envelope.kind_sequence() : envelope.sequence();

  auto [it, first_from_node] = nodes_.try_emplace(envelope.node_id());
  Position& position = it->second;
  if (!first_from_node && position.instance_id != envelope.instance_id()) {
    notices.push_back({FeedNotice::Type::restart, envelope.node_id(), envelope.instance_id(), position.instance_id});
    position.last.clear();
  }
  position.instance_id = envelope.instance_id();

  auto last = position.last.find(stream);
  if (last != position.last.end()) {
    const std::uint64_t expected = last->second + 1;
    if (sequence > expected) {
      notices.push_back({FeedNotice::Type::gap, envelope.node_id(), envelope.instance_id(), {}, expected, sequence});
    } else if (sequence < expected) {
      notices.push_back(
          {FeedNotice::Type::backwards, envelope.node_id(), envelope.instance_id(), {}, expected, sequence});
    }
  }
  position.last[stream] = sequence;
  return notices;
}

std::optional<v1::Envelope> decode_envelope(std::string_view topic, std::string_view payload) {
  v1::Envelope envelope;
  if (!envelope.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) return std::nullopt;
  const auto kind = kind_of(envelope);
  if (!kind || topic_of(*kind) != topic || !all_finite(envelope)) return std::nullopt;
  return envelope;
}

std::string format_text(const v1::Envelope& envelope) {
  const auto time = std::chrono::sys_time<std::chrono::milliseconds>(
      std::chrono::milliseconds(envelope.timestamp_unix_ns() / 1'000'000));
  std::string line = fmt::format("{:%H:%M:%S} node={} instance={} seq={} ", time, short_id(envelope.node_id()),
                                 short_id(envelope.instance_id()), envelope.sequence());
  switch (envelope.body_case()) {
    case v1::Envelope::kHeartbeat: {
      const auto& h = envelope.heartbeat();
      line += fmt::format("heartbeat cpu={:.1f}ms rss={} uptime={:.1f}s config_generation={}",
                          static_cast<double>(h.cpu_user_ns() + h.cpu_system_ns()) / 1e6, human_bytes(h.rss_bytes()),
                          static_cast<double>(h.uptime_ns()) / 1e9, h.config_generation());
      break;
    }
    case v1::Envelope::kUsage: {
      const auto& u = envelope.usage();
      line += fmt::format("usage interval={:.3f}s workloads={}{}",
                          static_cast<double>(u.interval_end_unix_ns() - u.interval_start_unix_ns()) / 1e9,
                          u.workloads_size(), u.final() ? " final" : "");
      break;
    }
    case v1::Envelope::kTopology: {
      const auto& t = envelope.topology();
      line += fmt::format("topology cpus={} numa_nodes={} memory={}", t.cpu_count(), t.numa_node_count(),
                          human_bytes(t.memory_bytes()));
      break;
    }
    case v1::Envelope::kEvent: line += format_event(envelope.event()); break;
    case v1::Envelope::BODY_NOT_SET: line += "empty"; break;
  }
  return line;
}

std::string format_text(const FeedNotice& notice) {
  switch (notice.type) {
    case FeedNotice::Type::restart:
      return fmt::format("! restart: node {} agent restarted (instance {} -> {})", notice.node_id,
                         notice.previous_instance_id, notice.instance_id);
    case FeedNotice::Type::gap:
      return fmt::format("! gap: node {} instance {}: expected seq {}, got {} ({} missed)", notice.node_id,
                         notice.instance_id, notice.expected, notice.received, notice.missed());
    case FeedNotice::Type::backwards:
      return fmt::format("! backwards: node {} instance {}: expected seq {}, got {}", notice.node_id,
                         notice.instance_id, notice.expected, notice.received);
  }
  return {};
}

nlohmann::json to_json(const v1::Envelope& envelope) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(envelope, &text, options);
  const auto kind = kind_of(envelope);
  return nlohmann::json{{"topic", kind ? topic_of(*kind) : "unknown"}, {"envelope", nlohmann::json::parse(text)}};
}

nlohmann::json to_json(const FeedNotice& notice) {
  nlohmann::json out{{"notice", notice_name(notice.type)},
                     {"node_id", notice.node_id},
                     {"instance_id", notice.instance_id}};
  if (notice.type == FeedNotice::Type::restart) {
    out["previous_instance_id"] = notice.previous_instance_id;
  } else {
    out["expected"] = notice.expected;
    out["received"] = notice.received;
    out["missed"] = notice.missed();
  }
  return out;
}

}  // namespace tally::agent
