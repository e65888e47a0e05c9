#pragma once
// The topology model as the tally.v1.Topology message published on the feed.

#include "collectors/topology/topology.hpp"
#include "tally/v1/topology.pb.h"

namespace tally::agent {

void to_proto(const collectors::Topology& topology, v1::Topology& message);

}  // namespace tally::agent
