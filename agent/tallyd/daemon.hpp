#pragma once
// tallyd's life cycle: start (bind the feed, then tell systemd READY=1), publish on timers, reload on SIGHUP,
// publish a final report and exit on SIGTERM/SIGINT.

#include <filesystem>
#include <optional>

#include <spdlog/common.h>

#include "agent/config/config.hpp"

namespace tally::agent {

struct DaemonOptions {
  std::filesystem::path config_path{std::string(kDefaultConfigPath)};
  bool config_path_explicit = false;  // --config given: the file must exist, also on reload
  std::optional<spdlog::level::level_enum> log_level_override;  // --log-level wins over agent.log_level
};

// Runs the agent until it is told to stop. Returns the process exit status.
int run_daemon(const DaemonOptions& options, Config config);

}  // namespace tally::agent
