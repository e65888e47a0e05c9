// Topology discovery on real captures (tests/data/topology/README.md): counts of NUMA nodes, CPUs, GPUs and NICs,
// each GPU's NUMA node, and the link matrix, checked two ways: against the labels read off lstopo's own rendering
// of the same capture (and NVIDIA's published `nvidia-smi topo -mp` for the DGX-2), and against an independent
// derivation from `lstopo-no-graphics --whole-io` output for every pair.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "collectors/topology/topology.hpp"
#include "tests/collectors/topology/find_program.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::collectors {
namespace {

using namespace std::chrono_literals;

const std::filesystem::path kData = TALLY_TOPOLOGY_DATA;
const std::filesystem::path kCaptures = TALLY_TOPOLOGY_CAPTURES;

Topology from_xml(const std::string& name) {
  DiscoveryOptions options;
  options.xml_file = kData / name;
  options.use_nvml = false;
  auto topology = discover_topology(options);
  EXPECT_TRUE(topology) << topology.error().message;
  return topology ? std::move(*topology) : Topology{};
}

Topology from_sysfs(const std::filesystem::path& root) {
  DiscoveryOptions options;
  options.sysfs_root = root;
  options.use_nvml = false;
  auto topology = discover_topology(options);
  EXPECT_TRUE(topology) << topology.error().message;
  return topology ? std::move(*topology) : Topology{};
}

std::int32_t index_of(const Topology& topology, const std::string& label) {
  const Device* device = topology.find(std::string_view(label));
  EXPECT_NE(device, nullptr) << label;
  return device == nullptr ? -1 : static_cast<std::int32_t>(device - topology.devices.data());
}

std::string link(const Topology& topology, const std::string& a, const std::string& b) {
  const auto ia = index_of(topology, a), ib = index_of(topology, b);
  if (ia < 0 || ib < 0) return "?";
  return std::string(to_string(classify_path(topology, ia, ib)));
}

std::uint32_t nvlinks(const Topology& topology, const std::string& a, const std::string& b) {
  const LinkMatrix& matrix = topology.links;
  std::size_t row = matrix.size(), column = matrix.size();
  for (std::size_t i = 0; i < matrix.size(); ++i) {
    const std::string& label = topology.devices[static_cast<std::size_t>(matrix.endpoints[i])].label;
    if (label == a) row = i;
    if (label == b) column = i;
  }
  EXPECT_LT(row, matrix.size()) << a;
  EXPECT_LT(column, matrix.size()) << b;
  return row < matrix.size() && column < matrix.size() ? matrix.nvlinks_at(row, column) : 0;
}

std::vector<std::string> labels(const Topology& topology, DeviceKind kind) {
  std::vector<std::string> out;
  for (const Device* device : topology.devices_of(kind)) out.push_back(device->label);
  return out;
}

std::vector<std::int32_t> gpu_numa_nodes(const Topology& topology) {
  std::vector<std::int32_t> out;
  for (const Device* gpu : topology.devices_of(DeviceKind::gpu)) out.push_back(gpu->numa_node);
  return out;
}

std::size_t rdma_nics(const Topology& topology) {
  std::size_t count = 0;
  for (const Device* nic : topology.devices_of(DeviceKind::nic)) count += nic->rdma ? 1 : 0;
  return count;
}

// ---- An independent reading of lstopo's text output ----------------------------------------------------------

struct LstopoNode {
  int parent = -1;
  std::string text;
};

class LstopoTree {
 public:
  LstopoTree(const std::string& lstopo, const std::string& input) {
    auto result = test::run_command({lstopo, "--input", input, "--whole-io", "-p", "--no-caches"}, 60s,
                                    {{"HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES", "1"}});
    EXPECT_TRUE(result.status.exited && result.status.code == 0) << result.output;
    std::vector<int> stack;  // node index per depth
    std::size_t start = 0;
    const std::string& out = result.output;
    while (start < out.size()) {
      auto end = out.find('\n', start);
      if (end == std::string::npos) end = out.size();
      const std::string line = out.substr(start, end - start);
      start = end + 1;
      const auto indent = line.find_first_not_of(' ');
      if (indent == std::string::npos) continue;
      const auto depth = static_cast<std::size_t>(indent / 2);
      stack.resize(std::min(stack.size(), depth));
      LstopoNode node;
      node.parent = stack.empty() ? -1 : stack.back();
      node.text = line.substr(indent);
      nodes_.push_back(node);
      stack.push_back(static_cast<int>(nodes_.size() - 1));
      static const std::regex kPci(R"(^PCI(\([^)]*\))? ((?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]) )");
      std::smatch match;
      if (std::regex_search(node.text, match, kPci)) {
        if (auto address = PciAddress::parse(match[2].str())) devices_[*address] = static_cast<int>(nodes_.size() - 1);
      }
      if (node.text.rfind("NUMANode P#", 0) == 0) ++cpu_numa_nodes_;
    }
  }

