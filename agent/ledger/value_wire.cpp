#include "agent/ledger/value_wire.hpp"

namespace tally::ledger {

v1::ValueSource to_wire(Source source) {
  switch (source) {
    case Source::client: return v1::VALUE_SOURCE_CLIENT;
    case Source::kernel_probes: return v1::VALUE_SOURCE_KERNEL_PROBES;
    case Source::proc_sampling: return v1::VALUE_SOURCE_PROC_SAMPLING;
    case Source::nvml: return v1::VALUE_SOURCE_NVML;
  }
  return v1::VALUE_SOURCE_UNSPECIFIED;
}

v1::ValueKind to_wire(Kind kind) {
  switch (kind) {
    case Kind::measured: return v1::VALUE_KIND_MEASURED;
    case Kind::apportioned: return v1::VALUE_KIND_APPORTIONED;
    case Kind::estimated: return v1::VALUE_KIND_ESTIMATED;
  }
  return v1::VALUE_KIND_UNSPECIFIED;
}

std::optional<Source> from_wire(v1::ValueSource source) {
  switch (source) {
    case v1::VALUE_SOURCE_CLIENT: return Source::client;
    case v1::VALUE_SOURCE_KERNEL_PROBES: return Source::kernel_probes;
    case v1::VALUE_SOURCE_PROC_SAMPLING: return Source::proc_sampling;
    case v1::VALUE_SOURCE_NVML: return Source::nvml;
    default: return std::nullopt;
  }
}

std::optional<Kind> from_wire(v1::ValueKind kind) {
  switch (kind) {
    case v1::VALUE_KIND_MEASURED: return Kind::measured;
    case v1::VALUE_KIND_APPORTIONED: return Kind::apportioned;
    case v1::VALUE_KIND_ESTIMATED: return Kind::estimated;
    default: return std::nullopt;
  }
}

}  // namespace tally::ledger
