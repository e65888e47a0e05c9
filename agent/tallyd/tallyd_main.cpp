// tallyd: the node agent. Parses the command line and the config, then hands over to run_daemon().
#include <sys/resource.h>

#include <cstdio>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/config/config.hpp"
#include "agent/tallyd/daemon.hpp"
#include "agent/base/logging.hpp"
#include "agent/base/version.hpp"

namespace {

// The agent holds a descriptor per client process (and never uses select()): take the whole hard limit, as systemd
// recommends, so that a tallyd started by hand at a shell's soft limit of 1,024 serves as many clients as the unit's
// LimitNOFILE allows.
void raise_descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
  const rlim_t was = limit.rlim_cur;
  limit.rlim_cur = limit.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &limit) == 0) {
    spdlog::info("open files: soft limit raised from {} to the hard limit {}", was, limit.rlim_max);
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tally;
  using namespace tally::agent;
  DaemonOptions options;
  std::string config_path;
  std::string log_level;
  bool check_config = false;

  CLI::App app{"tallyd: node agent for AI compute governance"};
  app.set_version_flag("--version", std::string(kVersion));
  app.add_option("-c,--config", config_path,
                 fmt::format("Configuration file (default {}; built-in defaults when it does not exist)",
                             kDefaultConfigPath));
  app.add_flag("--check-config", check_config, "Validate the configuration and exit (status 0 valid, 2 invalid)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical or off (overrides the config)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  CLI11_PARSE(app, argc, argv);

  if (!config_path.empty()) {
    options.config_path = config_path;
    options.config_path_explicit = true;
  }
  auto config = load_config(options.config_path, options.config_path_explicit);
  if (!config) {
    fmt::print(stderr, "tallyd: invalid configuration: {}\n", config.error().message);
    return 2;
  }
  if (check_config) {
    fmt::print("{}: configuration is valid\n",
               std::filesystem::exists(options.config_path) ? options.config_path.string() : "built-in defaults");
    return 0;
  }
  if (!log_level.empty()) options.log_level_override = parse_log_level(log_level);
  init_logging(options.log_level_override.value_or(*parse_log_level(config->agent.log_level)));
  if (std::filesystem::exists(options.config_path)) {
    spdlog::info("configuration: {}", options.config_path.string());
  } else {
    spdlog::info("configuration: built-in defaults ({} does not exist)", options.config_path.string());
  }
  raise_descriptor_limit();
  return run_daemon(options, std::move(*config));
}
