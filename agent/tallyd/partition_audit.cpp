#include "agent/tallyd/partition_audit.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/base/logging.hpp"

namespace tally::agent {

namespace {

// "KIND_DENIED" → "denied".
std::string decision_of(const v1::PartitionEvent& event) {
  std::string name = v1::PartitionEvent::Kind_Name(event.kind());
  if (name.starts_with("KIND_")) name.erase(0, 5);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

}  // namespace

std::string describe(const v1::PartitionEvent& e) {
  const std::string head = fmt::format("partitioning: generation {}", e.generation());
  const std::string gpu = e.gpu().empty() ? "" : fmt::format("GPU {}: ", e.gpu());
  switch (e.kind()) {
    case v1::PartitionEvent::KIND_APPLIED: return fmt::format("{} applied: {}", head, e.detail());
    case v1::PartitionEvent::KIND_RELEASED: return fmt::format("{}: device policy released: {}", head, e.detail());
    case v1::PartitionEvent::KIND_RECONCILE_STEP: return fmt::format("{}: {}{}", head, gpu, e.detail());
    case v1::PartitionEvent::KIND_REFUSED: return fmt::format("{}: refused: {}{}", head, gpu, e.detail());
    case v1::PartitionEvent::KIND_ROLLED_BACK: return fmt::format("{}: {}rolled back: {}", head, gpu, e.detail());
    case v1::PartitionEvent::KIND_DENIED:
      return fmt::format("{}: denied {} to {} (pid {}, {}; {} so far)", head, e.device(), e.workload(), e.pid(),
                         e.comm(), e.count());
    case v1::PartitionEvent::KIND_COVERED:
      return fmt::format("{}: new cgroup {} of {} holds its grants ({})", head, e.cgroup(), e.workload(), e.detail());
    default: return fmt::format("{}: {}", head, e.detail());
  }
}

std::vector<std::string> journal_fields(const v1::PartitionEvent& e) {
  std::vector<std::string> fields{fmt::format("TALLY_DECISION={}", decision_of(e)),
                                  fmt::format("TALLY_PLAN_GENERATION={}", e.generation())};
  const auto add = [&](const char* name, const std::string& value) {
    if (!value.empty()) fields.push_back(fmt::format("{}={}", name, value));
  };
  add("TALLY_WORKLOAD", e.workload());
  add("TALLY_GPU", e.gpu());
  add("TALLY_DEVICE", e.device());
  add("TALLY_CGROUP", e.cgroup());
  if (e.kind() == v1::PartitionEvent::KIND_DENIED) {
    add("TALLY_OFFENDER_PID", std::to_string(e.pid()));
    add("TALLY_OFFENDER_COMM", e.comm());
    add("TALLY_DENIALS", std::to_string(e.count()));
  }
  return fields;
}

void journal_decision(const v1::PartitionEvent& event, spdlog::level::level_enum level) {
  journal_entry(level, describe(event), journal_fields(event));
}

}  // namespace tally::agent
