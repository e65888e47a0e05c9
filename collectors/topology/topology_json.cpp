#include "collectors/topology/topology_json.hpp"

#include "agent/base/fs_root.hpp"
#include "collectors/topology/cpulist.hpp"

namespace tally::collectors {
namespace {

nlohmann::json label_of(const Topology& topology, std::int32_t device) {
  if (device < 0) return nullptr;
  return topology.devices[static_cast<std::size_t>(device)].label;
}

nlohmann::json device_json(const Topology& topology, const Device& device) {
  nlohmann::json out{
      {"kind", std::string(to_string(device.kind))},
      {"label", device.label},
      {"pci_bus_id", device.address.to_string()},
      {"class_code", device.class_code},
      {"vendor_id", device.vendor_id},
      {"device_id", device.device_id},
      {"vendor_name", device.vendor_name},
      {"model", device.model},
      {"numa_node", device.numa_node},
      {"cpus", format_cpulist(device.cpus)},
      {"link_gbytes_per_s", device.link_gbytes_per_s},
      {"link_speed", device.link_speed},
      {"link_width", device.link_width},
      {"os_names", device.os_names},
  };
  nlohmann::json path = nlohmann::json::array();
  for (std::int32_t up = device.pcie_node >= 0 ? topology.pcie[static_cast<std::size_t>(device.pcie_node)].parent : -1;
       up >= 0; up = topology.pcie[static_cast<std::size_t>(up)].parent) {
    const PcieNode& node = topology.pcie[static_cast<std::size_t>(up)];
    path.push_back(node.kind == PcieNodeKind::host_bridge ? std::string("host_bridge")
                   : node.address                         ? node.address->to_string()
                                                          : "?");
  }
  out["pcie_path"] = std::move(path);
  if (device.kind == DeviceKind::nic) {
    out["rdma"] = device.rdma;
    if (device.rdma) {
      out["rdma_rate"] = device.rdma_rate;
      out["rdma_state"] = device.rdma_state;
      out["rdma_link_layer"] = device.rdma_link_layer;
    }
  }
  if (device.kind == DeviceKind::gpu || device.kind == DeviceKind::accelerator) {
    out["uuid"] = device.uuid;
    out["memory_bytes"] = device.memory_bytes;
    out["memory_numa_node"] = device.memory_numa_node;
    out["mig_enabled"] = device.mig_enabled ? nlohmann::json(*device.mig_enabled) : nlohmann::json(nullptr);
    nlohmann::json instances = nlohmann::json::array();
    for (const MigInstance& mig : device.mig_instances) {
      instances.push_back({{"gpu_instance_id", mig.gpu_instance_id},
                           {"compute_instance_id", mig.compute_instance_id},
                           {"uuid", mig.uuid},
                           {"memory_bytes", mig.memory_bytes}});
    }
    out["mig_instances"] = std::move(instances);
    nlohmann::json links = nlohmann::json::array();
    for (const NvLink& link : device.nvlinks) {
      links.push_back({{"link", link.link},
                       {"active", link.active},
                       {"remote_pci_bus_id", link.remote ? link.remote->to_string() : ""},
                       {"remote_kind", std::string(to_string(link.remote_kind))}});
    }
    out["nvlinks"] = std::move(links);
    out["compute_partition"] = device.compute_partition;
    out["lost"] = device.lost;
    out["nearest_nic"] = label_of(topology, device.nearest_nic);
  }
  return out;
}

}  // namespace

nlohmann::json to_json(const Topology& topology) {
  nlohmann::json out{
      {"source", topology.source},
      {"architecture", topology.architecture},
      {"nvml_driver_version", topology.nvml_driver_version},
      {"cpu_count", topology.cpus.size()},
      {"cpus", format_cpulist(topology.cpus)},
      {"memory_bytes", topology.memory_bytes},
  };
  nlohmann::json numa = nlohmann::json::array();
  for (const NumaNode& node : topology.numa_nodes) {
    numa.push_back({{"os_index", node.os_index},
                    {"cpus", format_cpulist(node.cpus)},
                    {"cpu_count", node.cpus.size()},
                    {"memory_bytes", node.memory_bytes},
                    {"distances", node.distances},
                    {"gpu_memory", node.gpu_memory}});
  }
  out["numa_nodes"] = std::move(numa);
  nlohmann::json devices = nlohmann::json::array();
  for (const Device& device : topology.devices) devices.push_back(device_json(topology, device));
  out["devices"] = std::move(devices);
  nlohmann::json links = nlohmann::json::array();
  const LinkMatrix& matrix = topology.links;
  for (std::size_t row = 0; row < matrix.size(); ++row) {
    for (std::size_t column = 0; column < matrix.size(); ++column) {
      if (row == column) continue;
      nlohmann::json link{{"from", label_of(topology, matrix.endpoints[row])},
                          {"to", label_of(topology, matrix.endpoints[column])},
                          {"pcie", std::string(to_string(matrix.pcie_at(row, column)))},
                          {"nvlinks", matrix.nvlinks_at(row, column)}};
      const std::int8_t p2p = matrix.p2p[row * matrix.size() + column];
      link["p2p_read"] = p2p < 0 ? nlohmann::json(nullptr) : nlohmann::json(p2p == 1);
      links.push_back(std::move(link));
    }
  }
  out["links"] = std::move(links);
  out["warnings"] = topology.warnings;
  return out;
}

}  // namespace tally::collectors
