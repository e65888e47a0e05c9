#pragma once
// The feed's ZeroMQ endpoints: what tallyd binds by default, and which endpoints the agent and tallyctl accept.

#include <string_view>

#include "agent/base/result.hpp"

namespace tally::agent {

inline constexpr std::string_view kDefaultFeedEndpoint = "tcp://127.0.0.1:7600";

enum class EndpointRole { bind, connect };

// Checks an endpoint: tcp://HOST:PORT (PORT may be '*' or 0 for bind) or ipc://PATH.
Result<void> validate_endpoint(std::string_view endpoint, EndpointRole role);

}  // namespace tally::agent