  bool has(const PciAddress& address) const { return devices_.contains(address); }

  // nvidia-smi's classes, from lstopo's tree: common PCIBridge (PIX if at most one bridge below it on each side,
  // PXB otherwise), common HostBridge (PHB), else NODE when both hang below the same NUMA node, else SYS.
  std::string classify(const PciAddress& a, const PciAddress& b) const {
    const auto path_a = io_path(devices_.at(a));
    const auto path_b = io_path(devices_.at(b));
    for (std::size_t i = 0; i < path_a.size(); ++i) {
      const auto in_b = std::find(path_b.begin(), path_b.end(), path_a[i]);
      if (in_b == path_b.end()) continue;
      if (nodes_[static_cast<std::size_t>(path_a[i])].text.rfind("HostBridge", 0) == 0) return "PHB";
      const auto below_b = static_cast<std::size_t>(in_b - path_b.begin());
      return std::max(i, below_b) <= 1 ? "PIX" : "PXB";
    }
    const int numa_a = numa(devices_.at(a)), numa_b = numa(devices_.at(b));
    return numa_a >= 0 && numa_a == numa_b ? "NODE" : "SYS";
  }

 private:
  // Bridges above a PCI line, nearest first (HostBridge last).
  std::vector<int> io_path(int node) const {
    std::vector<int> path;
    for (int up = nodes_[static_cast<std::size_t>(node)].parent; up >= 0;
         up = nodes_[static_cast<std::size_t>(up)].parent) {
      const std::string& text = nodes_[static_cast<std::size_t>(up)].text;
      if (text.rfind("PCIBridge", 0) != 0 && text.rfind("HostBridge", 0) != 0) break;
      path.push_back(up);
    }
    return path;
  }

  // The NUMA node (with CPUs) that is a direct child of the nearest ancestor having one.
  int numa(int node) const {
    for (int up = nodes_[static_cast<std::size_t>(node)].parent; up >= 0;
         up = nodes_[static_cast<std::size_t>(up)].parent) {
      std::vector<int> found;
      for (const LstopoNode& child : nodes_) {
        if (child.parent == up && child.text.rfind("NUMANode P#", 0) == 0)
          found.push_back(std::stoi(child.text.substr(11)));
      }
      if (found.size() == 1) return found.front();
      if (found.size() > 1) return -1;
    }
    if (cpu_numa_nodes_ == 1) {
      for (const LstopoNode& any : nodes_) {
        if (any.text.rfind("NUMANode P#", 0) == 0) return std::stoi(any.text.substr(11));
      }
    }
    return -1;
  }

