#pragma once
// tallyctl's side of tallyd's control socket ([agent] control_socket; root only): one request per connection, a
// JSON object on one line; the answer is one JSON object, or {"error": "..."}.

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/base/result.hpp"

namespace tally::agent {

// Sends one request and reads the whole answer. An error (ErrorCode::not_found when no agent listens) when the
// agent cannot be reached, does not answer within `timeout`, answers nonsense or answers an error.
Result<nlohmann::json> ask_agent(const std::string& socket_path, const nlohmann::json& request,
                                 std::chrono::seconds timeout);

}  // namespace tally::agent
