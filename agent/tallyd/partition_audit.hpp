#pragma once
// One decision of GPU partitioning, said twice (docs/partitioning.md, "Audit"): a PartitionEvent on the feed, and a
// journal entry whose fields say who, what and which plan generation, so that `journalctl TALLY_DECISION=denied`
// or `journalctl TALLY_PLAN_GENERATION=7` finds them. Off the journal (a terminal, tests) it is one log line.

#include <string>
#include <vector>

#include <spdlog/common.h>

#include "tally/v1/event.pb.h"

namespace tally::agent {

// The line a person reads: "partitioning: generation 3: denied /dev/nvidia1 to systemd:a.service (pid 42, python;
// 1 so far)".
std::string describe(const v1::PartitionEvent& event);
// The journal's fields besides MESSAGE and PRIORITY: TALLY_DECISION (applied, released, reconcile_step, refused,
// rolled_back, denied, covered), TALLY_PLAN_GENERATION, and those of TALLY_WORKLOAD, TALLY_GPU, TALLY_DEVICE,
// TALLY_CGROUP, TALLY_OFFENDER_PID, TALLY_OFFENDER_COMM, TALLY_DENIALS the event has.
std::vector<std::string> journal_fields(const v1::PartitionEvent& event);
// Writes the journal entry (or, off the journal, the log line) at `level`.
void journal_decision(const v1::PartitionEvent& event, spdlog::level::level_enum level);

}  // namespace tally::agent