  std::vector<LstopoNode> nodes_;
  std::map<PciAddress, int> devices_;
  int cpu_numa_nodes_ = 0;
};

// Every pair of the matrix, PCIe-only, against the lstopo derivation.
void expect_matrix_matches_lstopo(const Topology& topology, const std::string& input) {
  const auto program = test::find_program("lstopo-no-graphics");
  if (!program) GTEST_SKIP() << "needs lstopo-no-graphics (Debian package hwloc-nox)";
  const LstopoTree lstopo(*program, input);
  const LinkMatrix& matrix = topology.links;
  ASSERT_GT(matrix.size(), 0u);
  for (std::size_t row = 0; row < matrix.size(); ++row) {
    const Device& a = topology.devices[static_cast<std::size_t>(matrix.endpoints[row])];
    ASSERT_TRUE(lstopo.has(a.address)) << a.address.to_string() << " not in lstopo output";
    for (std::size_t column = 0; column < matrix.size(); ++column) {
      if (row == column) continue;
      const Device& b = topology.devices[static_cast<std::size_t>(matrix.endpoints[column])];
      EXPECT_EQ(std::string(to_string(matrix.pcie_at(row, column))), lstopo.classify(a.address, b.address))
          << a.label << " (" << a.address.to_string() << ") - " << b.label << " (" << b.address.to_string() << ")";
    }
  }
}

// ---- DGX-2 ------------------------------------------------------------------------------------------------------

TEST(TopologyCapture, Dgx2CountsAndNumaPlacement) {
  const Topology topology = from_xml("nvidiaDGX2.xml");
  EXPECT_EQ(topology.architecture, "x86_64");
  EXPECT_EQ(topology.numa_nodes.size(), 2u);
  EXPECT_EQ(topology.cpus, (std::vector<std::uint32_t>{0, 1, 24, 25}));  // trimmed to 4 PUs
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 16u);
  EXPECT_EQ(topology.devices_of(DeviceKind::nvswitch).size(), 12u);
  EXPECT_EQ(topology.devices_of(DeviceKind::nic).size(), 0u);
  EXPECT_EQ(gpu_numa_nodes(topology), (std::vector<std::int32_t>{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}));
  // Numbered in PCI bus order, as nvidia-smi does.
  EXPECT_EQ(topology.find("GPU0")->address.to_string(), "0000:34:00.0");
  EXPECT_EQ(topology.find("GPU1")->address.to_string(), "0000:36:00.0");
  EXPECT_EQ(topology.find("GPU8")->address.to_string(), "0000:b7:00.0");
  EXPECT_EQ(topology.find("GPU15")->address.to_string(), "0000:e7:00.0");
  EXPECT_TRUE(topology.warnings.empty()) << topology.warnings.front();
}

TEST(TopologyCapture, Dgx2MatchesNvidiaPublishedTopoMp) {
  const Topology topology = from_xml("nvidiaDGX2.xml");
  // NVIDIA's `nvidia-smi topo -mp` for a DGX-2 (GPUDirect Storage configuration guide), same bus ids.
  EXPECT_EQ(link(topology, "GPU0", "GPU1"), "PIX");
  EXPECT_EQ(link(topology, "GPU0", "GPU2"), "PXB");
  EXPECT_EQ(link(topology, "GPU0", "GPU4"), "NODE");
  EXPECT_EQ(link(topology, "GPU0", "GPU8"), "SYS");
  EXPECT_EQ(link(topology, "GPU8", "GPU9"), "PIX");
  EXPECT_EQ(link(topology, "GPU15", "GPU12"), "PXB");
}

TEST(TopologyCapture, Dgx2NvSwitchFabricGivesNv6BetweenAllGpus) {
  const Topology topology = from_xml("nvidiaDGX2.xml");
  // Each V100 has 6 NVLinks, one to each NVSwitch of its baseboard: nvidia-smi topo -m shows NV6 everywhere.
  EXPECT_EQ(nvlinks(topology, "GPU0", "GPU1"), 6u);
  EXPECT_EQ(nvlinks(topology, "GPU0", "GPU15"), 6u);
  EXPECT_EQ(topology.find("GPU3")->nvlinks.size(), 6u);
  for (const NvLink& nvlink : topology.find("GPU3")->nvlinks) EXPECT_EQ(nvlink.remote_kind, NvLinkPeerKind::nvswitch);
}

