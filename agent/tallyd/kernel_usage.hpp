#pragma once
// Wiring: what the kernel source counted, written into the ledger. Each probes key (or sampled owner) is one
// contributor of the workload it belongs to, counted under the workload as a whole (label set "").

#include <array>
#include <vector>

#include "agent/ledger/ledger.hpp"
#include "collectors/kernel/kernel_source.hpp"

namespace tally::agent {

class KernelUsageRecorder {
 public:
  explicit KernelUsageRecorder(ledger::Ledger& ledger);
  void record(const std::vector<collectors::KernelUsage>& usage);

 private:
  using Ids = std::array<ledger::CounterId, collectors::kKernelCounterFields.size()>;
  ledger::Ledger& ledger_;
  Ids traced_{}, sampled_{};
};

}  // namespace tally::agent
