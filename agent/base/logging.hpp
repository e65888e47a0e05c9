#pragma once
// One logger for the whole agent (spdlog). Levels mean (docs/operations.md): error = something the operator must
// fix, the agent keeps running without it; warn = degraded (a source missing, a bad input rejected); info = state
// changes (started, reloaded, endpoint bound); debug = per-tick detail; trace = per-message detail.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>
#include <string_view>

#include <spdlog/common.h>

namespace tally {

// True when stderr is connected to the journal (systemd sets JOURNAL_STREAM to stderr's device:inode).
bool stderr_is_journal();

// Installs the default logger: journald when stderr_is_journal(), stderr otherwise.
void init_logging(spdlog::level::level_enum level);

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name);

// An audit record (docs/operations.md): a journal entry with `fields` ("TALLY_DECISION=denied", ...) besides its
// MESSAGE and PRIORITY, so that `journalctl TALLY_BUDGET=team-a` finds it; off the journal (a terminal, tests) the
// message as one log line. Nothing below the logger's level is written.
void journal_entry(spdlog::level::level_enum level, const std::string& message, std::vector<std::string> fields);

// One log line per key (e.g. a uid) per window, however often the event repeats: what a local user can trigger at
// will (a refused registration) must not flood the journal. The first event of a key is logged at once; later ones
// within the window are counted and the next line says how many were not logged. Keys quiet for a window with no
// count left to tell are forgotten.
class LogThrottle {
 public:
  using Clock = std::chrono::steady_clock;
  explicit LogThrottle(Clock::duration window = std::chrono::seconds(10)) : window_(window) {}
  // nullopt: do not log this one. Otherwise log it, adding how many were suppressed since the last line (0: none).
  std::optional<std::uint64_t> admit(std::uint64_t key, Clock::time_point now = Clock::now());
  std::size_t keys() const { return keys_.size(); }

 private:
  struct Key {
    Clock::time_point logged;
    std::uint64_t suppressed = 0;
  };
  Clock::duration window_;
  std::map<std::uint64_t, Key> keys_;
  Clock::time_point swept_{};
};

}  // namespace tally
