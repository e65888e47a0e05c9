// On this machine, `tallyctl topo --json` agrees with `numactl -H` and `lscpu`: NUMA nodes, their CPUs and
// memory, and the online CPUs.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "agent/base/fs_root.hpp"
#include "collectors/topology/cpulist.hpp"
#include "tests/collectors/topology/find_program.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

std::string run(const std::vector<std::string>& argv) {
  auto result = run_command(argv, 60s, {{"LC_ALL", "C"}});
  EXPECT_TRUE(result.status.exited && result.status.code == 0) << argv[0] << ":\n" << result.output;
  return result.output;
}

nlohmann::json tallyctl_topo() {
  // NVML would only add GPU details; keep this test about CPUs and NUMA on any machine.
  auto result = run_command({TALLYCTL_PATH, "topo", "--json", "--no-nvml"}, 60s);
  EXPECT_TRUE(result.status.exited && result.status.code == 0) << result.output;
  // Warnings go to stderr (merged into output here): the JSON document starts at the first '{' line.
  const auto start = result.output.find("{\n");
  EXPECT_NE(start, std::string::npos) << result.output;
  return nlohmann::json::parse(result.output.substr(start == std::string::npos ? 0 : start), nullptr, false);
}

struct NumactlNode {
  std::vector<std::uint32_t> cpus;
  std::uint64_t size_mb = 0;
};

std::map<std::uint32_t, NumactlNode> parse_numactl(const std::string& text) {
  std::map<std::uint32_t, NumactlNode> nodes;
  std::istringstream lines(text);
  std::string line;
  static const std::regex kCpus(R"(^node (\d+) cpus:(.*)$)");
  static const std::regex kSize(R"(^node (\d+) size: (\d+) MB$)");
  std::smatch match;
  while (std::getline(lines, line)) {
    if (std::regex_match(line, match, kCpus)) {
      auto& node = nodes[static_cast<std::uint32_t>(std::stoul(match[1]))];
      std::istringstream ids(match[2].str());
      std::uint32_t id = 0;
      while (ids >> id) node.cpus.push_back(id);
    } else if (std::regex_match(line, match, kSize)) {
      nodes[static_cast<std::uint32_t>(std::stoul(match[1]))].size_mb = std::stoull(match[2]);
    }
  }
  return nodes;
}

std::map<std::string, std::string> parse_lscpu(const std::string& text) {
  std::map<std::string, std::string> fields;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const auto value = line.find_first_not_of(' ', colon + 1);
    fields[line.substr(0, colon)] = value == std::string::npos ? "" : line.substr(value);
  }
  return fields;
}

TEST(TopologyHost, AgreesWithNumactl) {
  const auto numactl = find_program("numactl");
  if (!numactl) GTEST_SKIP() << "needs numactl (Debian package numactl)";
  const auto output = run({*numactl, "-H"});
  if (output.find("No NUMA available") != std::string::npos) GTEST_SKIP() << "no NUMA support in this kernel";
  const auto expected = parse_numactl(output);
  ASSERT_FALSE(expected.empty()) << output;
  const auto topo = tallyctl_topo();
  ASSERT_FALSE(topo.is_discarded());
  ASSERT_EQ(topo["numa_nodes"].size(), expected.size()) << output;
  for (const auto& node : topo["numa_nodes"]) {
    const auto id = node["os_index"].get<std::uint32_t>();
    ASSERT_TRUE(expected.contains(id)) << "NUMA node " << id << " not in numactl -H:\n" << output;
    EXPECT_EQ(collectors::parse_cpulist(node["cpus"].get<std::string>()), expected.at(id).cpus) << "node " << id;
    // numactl prints MemTotal of the node in MiB, rounded down.
    EXPECT_EQ(std::stoull(node["memory_bytes"].get<std::string>()) >> 20, expected.at(id).size_mb) << "node " << id;
  }
}

TEST(TopologyHost, AgreesWithLscpu) {
  const auto lscpu = find_program("lscpu");
  if (!lscpu) GTEST_SKIP() << "needs lscpu (Debian package util-linux)";
  const auto fields = parse_lscpu(run({*lscpu}));
  const auto topo = tallyctl_topo();
  ASSERT_FALSE(topo.is_discarded());
  ASSERT_TRUE(fields.contains("On-line CPU(s) list"));
  EXPECT_EQ(collectors::parse_cpulist(topo["cpus"].get<std::string>()),
            collectors::parse_cpulist(fields.at("On-line CPU(s) list")));
  EXPECT_EQ(topo["cpu_count"].get<std::size_t>(), collectors::parse_cpulist(fields.at("On-line CPU(s) list")).size());
  if (fields.contains("NUMA node(s)")) {
    EXPECT_EQ(topo["numa_nodes"].size(), std::stoul(fields.at("NUMA node(s)")));
    for (const auto& node : topo["numa_nodes"]) {
      const std::string key = "NUMA node" + std::to_string(node["os_index"].get<int>()) + " CPU(s)";
      if (!fields.contains(key)) continue;  // CPU-less nodes are not listed by lscpu
      EXPECT_EQ(collectors::parse_cpulist(node["cpus"].get<std::string>()), collectors::parse_cpulist(fields.at(key)))
          << key;
    }
  }
  if (fields.contains("Architecture")) {
    EXPECT_EQ(topo["architecture"], fields.at("Architecture"));
  }
}

