#include "collectors/sysfs.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>
#include <system_error>

namespace tally::collectors {
namespace {

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

std::optional<std::uint32_t> to_u32(std::string_view text, int base = 10) {
  std::uint32_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

std::filesystem::path Sysfs::path(std::string_view relative) const {
  while (!relative.empty() && relative.front() == '/') relative.remove_prefix(1);
  return root_ / relative;
}

bool Sysfs::exists(std::string_view relative) const {
  std::error_code ec;
  return std::filesystem::exists(path(relative), ec);
}

std::optional<std::string> Sysfs::read_text(std::string_view relative) const {
  const std::filesystem::path file = path(relative);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return std::nullopt;  // absent, or a directory: unreadable
  std::ifstream in(file, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return std::move(text).str();
}

std::optional<std::string> Sysfs::read_line(std::string_view relative) const {
  auto text = read_text(relative);
  if (!text) return std::nullopt;
  std::string_view view(*text);
  view = view.substr(0, view.find('\n'));
  return std::string(trim(view));
}

std::optional<std::uint64_t> Sysfs::read_uint(std::string_view relative) const {
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

std::vector<std::string> Sysfs::list(std::string_view relative) const {
  std::vector<std::string> names;
  std::error_code ec;
  std::filesystem::directory_iterator it(path(relative), ec);
  if (ec) return names;
  for (const auto& entry : it) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::optional<std::string> Sysfs::link_target(std::string_view relative) const {
  std::error_code ec;
  auto target = std::filesystem::read_symlink(path(relative), ec);
  if (ec) return std::nullopt;
  return target.string();
}

std::vector<std::uint32_t> parse_cpulist(std::string_view text) {
  std::vector<std::uint32_t> cpus;
  text = trim(text);
  while (!text.empty()) {
    const auto comma = text.find(',');
    const std::string_view piece = trim(text.substr(0, comma));
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
    const auto dash = piece.find('-');
    const auto first = to_u32(piece.substr(0, dash));
    const auto last = dash == std::string_view::npos ? first : to_u32(piece.substr(dash + 1));
    if (!first || !last || *last < *first || *last - *first > 1'000'000) continue;
    for (std::uint32_t cpu = *first; cpu <= *last; ++cpu) cpus.push_back(cpu);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::vector<std::uint32_t> parse_cpumask(std::string_view text) {
  std::vector<std::string_view> words;
  text = trim(text);
  while (!text.empty()) {
    const auto comma = text.find(',');
    words.push_back(text.substr(0, comma));
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
  }
  std::vector<std::uint32_t> cpus;
  std::uint32_t base = 0;
  for (auto word = words.rbegin(); word != words.rend(); ++word, base += 32) {
    const auto bits = to_u32(trim(*word), 16);
    if (!bits) continue;
    for (std::uint32_t bit = 0; bit < 32; ++bit) {
      if (*bits & (1u << bit)) cpus.push_back(base + bit);
    }
  }
  return cpus;
}

std::string format_cpulist(const std::vector<std::uint32_t>& cpus) {
  std::string out;
  for (std::size_t i = 0; i < cpus.size();) {
    std::size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j == i ? fmt::format("{}", cpus[i]) : fmt::format("{}-{}", cpus[i], cpus[j]);
    i = j + 1;
  }
  return out;
}

}  // namespace tally::collectors
