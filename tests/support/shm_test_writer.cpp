// A workload process for the shm tests: opens a tally client, waits until it is attached, then writes the
// deterministic workload of workload_gen.hpp from several threads. Options:
//   --process P --threads T --iterations N --labels K --seed S
//   --gate PATH   after half of the iterations print "half", wait for PATH to exist, then go on
//   --forever     record self-consistent events until killed (the torn-record test)
//   --no-wait     do not wait for an agent: write at once (the no-agent test); with --gate, wait to be attached
//                 after the gate opens
//   --per-second R  each thread records at most R requests per second: batches of 32, then a pause as long as 32
//                 take at that rate (never a burst to catch up)
// Prints "attached" once attached, "done" at the end. Exit status 3 when it never attached.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tally/client.h"
#include "tests/support/workload_gen.hpp"

namespace {

struct Options {
  std::uint32_t process = 0, threads = 4, labels = 4;
  std::uint64_t iterations = 10000, seed = 1, per_second = 0;
  std::string gate;
  bool forever = false, no_wait = false;
};

bool wait_for(auto predicate, int seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (!predicate()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--process") o.process = static_cast<std::uint32_t>(std::stoul(next()));
    else if (a == "--threads") o.threads = static_cast<std::uint32_t>(std::stoul(next()));
    else if (a == "--iterations") o.iterations = std::stoull(next());
    else if (a == "--labels") o.labels = static_cast<std::uint32_t>(std::stoul(next()));
    else if (a == "--seed") o.seed = std::stoull(next());
    else if (a == "--gate") o.gate = next();
    else if (a == "--forever") o.forever = true;
    else if (a == "--no-wait") o.no_wait = true;
    else if (a == "--per-second") o.per_second = std::stoull(next());
  }
  tally_client* client = tally_open("shm-test-writer");
  if (!o.no_wait) {
    if (!wait_for([&] { return tally_attached(client) != 0; }, 30)) {
      std::fprintf(stderr, "never attached: %s\n", tally_last_error(client));
      return 3;
    }
    std::printf("attached\n");
    std::fflush(stdout);
  }
  std::vector<std::uint32_t> handles;
  for (std::uint32_t k = 0; k < o.labels; ++k) {
    const std::string text = tally::test::label_text(k);
    const std::string tenant = text.substr(7, text.find('\n') - 7);
    const std::string model = text.substr(text.find("model=") + 6);
    const tally_label labels[] = {{"tenant", tenant.c_str()}, {"model", model.c_str()}};
    handles.push_back(tally_intern(client, labels, 2));
  }
  const tally_counter widgets = tally_register_counter(client, "widgets");

  if (o.forever) {
    std::vector<std::thread> threads;
    for (std::uint32_t t = 0; t < o.threads; ++t) {
      threads.emplace_back([&, t] {
        for (std::uint64_t i = 1;; ++i) {
          const tally_request r = tally::test::self_checking_request(i, t);
          tally_record(client, handles[t % handles.size()], &r);
        }
      });
    }
    std::printf("writing\n");
    std::fflush(stdout);
    for (auto& th : threads) th.join();
  }

  auto run = [&](std::uint64_t from, std::uint64_t to) {
    std::vector<std::thread> threads;
    for (std::uint32_t t = 0; t < o.threads; ++t) {
      threads.emplace_back([&, t] {
        for (std::uint64_t i = from; i < to; ++i) {
          const auto g = tally::test::generate(o.seed, o.process, t, i, o.labels);
          const std::uint32_t h = handles[g.label_index];
          tally_record(client, h, &g.request);
          tally_add(client, h, widgets, g.widgets);
          tally_add(client, h, TALLY_CACHED_TOKENS, g.request.tokens_in / 2);
          tally_set(client, h, TALLY_KV_CACHE_BYTES, 1000 + t);
          if (o.per_second != 0 && (i + 1) % 32 == 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(32'000'000 / o.per_second));
          }
        }
      });
    }
    for (auto& th : threads) th.join();
  };
  if (!o.gate.empty()) {
    run(0, o.iterations / 2);
    std::printf("half\n");
    std::fflush(stdout);
    struct stat st {};
    if (!wait_for([&] { return ::stat(o.gate.c_str(), &st) == 0; }, 120)) return 4;
    if (o.no_wait) {  // the agent appeared meanwhile: it must pick this workload up by itself
      if (!wait_for([&] { return tally_attached(client) != 0; }, 60)) return 3;
      std::printf("attached\n");
      std::fflush(stdout);
    }
    run(o.iterations / 2, o.iterations);
  } else {
    run(0, o.iterations);
  }
  std::printf("done dropped=%llu\n", static_cast<unsigned long long>(tally_dropped(client)));
  std::fflush(stdout);
  tally_close(client);
  return 0;
}
