#include "agent/base/fs_root.hpp"

#include "agent/base/files.hpp"
#include "agent/base/text.hpp"

#include <algorithm>
#include <charconv>
#include <system_error>

namespace tally {

std::filesystem::path FsRoot::path(std::string_view relative) const {
  while (!relative.empty() && relative.front() == '/') relative.remove_prefix(1);
  return root_ / relative;
}

bool FsRoot::exists(std::string_view relative) const {
  std::error_code ec;
  return std::filesystem::exists(path(relative), ec);
}

std::optional<std::string> FsRoot::read_text(std::string_view relative) const { return read_file(path(relative)); }

std::optional<std::string> FsRoot::read_line(std::string_view relative) const {
  auto text = read_text(relative);
  if (!text) return std::nullopt;
  std::string_view view(*text);
  view = view.substr(0, view.find('\n'));
  return std::string(trim(view));
}

std::optional<std::uint64_t> FsRoot::read_uint(std::string_view relative) const {
  auto line = read_line(relative);
  if (!line || line->empty()) return std::nullopt;
  std::string_view view(*line);
  int base = 10;
  if (view.starts_with("0x") || view.starts_with("0X")) {
    view.remove_prefix(2);
    base = 16;
  }
  std::uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(view.data(), view.data() + view.size(), value, base);
  if (ec != std::errc() || ptr != view.data() + view.size()) return std::nullopt;
  return value;
}

std::vector<std::string> FsRoot::list(std::string_view relative) const {
  std::vector<std::string> names;
  std::error_code ec;
  std::filesystem::directory_iterator it(path(relative), ec);
  if (ec) return names;
  for (const auto& entry : it) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::optional<std::string> FsRoot::link_target(std::string_view relative) const {
  std::error_code ec;
  auto target = std::filesystem::read_symlink(path(relative), ec);
  if (ec) return std::nullopt;
  return target.string();
}

}  // namespace tally
