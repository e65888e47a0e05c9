// NVML through the production dlopen loader, against the fake libnvidia-ml.so.1 (tests/fake_nvml) whose scenario
// uses the bus ids and UUIDs of the real captures; and the bad-input cases: missing symbols, a library that is not
// NVML, init failures, NOT_SUPPORTED and GPU_IS_LOST.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <nlohmann/json.hpp>

#include "collectors/nvml/nvml.hpp"
#include "collectors/topology/topology.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::collectors {
namespace {

const std::filesystem::path kData = TALLY_TOPOLOGY_DATA;

// Points the fake at a scenario for the life of the test.
class Scenario {
 public:
  explicit Scenario(const nlohmann::json& scenario) {
    path_ = dir_.write("scenario.json", scenario.dump(2));
    setenv("TALLY_FAKE_NVML_SCENARIO", path_.c_str(), 1);
  }
  ~Scenario() { unsetenv("TALLY_FAKE_NVML_SCENARIO"); }
  Scenario(const Scenario&) = delete;
  Scenario& operator=(const Scenario&) = delete;

 private:
  test::TempDir dir_;
  std::filesystem::path path_;
};

// The 8 Tesla T4 of the g4dn.metal capture, with their real UUIDs.
nlohmann::json g4dn_gpus() {
  const std::vector<std::pair<std::string, std::string>> gpus = {
      {"00000000:18:00.0", "GPU-029490c8-a116-638b-7018-1a6b7a9002ef"},
      {"00000000:19:00.0", "GPU-e5f1ef2b-71b8-2963-d316-108ad8712874"},
      {"00000000:35:00.0", "GPU-541de847-535a-023c-84c0-5bead20b12e0"},
      {"00000000:36:00.0", "GPU-a2f7dfad-d430-4c75-6ba2-e417160afec7"},
      {"00000000:E7:00.0", "GPU-3b0fc29b-614f-8158-8ea6-f4a8c9fa5c27"},
      {"00000000:E8:00.0", "GPU-84bc1679-aa5f-9954-5afe-8c689c01ec13"},
      {"00000000:F4:00.0", "GPU-cbe0afec-aa16-5bc7-8379-8e739474cec1"},
      {"00000000:F5:00.0", "GPU-688323de-3533-d2ca-844c-af1c0f723c87"},
  };
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [bus_id, uuid] : gpus) {
    out.push_back({{"bus_id", bus_id},
                   {"pci_device_id", (0x1eb8u << 16) | 0x10deu},
                   {"uuid", uuid},
                   {"name", "Tesla T4"},
                   {"memory_total", 16106127360ull}});
  }
  return out;
}

Topology discover(const std::string& xml, const std::string& library) {
  DiscoveryOptions options;
  options.xml_file = kData / xml;
  options.nvml_library = library;
  auto topology = discover_topology(options);
  EXPECT_TRUE(topology) << topology.error().message;
  return topology ? std::move(*topology) : Topology{};
}

std::string warnings_of(const Topology& topology) {
  std::string all;
  for (const auto& warning : topology.warnings) all += warning + "\n";
  return all;
}

TEST(NvmlLibrary, LoadsTheFakeThroughDlopen) {
  Scenario scenario(nlohmann::json{{"driver_version", "535.54.03"}, {"gpus", g4dn_gpus()}});
  auto nvml = NvmlLibrary::open(FAKE_NVML_PATH);
  ASSERT_TRUE(nvml) << nvml.error().message;
  EXPECT_TRUE((*nvml)->missing_optional(kNvmlTopology).empty());
  EXPECT_TRUE((*nvml)->missing_optional(kNvmlAccounting).empty());
  EXPECT_EQ((*nvml)->driver_version(), "535.54.03");
  unsigned count = 0;
  ASSERT_EQ((*nvml)->api().nvmlDeviceGetCount_v2(&count), NVML_SUCCESS);
  EXPECT_EQ(count, 8u);
  EXPECT_EQ((*nvml)->error_string(NVML_ERROR_GPU_IS_LOST), "GPU is lost");
}

