// Writes the seed corpus for feed_decoder_fuzzer: messages a real FeedPublisher sends, received by a real SUB
// socket: heartbeats, a topology discovered from a real hwloc capture, and usage reports the agent's encoder made
// from a real ledger (a snapshot, a report of what changed, a final one). One seed per message and one seed with
// the whole stream in order (the fuzzer follows sequences and folds usage across messages).
//
// Usage: feed_fuzz_seeds CORPUS_DIR
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "agent/base/workload_identity.hpp"
#include "agent/feed/publisher.hpp"
#include "agent/feed/topology_message.hpp"
#include "agent/feed/usage_report.hpp"
#include "collectors/topology/topology.hpp"
#include "tests/support/fuzz_seeds.hpp"

namespace {

using namespace tally;
using namespace tally::agent;

// [topic selector][4-byte little-endian length][payload], as the fuzzer reads it.
std::string frame(std::string_view topic, const std::string& payload) {
  const char selector = topic == "heartbeat" ? 0 : topic == "usage" ? 1 : 2;
  std::string out(1, selector);
  const auto length = static_cast<std::uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) out += static_cast<char>((length >> (8 * i)) & 0xff);
  return out + payload;
}

}  // namespace

int main(int argc, char** argv) {
  const auto corpus_dir = tally::test::seed_corpus_dir(argc, argv);
  if (!corpus_dir) return 2;
  const std::filesystem::path& corpus = *corpus_dir;

  FeedPublisher publisher({"seed-node", "00000000-0000-4000-8000-000000000001", "seed-host"}, 1000);
  if (auto bound = publisher.set_endpoints({"tcp://127.0.0.1:*"}, {}); !bound) {
    std::fprintf(stderr, "feed_fuzz_seeds: %s\n", bound.error().message.c_str());
    return 1;
  }
  zmq::context_t context(1);
  zmq::socket_t subscriber(context, zmq::socket_type::sub);
  subscriber.set(zmq::sockopt::subscribe, "");
  subscriber.set(zmq::sockopt::rcvtimeo, 100);
  subscriber.connect(publisher.bound_endpoints().at(0));

  std::vector<std::string> received;  // framed for the fuzzer
  auto receive_one = [&]() -> bool {
    zmq::message_t topic, payload;
    if (!subscriber.recv(topic) || !topic.more() || !subscriber.recv(payload)) return false;
    received.push_back(frame(topic.to_string_view(), payload.to_string()));
    return true;
  };
  auto heartbeat = [&](std::uint64_t uptime_ns) {
    v1::Envelope envelope;
    envelope.mutable_heartbeat()->set_uptime_ns(uptime_ns);
    envelope.mutable_heartbeat()->set_rss_bytes(12u << 20);
    envelope.mutable_heartbeat()->set_config_generation(1);
    publisher.publish(envelope);
  };
  // A subscription takes a moment to reach the publisher: heartbeats until one arrives (with a deadline).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (received.empty()) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "feed_fuzz_seeds: no message came back from the publisher\n");
      return 1;
    }
    heartbeat(1);
    receive_one();
  }
  std::size_t expected = 1;
  auto publish_and_receive = [&](auto&& publish) {
    publish();
    ++expected;
    while (received.size() < expected && std::chrono::steady_clock::now() < deadline) receive_one();
    return received.size() >= expected;
  };

  collectors::DiscoveryOptions options;
  options.xml_file = std::string(TALLY_TOPOLOGY_DATA) + "/g4dnmetal.xml";
  if (auto topology = collectors::discover_topology(options)) {
    publish_and_receive([&] {
      v1::Envelope envelope;
      to_proto(*topology, *envelope.mutable_topology());
      publisher.publish(envelope);
    });
  }

  using ledger::Kind;
  using ledger::Source;
  ledger::Ledger ledger;
  UsageReportEncoder encoder;
  const auto tokens = ledger.counter("tokens_in", Source::client);
  const auto kv = ledger.counter("kv_cache_bytes", Source::client, Kind::measured, true);
  const auto io = ledger.counter("io_write_bytes", Source::kernel_probes);
  const auto gpu = ledger.counter("gpu_allocated_seconds", Source::nvml, Kind::apportioned);
  auto& infer = ledger.workload(identify_cgroup("/system.slice/infer.service"));
  ledger.add_name(infer, "vllm");
  ledger.add_pid(infer, 4242);
  auto& chat = ledger.label_set(infer, "tenant=acme\nmodel=llama-70b");
  auto& client = ledger.contributor("shm:seed", infer, Source::client);
  ledger.update(client, ledger.cell(client, chat, tokens), 1234);
  ledger.update(client, ledger.cell(client, chat, kv), 77);
  ledger.record_request(chat, 10, 20, 30, 40);
  auto& whole = ledger.label_set(infer, "");
  auto& kernel = ledger.contributor("kernel:seed", infer, Source::kernel_probes);
  ledger.update(kernel, ledger.cell(kernel, whole, io), 4096);
  ledger.add(whole, gpu, 3);
  auto& job = ledger.workload(identify_cgroup("/system.slice/slurmstepd.scope/job_4242/step_0"));
  ledger.add(ledger.label_set(job, "tenant=lab"), tokens, 99);
  std::uint64_t now = 1'700'000'000'000'000'000;
  auto report = [&](bool snapshot, bool final) {
    return publish_and_receive([&] {
      publisher.publish(FeedKind::usage, encoder.encode(ledger, {now, now + 1'000'000'000, snapshot, final}));
      ledger.mark_reported();
      now += 1'000'000'000;
    });
  };
  report(true, false);
  ledger.update(client, ledger.cell(client, chat, tokens), 5000);
  ledger.add(ledger.label_set(infer, "tenant=beta\nmodel=mistral"), tokens, 10);
  report(false, false);
  publish_and_receive([&] { heartbeat(2'000'000'000); });
  report(true, true);

  std::string stream;
  for (std::size_t i = 0; i < received.size(); ++i) {
    std::ofstream(corpus / ("message-" + std::to_string(i)), std::ios::binary) << received[i];
    stream += received[i];
  }
  std::ofstream(corpus / "stream", std::ios::binary) << stream;
  std::printf("feed_fuzz_seeds: %zu messages in %s\n", received.size(), corpus.c_str());
  return received.size() == expected ? 0 : 1;
}
