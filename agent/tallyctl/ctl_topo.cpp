// tallyctl topo: the node's topology as `nvidia-smi topo -m` (NVLink-aware matrix), `nvidia-smi topo -mp`
// (--pcie) or JSON (--json), plus a compact tree; for this host, a saved hwloc XML or another node's sysfs root.

#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include "agent/tallyctl/ctl_commands.hpp"
#include "agent/base/logging.hpp"
#include "agent/feed/topology_message.hpp"
#include "collectors/topology/topology.hpp"

namespace tally::agent {
namespace {

struct TopoOptions {
  bool pcie = false;
  bool json = false;
  std::string from_xml;
  std::string sysfs_root;
  std::string nvml_library;
  bool no_nvml = false;
};

int run_topo(const TopoOptions& options) {
  // Warnings go to stderr, so that stdout stays the matrix or the JSON document.
  init_logging(spdlog::level::warn);
  collectors::DiscoveryOptions discovery;
  discovery.xml_file = options.from_xml;
  discovery.sysfs_root = options.sysfs_root;
  if (!options.nvml_library.empty()) discovery.nvml_library = options.nvml_library;
  discovery.use_nvml = !options.no_nvml;
  auto topology = collectors::discover_topology(discovery);
  if (!topology) {
    fmt::print(stderr, "tallyctl topo: {}\n", topology.error().message);
    return 1;
  }
  if (options.json) {
    fmt::print("{}", topology_json(*topology));
  } else {
    fmt::print("{}\n{}", collectors::format_link_matrix(*topology, !options.pcie),
               collectors::format_topology_tree(*topology));
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

void add_topo_command(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<TopoOptions>();
  CLI::App* topo = app.add_subcommand("topo", "Show GPUs, NUMA nodes, PCIe paths, NICs and NVLink of a node");
  topo->add_flag("--pcie", options->pcie, "PCIe-only link matrix, like nvidia-smi topo -mp");
  topo->add_flag("--json", options->json, "Print the whole model as JSON: the tally.v1.Topology message of the feed");
  auto* xml = topo->add_option("--from-xml", options->from_xml, "Read a saved hwloc XML (lstopo --of xml) instead")
                  ->check(CLI::ExistingFile);
  topo->add_option("--sysfs-root", options->sysfs_root, "Read another node's saved sysfs/procfs root instead")
      ->check(CLI::ExistingDirectory)
      ->excludes(xml);
  topo->add_option("--nvml-library", options->nvml_library,
                   "NVML library to dlopen (default libnvidia-ml.so.1, on this host only)");
  topo->add_flag("--no-nvml", options->no_nvml, "Do not load NVML");
  topo->footer(
      "Link classes: X self, PIX at most one PCIe switch, PXB several switches, PHB a host bridge, NODE between "
      "host bridges in one NUMA node, SYS between NUMA nodes, NV# # bonded NVLinks. GPUs are numbered in PCI bus "
      "order, as nvidia-smi does. See docs/topology.md.");
  topo->callback([options, &exit_status] { exit_status = run_topo(*options); });
}

}  // namespace tally::agent
