// The topology message of the feed and its JSON mapping (what `tallyctl topo --json` prints), from a real capture.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "agent/feed/topology_message.hpp"

namespace tally::agent {
namespace {

collectors::Topology from_xml(const std::string& name) {
  collectors::DiscoveryOptions options;
  options.xml_file = std::string(TALLY_TOPOLOGY_DATA) + "/" + name;
  options.use_nvml = false;
  auto topology = collectors::discover_topology(options);
  EXPECT_TRUE(topology) << topology.error().message;
  return topology ? std::move(*topology) : collectors::Topology{};
}

const v1::TopologyDevice* device_labelled(const v1::Topology& message, const std::string& label) {
  for (const auto& device : message.devices()) {
    if (device.label() == label) return &device;
  }
  return nullptr;
}

TEST(TopologyMessage, CarriesTheModelAndTheMatrix) {
  const auto topology = from_xml("ipa20.xml");
  v1::Topology message;
  to_proto(topology, message);
  EXPECT_EQ(message.cpu_count(), 224u);
  EXPECT_EQ(message.source(), topology.source);
  EXPECT_NE(message.source().find("ipa20.xml"), std::string::npos) << message.source();
  ASSERT_EQ(message.numa_nodes_size(), 8);
  EXPECT_EQ(std::vector<std::uint32_t>(message.numa_nodes(0).distances().begin(),
                                       message.numa_nodes(0).distances().end()),
            (std::vector<std::uint32_t>{10, 12, 12, 12, 21, 21, 21, 21}));
  const auto* gpu = device_labelled(message, "GPU0");
  ASSERT_NE(gpu, nullptr);
  EXPECT_EQ(gpu->kind(), v1::DEVICE_KIND_GPU);
  EXPECT_EQ(gpu->pci_bus_id(), "0000:4e:00.0");
  EXPECT_EQ(gpu->numa_node(), 3);
  EXPECT_EQ(gpu->nearest_nic(), "NIC2");
  ASSERT_GT(gpu->pcie_path_size(), 0);
  EXPECT_EQ(gpu->pcie_path(gpu->pcie_path_size() - 1), "host_bridge");
  EXPECT_FALSE(gpu->has_mig_enabled()) << "no NVML: MIG is unknown, not off";
  const auto* nic = device_labelled(message, "NIC2");
  ASSERT_NE(nic, nullptr);
  for (const auto& model : topology.devices) {
    if (model.label != "NIC2") continue;
    EXPECT_EQ(nic->link_speed(), model.link_speed);
    EXPECT_EQ(nic->rdma(), model.rdma);
    EXPECT_EQ(nic->rdma_link_layer(), model.rdma_link_layer);
  }
  bool pair = false;
  for (const auto& link : message.links()) {
    if (link.from() == "GPU0" && link.to() == "GPU1") {
      pair = true;
      EXPECT_EQ(link.pcie(), v1::LINK_CLASS_SYS);
      EXPECT_EQ(link.nvlinks(), 6u);
      EXPECT_FALSE(link.has_p2p_read()) << "no NVML: P2P is unknown, not refused";
    }
  }
  EXPECT_TRUE(pair);
}

TEST(TopologyMessage, JsonIsTheMessageWithZerosPrinted) {
  const auto topology = from_xml("ipa20.xml");
  const auto json = nlohmann::json::parse(topology_json(topology), nullptr, false);
  ASSERT_FALSE(json.is_discarded());
  EXPECT_EQ(json["cpu_count"], 224);
  EXPECT_EQ(json["numa_nodes"][0]["distances"], nlohmann::json({10, 12, 12, 12, 21, 21, 21, 21}));
  EXPECT_EQ(json["nvml_driver_version"], "") << "empty fields are printed: absent would read as unknown";
  for (const auto& device : json["devices"]) {
    if (device["label"] != "GPU0") continue;
    EXPECT_EQ(device["kind"], "DEVICE_KIND_GPU");
    EXPECT_EQ(device["pci_bus_id"], "0000:4e:00.0");
    EXPECT_EQ(device["lost"], false);
    EXPECT_FALSE(device.contains("mig_enabled"));
  }
  v1::Topology message;
  to_proto(topology, message);
  EXPECT_EQ(json["links"].size(), static_cast<std::size_t>(message.links_size()));
}

}  // namespace
}  // namespace tally::agent