TEST(NvmlLibrary, MissingRequiredSymbolIsAnErrorNamingIt) {
  // A real library that is not NVML.
  auto nvml = NvmlLibrary::open("libm.so.6");
  ASSERT_FALSE(nvml);
  EXPECT_NE(nvml.error().message.find("nvmlInit_v2"), std::string::npos) << nvml.error().message;
}

TEST(NvmlLibrary, InitFailureCarriesNvmlsMessage) {
  Scenario scenario(nlohmann::json{{"init", "DRIVER_NOT_LOADED"}});
  auto nvml = NvmlLibrary::open(FAKE_NVML_PATH);
  ASSERT_FALSE(nvml);
  EXPECT_NE(nvml.error().message.find("Driver Not Loaded"), std::string::npos) << nvml.error().message;
}

TEST(TopologyNvml, JoinsUuidNameAndMemoryByPciAddress) {
  Scenario scenario(nlohmann::json{{"gpus", g4dn_gpus()}});
  const Topology topology = discover("g4dnmetal.xml", FAKE_NVML_PATH);
  EXPECT_TRUE(topology.warnings.empty()) << warnings_of(topology);
  EXPECT_EQ(topology.nvml_driver_version, "550.54.15");
  const Device* gpu4 = topology.find("GPU4");
  ASSERT_NE(gpu4, nullptr);
  EXPECT_EQ(gpu4->address.to_string(), "0000:e7:00.0");
  EXPECT_EQ(gpu4->uuid, "GPU-3b0fc29b-614f-8158-8ea6-f4a8c9fa5c27");
  EXPECT_EQ(gpu4->model, "Tesla T4");
  EXPECT_EQ(gpu4->memory_bytes, 16106127360ull);
  EXPECT_FALSE(gpu4->mig_enabled.has_value());  // T4: NOT_SUPPORTED, which is normal and no warning
  EXPECT_TRUE(gpu4->p2p_known);
}

TEST(TopologyNvml, MigInstancesNvLinkPeersAndP2p) {
  // ipa20: 4x H100 SXM without NVSwitch, 6 NVLinks between each pair; GPU0 in MIG mode with two instances.
  const std::vector<std::string> bus = {"00000000:4E:00.0", "00000000:5F:00.0", "00000000:CB:00.0", "00000000:DB:00.0"};
  nlohmann::json gpus = nlohmann::json::array();
  for (std::size_t i = 0; i < bus.size(); ++i) {
    nlohmann::json gpu{{"bus_id", bus[i]},
                       {"uuid", "GPU-1e6c3d8a-0000-0000-0000-00000000000" + std::to_string(i)},
                       {"name", "NVIDIA H100 80GB HBM3"},
                       {"memory_total", 85520809984ull},
                       {"mig_mode", 0},
                       {"nvlinks", nlohmann::json::array()},
                       {"p2p_peers", nlohmann::json::array()}};
    for (std::size_t j = 0; j < bus.size(); ++j) {
      if (i == j) continue;
      for (int k = 0; k < 6; ++k) gpu["nvlinks"].push_back({{"active", true}, {"remote_bus_id", bus[j]}});
      gpu["p2p_peers"].push_back(bus[j]);
    }
    gpus.push_back(gpu);
  }
  gpus[0]["mig_mode"] = 1;
  gpus[0]["mig_instances"] = {{{"gpu_instance_id", 1},
                               {"compute_instance_id", 0},
                               {"uuid", "MIG-aaaaaaaa-0000-0000-0000-000000000001"},
                               {"memory_total", 42949672960ull}},
                              {{"gpu_instance_id", 2},
                               {"compute_instance_id", 0},
                               {"uuid", "MIG-aaaaaaaa-0000-0000-0000-000000000002"},
                               {"memory_total", 42949672960ull}}};
  gpus[3]["p2p_peers"] = nlohmann::json::array();  // GPU3 refuses P2P reads
  Scenario scenario(nlohmann::json{{"gpus", gpus}});
  const Topology topology = discover("ipa20.xml", FAKE_NVML_PATH);
  EXPECT_TRUE(topology.warnings.empty()) << warnings_of(topology);
  const Device* gpu0 = topology.find("GPU0");
  ASSERT_TRUE(gpu0->mig_enabled.has_value());
  EXPECT_TRUE(*gpu0->mig_enabled);
  ASSERT_EQ(gpu0->mig_instances.size(), 2u);
  EXPECT_EQ(gpu0->mig_instances[1].gpu_instance_id, 2u);
  EXPECT_EQ(gpu0->mig_instances[1].uuid, "MIG-aaaaaaaa-0000-0000-0000-000000000002");
  EXPECT_FALSE(*topology.find("GPU1")->mig_enabled);
  EXPECT_EQ(gpu0->nvlinks.size(), 18u);
  EXPECT_EQ(gpu0->nvlinks.front().remote_kind, NvLinkPeerKind::gpu);
  const LinkMatrix& matrix = topology.links;
  EXPECT_EQ(matrix.nvlinks_at(0, 1), 6u);
  EXPECT_EQ(matrix.p2p[0 * matrix.size() + 1], 1);
  EXPECT_EQ(matrix.p2p[3 * matrix.size() + 1], 0);
}

