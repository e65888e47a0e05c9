#pragma once
// PCI addresses and the classification of PCI functions into the device kinds the topology model knows.

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tally::collectors {

struct PciAddress {
  std::uint32_t domain = 0;
  std::uint8_t bus = 0;
  std::uint8_t device = 0;
  std::uint8_t function = 0;

  auto operator<=>(const PciAddress&) const = default;

  // "0000:34:00.0" (sysfs, hwloc), "00000000:34:00.0" (NVML's 8-digit domain) or "34:00.0" (domain 0).
  static std::optional<PciAddress> parse(std::string_view text);
  // Always "DDDD:BB:DD.F", lower-case hex, as sysfs names it.
  std::string to_string() const;
};

// Finds the last PCI address among the '/'-separated components of a sysfs link target such as
// "../../devices/pci0000:00/0000:00:01.1/0000:02:00.0/net/eth0" -> 0000:02:00.0.
std::optional<PciAddress> last_pci_address_in_path(std::string_view path);

enum class DeviceKind : std::uint8_t {
  gpu,          // graphics/compute processor: 0x0300 (not from a display-only vendor), 0x0302, 0x0380
  accelerator,  // processing accelerator 0x1200, co-processor 0x0b40 (NEC Vector Engine, Xeon Phi, QAT ...)
  nic,          // network controller 0x02xx
  nvswitch,     // NVIDIA NVSwitch (0x0680 or 0x0604 from vendor 0x10de)
  nvme,         // 0x0108
  display,      // onboard/BMC display controller (ASPEED, Matrox ...): not an accelerator
  other,
};

std::string_view to_string(DeviceKind kind);

// True for vendors whose 0x0300/0x0380 functions are display controllers only (BMC, onboard, virtual).
bool is_display_only_vendor(std::uint16_t vendor_id);

// `class_code` is the 16-bit class/subclass (0x0302), as hwloc reports it. `vendor_id` 0 means unknown (a capture
// whose sysfs kept only `class`): a 0x0300 function of unknown vendor counts as a GPU.
DeviceKind classify_pci_function(std::uint16_t class_code, std::uint16_t vendor_id);

inline constexpr std::uint16_t kVendorNvidia = 0x10de;

}  // namespace tally::collectors
