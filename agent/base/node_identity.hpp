#pragma once
// Who is publishing: the node (stable across restarts) and this agent instance (new at every start).

#include <filesystem>
#include <string>

#include "agent/base/result.hpp"

namespace tally {

struct NodeIdentity {
  std::string node_id;      // /etc/machine-id, or agent.node_id from the config
  std::string instance_id;  // random UUID (version 4) drawn at start
  std::string hostname;
};

// Reads the machine id from `machine_id_file` unless `configured_node_id` is non-empty.
Result<NodeIdentity> make_node_identity(const std::string& configured_node_id,
                                        const std::filesystem::path& machine_id_file = "/etc/machine-id");

std::string random_uuid();

}  // namespace tally
