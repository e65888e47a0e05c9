#include "tests/support/tallyd_process.hpp"

#include <fstream>
#include <iterator>

#include <fmt/format.h>

namespace tally::test {
namespace {
int g_state_dirs = 0;  // each config its own state directory: agents of one test never share a checkpoint
}  // namespace

std::string test_config(std::uint32_t heartbeat_ms, std::uint32_t usage_ms, const std::string& extra,
                        std::uint32_t snapshot_ms) {
  // A test's agent stays off the node's own registration and control sockets (/run/tally), its pinned probes and GPU
  // policy (/sys/fs/bpf/tally, /sys/fs/bpf/tally-policy) and its state (/var/lib/tally) unless the test configures
  // them with paths of its own. A fresh state directory
  // per config: a test that restarts an agent on the same state names its own.
  const bool has_metering = extra.find("[metering]") != std::string::npos;
  const bool has_probes = extra.find("[probes]") != std::string::npos;
  const bool has_state = extra.find("state_dir") != std::string::npos;
  const bool has_control = extra.find("control_socket") != std::string::npos;
  const bool has_partitioning = extra.find("[partitioning]") != std::string::npos;
  static const TempDir state;  // one per test process, removed at exit
  const std::string instance = std::to_string(++g_state_dirs);
  return fmt::format(
      "[agent]\nnode_id = \"test-node\"\nlog_level = \"debug\"\n{}{}\n"
      "[feed]\nbind = [\"tcp://127.0.0.1:*\"]\nheartbeat_interval_ms = {}\nusage_interval_ms = {}\n{}\n{}{}{}{}",
      has_state ? "" : fmt::format("state_dir = \"{}\"\n", (state / ("state-" + instance)).string()),
      has_control ? "" : fmt::format("control_socket = \"{}\"\n", (state / ("control-" + instance + ".sock")).string()),
      heartbeat_ms, usage_ms, snapshot_ms == 0 ? "" : fmt::format("snapshot_interval_ms = {}\n", snapshot_ms),
      has_metering ? "" : "[metering]\nenabled = false\n\n", has_probes ? "" : "[probes]\npin_dir = \"\"\n\n",
      has_partitioning ? "" : "[partitioning]\npin_dir = \"\"\n\n", extra);
}

TallydProcess::TallydProcess(const std::string& config_text, std::vector<std::string> extra_args,
                             std::map<std::string, std::string> extra_env) {
  dir_.write("tally.toml", config_text);
  std::vector<std::string> argv{TALLYD_PATH, "--config", config_path().string()};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  extra_env.emplace("NOTIFY_SOCKET", notify_.path());
  extra_env.emplace("JOURNAL_STREAM", "");  // log to stderr, where tests read it
  process_ = std::make_unique<Process>(std::move(argv), std::move(extra_env));
}

std::string TallydProcess::control_socket() const {
  std::ifstream in(config_path());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  constexpr std::string_view key = "control_socket = \"";
  const auto start = text.find(key);
  if (start == std::string::npos) return {};
  const auto begin = start + key.size();
  return text.substr(begin, text.find('"', begin) - begin);
}

std::optional<std::string> TallydProcess::wait_ready(std::chrono::milliseconds deadline) {
  auto ready = notify_.wait_for("READY=1", deadline);
  if (!ready) return std::nullopt;
  auto status = notify_field(*ready, "STATUS");
  if (!status) return std::nullopt;
  return bound_endpoint_from_status(*status);
}

std::optional<std::string> bound_endpoint_from_status(const std::string& status) {
  constexpr std::string_view marker = "feed bound to ";
  const auto start = status.find(marker);
  if (start == std::string::npos) return std::nullopt;
  const auto begin = start + marker.size();
  const auto end = status.find_first_of(",; ", begin);
  return status.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

}  // namespace tally::test
