// PCI addresses, PCI class classification and sysfs reads behind a root.
#include <gtest/gtest.h>

#include <filesystem>

#include "collectors/topology/pci.hpp"
#include "agent/base/fs_root.hpp"
#include "collectors/topology/cpulist.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::collectors {
namespace {

TEST(PciAddress, ParsesSysfsNvmlAndShortForms) {
  const auto sysfs = PciAddress::parse("0000:34:00.0");
  ASSERT_TRUE(sysfs);
  EXPECT_EQ(sysfs->bus, 0x34);
  EXPECT_EQ(sysfs->to_string(), "0000:34:00.0");
  const auto nvml = PciAddress::parse("00000000:BE:00.0");
  ASSERT_TRUE(nvml);
  EXPECT_EQ(nvml->to_string(), "0000:be:00.0");
  const auto power = PciAddress::parse("0035:05:00.0");
  ASSERT_TRUE(power);
  EXPECT_EQ(power->domain, 0x35u);
  EXPECT_EQ(PciAddress::parse("4d:00.1")->to_string(), "0000:4d:00.1");
  EXPECT_FALSE(PciAddress::parse("pci0000:00"));
  EXPECT_FALSE(PciAddress::parse("0000:34:20.0"));  // device > 0x1f
  EXPECT_FALSE(PciAddress::parse("0000:34:00.8"));  // function > 7
  EXPECT_FALSE(PciAddress::parse(""));
  EXPECT_LT(*PciAddress::parse("0000:34:00.0"), *PciAddress::parse("0000:36:00.0"));
}

TEST(PciAddress, FindsTheFunctionInASysfsLinkTarget) {
  EXPECT_EQ(last_pci_address_in_path("../../devices/pci0000:00/0000:00:01.1/0000:02:00.0/net/eth0")->to_string(),
            "0000:02:00.0");
  EXPECT_EQ(last_pci_address_in_path("../../../0000:82:00.0")->to_string(), "0000:82:00.0");
  EXPECT_FALSE(last_pci_address_in_path("../../devices/virtual/net/lo"));
}

TEST(PciClass, AcceleratorsOfEveryVendorByClass) {
  EXPECT_EQ(classify_pci_function(0x0302, 0x10de), DeviceKind::gpu);          // NVIDIA V100/H100
  EXPECT_EQ(classify_pci_function(0x0300, 0x10de), DeviceKind::gpu);          // NVIDIA T4 is 0x0302; some GPUs are VGA
  EXPECT_EQ(classify_pci_function(0x0380, 0x1002), DeviceKind::gpu);          // AMD Instinct
  EXPECT_EQ(classify_pci_function(0x0380, 0x8086), DeviceKind::gpu);          // Intel Data Center GPU Max
  EXPECT_EQ(classify_pci_function(0x1200, 0x1da3), DeviceKind::accelerator);  // Habana Gaudi
  EXPECT_EQ(classify_pci_function(0x0b40, 0x1bcf), DeviceKind::accelerator);  // NEC Vector Engine
  EXPECT_EQ(classify_pci_function(0x0300, 0), DeviceKind::gpu);  // vendor unknown (sysfs kept only `class`)
  EXPECT_EQ(classify_pci_function(0x0207, 0x15b3), DeviceKind::nic);
  EXPECT_EQ(classify_pci_function(0x0200, 0x1d0f), DeviceKind::nic);
  EXPECT_EQ(classify_pci_function(0x0108, 0x144d), DeviceKind::nvme);
  EXPECT_EQ(classify_pci_function(0x0680, 0x10de), DeviceKind::nvswitch);
  EXPECT_EQ(classify_pci_function(0x0604, 0x1000), DeviceKind::other);
}

TEST(PciClass, BmcDisplayControllersAreNotAccelerators) {
  EXPECT_EQ(classify_pci_function(0x0300, 0x1a03), DeviceKind::display);  // ASPEED
  EXPECT_EQ(classify_pci_function(0x0300, 0x102b), DeviceKind::display);  // Matrox G200e
  EXPECT_EQ(classify_pci_function(0x0380, 0x1a03), DeviceKind::display);
  EXPECT_EQ(classify_pci_function(0x0300, 0x1234), DeviceKind::display);  // QEMU VGA
}

TEST(Cpulist, ParsesAndFormatsKernelLists) {
  EXPECT_EQ(parse_cpulist("0-3,8,10-11\n"), (std::vector<std::uint32_t>{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_EQ(parse_cpulist(""), std::vector<std::uint32_t>{});
  EXPECT_EQ(parse_cpulist("x,2"), std::vector<std::uint32_t>{2});
  EXPECT_EQ(format_cpulist({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(parse_cpumask("0000,00000000,00000000,00000000,00000000,0000ffff"), parse_cpulist("0-15"));
  EXPECT_EQ(parse_cpumask("00000001,00000003"), (std::vector<std::uint32_t>{0, 1, 32}));
}

TEST(FsRoot, ReadsBelowItsRootAndTreatsUnreadableAsAbsent) {
  test::TempDir dir;
  dir.write("class", "0x030200\n");
  dir.write("numa_node", "-1\n");
  std::filesystem::create_directory(dir / "vendor");  // a directory where a file is expected: cannot be read
  const FsRoot sysfs(dir.path());
  EXPECT_EQ(sysfs.read_uint("/class"), 0x030200u);
  EXPECT_EQ(sysfs.read_line("numa_node"), "-1");
  EXPECT_FALSE(sysfs.read_uint("numa_node"));  // not unsigned
  EXPECT_FALSE(sysfs.read_text("vendor"));
  EXPECT_FALSE(sysfs.read_text("absent"));
  EXPECT_TRUE(sysfs.list("absent").empty());
  EXPECT_EQ(sysfs.list(""), (std::vector<std::string>{"class", "numa_node", "vendor"}));
}

}  // namespace
}  // namespace tally::collectors
