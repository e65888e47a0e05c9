// tallyctl watch: subscribe to a tallyd feed and print one line per message, plus notices for gaps and restarts.

#include <cstdio>
#include <memory>

#include <fmt/format.h>

#include "agent/feed/endpoint.hpp"
#include "agent/tallyctl/ctl_commands.hpp"
#include "agent/feed/subscription.hpp"
#include "agent/feed/watch.hpp"

namespace tally::agent {
namespace {

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
  SequenceTracker tracker(/*follow_kind_sequence=*/!options.kinds.empty());
  std::uint64_t printed = 0;
  return receive_feed("tallyctl watch", options.endpoints, options.kinds, [&](const v1::Envelope& envelope) {
    for (const FeedNotice& notice : tracker.observe(envelope)) {
      print_line(options.json ? to_json(notice).dump() : format_text(notice));
    }
    print_line(options.json ? to_json(envelope).dump() : format_text(envelope));
    return options.count == 0 || ++printed < options.count;
  });
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
