// idle_clients N L: opens N tally clients, interns L label sets in each (N x L distinct label sets) and counts once
// in each, prints "ready" once all are attached, then sits idle until its stdin closes. The workload agent_cost_bench measures the
// agent against: clients that are there but do nothing.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "tally/client.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: idle_clients CLIENTS LABEL_SETS\n");
    return 2;
  }
  const int clients = std::stoi(argv[1]);
  const int label_sets = std::stoi(argv[2]);
  std::vector<tally_client*> opened;
  for (int c = 0; c < clients; ++c) {
    tally_client* client = tally_open("idle-client");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!tally_attached(client)) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "client %d never attached: %s\n", c, tally_last_error(client));
        return 3;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    for (int l = 0; l < label_sets; ++l) {
      const std::string tenant = "tenant-" + std::to_string(c), team = "team-" + std::to_string(l);
      const tally_label labels[] = {{"tenant", tenant.c_str()}, {"team", team.c_str()}, {"model", "llama"}};
      tally_add(client, tally_intern(client, labels, 3), TALLY_REQUESTS, 1);
    }
    opened.push_back(client);
  }
  std::printf("ready\n");
  std::fflush(stdout);
  char byte;
  while (::read(STDIN_FILENO, &byte, 1) > 0) {
  }
  for (tally_client* client : opened) tally_close(client);
  return 0;
}
