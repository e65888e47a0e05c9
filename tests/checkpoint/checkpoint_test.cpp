// The checkpoint: a ledger saved and restored keeps its totals, what was reported and its contributors' last
// values, so a source re-read after a restart adds only what is new; a corrupt file loads nothing and is moved
// aside; the writer thread makes each checkpoint durable off the caller's thread.
#include "agent/checkpoint/checkpoint.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <array>
#include <map>
#include <random>

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

// Where sources stand in streams they read again (NVML's newest sample, an energy counter) comes back as saved.
TEST(Checkpoint, RestoresSourceCursors) {
  Filled before;
  before.ledger.set_cursor("nvml:GPU-1:sample_us", 1'700'000'000'000'000);
  before.ledger.set_cursor("nvml:GPU-1:energy_mj", 42);
  ledger::Ledger after;
  ASSERT_TRUE(restore_checkpoint(after, save_checkpoint(before.ledger), "test"));
  EXPECT_EQ(after.cursors(), before.ledger.cursors());
  EXPECT_EQ(after.cursors().size(), 2u);
  const std::uint64_t generation = after.generation();
  after.set_cursor("nvml:GPU-1:energy_mj", 42);
  EXPECT_EQ(after.generation(), generation) << "an unchanged cursor is no change";
  after.set_cursor("nvml:GPU-1:energy_mj", 43);
  EXPECT_GT(after.generation(), generation) << "a moved cursor is worth a checkpoint";
}

TEST(Checkpoint, CorruptBytesLoadNothingAndSayWhy) {
  ledger::Ledger ledger;
  auto garbage = restore_checkpoint(ledger, "\xff\xff\xff garbage", "state");
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error().message.find("state"), std::string::npos);

  v1::LedgerCheckpoint good;
  ASSERT_TRUE(good.ParseFromString(save_checkpoint(Filled().ledger)));
  ASSERT_EQ(good.workloads_size(), 2);
  if (good.workloads(0).contributors().empty()) good.mutable_workloads()->SwapElements(0, 1);
  ASSERT_GT(good.workloads(0).contributors_size(), 0);

  v1::LedgerCheckpoint bad = good;
  bad.mutable_workloads(0)->mutable_contributors(0)->add_cells()->set_label_set(5);  // out of range
  auto out_of_range = restore_checkpoint(ledger, bad.SerializeAsString(), "state");
  ASSERT_FALSE(out_of_range);
  EXPECT_NE(out_of_range.error().message.find("corrupt checkpoint: a cell's label set"), std::string::npos)
      << out_of_range.error().message;
  EXPECT_TRUE(ledger.workloads().empty()) << "checked whole before anything is loaded";

  bad = good;
  *bad.mutable_workloads(1)->add_contributors() = good.workloads(0).contributors(0);
  auto twice = restore_checkpoint(ledger, bad.SerializeAsString(), "state");
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message.find("a contributor saved twice"), std::string::npos) << twice.error().message;

  bad = good;
  *bad.add_workloads() = good.workloads(0);
  auto workload_twice = restore_checkpoint(ledger, bad.SerializeAsString(), "state");
  ASSERT_FALSE(workload_twice);
  EXPECT_NE(workload_twice.error().message.find("a workload saved twice"), std::string::npos);
  EXPECT_TRUE(ledger.workloads().empty());

  bad.set_version(99);
  auto version = restore_checkpoint(ledger, bad.SerializeAsString(), "state");
  ASSERT_FALSE(version);
  EXPECT_NE(version.error().message.find("version 99"), std::string::npos);
}

// Every counter's total and what was reported, by workload, label set and name.
std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> totals_of(const ledger::Ledger& ledger) {
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> totals;
  for (const auto& [id, workload] : ledger.workloads()) {
    for (const auto& [text, label_set] : workload->label_sets) {
      for (const ledger::Counter& c : label_set->counters) {
        totals[id + "|" + text + "|" + ledger.key(c.id).name] = {c.total, c.reported};
      }
    }
  }
  return totals;
}

// The encoder keeps each workload's bytes between checkpoints: whatever happens to the ledger, what it writes is
// byte for byte what a fresh encoder writes, and restores to the same ledger.
TEST(CheckpointEncoder, KeptBytesAreNeverStale) {
  ledger::Ledger ledger;
  const auto tokens = ledger.counter("tokens_in", Source::client);
  const auto requests = ledger.counter("requests", Source::client);
  const auto io = ledger.counter("io_write_bytes", Source::kernel_probes);
  CheckpointEncoder kept;
  std::mt19937_64 random(7);
  std::vector<std::string> live;  // contributor keys
  int made = 0;
  for (int step = 0; step < 3000; ++step) {
    const auto pick = random() % 100;
    if (pick < 8 || live.empty()) {  // a new contributor, maybe for a new workload
      auto& w = ledger.workload(identify_cgroup(fmt::format("/system.slice/w{}.service", random() % 12)));
      const std::string key = fmt::format("shm:{}", made++);
      ledger.contributor(key, w, Source::client);
      live.push_back(key);
    } else if (pick < 70) {  // a contributor's counter grows, maybe under a new label set or counter
      ledger::Contributor& c = *ledger.find_contributor(live[random() % live.size()]);
      auto& ls = ledger.label_set(c.workload(), fmt::format("tenant=t{}", random() % 5));
      const auto id = std::array{tokens, requests, io}[random() % 3];
      const auto cell = ledger.cell(c, ls, id);
      ledger.update(c, cell, c.cells()[cell].last + random() % 1000);
    } else if (pick < 80) {
      ledger.mark_reported();
    } else if (pick < 85) {  // a contributor goes
      const auto at = random() % live.size();
      ledger.retire(*ledger.find_contributor(live[at]));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(at));
    } else if (pick < 88) {
      ledger.expire(~0ULL, 0);  // workloads with nothing left go
    } else if (pick < 92) {
      ledger.add(ledger.label_set(ledger.workload(identify_cgroup("/system.slice/w0.service")), ""), io, 1);
    } else if (pick < 94 && !ledger.retired().empty()) {
      ledger.forget_retired(*ledger.retired().begin());
    }
    if (step % 7 != 0) continue;  // a checkpoint every few changes, as after reports
    const std::string bytes = kept.encode(ledger, 42);
    ASSERT_EQ(bytes, CheckpointEncoder().encode(ledger, 42)) << "step " << step;
  }
  ledger::Ledger back;
  ASSERT_TRUE(restore_checkpoint(back, kept.encode(ledger, 42), "kept"));
  EXPECT_EQ(totals_of(back), totals_of(ledger));
  EXPECT_FALSE(totals_of(ledger).empty());
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