TEST(TopologyNvml, NvSwitchLinksFromNvmlReplaceTheXmlBandwidth) {
  // DGX-2 bus ids; NVML says GPU0 has only 3 active links to NVSwitches (3 are down), the others 6.
  const std::vector<std::string> gpu_bus = {"34", "36", "39", "3b", "57", "59", "5c", "5e",
                                            "b7", "b9", "bc", "be", "e0", "e2", "e5", "e7"};
  const std::vector<std::string> switch_bus = {"61", "62", "63", "65", "66", "67"};
  nlohmann::json gpus = nlohmann::json::array();
  for (std::size_t i = 0; i < gpu_bus.size(); ++i) {
    nlohmann::json gpu{{"bus_id", "00000000:" + gpu_bus[i] + ":00.0"},
                       {"uuid", "GPU-d6c0ffee-0000-0000-0000-0000000000" + gpu_bus[i]},
                       {"nvlinks", nlohmann::json::array()}};
    for (std::size_t k = 0; k < switch_bus.size(); ++k) {
      gpu["nvlinks"].push_back({{"active", i != 0 || k < 3},
                                {"remote_bus_id", "00000000:" + switch_bus[k] + ":00.0"},
                                {"remote_type", "switch"}});
    }
    gpus.push_back(gpu);
  }
  Scenario scenario(nlohmann::json{{"gpus", gpus}});
  const Topology topology = discover("nvidiaDGX2.xml", FAKE_NVML_PATH);
  const LinkMatrix& matrix = topology.links;
  EXPECT_EQ(matrix.nvlinks_at(0, 1), 3u);
  EXPECT_EQ(matrix.nvlinks_at(1, 0), 3u);
  EXPECT_EQ(matrix.nvlinks_at(1, 15), 6u);
  EXPECT_EQ(topology.find("GPU5")->uuid, "GPU-d6c0ffee-0000-0000-0000-000000000059");
}

TEST(TopologyNvml, LostGpuKeepsWhatHwlocKnowsWithOneWarning) {
  auto gpus = g4dn_gpus();
  gpus[2]["errors"] = {{"nvmlDeviceGetUUID", "GPU_IS_LOST"}};
  Scenario scenario(nlohmann::json{{"gpus", gpus}});
  const Topology topology = discover("g4dnmetal.xml", FAKE_NVML_PATH);
  ASSERT_EQ(topology.warnings.size(), 1u) << warnings_of(topology);
  EXPECT_NE(topology.warnings[0].find("0000:35:00.0"), std::string::npos) << topology.warnings[0];
  EXPECT_NE(topology.warnings[0].find("GPU_IS_LOST"), std::string::npos) << topology.warnings[0];
  const Device* gpu2 = topology.find("GPU2");
  EXPECT_TRUE(gpu2->lost);
  EXPECT_EQ(gpu2->uuid, "GPU-541de847-535a-023c-84c0-5bead20b12e0");  // hwloc's XML still knows it
  EXPECT_EQ(gpu2->memory_bytes, 0u);
  EXPECT_EQ(topology.find("GPU3")->memory_bytes, 16106127360ull);  // the others are complete
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 8u);
}

