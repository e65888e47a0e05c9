#pragma once
// Filesystem reads behind one root path, so that sysfs and procfs parsing runs against a saved capture of another
// node (tests, `tallyctl topo --sysfs-root`) exactly as it runs against the live host ("/").
// "Nothing there" (absent, unreadable, a directory where a file was expected) is std::nullopt: callers decide
// whether that deserves a warning.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tally::collectors {

class Sysfs {
 public:
  explicit Sysfs(std::filesystem::path root = "/") : root_(std::move(root)) {}

  const std::filesystem::path& root() const { return root_; }
  bool is_host() const { return root_ == "/"; }
  // `relative` is a path such as "sys/bus/pci/devices"; a leading '/' is ignored.
  std::filesystem::path path(std::string_view relative) const;

  bool exists(std::string_view relative) const;
  // The whole file, or nullopt when it is absent or cannot be read.
  std::optional<std::string> read_text(std::string_view relative) const;
  // The first line without surrounding white space.
  std::optional<std::string> read_line(std::string_view relative) const;
  // An unsigned number in decimal, or in hex with a 0x prefix ("0x030200" as in PCI `class`).
  std::optional<std::uint64_t> read_uint(std::string_view relative) const;
  // Entry names of a directory, sorted; empty when it is absent.
  std::vector<std::string> list(std::string_view relative) const;
  // Where a symbolic link points, as written (often relative: "../../devices/pci0000:00/0000:00:01.0/...").
  std::optional<std::string> link_target(std::string_view relative) const;

 private:
  std::filesystem::path root_;
};

// "0-3,8,10-11" -> {0,1,2,3,8,10,11}. Malformed pieces are skipped.
std::vector<std::uint32_t> parse_cpulist(std::string_view text);
// Kernel cpumask "00000000,0000ffff" (32-bit words, most significant first) -> set bits.
std::vector<std::uint32_t> parse_cpumask(std::string_view text);
// Inverse of parse_cpulist: sorted ids -> "0-3,8".
std::string format_cpulist(const std::vector<std::uint32_t>& cpus);

}  // namespace tally::collectors
