#include "collectors/topology/pci.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <vector>

namespace tally::collectors {
namespace {

template <typename T>
std::optional<T> parse_hex(std::string_view text, std::size_t max_digits) {
  if (text.empty() || text.size() > max_digits) return std::nullopt;
  std::uint32_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return static_cast<T>(value);
}

}  // namespace

std::optional<PciAddress> PciAddress::parse(std::string_view text) {
  // [domain:]bus:device.function
  const auto dot = text.rfind('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const auto function = parse_hex<std::uint8_t>(text.substr(dot + 1), 1);
  const std::string_view head = text.substr(0, dot);
  const auto last_colon = head.rfind(':');
  if (last_colon == std::string_view::npos) return std::nullopt;
  const auto device = parse_hex<std::uint8_t>(head.substr(last_colon + 1), 2);
  const std::string_view domain_bus = head.substr(0, last_colon);
  const auto colon = domain_bus.rfind(':');
  const auto bus =
      parse_hex<std::uint8_t>(colon == std::string_view::npos ? domain_bus : domain_bus.substr(colon + 1), 2);
  std::optional<std::uint32_t> domain = 0;
  if (colon != std::string_view::npos) domain = parse_hex<std::uint32_t>(domain_bus.substr(0, colon), 8);
  if (!function || !device || !bus || !domain || *device > 0x1f || *function > 7) return std::nullopt;
  return PciAddress{*domain, *bus, *device, *function};
}

std::string PciAddress::to_string() const {
  return fmt::format("{:04x}:{:02x}:{:02x}.{:x}", domain, bus, device, function);
}

std::optional<PciAddress> last_pci_address_in_path(std::string_view path) {
  while (!path.empty()) {
    const auto slash = path.rfind('/');
    const std::string_view component = slash == std::string_view::npos ? path : path.substr(slash + 1);
    // Only full "DDDD:BB:DD.F" components: "pci0000:00" (a root bus) or "net" are not functions.
    if (component.size() == 12 && component[4] == ':') {
      if (auto address = PciAddress::parse(component)) return address;
    }
    if (slash == std::string_view::npos) break;
    path = path.substr(0, slash);
  }
  return std::nullopt;
}

std::string_view to_string(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::gpu:
      return "gpu";
    case DeviceKind::accelerator:
      return "accelerator";
    case DeviceKind::nic:
      return "nic";
    case DeviceKind::nvswitch:
      return "nvswitch";
    case DeviceKind::nvme:
      return "nvme";
    case DeviceKind::display:
      return "display";
    case DeviceKind::other:
      return "other";
  }
  return "other";
}

bool is_display_only_vendor(std::uint16_t vendor_id) {
  // BMC and onboard display chips, and the virtual display adapters of hypervisors.
  static constexpr std::array<std::uint16_t, 12> kDisplayOnly = {
      0x1a03,  // ASPEED (AST2400/2500/2600 BMC)
      0x102b,  // Matrox (G200e on Dell, HPE, Lenovo servers)
      0x19e5,  // Huawei Hi171x BMC display (its Ascend NPUs are class 0x1200, not display)
      0x126f,  // Silicon Motion
      0x1013,  // Cirrus Logic (QEMU cirrus)
      0x1234,  // QEMU/Bochs VGA
      0x15ad,  // VMware SVGA
      0x1af4,  // virtio-gpu
      0x1b36,  // Red Hat QXL
      0x80ee,  // VirtualBox
      0x1414,  // Microsoft Hyper-V
      0x18ca,  // XGI
  };
  return std::find(kDisplayOnly.begin(), kDisplayOnly.end(), vendor_id) != kDisplayOnly.end();
}

DeviceKind classify_pci_function(std::uint16_t class_code, std::uint16_t vendor_id) {
  switch (class_code) {
    case 0x0300:
    case 0x0302:
    case 0x0380:
      return is_display_only_vendor(vendor_id) ? DeviceKind::display : DeviceKind::gpu;
    case 0x1200:
    case 0x0b40:
      return DeviceKind::accelerator;
    case 0x0108:
      return DeviceKind::nvme;
    case 0x0680:
    case 0x0604:
      return vendor_id == kVendorNvidia ? DeviceKind::nvswitch : DeviceKind::other;
    default:
      break;
  }
  if ((class_code >> 8) == 0x02) return DeviceKind::nic;
  if ((class_code >> 8) == 0x03) return DeviceKind::display;  // 0x0301 XGA and the like
  return DeviceKind::other;
}

}  // namespace tally::collectors
