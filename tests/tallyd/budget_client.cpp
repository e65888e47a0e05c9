// A workload for the budget tests, through the real client library:
//   budget_client spend LABELS THREADS MAX_AMOUNT SECONDS SEED
//     waits until attached, then THREADS threads reserve 1..MAX_AMOUNT tokens_out and commit at most what they
//     reserved, until the agent answers DENY (budget) after a refusal, or SECONDS pass; prints "committed N".
//   budget_client watch LABELS ADD SECONDS
//     waits until attached, adds ADD tokens_out, then prints "decision D reason R" each time tally_admit changes,
//     for SECONDS (the test stops it sooner).
// LABELS: "team=a,model=m".
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tally/client.h"

namespace {

using Clock = std::chrono::steady_clock;

std::uint32_t intern(tally_client* client, const std::string& spec) {
  std::vector<std::string> keys, values;
  std::size_t start = 0;
  while (start < spec.size()) {
    const std::size_t comma = spec.find(',', start);
    const std::string pair = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const std::size_t eq = pair.find('=');
    keys.push_back(pair.substr(0, eq));
    values.push_back(pair.substr(eq + 1));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::vector<tally_label> labels;
  for (std::size_t i = 0; i < keys.size(); ++i) labels.push_back({keys[i].c_str(), values[i].c_str()});
  return tally_intern(client, labels.data(), labels.size());
}

bool wait_attached(tally_client* client, Clock::time_point deadline) {
  while (tally_attached(client) == 0) {
    if (Clock::now() > deadline) return false;
    ::poll(nullptr, 0, 5);
  }
  return true;
}

int spend(tally_client* client, std::uint32_t labels, int threads, std::uint64_t max_amount, int seconds,
          unsigned seed) {
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  std::atomic<std::uint64_t> committed{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937_64 random(seed * 131 + static_cast<unsigned>(t));
      std::uint64_t mine = 0;
      while (Clock::now() < deadline) {
        const std::uint64_t amount = 1 + random() % max_amount;
        if (tally_reserve(client, labels, TALLY_TOKENS_OUT, amount) == 1) {
          const std::uint64_t used = 1 + random() % amount;  // never more than reserved
          tally_commit(client, labels, TALLY_TOKENS_OUT, amount, used);
          mine += used;
          continue;
        }
        const tally_admission admission = tally_admit(client, labels);
        if (admission.decision == TALLY_DENY && TALLY_REASON_CODE(admission.reason) == TALLY_REASON_BUDGET) break;
        std::this_thread::yield();  // the agent tops allowances up at its next drain
      }
      committed += mine;
    });
  }
  for (auto& worker : workers) worker.join();
  std::printf("committed %llu\n", static_cast<unsigned long long>(committed.load()));
  return 0;
}

int watch(tally_client* client, std::uint32_t labels, std::uint64_t add, int seconds) {
  tally_add(client, labels, TALLY_TOKENS_OUT, add);
  std::printf("added %llu\n", static_cast<unsigned long long>(add));
  std::fflush(stdout);
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  int last = -1;
  std::uint32_t last_reason = 0;
  while (Clock::now() < deadline) {
    const tally_admission admission = tally_admit(client, labels);
    if (static_cast<int>(admission.decision) != last || admission.reason != last_reason) {
      last = admission.decision;
      last_reason = admission.reason;
      std::printf("decision %d reason %u\n", last, last_reason);
      std::fflush(stdout);
    }
    ::poll(nullptr, 0, 5);  // a cooperative client looks again before its next request
  }
  return 0;
}

int burn(tally_client* client, std::uint32_t labels, std::uint64_t add) {
  tally_add(client, labels, TALLY_TOKENS_OUT, add);
  std::printf("added %llu\n", static_cast<unsigned long long>(add));
  std::fflush(stdout);
  for (std::uint64_t n = 0;; ++n) {
    if ((n & 0xFFFFF) == 0) {
      pollfd in{0, POLLIN, 0};
      if (::poll(&in, 1, 0) == 1 && (in.revents & (POLLHUP | POLLIN)) != 0) {
        char byte;
        if (::read(0, &byte, 1) <= 0) return 0;  // stdin closed
      }
    }
    asm volatile("" : : "r"(n) : "memory");  // every iteration is work the compiler must keep
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: budget_client spend|watch LABELS ...\n");
    return 2;
  }
  const std::string mode = argv[1];
  tally_client* client = tally_open("budget-client");
  const std::uint32_t labels = intern(client, argv[2]);
  if (labels == 0 || !wait_attached(client, Clock::now() + std::chrono::seconds(20))) {
    std::fprintf(stderr, "budget_client: not attached: %s\n", tally_last_error(client));
    return 1;
  }
  int status = 2;
  if (mode == "spend" && argc == 7) {
    status = spend(client, labels, std::atoi(argv[3]), std::strtoull(argv[4], nullptr, 10), std::atoi(argv[5]),
                   static_cast<unsigned>(std::atoi(argv[6])));
  } else if (mode == "burn" && argc == 4) {
    status = burn(client, labels, std::strtoull(argv[3], nullptr, 10));
  } else if (mode == "watch" && argc == 5) {
    status = watch(client, labels, std::strtoull(argv[3], nullptr, 10), std::atoi(argv[4]));
  }
  tally_close(client);
  return status;
}
