#pragma once
// The topology model as JSON (`tallyctl topo --json`). Field names follow the Topology proto message.

#include <nlohmann/json.hpp>

#include "collectors/topology/topology.hpp"

namespace tally::collectors {

nlohmann::json to_json(const Topology& topology);

}  // namespace tally::collectors