TEST(TopologyCapture, Dgx2MatrixMatchesLstopo) {
  expect_matrix_matches_lstopo(from_xml("nvidiaDGX2.xml"), (kData / "nvidiaDGX2.xml").string());
}

// ---- 4x H100 with ConnectX NICs, SNC4 ---------------------------------------------------------------------------

TEST(TopologyCapture, Ipa20CountsNumaAndNics) {
  const Topology topology = from_xml("ipa20.xml");
  EXPECT_EQ(topology.numa_nodes.size(), 8u);
  EXPECT_EQ(topology.cpus.size(), 224u);
  EXPECT_EQ(labels(topology, DeviceKind::gpu), (std::vector<std::string>{"GPU0", "GPU1", "GPU2", "GPU3"}));
  EXPECT_EQ(topology.find("GPU0")->address.to_string(), "0000:4e:00.0");
  EXPECT_EQ(topology.find("GPU3")->address.to_string(), "0000:db:00.0");
  EXPECT_EQ(topology.devices_of(DeviceKind::nic).size(), 6u);  // 2 onboard Broadcom + 4 ConnectX
  EXPECT_EQ(rdma_nics(topology), 4u);
  // lstopo: 4e under Group0/NUMANode P#3, 5f under P#1, cb under P#7, db under P#5.
  EXPECT_EQ(gpu_numa_nodes(topology), (std::vector<std::int32_t>{3, 1, 7, 5}));
  // The Matrox G200 BMC display is a display, not an accelerator; the QAT/DLB co-processors (0b40) are.
  ASSERT_EQ(topology.devices_of(DeviceKind::display).size(), 1u);
  EXPECT_EQ(topology.devices_of(DeviceKind::display).front()->vendor_id, 0x102b);
  EXPECT_EQ(topology.devices_of(DeviceKind::accelerator).size(), 4u);
}

TEST(TopologyCapture, Ipa20GpusShareASwitchWithTheirNic) {
  const Topology topology = from_xml("ipa20.xml");
  const Device* gpu0 = topology.find("GPU0");
  ASSERT_NE(gpu0->nearest_nic, -1);
  const Device& nic = topology.devices[static_cast<std::size_t>(gpu0->nearest_nic)];
  EXPECT_EQ(nic.address.to_string(), "0000:4d:00.0");  // mlx5_0, behind the same PCIe switch
  EXPECT_NE(std::find(nic.os_names.begin(), nic.os_names.end(), "mlx5_0"), nic.os_names.end());
  EXPECT_EQ(link(topology, "GPU0", nic.label), "PIX");
  EXPECT_EQ(link(topology, "GPU0", "GPU1"), "SYS");  // different (sub-)NUMA nodes
  EXPECT_EQ(nvlinks(topology, "GPU0", "GPU1"), 6u);  // 150 GB/s in hwloc's NVLinkBandwidth = 6 links
  EXPECT_EQ(topology.devices[static_cast<std::size_t>(topology.find("GPU3")->nearest_nic)].address.to_string(),
            "0000:da:00.0");
}

TEST(TopologyCapture, Ipa20MatrixMatchesLstopo) {
  expect_matrix_matches_lstopo(from_xml("ipa20.xml"), (kData / "ipa20.xml").string());
}

// ---- AWS g4dn.metal -----------------------------------------------------------------------------------------------