TEST(TopologyNvml, NotSupportedCallLeavesThatFieldEmptyWithOneWarning) {
  auto gpus = g4dn_gpus();
  gpus[1]["errors"] = {{"nvmlDeviceGetMemoryInfo", "NOT_SUPPORTED"}};
  Scenario scenario(nlohmann::json{{"gpus", gpus}});
  const Topology topology = discover("g4dnmetal.xml", FAKE_NVML_PATH);
  ASSERT_EQ(topology.warnings.size(), 1u) << warnings_of(topology);
  EXPECT_NE(topology.warnings[0].find("nvmlDeviceGetMemoryInfo (Not Supported)"), std::string::npos)
      << topology.warnings[0];
  EXPECT_NE(topology.warnings[0].find("0000:19:00.0"), std::string::npos) << topology.warnings[0];
  EXPECT_EQ(topology.find("GPU1")->memory_bytes, 0u);
  EXPECT_EQ(topology.find("GPU1")->model, "Tesla T4");
  EXPECT_FALSE(topology.find("GPU1")->lost);
}

TEST(TopologyNvml, LibraryMissingOptionalSymbolsWarnsOnceAndKeepsTheRest) {
  auto gpus = g4dn_gpus();
  gpus[0]["mig_mode"] = 1;
  Scenario scenario(nlohmann::json{{"gpus", gpus}});
  const Topology topology = discover("g4dnmetal.xml", FAKE_NVML_MISSING_SYMBOL_PATH);
  ASSERT_EQ(topology.warnings.size(), 1u) << warnings_of(topology);
  EXPECT_NE(topology.warnings[0].find("nvmlDeviceGetMigMode"), std::string::npos) << topology.warnings[0];
  EXPECT_NE(topology.warnings[0].find("nvmlDeviceGetNvLinkRemotePciInfo_v2"), std::string::npos);
  EXPECT_EQ(topology.warnings[0].find("nvmlDeviceGetRunningProcessDetailList"), std::string::npos)
      << "GPU accounting's symbol is not topology's concern";
  EXPECT_FALSE(topology.find("GPU0")->mig_enabled.has_value());
  EXPECT_EQ(topology.find("GPU0")->model, "Tesla T4");
}

TEST(TopologyNvml, LibraryThatIsNotNvmlWarnsOnceAndKeepsTheTopology) {
  const Topology topology = discover("g4dnmetal.xml", "libm.so.6");
  ASSERT_EQ(topology.warnings.size(), 1u) << warnings_of(topology);
  EXPECT_NE(topology.warnings[0].find("nvmlInit_v2"), std::string::npos) << topology.warnings[0];
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 8u);
}

TEST(TopologyNvml, AbsentLibraryWarnsOnceAndKeepsTheTopology) {
  const Topology topology = discover("g4dnmetal.xml", "/nonexistent/libnvidia-ml.so.1");
  ASSERT_EQ(topology.warnings.size(), 1u) << warnings_of(topology);
  EXPECT_NE(topology.warnings[0].find("/nonexistent/libnvidia-ml.so.1"), std::string::npos);
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 8u);
}

TEST(TopologyNvml, DriverNotLoadedWarnsOnce) {
  Scenario scenario(nlohmann::json{{"init", "DRIVER_NOT_LOADED"}});
  const Topology topology = discover("g4dnmetal.xml", FAKE_NVML_PATH);
  ASSERT_EQ(topology.warnings.size(), 1u) << warnings_of(topology);
  EXPECT_NE(topology.warnings[0].find("Driver Not Loaded"), std::string::npos) << topology.warnings[0];
}

TEST(TopologyNvml, GpuUnknownToTheTopologyIsNamed) {
  auto gpus = g4dn_gpus();
  gpus.push_back({{"bus_id", "00000000:AA:00.0"}, {"uuid", "GPU-ffffffff-0000-0000-0000-000000000000"}});
  Scenario scenario(nlohmann::json{{"gpus", gpus}});
  const Topology topology = discover("g4dnmetal.xml", FAKE_NVML_PATH);
  ASSERT_EQ(topology.warnings.size(), 1u) << warnings_of(topology);
  EXPECT_NE(topology.warnings[0].find("00000000:AA:00.0"), std::string::npos) << topology.warnings[0];
}

}  // namespace
}  // namespace tally::collectors