TEST(TopologyHost, TextOutputShowsTheTreeAndLegend) {
  auto result = run_command({TALLYCTL_PATH, "topo", "--no-nvml"}, 60s);
  ASSERT_TRUE(result.status.exited && result.status.code == 0) << result.output;
  EXPECT_NE(result.output.find("Node (host):"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("NUMA 0: CPUs"), std::string::npos) << result.output;
}

TEST(TallyctlTopo, Dgx2PcieMatrixLikeNvidiaSmiTopoMp) {
  auto result = run_command(
      {TALLYCTL_PATH, "topo", "--pcie", "--from-xml", std::string(TALLY_TOPOLOGY_DATA) + "/nvidiaDGX2.xml"}, 60s);
  ASSERT_TRUE(result.status.exited && result.status.code == 0) << result.output;
  // GPU0's row: X, then GPU1 PIX, GPU2-3 PXB, GPU4-7 NODE, GPU8-15 SYS.
  static const std::regex kRow(
      R"(GPU0 +X +PIX +PXB +PXB +NODE +NODE +NODE +NODE +SYS +SYS +SYS +SYS +SYS +SYS +SYS +SYS )");
  EXPECT_TRUE(std::regex_search(result.output, kRow)) << result.output;
  EXPECT_EQ(result.output.find("NV6"), std::string::npos);
}

TEST(TallyctlTopo, Dgx2NvlinkMatrixLikeNvidiaSmiTopoM) {
  auto result =
      run_command({TALLYCTL_PATH, "topo", "--from-xml", std::string(TALLY_TOPOLOGY_DATA) + "/nvidiaDGX2.xml"}, 60s);
  ASSERT_TRUE(result.status.exited && result.status.code == 0) << result.output;
  static const std::regex kRow(R"(GPU0 +X( +NV6){15} )");
  EXPECT_TRUE(std::regex_search(result.output, kRow)) << result.output;
}

TEST(TallyctlTopo, SysfsRootJson) {
  auto result = run_command({TALLYCTL_PATH, "topo", "--json", "--sysfs-root",
                             std::string(TALLY_TOPOLOGY_CAPTURES) + "/32intel64-2p8co2t+8ve"},
                            60s);
  ASSERT_TRUE(result.status.exited && result.status.code == 0) << result.output;
  const auto json = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << result.output;
  EXPECT_EQ(json["cpu_count"], 32);
  EXPECT_EQ(json["numa_nodes"].size(), 2u);
}

TEST(TallyctlTopo, UnreadableXmlExitsOneWithOneLineNamingIt) {
  auto result =
      run_command({TALLYCTL_PATH, "topo", "--from-xml", std::string(TALLY_SOURCE_DIR) + "/CMakeLists.txt"}, 60s);
  ASSERT_TRUE(result.status.exited) << "crashed: " << result.output;
  EXPECT_EQ(result.status.code, 1) << result.output;
  EXPECT_NE(result.output.find("tallyctl topo: hwloc cannot"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("CMakeLists.txt"), std::string::npos) << result.output;
}

TEST(TallyctlTopo, NvmlLibraryOptionJoinsTheFakeToACapture) {
  TempDir dir;
  const auto scenario = dir.write("scenario.json", R"({"gpus": [
      {"bus_id": "00000000:18:00.0", "uuid": "GPU-from-fake-nvml", "name": "Tesla T4", "memory_total": 16106127360,
       "mig_mode": 1, "p2p_peers": ["00000000:19:00.0"]},
      {"bus_id": "00000000:19:00.0", "uuid": "GPU-second", "name": "Tesla T4", "memory_total": 1}]})");
  auto result = run_command({TALLYCTL_PATH, "topo", "--json", "--from-xml",
                             std::string(TALLY_TOPOLOGY_DATA) + "/g4dnmetal.xml", "--nvml-library", FAKE_NVML_PATH},
                            60s, {{"TALLY_FAKE_NVML_SCENARIO", scenario.string()}});
  ASSERT_TRUE(result.status.exited && result.status.code == 0) << result.output;
  const auto json = nlohmann::json::parse(result.output, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << result.output;
  const auto& devices = json["devices"];
  ASSERT_EQ(devices[0]["label"], "GPU0");
  EXPECT_EQ(devices[0]["uuid"], "GPU-from-fake-nvml");
  EXPECT_EQ(devices[0]["memory_bytes"], "16106127360");  // proto3 JSON prints 64-bit integers as strings
  EXPECT_EQ(devices[0]["mig_enabled"], true);
  EXPECT_FALSE(devices[1].contains("mig_enabled")) << devices[1].dump();  // NVML: MIG not supported
  EXPECT_EQ(devices[2]["memory_bytes"], "0");  // GPU2 unknown to this scenario: hwloc's view only
  std::map<std::pair<std::string, std::string>, nlohmann::json> links;
  for (const auto& link : json["links"]) links[{link["from"], link["to"]}] = link;
  ASSERT_TRUE(links.contains({"GPU0", "GPU1"})) << json["links"].dump();
  EXPECT_EQ(links.at({"GPU0", "GPU1"})["p2p_read"], true);
  EXPECT_EQ(links.at({"GPU1", "GPU0"})["p2p_read"], false);
  EXPECT_EQ(links.at({"GPU0", "GPU1"})["pcie"], "LINK_CLASS_PHB");
  EXPECT_FALSE(links.at({"GPU0", "GPU2"}).contains("p2p_read")) << "GPU2 was not asked: no answer, not a no";
}

}  // namespace
}  // namespace tally::test