TEST(TopologyCapture, G4dnMetalCountsAndLinks) {
  const Topology topology = from_xml("g4dnmetal.xml");
  EXPECT_EQ(topology.numa_nodes.size(), 2u);
  EXPECT_EQ(topology.cpus.size(), 96u);
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 8u);
  EXPECT_EQ(gpu_numa_nodes(topology), (std::vector<std::int32_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(topology.devices_of(DeviceKind::nic).size(), 2u);  // EFA (RDMA) and ENA
  EXPECT_EQ(rdma_nics(topology), 1u);
  EXPECT_EQ(topology.find("GPU0")->uuid, "GPU-029490c8-a116-638b-7018-1a6b7a9002ef");  // from hwloc's XML
  // lstopo: 18 and 19 under two root ports of one host bridge; 35 under another host bridge of package 0.
  EXPECT_EQ(link(topology, "GPU0", "GPU1"), "PHB");
  EXPECT_EQ(link(topology, "GPU0", "GPU2"), "NODE");
  EXPECT_EQ(link(topology, "GPU0", "GPU4"), "SYS");
  EXPECT_EQ(nvlinks(topology, "GPU0", "GPU1"), 0u);  // T4: PCIe only
  const Device* gpu4 = topology.find("GPU4");
  EXPECT_EQ(topology.devices[static_cast<std::size_t>(gpu4->nearest_nic)].address.to_string(), "0000:c5:00.0");
}

TEST(TopologyCapture, G4dnMetalMatrixMatchesLstopo) {
  expect_matrix_matches_lstopo(from_xml("g4dnmetal.xml"), (kData / "g4dnmetal.xml").string());
}

// ---- POWER9 AC922 sysfs: another architecture, GPU memory as NUMA nodes -------------------------------------------

TEST(TopologyCapture, Power9GpuMemoryNumaNodes) {
  const Topology topology = from_sysfs(kCaptures / "nvidiagpunumanodes");
  EXPECT_EQ(topology.architecture, "ppc64le");
  EXPECT_EQ(topology.cpus.size(), 32u);
  ASSERT_EQ(topology.numa_nodes.size(), 8u);  // 0 and 8 with CPUs, 250-255 GPU memory
  std::vector<std::uint32_t> gpu_memory;
  for (const NumaNode& node : topology.numa_nodes) {
    if (node.gpu_memory) {
      gpu_memory.push_back(node.os_index);
      EXPECT_TRUE(node.cpus.empty());
    }
  }
  EXPECT_EQ(gpu_memory, (std::vector<std::uint32_t>{250, 251, 252, 253, 254, 255}));
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 6u);
  EXPECT_EQ(topology.devices_of(DeviceKind::nic).size(), 0u);
  EXPECT_EQ(gpu_numa_nodes(topology), (std::vector<std::int32_t>{0, 0, 0, 8, 8, 8}));
  // proc/driver/nvidia/gpus/<bus id>/numa_status
  EXPECT_EQ(topology.find("GPU0")->memory_numa_node, 255);
  EXPECT_EQ(topology.find("GPU5")->memory_numa_node, 250);
  EXPECT_EQ(topology.find("GPU0")->vendor_id, kVendorNvidia);  // known from /proc/driver/nvidia only
  EXPECT_EQ(link(topology, "GPU0", "GPU1"), "NODE");
  EXPECT_EQ(link(topology, "GPU0", "GPU3"), "SYS");
}

TEST(TopologyCapture, Power9CaptureWarnsOnceAboutWhatItsSysfsLacks) {
  const Topology topology = from_sysfs(kCaptures / "nvidiagpunumanodes");
  ASSERT_EQ(topology.warnings.size(), 1u);
  EXPECT_NE(topology.warnings[0].find("vendor"), std::string::npos) << topology.warnings[0];
  EXPECT_NE(topology.warnings[0].find("numa_node"), std::string::npos) << topology.warnings[0];
  EXPECT_NE(topology.warnings[0].find("0004:05:00.0"), std::string::npos) << topology.warnings[0];
}

TEST(TopologyCapture, Power9MatrixMatchesLstopo) {
  expect_matrix_matches_lstopo(from_sysfs(kCaptures / "nvidiagpunumanodes"),
                               (kCaptures / "nvidiagpunumanodes").string());
}

// ---- PCIe-switch node: 8 NEC Vector Engines and ConnectX-4 NICs ---------------------------------------------------

