#pragma once
// Whole files, read and written in one piece. Writing replaces a file atomically: readers see the old contents or
// the new, never a mix, and with Durability::synced the new contents survive a crash of the machine once the call
// returns (temporary file, fsync, rename, fsync of the directory).

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "agent/base/result.hpp"

namespace tally {

// The whole file; nullopt when it is absent, not a regular file, or unreadable.
std::optional<std::string> read_file(const std::filesystem::path& path);

enum class Durability {
  atomic,  // rename over the old file: atomic against readers and process crashes (tmpfs, runtime state)
  synced,  // and fsync'ed: survives a power loss once written (state that bills depend on)
};

// Replaces `path` with `contents` (mode `mode`, default 0600), creating the parent directory if needed.
Result<void> write_file_atomically(const std::filesystem::path& path, std::string_view contents,
                                   Durability durability, unsigned mode = 0600);

}  // namespace tally
