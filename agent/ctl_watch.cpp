// tallyctl watch: subscribe to a tallyd feed and print one line per message, plus notices for gaps and restarts.

#include <csignal>
#include <cstdio>
#include <memory>
#include <set>

#include <fmt/format.h>
#include <zmq.hpp>

#include "agent/config.hpp"
#include "agent/ctl_commands.hpp"
#include "agent/feed_watch.hpp"

namespace tally::agent {
namespace {

volatile std::sig_atomic_t g_stop_requested = 0;

struct WatchOptions {
  std::vector<std::string> endpoints{std::string(kDefaultFeedEndpoint)};
  std::vector<std::string> kinds;
  bool json = false;
  std::uint64_t count = 0;  // 0: until interrupted
};

void print_line(const std::string& line) {
  std::fputs(line.c_str(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);  // a pipe reader (jq, a test) sees each message as it arrives
}

int run_watch(const WatchOptions& options) {
  for (const auto& endpoint : options.endpoints) {
    if (auto valid = validate_endpoint(endpoint, EndpointRole::connect); !valid) {
      fmt::print(stderr, "tallyctl watch: --endpoint: {}\n", valid.error().message);
      return 2;
    }
  }
  // No SA_RESTART: a blocking receive returns EINTR so that Ctrl-C ends the watch at once.
  struct sigaction action {};
  action.sa_handler = [](int) { g_stop_requested = 1; };
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);

  zmq::context_t context(1);
  zmq::socket_t socket(context, zmq::socket_type::sub);
  socket.set(zmq::sockopt::linger, 0);
  if (options.kinds.empty()) {
    socket.set(zmq::sockopt::subscribe, "");
  } else {
    for (const auto& kind : options.kinds) socket.set(zmq::sockopt::subscribe, kind);
  }
  for (const auto& endpoint : options.endpoints) socket.connect(endpoint);

  const std::set<std::string> wanted(options.kinds.begin(), options.kinds.end());
  SequenceTracker tracker(/*follow_kind_sequence=*/!options.kinds.empty());
  std::uint64_t printed = 0;
  while (!g_stop_requested && (options.count == 0 || printed < options.count)) {
    zmq::message_t topic, payload;
    try {
      if (!socket.recv(topic)) continue;
      if (!topic.more() || !socket.recv(payload)) {
        fmt::print(stderr, "tallyctl watch: malformed message: expected 2 frames\n");
        continue;
      }
      while (payload.more()) {  // drain unexpected extra frames
        zmq::message_t extra;
        (void)socket.recv(extra);
        payload.rebuild(extra.data(), extra.size());
        if (!extra.more()) break;
      }
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      fmt::print(stderr, "tallyctl watch: {}\n", e.what());
      return 1;
    }
    // ZeroMQ filters by prefix: "usage" would also pass "usage2"; keep exact topics only.
    if (!wanted.empty() && !wanted.contains(topic.to_string())) continue;
    auto envelope = decode_envelope(topic.to_string_view(), payload.to_string_view());
    if (!envelope) {
      fmt::print(stderr, "tallyctl watch: malformed message on topic '{}' ({} bytes): not a tally.v1.Envelope\n",
                 topic.to_string_view(), payload.size());
      continue;
    }
    for (const FeedNotice& notice : tracker.observe(*envelope)) {
      print_line(options.json ? to_json(notice).dump() : format_text(notice));
    }
    print_line(options.json ? to_json(*envelope).dump() : format_text(*envelope));
    ++printed;
  }
  return 0;
}

}  // namespace

void add_watch_command(CLI::App& app, int& exit_status) {
  auto options = std::make_shared<WatchOptions>();
  CLI::App* watch = app.add_subcommand("watch", "Subscribe to a tallyd feed and print one line per message");
  watch->add_option("-e,--endpoint", options->endpoints, "Feed endpoint(s) to connect to")
      ->capture_default_str();
  watch->add_option("-k,--kind", options->kinds, "Only these kinds")
      ->check(CLI::IsMember({"heartbeat", "usage", "topology"}));
  watch->add_flag("--json", options->json, "Print JSON lines (one object per message or notice)");
  watch->add_option("-n,--count", options->count, "Exit after this many messages (0: run until interrupted)");
  watch->footer(
      "Notices: '! gap' when sequence numbers were skipped (messages lost), '! restart' when a node's agent "
      "instance changed, '! backwards' when a sequence number repeated or went back.");
  watch->callback([options, &exit_status] { exit_status = run_watch(*options); });
}

}  // namespace tally::agent
