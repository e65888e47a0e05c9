#pragma once
// The real tallyd binary under test: started with a config file written into a temp dir, a test NOTIFY_SOCKET,
// and (by default) its feed bound to an ephemeral port on 127.0.0.1. ready() waits for READY=1 and reads the
// bound endpoint back from the STATUS= line.

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tests/support/notify_socket.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

namespace tally::test {

// A config with the feed on an ephemeral port and fast timers; `extra` is appended (more sections). Metering is off
// unless `extra` has a [metering] section; probes are not pinned unless `extra` has a [probes] section (a test
// never leaves probes behind); the state lives in a fresh directory unless `extra` names a state_dir.
// `snapshot_ms` 0: the default snapshot interval.
std::string test_config(std::uint32_t heartbeat_ms = 50, std::uint32_t usage_ms = 50, const std::string& extra = "",
                        std::uint32_t snapshot_ms = 0);

class TallydProcess {
 public:
  // Writes `config_text` to <dir>/tally.toml and starts tallyd on it.
  explicit TallydProcess(const std::string& config_text, std::vector<std::string> extra_args = {},
                         std::map<std::string, std::string> extra_env = {});

  // Waits for READY=1; returns the first bound feed endpoint from STATUS (nullopt at the deadline).
  std::optional<std::string> wait_ready(std::chrono::milliseconds deadline = std::chrono::seconds(20));

  Process& process() { return *process_; }
  NotifySocket& notify() { return notify_; }
  const TempDir& dir() const { return dir_; }
  std::filesystem::path config_path() const { return dir_ / "tally.toml"; }
  void rewrite_config(const std::string& text) const { dir_.write("tally.toml", text); }
  // [agent] control_socket of its config (what `tallyctl plan --socket` takes).
  std::string control_socket() const;

 private:
  TempDir dir_;
  NotifySocket notify_;
  std::unique_ptr<Process> process_;
};

// Extracts the first endpoint after "feed bound to " in a STATUS line.
std::optional<std::string> bound_endpoint_from_status(const std::string& status);

}  // namespace tally::test