TEST(TopologyCapture, VectorEngineNodeAcceleratorsBehindSwitches) {
  const Topology topology = from_sysfs(kCaptures / "32intel64-2p8co2t+8ve");
  EXPECT_EQ(topology.numa_nodes.size(), 2u);
  EXPECT_EQ(topology.cpus.size(), 32u);
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 0u);
  EXPECT_EQ(labels(topology, DeviceKind::accelerator),
            (std::vector<std::string>{"ACC0", "ACC1", "ACC2", "ACC3", "ACC4", "ACC5", "ACC6", "ACC7"}));
  EXPECT_EQ(topology.devices_of(DeviceKind::nic).size(), 4u);  // 2 ConnectX-4 (0207) + 2 X722 Ethernet
  for (const Device* ve : topology.devices_of(DeviceKind::accelerator)) {
    EXPECT_EQ(ve->class_code, 0x0b40);
    EXPECT_EQ(ve->numa_node, 0);  // sysfs numa_node
  }
  EXPECT_EQ(link(topology, "ACC0", "ACC1"), "PIX");
  EXPECT_EQ(link(topology, "ACC0", "ACC4"), "NODE");
  // The ConnectX-4 behind ACC0's switch is its nearest NIC.
  EXPECT_EQ(topology.devices[static_cast<std::size_t>(topology.find("ACC0")->nearest_nic)].address.to_string(),
            "0000:1a:00.0");
  EXPECT_EQ(topology.find("ACC0")->link_width, 16u);  // sysfs current_link_width
  EXPECT_TRUE(topology.warnings.empty()) << topology.warnings.front();
}

TEST(TopologyCapture, VectorEngineNodeMatrixMatchesLstopo) {
  expect_matrix_matches_lstopo(from_sysfs(kCaptures / "32intel64-2p8co2t+8ve"),
                               (kCaptures / "32intel64-2p8co2t+8ve").string());
}

// ---- 2-NUMA node with ConnectX-3 (RDMA ports in sysfs), Xeon Phi, NVMe, ASPEED BMC display -----------------------

TEST(TopologyCapture, ConnectX3NodeRdmaPortsAndDisplay) {
  const Topology topology = from_sysfs(kCaptures / "32em64t-2n8c+1mic");
  EXPECT_EQ(topology.numa_nodes.size(), 2u);
  EXPECT_EQ(topology.cpus.size(), 16u);
  EXPECT_EQ(topology.devices_of(DeviceKind::gpu).size(), 0u);  // the ASPEED VGA is not a GPU
  ASSERT_EQ(topology.devices_of(DeviceKind::display).size(), 1u);
  EXPECT_EQ(topology.devices_of(DeviceKind::display).front()->vendor_id, 0x1a03);
  EXPECT_EQ(topology.devices_of(DeviceKind::accelerator).size(), 1u);  // Xeon Phi, class 0b40
  EXPECT_EQ(topology.devices_of(DeviceKind::nvme).size(), 1u);
  EXPECT_EQ(topology.devices_of(DeviceKind::nic).size(), 3u);
  ASSERT_EQ(rdma_nics(topology), 1u);
  const Device* mlx = nullptr;
  for (const Device* nic : topology.devices_of(DeviceKind::nic)) {
    if (nic->rdma) mlx = nic;
  }
  EXPECT_EQ(mlx->address.to_string(), "0000:82:00.0");
  EXPECT_NE(std::find(mlx->os_names.begin(), mlx->os_names.end(), "mlx4_0"), mlx->os_names.end());
  EXPECT_NE(std::find(mlx->os_names.begin(), mlx->os_names.end(), "ib0"), mlx->os_names.end());
  EXPECT_FALSE(mlx->rdma_rate.empty());
  EXPECT_FALSE(mlx->rdma_state.empty());
  EXPECT_EQ(mlx->numa_node, 1);
  EXPECT_EQ(link(topology, "ACC0", mlx->label), "PHB");
}

TEST(TopologyCapture, ConnectX3NodeMatrixMatchesLstopo) {
  expect_matrix_matches_lstopo(from_sysfs(kCaptures / "32em64t-2n8c+1mic"), (kCaptures / "32em64t-2n8c+1mic").string());
}

