// tallyctl probes remove: removes the eBPF probes tallyd pinned, for good. Pinned probes keep counting while tallyd
// is stopped or restarting, so that nothing done meanwhile is lost; when tallyd is meant to go away (uninstalled,
// probes turned off), this detaches them: the kernel frees them once no agent holds them.

#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "agent/config/config.hpp"
#include "agent/tallyctl/ctl_commands.hpp"
#include "collectors/kernel/bpf_probes.hpp"

namespace tally::agent {
namespace {

struct ProbesOptions {
  std::string pin_dir = ProbesSection{}.pin_dir;
};

int run_remove(const ProbesOptions& options) {
  auto removed = collectors::KernelProbes::remove_pinned(options.pin_dir);
  if (!removed) {
    fmt::print(stderr, "tallyctl probes remove: {}\n", removed.error().message);
    return 1;
  }
  fmt::print("{}\n", *removed ? fmt::format("removed the probes pinned in {}", options.pin_dir)
                              : fmt::format("no probes pinned in {}", options.pin_dir));
  return 0;
}

}  // namespace

void add_probes_command(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<ProbesOptions>();
  CLI::App* probes = app.add_subcommand("probes", "Manage the eBPF probes tallyd pinned");
  probes->require_subcommand(1);
  CLI::App* remove = probes->add_subcommand(
      "remove", "Remove the pinned probes for good (they count while tallyd is down until removed)");
  remove->add_option("--pin-dir", options->pin_dir, "Where they are pinned ([probes] pin_dir)")->capture_default_str();
  remove->callback([options, &exit_status] { exit_status = run_remove(*options); });
}

}  // namespace tally::agent
