#pragma once
// Text that came from someone else (a client's display name, a segment header, a sysfs file): made safe to log and
// publish, or trimmed to what it says.

#include <cstdint>
#include <string>
#include <string_view>

namespace tally {

// `text` up to its first NUL and at most `max_bytes`, with every byte outside printable ASCII (0x20-0x7e)
// replaced by '?'.
std::string printable_ascii(std::string_view text, std::size_t max_bytes = std::string_view::npos);

// Whether `text` is well-formed UTF-8: no overlong forms, surrogates or code points past U+10FFFF.
bool valid_utf8(std::string_view text);

// `text` as printable, valid UTF-8, losslessly: control bytes, DEL, the backslash and every byte that is not part of a
// well-formed UTF-8 sequence become \xNN (two hex digits); everything else is kept. Different inputs give different outputs, so
// names the kernel accepts (a cgroup may be called almost anything) stay apart and can go on the wire and into JSON.
std::string escape_bytes(std::string_view text);

// `text` without leading and trailing spaces, tabs and line ends (sysfs and /proc values end in a newline).
std::string_view trim(std::string_view text);

// A size for people, in binary units with one decimal: "0.0B", "512.0B", "1.5KiB", "80.0GiB".
std::string human_bytes(std::uint64_t bytes);

}  // namespace tally
