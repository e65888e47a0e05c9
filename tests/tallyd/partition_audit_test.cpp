// Each partitioning decision as a person reads it and as the journal indexes it: who, what, which plan generation.
#include "agent/tallyd/partition_audit.hpp"

#include <algorithm>

#include <gtest/gtest.h>

namespace tally::agent {
namespace {

bool has(const std::vector<std::string>& fields, const std::string& field) {
  return std::find(fields.begin(), fields.end(), field) != fields.end();
}

TEST(PartitionAudit, ADenialNamesTheWorkloadTheNodeTheProcessAndTheGeneration) {
  v1::PartitionEvent event;
  event.set_kind(v1::PartitionEvent::KIND_DENIED);
  event.set_generation(3);
  event.set_workload("systemd:trainer.service");
  event.set_device("/dev/nvidia1");
  event.set_cgroup("/system.slice/trainer.service");
  event.set_pid(4242);
  event.set_comm("python3");
  event.set_count(8);
  EXPECT_EQ(describe(event),
            "partitioning: generation 3: denied /dev/nvidia1 to systemd:trainer.service (pid 4242, python3; 8 so far)");
  const auto fields = journal_fields(event);
  for (const char* field : {"TALLY_DECISION=denied", "TALLY_PLAN_GENERATION=3", "TALLY_WORKLOAD=systemd:trainer.service",
                            "TALLY_DEVICE=/dev/nvidia1", "TALLY_CGROUP=/system.slice/trainer.service",
                            "TALLY_OFFENDER_PID=4242", "TALLY_OFFENDER_COMM=python3", "TALLY_DENIALS=8"}) {
    EXPECT_TRUE(has(fields, field)) << field;
  }
}

TEST(PartitionAudit, EveryKindHasItsDecisionAndOnlyTheFieldsItHas) {
  v1::PartitionEvent event;
  event.set_generation(7);
  event.set_gpu("0");
  event.set_detail("create 3g.40gb at slice 4");
  event.set_kind(v1::PartitionEvent::KIND_RECONCILE_STEP);
  EXPECT_EQ(describe(event), "partitioning: generation 7: GPU 0: create 3g.40gb at slice 4");
  EXPECT_EQ(journal_fields(event),
            (std::vector<std::string>{"TALLY_DECISION=reconcile_step", "TALLY_PLAN_GENERATION=7", "TALLY_GPU=0"}));
  event.set_kind(v1::PartitionEvent::KIND_ROLLED_BACK);
  EXPECT_EQ(describe(event), "partitioning: generation 7: GPU 0: rolled back: create 3g.40gb at slice 4");
  EXPECT_TRUE(has(journal_fields(event), "TALLY_DECISION=rolled_back"));
  event.set_kind(v1::PartitionEvent::KIND_REFUSED);
  event.set_gpu("");
  event.set_detail("tally.toml:9: GPU '7' is not on this node");
  EXPECT_EQ(describe(event), "partitioning: generation 7: refused: tally.toml:9: GPU '7' is not on this node");
  EXPECT_EQ(journal_fields(event), (std::vector<std::string>{"TALLY_DECISION=refused", "TALLY_PLAN_GENERATION=7"}));
  for (const auto& [kind, decision] : {std::pair{v1::PartitionEvent::KIND_APPLIED, "applied"},
                                       std::pair{v1::PartitionEvent::KIND_RELEASED, "released"},
                                       std::pair{v1::PartitionEvent::KIND_COVERED, "covered"}}) {
    event.set_kind(kind);
    EXPECT_EQ(journal_fields(event)[0], std::string("TALLY_DECISION=") + decision);
    EXPECT_NE(describe(event).find("generation 7"), std::string::npos);
  }
}

}  // namespace
}  // namespace tally::agent
