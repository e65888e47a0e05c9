#pragma once
// The one filesystem-root seam for /proc and /sys: every parser of kernel files reads through an FsRoot, so it runs
// against a saved capture of another node (tests, `tallyctl topo --sysfs-root`) exactly as against the live host.
// "Nothing there" (absent, unreadable, a directory where a file was expected) is std::nullopt: callers decide
// whether that deserves a warning.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tally {

class FsRoot {
 public:
  explicit FsRoot(std::filesystem::path root = "/") : root_(std::move(root)) {}

  const std::filesystem::path& root() const { return root_; }
  bool is_host() const { return root_ == "/"; }
  // `relative` is a path such as "sys/bus/pci/devices" or "proc/1/stat"; a leading '/' is ignored.
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

}  // namespace tally
