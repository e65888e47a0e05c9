// tallyctl: the operator's command-line tool. Each subcommand lives in agent/ctl_<name>.cpp.
#include <CLI/CLI.hpp>

#include "agent/tallyctl/ctl_commands.hpp"
#include "agent/base/version.hpp"

int main(int argc, char** argv) {
  CLI::App app{"tallyctl: inspect a tally node agent and its feed"};
  app.set_version_flag("--version", std::string(tally::kVersion));
  app.require_subcommand(1);
  int exit_status = 0;
  tally::agent::add_watch_command(app, exit_status);
  tally::agent::add_top_command(app, exit_status);
  tally::agent::add_gpus_command(app, exit_status);
  tally::agent::add_topo_command(app, exit_status);
  tally::agent::add_probes_command(app, exit_status);
  tally::agent::add_plan_command(app, exit_status);
  tally::agent::add_quota_commands(app, exit_status);
  CLI11_PARSE(app, argc, argv);
  return exit_status;
}
