// Writes the seed corpus for shm_segment_reader_fuzzer: real segments, made by the real client library through the
// real registration server, with label sets, counters, gauges and committed records in the lanes, plus their
// client-written part alone (the fuzzer's patch mode). Seeds that already pass validation let the fuzzer reach the
// drain logic instead of spending its time on the header checks.
//
// Usage: shm_fuzz_seeds CORPUS_DIR
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tally/client.h"
#include "tests/support/fuzz_seeds.hpp"
#include "tests/support/in_process_agent.hpp"

namespace {

void write_seed(const std::filesystem::path& file, char mode, const std::vector<char>& bytes, std::size_t from) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.put(mode);
  out.write(bytes.data() + from, static_cast<std::streamsize>(bytes.size() - from));
}

}  // namespace

int main(int argc, char** argv) {
  const auto corpus_dir = tally::test::seed_corpus_dir(argc, argv);
  if (!corpus_dir) return 2;
  const std::filesystem::path& corpus = *corpus_dir;
  // Small shapes keep each seed a few KiB, so the fuzzer runs fast.
  setenv("TALLY_LABEL_SETS", "8", 1);
  setenv("TALLY_SLOTS", "2", 1);
  setenv("TALLY_LANE_RECORDS", "4", 1);

  tally::test::InProcessAgent agent;
  setenv("TALLY_SOCKET", agent.socket_path().c_str(), 1);
  for (int variant = 0; variant < 3; ++variant) {
    tally_client* client = tally_open("fuzz-seed");
    if (tally_attached(client) == 0) {
      std::fprintf(stderr, "shm_fuzz_seeds: the client did not attach to the in-process agent\n");
      return 1;
    }
    const tally_label labels[] = {{"tenant", "acme"}, {"model", "llama-70b"}, {"use_case", "chat"}};
    const std::uint32_t handle = tally_intern(client, labels, static_cast<std::size_t>(1 + variant % 3));
    tally_add(client, handle, TALLY_TOKENS_IN, 100u + static_cast<unsigned>(variant));
    tally_set(client, handle, TALLY_KV_CACHE_BYTES, 1u << 20);
    for (int i = 0; i < 2 + variant * 3; ++i) {  // variant 2 overflows the 4-record lane: drops counted
      const tally_request request{10u + static_cast<unsigned>(i), 20, 1000, 5000, 700, 1, 0};
      tally_record(client, handle, &request);
    }
    const auto registrations = agent.wait_for_registrations(static_cast<std::size_t>(variant) + 1);
    std::ifstream in(registrations.back().segment_path, std::ios::binary);
    const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    tally_close(client);
    if (bytes.size() <= 192) {
      std::fprintf(stderr, "shm_fuzz_seeds: segment %s is too short\n", registrations.back().segment_path.c_str());
      return 1;
    }
    write_seed(corpus / ("segment-" + std::to_string(variant)), '\0', bytes, 0);
    write_seed(corpus / ("patch-" + std::to_string(variant)), '\1', bytes, 192);
  }
  std::printf("shm_fuzz_seeds: 6 seeds in %s\n", corpus.c_str());
  return 0;
}
