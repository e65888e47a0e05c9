#pragma once
// The topology model as the tally.v1.Topology message published on the feed, and as that message's JSON mapping
// (what `tallyctl topo --json` prints): one schema for the feed and the command line.

#include <string>

#include "collectors/topology/topology.hpp"
#include "tally/v1/topology.pb.h"

namespace tally::agent {

void to_proto(const collectors::Topology& topology, v1::Topology& message);

// The proto3 JSON mapping of to_proto's message, field names as in topology.proto, zeros and empty lists printed.
std::string topology_json(const collectors::Topology& topology);

}  // namespace tally::agent
