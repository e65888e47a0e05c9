#pragma once
// Text that came from someone else (a client's display name, a segment header, a sysfs file): made safe to log and
// publish, or trimmed to what it says.

#include <string>
#include <string_view>

namespace tally {

// `text` up to its first NUL and at most `max_bytes`, with every byte outside printable ASCII (0x20-0x7e)
// replaced by '?'.
std::string printable_ascii(std::string_view text, std::size_t max_bytes = std::string_view::npos);

// `text` without leading and trailing spaces, tabs and line ends (sysfs and /proc values end in a newline).
std::string_view trim(std::string_view text);

}  // namespace tally
