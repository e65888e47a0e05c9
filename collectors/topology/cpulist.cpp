#include "collectors/topology/cpulist.hpp"

#include <fmt/format.h>

#include "agent/base/text.hpp"

#include <algorithm>
#include <charconv>

namespace tally::collectors {
namespace {

std::optional<std::uint32_t> to_u32(std::string_view text, int base = 10) {
  std::uint32_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

}  // namespace

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
