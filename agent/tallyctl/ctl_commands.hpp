#pragma once
// tallyctl's subcommands. Each lives in its own ctl_<name>.cpp and registers itself on the app; the callback it
// sets runs the command and stores its exit status in `exit_status`.

#include <CLI/CLI.hpp>

namespace tally::agent {

void add_watch_command(CLI::App& app, int& exit_status);
void add_top_command(CLI::App& app, int& exit_status);
void add_gpus_command(CLI::App& app, int& exit_status);
void add_topo_command(CLI::App& app, int& exit_status);
void add_probes_command(CLI::App& app, int& exit_status);
void add_plan_command(CLI::App& app, int& exit_status);
void add_quota_commands(CLI::App& app, int& exit_status);  // quota and release

}  // namespace tally::agent
