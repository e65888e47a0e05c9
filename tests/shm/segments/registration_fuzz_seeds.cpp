// Writes the seed corpus for registration_request_fuzzer: the bytes the real client library sends on the
// registration socket. It listens where TALLY_SOCKET points, lets tally_open send its request (names short, long,
// non-ASCII; shapes default, small, maximal), reads what arrived and hangs up, so the client stays unattached.
//
// Usage: registration_fuzz_seeds CORPUS_DIR
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "agent/base/unique_fd.hpp"
#include "agent/base/unix_socket.hpp"
#include "shm/format/registration_protocol.hpp"
#include "tally/client.h"
#include "tests/support/fuzz_seeds.hpp"
#include "tests/support/temp_dir.hpp"

namespace {

struct Variant {
  const char* name;
  const char* lane_records;  // TALLY_LANE_RECORDS etc.: "" leaves the agent's default
  const char* slots;
  const char* label_sets;
};

}  // namespace

int main(int argc, char** argv) {
  const auto corpus_dir = tally::test::seed_corpus_dir(argc, argv);
  if (!corpus_dir) return 2;
  const std::filesystem::path& corpus = *corpus_dir;
  tally::test::TempDir dir;
  const std::string socket_path = (dir.path() / "tally.sock").string();
  const auto address = tally::unix_socket_address(socket_path);
  tally::UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!address || !listener ||
      ::bind(listener.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof *address) != 0 ||
      ::listen(listener.get(), 8) != 0) {
    std::fprintf(stderr, "registration_fuzz_seeds: cannot listen on %s\n", socket_path.c_str());
    return 1;
  }
  setenv("TALLY_SOCKET", socket_path.c_str(), 1);
  setenv("TALLY_OPEN_TIMEOUT_MS", "1", 1);  // nobody answers: tally_open returns unattached at once

  const Variant variants[] = {
      {"vllm", "", "", ""},
      {"a-workload-name-longer-than-the-sixty-three-bytes-the-request-carries-for-it", "4", "2", "8"},
      {"caf\xc3\xa9 \xe2\x98\x95 tab\tname", "65536", "1024", "4096"},
      {"x", "2", "1", "2"},
  };
  int written = 0;
  for (const Variant& v : variants) {
    setenv("TALLY_LANE_RECORDS", v.lane_records, 1);
    setenv("TALLY_SLOTS", v.slots, 1);
    setenv("TALLY_LABEL_SETS", v.label_sets, 1);
    tally_client* client = tally_open(v.name);
    // The request sits in the connection's buffer (the listen backlog took the connection).
    pollfd ready{listener.get(), POLLIN, 0};
    if (::poll(&ready, 1, 20'000) != 1) {
      std::fprintf(stderr, "registration_fuzz_seeds: the client never connected (TALLY_SOCKET=%s)\n",
                   socket_path.c_str());
      return 1;
    }
    tally::UniqueFd connection(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    std::vector<char> bytes(sizeof(tally::shm::protocol::Request) + 1);
    std::size_t got = 0;
    while (connection && got < sizeof(tally::shm::protocol::Request)) {
      const ssize_t n = ::recv(connection.get(), bytes.data() + got, bytes.size() - got, 0);
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    connection = tally::UniqueFd();
    tally_close(client);
    if (got != sizeof(tally::shm::protocol::Request)) {
      std::fprintf(stderr, "registration_fuzz_seeds: the client sent %zu bytes, not a request\n", got);
      return 1;
    }
    std::ofstream(corpus / ("request-" + std::to_string(written++)), std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(got));
  }
  std::printf("registration_fuzz_seeds: %d seeds in %s\n", written, corpus.c_str());
  return 0;
}
