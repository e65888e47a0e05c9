#include "agent/tallyd/kernel_usage.hpp"

#include <fmt/format.h>

namespace tally::agent {
namespace {

WorkloadIdentity unnamed() {
  WorkloadIdentity identity;
  identity.kind = WorkloadKind::cgroup;
  identity.id = "kernel:unnamed";  // a cgroup removed before any event or walk named it
  return identity;
}

}  // namespace

KernelUsageRecorder::KernelUsageRecorder(ledger::Ledger& ledger) : ledger_(ledger) {
  for (std::size_t i = 0; i < collectors::kKernelCounterFields.size(); ++i) {
    traced_[i] = ledger.counter(collectors::kKernelCounterFields[i].name, ledger::Source::kernel_probes);
    sampled_[i] = ledger.counter(collectors::kKernelCounterFields[i].name, ledger::Source::proc_sampling);
  }
}

void KernelUsageRecorder::record(const std::vector<collectors::KernelUsage>& usage) {
  for (const collectors::KernelUsage& u : usage) {
    const auto source = u.traced ? ledger::Source::kernel_probes : ledger::Source::proc_sampling;
    // Who it is: as the source names it, else as the ledger knew it (from before a restart), else unnamed.
    ledger::Workload* workload = u.identity ? &ledger_.workload(*u.identity) : nullptr;
    if (workload == nullptr) {
      if (auto* known = ledger_.find_contributor(u.contributor)) workload = &known->workload();
    }
    if (workload == nullptr) workload = &ledger_.workload(unnamed());
    ledger::Contributor& contributor = ledger_.contributor(u.contributor, *workload, source);
    ledger::LabelSet& whole = ledger_.label_set(contributor.workload(), "");
    const Ids& ids = u.traced ? traced_ : sampled_;
    for (std::size_t i = 0; i < collectors::kKernelCounterFields.size(); ++i) {
      const std::uint64_t value = u.totals.*collectors::kKernelCounterFields[i].member;
      if (value == 0) continue;  // a counter that never moved is not shown
      ledger_.update(contributor, ledger_.cell(contributor, whole, ids[i]), value);
    }
    for (const auto& [device, count] : u.device_opens) {
      ledger_.add(whole,
                  ledger_.counter(fmt::format("device_opens:{}:{}", device.first, device.second),
                                  ledger::Source::kernel_probes),
                  count);
    }
    if (u.final) ledger_.retire(contributor);
  }
}

}  // namespace tally::agent
