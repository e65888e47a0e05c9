// Writes seeds for checkpoint_fuzzer into the directory it is given: the checkpoints of small real ledgers.
#include <fstream>

#include "agent/checkpoint/checkpoint.hpp"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  using tally::ledger::Source;
  for (int n = 1; n <= 3; ++n) {
    tally::ledger::Ledger ledger;
    for (int w = 0; w < n; ++w) {
      auto& workload = ledger.workload(tally::identify_cgroup("/system.slice/w" + std::to_string(w) + ".service"));
      ledger.add_name(workload, "seed");
      auto& label_set = ledger.label_set(workload, "tenant=t\nmodel=m" + std::to_string(w));
      auto& contributor = ledger.contributor("shm:seed" + std::to_string(w), workload, Source::client);
      ledger.update(contributor, ledger.cell(contributor, label_set, ledger.counter("tokens_in", Source::client)),
                    100u * static_cast<unsigned>(n));
      ledger.add(ledger.label_set(workload, ""), ledger.counter("io_read_bytes", Source::kernel_probes), 7);
      if (w == 0) ledger.retire(contributor);
      ledger.mark_reported();
    }
    std::ofstream(std::string(argv[1]) + "/seed-" + std::to_string(n), std::ios::binary)
        << tally::agent::save_checkpoint(ledger);
  }
  return 0;
}
