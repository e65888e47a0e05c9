#pragma once
// The ledger's Source and Kind as the wire's ValueSource and ValueKind (usage.proto): one mapping, used by the feed
// and by the checkpoint, which stores the same enums.

#include <optional>

#include "agent/ledger/ledger.hpp"
#include "tally/v1/usage.pb.h"

namespace tally::ledger {

v1::ValueSource to_wire(Source source);
v1::ValueKind to_wire(Kind kind);

// nullopt for UNSPECIFIED and for numbers this build does not know (a newer writer's state, a corrupt file).
std::optional<Source> from_wire(v1::ValueSource source);
std::optional<Kind> from_wire(v1::ValueKind kind);

}  // namespace tally::ledger
