#pragma once
// tallyd's configuration: a TOML file whose every key has a built-in default (docs/configuration.md).
// Parsing is strict: an unknown key, a wrong type, an out-of-range value or an invalid endpoint is an error that
// names the file, line and key, so the agent never starts on a configuration it misunderstood.

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "collectors/result.hpp"

namespace tally::agent {

inline constexpr std::string_view kDefaultConfigPath = "/etc/tally/tally.toml";
inline constexpr std::string_view kDefaultFeedEndpoint = "tcp://127.0.0.1:7600";

struct AgentSection {
  std::string node_id;              // empty: read /etc/machine-id
  std::string log_level = "info";   // trace, debug, info, warn, error, critical, off
  bool operator==(const AgentSection&) const = default;
};

struct FeedSection {
  std::vector<std::string> bind{std::string(kDefaultFeedEndpoint)};
  std::vector<std::string> connect;
  std::uint32_t heartbeat_interval_ms = 5000;
  std::uint32_t usage_interval_ms = 1000;
  std::uint32_t send_high_water_mark = 100000;  // messages queued per subscriber before ZeroMQ drops
  bool operator==(const FeedSection&) const = default;
};

struct Config {
  AgentSection agent;
  FeedSection feed;
  bool operator==(const Config&) const = default;
};

// Parses TOML text; `source_name` is the file name used in error messages.
Result<Config> parse_config(std::string_view toml_text, std::string_view source_name);

// Reads and parses a file. A missing file is an error only when `must_exist` (the operator named it with
// --config); otherwise the built-in defaults apply.
Result<Config> load_config(const std::filesystem::path& path, bool must_exist);

enum class EndpointRole { bind, connect };

// Checks a ZeroMQ endpoint the agent accepts: tcp://HOST:PORT (PORT may be '*' or 0 for bind) or ipc://PATH.
Result<void> validate_endpoint(std::string_view endpoint, EndpointRole role);

}  // namespace tally::agent
