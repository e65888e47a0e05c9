#pragma once
// The kernel's CPU list and mask formats, as sysfs writes them.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tally::collectors {

// "0-3,8,10-11" -> {0,1,2,3,8,10,11}. Malformed pieces are skipped.
std::vector<std::uint32_t> parse_cpulist(std::string_view text);
// Kernel cpumask "00000000,0000ffff" (32-bit words, most significant first) -> set bits.
std::vector<std::uint32_t> parse_cpumask(std::string_view text);
// Inverse of parse_cpulist: sorted ids -> "0-3,8".
std::string format_cpulist(const std::vector<std::uint32_t>& cpus);

}  // namespace tally::collectors
