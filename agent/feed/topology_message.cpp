#include "agent/feed/topology_message.hpp"

#include <google/protobuf/util/json_util.h>

#include "agent/base/fs_root.hpp"
#include "collectors/topology/cpulist.hpp"

namespace tally::agent {
namespace {

using namespace collectors;

v1::DeviceKind kind_of(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::gpu:
      return v1::DEVICE_KIND_GPU;
    case DeviceKind::accelerator:
      return v1::DEVICE_KIND_ACCELERATOR;
    case DeviceKind::nic:
      return v1::DEVICE_KIND_NIC;
    case DeviceKind::nvswitch:
      return v1::DEVICE_KIND_NVSWITCH;
    case DeviceKind::nvme:
      return v1::DEVICE_KIND_NVME;
    case DeviceKind::display:
      return v1::DEVICE_KIND_DISPLAY;
    case DeviceKind::other:
      break;
  }
  return v1::DEVICE_KIND_UNSPECIFIED;
}

v1::LinkClass class_of(PathClass path_class) {
  switch (path_class) {
    case PathClass::pix:
      return v1::LINK_CLASS_PIX;
    case PathClass::pxb:
      return v1::LINK_CLASS_PXB;
    case PathClass::phb:
      return v1::LINK_CLASS_PHB;
    case PathClass::node:
      return v1::LINK_CLASS_NODE;
    case PathClass::sys:
      return v1::LINK_CLASS_SYS;
    case PathClass::self:
      break;
  }
  return v1::LINK_CLASS_UNSPECIFIED;
}

}  // namespace

void to_proto(const collectors::Topology& topology, v1::Topology& message) {
  message.set_cpu_count(static_cast<std::uint32_t>(topology.cpus.size()));
  message.set_numa_node_count(static_cast<std::uint32_t>(topology.numa_nodes.size()));
  message.set_memory_bytes(topology.memory_bytes);
  message.set_architecture(topology.architecture);
  message.set_cpus(format_cpulist(topology.cpus));
  message.set_nvml_driver_version(topology.nvml_driver_version);
  message.set_source(topology.source);
  for (const NumaNode& node : topology.numa_nodes) {
    v1::NumaNode* out = message.add_numa_nodes();
    out->set_os_index(node.os_index);
    out->set_cpus(format_cpulist(node.cpus));
    out->set_memory_bytes(node.memory_bytes);
    for (auto distance : node.distances) out->add_distances(distance);
    out->set_gpu_memory(node.gpu_memory);
  }
  for (const Device& device : topology.devices) {
    v1::TopologyDevice* out = message.add_devices();
    out->set_kind(kind_of(device.kind));
    out->set_label(device.label);
    out->set_pci_bus_id(device.address.to_string());
    out->set_class_code(device.class_code);
    out->set_vendor_id(device.vendor_id);
    out->set_device_id(device.device_id);
    out->set_vendor_name(device.vendor_name);
    out->set_model(device.model);
    out->set_numa_node(device.numa_node);
    out->set_cpus(format_cpulist(device.cpus));
    for (std::int32_t up = device.pcie_node >= 0 ? topology.pcie[static_cast<std::size_t>(device.pcie_node)].parent
                                                 : -1;
         up >= 0; up = topology.pcie[static_cast<std::size_t>(up)].parent) {
      const PcieNode& node = topology.pcie[static_cast<std::size_t>(up)];
      out->add_pcie_path(node.kind == PcieNodeKind::host_bridge ? std::string("host_bridge")
                         : node.address                         ? node.address->to_string()
                                                                : "?");
    }
    for (const auto& name : device.os_names) out->add_os_names(name);
    out->set_rdma(device.rdma);
    out->set_uuid(device.uuid);
    out->set_memory_bytes(device.memory_bytes);
    out->set_memory_numa_node(device.memory_numa_node);
    if (device.mig_enabled) out->set_mig_enabled(*device.mig_enabled);
    for (const MigInstance& mig : device.mig_instances) {
      v1::MigInstance* instance = out->add_mig_instances();
      instance->set_gpu_instance_id(mig.gpu_instance_id);
      instance->set_compute_instance_id(mig.compute_instance_id);
      instance->set_uuid(mig.uuid);
      instance->set_memory_bytes(mig.memory_bytes);
    }
    for (const NvLink& link : device.nvlinks) {
      v1::NvLinkPeer* peer = out->add_nvlinks();
      peer->set_link(link.link);
      peer->set_active(link.active);
      peer->set_remote_pci_bus_id(link.remote ? link.remote->to_string() : "");
      peer->set_remote_kind(std::string(to_string(link.remote_kind)));
    }
    if (device.nearest_nic >= 0)
      out->set_nearest_nic(topology.devices[static_cast<std::size_t>(device.nearest_nic)].label);
    out->set_lost(device.lost);
    out->set_link_gbytes_per_s(device.link_gbytes_per_s);
    out->set_link_width(device.link_width);
    out->set_link_speed(device.link_speed);
    out->set_rdma_rate(device.rdma_rate);
    out->set_rdma_state(device.rdma_state);
    out->set_rdma_link_layer(device.rdma_link_layer);
    out->set_compute_partition(device.compute_partition);
  }
  const LinkMatrix& matrix = topology.links;
  for (std::size_t row = 0; row < matrix.size(); ++row) {
    for (std::size_t column = 0; column < matrix.size(); ++column) {
      if (row == column) continue;
      v1::TopologyLink* link = message.add_links();
      link->set_from(topology.devices[static_cast<std::size_t>(matrix.endpoints[row])].label);
      link->set_to(topology.devices[static_cast<std::size_t>(matrix.endpoints[column])].label);
      link->set_pcie(class_of(matrix.pcie_at(row, column)));
      link->set_nvlinks(matrix.nvlinks_at(row, column));
      const std::int8_t p2p = matrix.p2p[row * matrix.size() + column];
      if (p2p >= 0) link->set_p2p_read(p2p == 1);
    }
  }
  for (const auto& warning : topology.warnings) message.add_warnings(warning);
}

std::string topology_json(const collectors::Topology& topology) {
  v1::Topology message;
  to_proto(topology, message);
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;  // a zero or an empty list is an answer, not a missing field
  std::string text;
  // Printing a message we built cannot fail; an empty document would show if it ever did.
  (void)google::protobuf::util::MessageToJsonString(message, &text, options);
  return text;
}

}  // namespace tally::agent
