// libFuzzer over the checkpoint reader: a state file is the agent's own, but a disk, a crash or an operator can
// leave anything there. Any bytes must give a clean Error (the ledger left empty) or a ledger that saves and
// restores to the same bytes, never a crash, a hang or a sanitizer report. Seeds: a real ledger's checkpoint,
// written by checkpoint_fuzz_seeds.
#include <cstdint>
#include <string_view>

#include "agent/checkpoint/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  tally::ledger::Ledger ledger;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (!tally::agent::restore_checkpoint(ledger, bytes, "fuzz")) {
    if (!ledger.workloads().empty() || !ledger.contributors().empty()) __builtin_trap();  // nothing half-loaded
    return 0;
  }
  // What was loaded is a ledger like any other: it saves, and what it saves loads again.
  tally::ledger::Ledger again;
  if (!tally::agent::restore_checkpoint(again, tally::agent::save_checkpoint(ledger), "fuzz")) __builtin_trap();
  if (again.workloads().size() != ledger.workloads().size()) __builtin_trap();
  return 0;
}
