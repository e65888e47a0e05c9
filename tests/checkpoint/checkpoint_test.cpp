// The checkpoint: a ledger saved and restored keeps its totals, what was reported and its contributors' last
// values, so a source re-read after a restart adds only what is new; a corrupt file loads nothing and is moved
// aside; the writer thread makes each checkpoint durable off the caller's thread.
#include "agent/checkpoint/checkpoint.hpp"

#include <gtest/gtest.h>

#include "agent/base/files.hpp"
#include "tests/support/deadline.hpp"
#include "tests/support/temp_dir.hpp"
#include "tally/v1/checkpoint.pb.h"

namespace tally::agent {
namespace {

using ledger::Source;
using namespace std::chrono_literals;

struct Filled {
  ledger::Ledger ledger;
  ledger::CounterId tokens = ledger.counter("tokens_in", Source::client);
  ledger::CounterId io = ledger.counter("io_read_bytes", Source::kernel_probes);
  ledger::CounterId share = ledger.counter("gpu_energy_joules", Source::nvml, ledger::Kind::estimated);

  Filled() {
    ledger::Workload& w = ledger.workload(identify_cgroup("/system.slice/a.service"));
    ledger.add_name(w, "server");
    ledger::LabelSet& ls = ledger.label_set(w, "tenant=t\nmodel=m");
    ledger.set_refused(ls, true);
    ledger::Contributor& segment = ledger.contributor("shm:seg1", w, Source::client);
    ledger.update(segment, ledger.cell(segment, ls, tokens), 700);
    ledger::LabelSet& whole = ledger.label_set(w, "");
    ledger::Contributor& key = ledger.contributor("kernel:e:5", w, Source::kernel_probes);
    ledger.update(key, ledger.cell(key, whole, io), 9000);
    ledger.add(whole, share, 12);
    ledger.mark_reported();
    ledger.update(segment, ledger.cell(segment, ls, tokens), 750);  // not reported yet
    ledger::Contributor& old = ledger.contributor("shm:seg0", w, Source::client);
    ledger.update(old, ledger.cell(old, ls, tokens), 100);
    ledger.retire(old);
    ledger::Workload& gone = ledger.workload(identify_cgroup("/system.slice/b.service"));
    ledger.add(ledger.label_set(gone, ""), io, 1);
  }
};

TEST(Checkpoint, RestoresTotalsReportedContributorsAndRetired) {
  Filled before;
  const std::string bytes = save_checkpoint(before.ledger);
  ledger::Ledger after;
  ASSERT_TRUE(restore_checkpoint(after, bytes, "test"));
  ledger::Workload* w = after.find_workload("systemd:a.service");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->names, (std::set<std::string>{"server"}));
  ASSERT_TRUE(w->label_sets.contains("tenant=t\nmodel=m"));
  ledger::LabelSet& ls = *w->label_sets.at("tenant=t\nmodel=m");
  EXPECT_TRUE(ls.refused);
  ASSERT_EQ(ls.counters.size(), 1u);
  EXPECT_EQ(ls.counters[0].total, 850u);
  EXPECT_EQ(ls.counters[0].reported, 700u) << "what the last report carried";
  const ledger::LabelSet& whole = *w->label_sets.at("");
  ASSERT_EQ(whole.counters.size(), 2u);
  EXPECT_EQ(after.key(whole.counters[1].id).kind, ledger::Kind::estimated);
  EXPECT_TRUE(after.is_retired("shm:seg0"));
  EXPECT_NE(after.find_workload("systemd:b.service"), nullptr);

  // The segment is found again after the restart, 30 further: only those 30 are new.
  ledger::Contributor& segment = after.contributor("shm:seg1", *w, Source::client);
  after.update(segment, after.cell(segment, ls, after.counter("tokens_in", Source::client)), 780);
  EXPECT_EQ(ls.counters[0].total, 880u);
  // The kernel key, likewise.
  ledger::Contributor& key = after.contributor("kernel:e:5", *w, Source::kernel_probes);
  after.update(key, after.cell(key, *w->label_sets.at(""), after.counter("io_read_bytes", Source::kernel_probes)), 9100);
  EXPECT_EQ(whole.counters[0].total, 9100u);
}

TEST(Checkpoint, CorruptBytesLoadNothingAndSayWhy) {
  ledger::Ledger ledger;
  auto garbage = restore_checkpoint(ledger, "\xff\xff\xff garbage", "state");
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error().message.find("state"), std::string::npos);

  v1::LedgerCheckpoint bad;
  bad.set_version(2);
  auto* w = bad.add_workloads();
  w->set_id("systemd:x.service");
  w->set_kind("systemd_unit");
  auto* c = bad.add_contributors();
  c->set_key("shm:x");
  c->set_source(v1::VALUE_SOURCE_CLIENT);
  c->add_cells()->set_label_set(5);  // out of range
  auto out_of_range = restore_checkpoint(ledger, bad.SerializeAsString(), "state");
  ASSERT_FALSE(out_of_range);
  EXPECT_NE(out_of_range.error().message.find("corrupt"), std::string::npos) << out_of_range.error().message;
  EXPECT_TRUE(ledger.workloads().empty()) << "checked whole before anything is loaded";

  bad.set_version(99);
  auto version = restore_checkpoint(ledger, bad.SerializeAsString(), "state");
  ASSERT_FALSE(version);
  EXPECT_NE(version.error().message.find("version 99"), std::string::npos);
}

TEST(Checkpoint, ACorruptFileIsMovedAsideAndAMissingOneIsAFirstStart) {
  test::TempDir dir;
  ledger::Ledger ledger;
  EXPECT_TRUE(load_checkpoint(ledger, dir / "absent"));
  const auto path = dir.write("ledger.checkpoint", "not a checkpoint at all");
  auto loaded = load_checkpoint(ledger, path);
  ASSERT_FALSE(loaded);
  EXPECT_NE(loaded.error().message.find("moved aside"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_TRUE(std::filesystem::exists(dir / "ledger.checkpoint.corrupt"));
}

TEST(CheckpointWriter, WritesOffTheCallersThreadAndSaysWhatIsDurable) {
  test::TempDir dir;
  auto writer = CheckpointWriter::start(dir / "state" / "ledger.checkpoint");
  ASSERT_TRUE(writer);
  Filled filled;
  EXPECT_EQ((*writer)->durable_generation(), 0u);
  for (std::uint64_t g = 1; g <= 20; ++g) (*writer)->submit(g, save_checkpoint(filled.ledger));
  ASSERT_TRUE(test::wait_until([&] { return (*writer)->durable_generation() == 20; }))
      << "the newest checkpoint is written (older ones may be skipped)";
  ledger::Ledger back;
  ASSERT_TRUE(load_checkpoint(back, dir / "state" / "ledger.checkpoint"));
  EXPECT_NE(back.find_workload("systemd:a.service"), nullptr);
  ASSERT_TRUE((*writer)->write_now(21, save_checkpoint(back)));
  EXPECT_EQ((*writer)->durable_generation(), 21u);
  EXPECT_FALSE((*writer)->last_error());
}

TEST(CheckpointWriter, AWriteThatFailsIsReportedAndTheNextOneRetries) {
  test::TempDir dir;
  dir.write("blocker", "a file where the state directory should be");
  auto writer = CheckpointWriter::start(dir / "blocker" / "ledger.checkpoint");
  ASSERT_TRUE(writer);
  (*writer)->submit(1, "x");
  ASSERT_TRUE(test::wait_until([&] { return (*writer)->last_error().has_value(); }));
  EXPECT_EQ((*writer)->durable_generation(), 0u);
}

}  // namespace
}  // namespace tally::agent
