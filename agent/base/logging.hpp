#pragma once
// One logger for the whole agent (spdlog). Levels mean (docs/operations.md): error = something the operator must
// fix, the agent keeps running without it; warn = degraded (a source missing, a bad input rejected); info = state
// changes (started, reloaded, endpoint bound); debug = per-tick detail; trace = per-message detail.

#include <optional>
#include <string_view>

#include <spdlog/common.h>

namespace tally {

// True when stderr is connected to the journal (systemd sets JOURNAL_STREAM to stderr's device:inode).
bool stderr_is_journal();

// Installs the default logger: journald when stderr_is_journal(), stderr otherwise.
void init_logging(spdlog::level::level_enum level);

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name);

}  // namespace tally