// ---- Bad input --------------------------------------------------------------------------------------------------

TEST(TopologyBadInput, XmlHwlocCannotReadIsAnErrorNamingTheFile) {
  test::TempDir dir;
  const auto garbage = dir.write("broken.xml", "<?xml version=\"1.0\"?>\n<topology><object type=\"Machine\"");
  DiscoveryOptions options;
  options.xml_file = garbage;
  options.use_nvml = false;
  auto topology = discover_topology(options);
  ASSERT_FALSE(topology);
  EXPECT_NE(topology.error().message.find("broken.xml"), std::string::npos) << topology.error().message;
  options.xml_file = dir / "absent.xml";
  EXPECT_FALSE(discover_topology(options));
}

TEST(TopologyBadInput, MissingSysfsRootIsAnErrorNamingIt) {
  DiscoveryOptions options;
  options.sysfs_root = "/nonexistent/sysfs-root";
  options.use_nvml = false;
  auto topology = discover_topology(options);
  ASSERT_FALSE(topology);
  EXPECT_NE(topology.error().message.find("/nonexistent/sysfs-root"), std::string::npos);
}

// A copy of a capture that a test may damage.
std::filesystem::path copy_capture(const test::TempDir& dir, const std::string& name) {
  const auto target = dir / name;
  std::filesystem::copy(kCaptures / name, target,
                        std::filesystem::copy_options::recursive | std::filesystem::copy_options::copy_symlinks);
  return target;
}

TEST(TopologyBadInput, PartialSysfsKeepsTheRestWithOneWarning) {
  test::TempDir dir;
  const auto root = copy_capture(dir, "32intel64-2p8co2t+8ve");
  std::filesystem::remove(root / "sys/bus/pci/devices/0000:1b:00.0/numa_node");
  std::filesystem::remove(root / "sys/bus/pci/devices/0000:1c:00.0/numa_node");
  const Topology topology = from_sysfs(root);
  ASSERT_EQ(topology.warnings.size(), 1u);
  EXPECT_NE(topology.warnings[0].find("numa_node (2 function(s), e.g. 0000:1b:00.0)"), std::string::npos)
      << topology.warnings[0];
  EXPECT_EQ(topology.devices_of(DeviceKind::accelerator).size(), 8u);
  EXPECT_EQ(topology.find("ACC0")->numa_node, 0);  // hwloc's locality stands in
}

TEST(TopologyBadInput, UnreadableSysfsFileIsNamedInTheWarning) {
  test::TempDir dir;
  const auto root = copy_capture(dir, "32intel64-2p8co2t+8ve");
  const auto file = root / "sys/bus/pci/devices/0000:1d:00.0/vendor";
  std::filesystem::remove(file);
  std::filesystem::create_directory(file);  // root reads any file; a directory cannot be read as one
  const Topology topology = from_sysfs(root);
  ASSERT_EQ(topology.warnings.size(), 1u);
  EXPECT_NE(topology.warnings[0].find("vendor (1 function(s), e.g. 0000:1d:00.0)"), std::string::npos)
      << topology.warnings[0];
  EXPECT_EQ(topology.devices_of(DeviceKind::accelerator).size(), 8u);
}

TEST(TopologyBadInput, SysfsWithoutPciDevicesWarnsAndKeepsNumaAndCpus) {
  test::TempDir dir;
  const auto root = copy_capture(dir, "32intel64-2p8co2t+8ve");
  std::filesystem::remove_all(root / "sys/bus/pci");
  const Topology topology = from_sysfs(root);
  EXPECT_EQ(topology.numa_nodes.size(), 2u);
  EXPECT_EQ(topology.cpus.size(), 32u);
  ASSERT_EQ(topology.warnings.size(), 1u);
  EXPECT_NE(topology.warnings[0].find("sys/bus/pci/devices is missing"), std::string::npos) << topology.warnings[0];
}

}  // namespace
}  // namespace tally::collectors
