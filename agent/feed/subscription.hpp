#pragma once
// The receive loop tallyctl's feed commands share: validate the endpoints, connect a SUB socket, and hand every
// valid message of the wanted kinds to the command until the user interrupts (SIGINT/SIGTERM) or the command
// says it has seen enough. Malformed messages are reported on stderr and skipped, never fatal.

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/feed/framing.hpp"

namespace tally::agent {

// Returns the process exit status: 0 when interrupted or done, 2 for an invalid endpoint, 1 for a socket error.
// `command` names the subcommand in messages ("tallyctl watch"). `kinds` empty: every kind.
// `on_message` returns false to stop.
int receive_feed(std::string_view command, const std::vector<std::string>& endpoints,
                 const std::vector<std::string>& kinds, const std::function<bool(const v1::Envelope&)>& on_message);

}  // namespace tally::agent
