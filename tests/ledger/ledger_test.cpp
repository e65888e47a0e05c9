// The ledger on its own: contributors add what is new, totals never go down, deltas are what changed since the
// last report, gauges are the live contributors' sum, and what changed is all a report has to look at.
#include "agent/ledger/ledger.hpp"

#include <gtest/gtest.h>

namespace tally::ledger {
namespace {

WorkloadIdentity unit(const std::string& name) {
  WorkloadIdentity identity = identify_cgroup("/system.slice/" + name);
  return identity;
}

const Counter& counter_of(const LabelSet& label_set, CounterId id) {
  for (const Counter& c : label_set.counters) {
    if (c.id == id) return c;
  }
  static const Counter none;
  ADD_FAILURE() << "no counter " << id;
  return none;
}

TEST(Ledger, ContributorsAddWhatIsNewAndTotalsNeverGoDown) {
  Ledger ledger;
  const CounterId tokens = ledger.counter("tokens_in", Source::client);
  Workload& w = ledger.workload(unit("a.service"));
  LabelSet& ls = ledger.label_set(w, "tenant=t");
  Contributor& first = ledger.contributor("shm:one", w, Source::client);
  Contributor& second = ledger.contributor("shm:two", w, Source::client);
  const CellRef c1 = ledger.cell(first, ls, tokens);
  const CellRef c2 = ledger.cell(second, ls, tokens);
  ledger.update(first, c1, 100);
  ledger.update(second, c2, 40);
  ledger.update(first, c1, 150);  // cumulative: 50 new
  EXPECT_EQ(counter_of(ls, tokens).total, 190u);
  ledger.update(first, c1, 10);  // the contributor's count restarted: all 10 are new, nothing is taken back
  EXPECT_EQ(counter_of(ls, tokens).total, 200u);
  ledger.retire(second);
  EXPECT_EQ(counter_of(ls, tokens).total, 200u) << "a retired contributor's counts stay";
  EXPECT_TRUE(ledger.is_retired("shm:two"));
  ledger.forget_retired("shm:two");
  EXPECT_FALSE(ledger.is_retired("shm:two"));
}

TEST(Ledger, DeltasAreWhatChangedSinceTheLastReport) {
  Ledger ledger;
  const CounterId io = ledger.counter("io_read_bytes", Source::kernel_probes);
  Workload& w = ledger.workload(unit("b.service"));
  LabelSet& whole = ledger.label_set(w, "");
  Contributor& key = ledger.contributor("kernel:e:1", w, Source::kernel_probes);
  const CellRef cell = ledger.cell(key, whole, io);
  ledger.update(key, cell, 1000);
  EXPECT_EQ(counter_of(whole, io).delta(), 1000u);
  ASSERT_EQ(ledger.changed_workloads().size(), 1u);
  ledger.mark_reported();
  EXPECT_EQ(counter_of(whole, io).delta(), 0u);
  EXPECT_TRUE(ledger.changed_workloads().empty()) << "nothing changed: nothing to report";
  ledger.update(key, cell, 1000);  // the same cumulative value again: no change
  EXPECT_TRUE(ledger.changed_workloads().empty());
  ledger.update(key, cell, 1600);
  EXPECT_EQ(counter_of(whole, io).delta(), 600u);
  EXPECT_EQ(counter_of(whole, io).total, 1600u);
  ASSERT_EQ(ledger.changed_workloads().size(), 1u);
  EXPECT_EQ(ledger.changed_workloads()[0]->changed_label_sets.size(), 1u);
}

TEST(Ledger, SameNameFromTwoSourcesIsTwoCounters) {
  Ledger ledger;
  EXPECT_NE(ledger.counter("events_dropped", Source::client), ledger.counter("events_dropped", Source::kernel_probes));
  EXPECT_EQ(ledger.counter("x", Source::nvml, Kind::apportioned), ledger.counter("x", Source::nvml, Kind::apportioned));
  EXPECT_NE(ledger.counter("x", Source::nvml, Kind::apportioned), ledger.counter("x", Source::nvml, Kind::estimated));
}

TEST(Ledger, GaugesAreTheLiveContributorsSum) {
  Ledger ledger;
  const CounterId kv = ledger.counter("kv_cache_bytes", Source::client, Kind::measured, /*gauge=*/true);
  Workload& w = ledger.workload(unit("c.service"));
  LabelSet& ls = ledger.label_set(w, "model=m");
  Contributor& a = ledger.contributor("shm:a", w, Source::client);
  Contributor& b = ledger.contributor("shm:b", w, Source::client);
  ledger.update(a, ledger.cell(a, ls, kv), 300);
  ledger.update(b, ledger.cell(b, ls, kv), 200);
  ASSERT_EQ(ls.gauges.size(), 1u);
  EXPECT_EQ(ls.gauges[0].value, 500u);
  ledger.update(a, ledger.cell(a, ls, kv), 100);  // a level, not a count: replaces a's share
  EXPECT_EQ(ls.gauges[0].value, 300u);
  ledger.retire(a);
  EXPECT_EQ(ls.gauges[0].value, 200u) << "a gone contributor's level leaves the sum";
}

TEST(Ledger, AWorkloadExitsWithItsLastContributorAndExpiresAfterRetention) {
  Ledger ledger;
  Workload& w = ledger.workload(unit("d.service"));
  EXPECT_TRUE(w.exited());
  Contributor& c = ledger.contributor("kernel:e:2", w, Source::kernel_probes);
  EXPECT_FALSE(w.exited());
  EXPECT_EQ(w.exited_unix_ns, 0u);
  ledger.retire(c);
  EXPECT_TRUE(w.exited());
  const std::uint64_t exited = w.exited_unix_ns;
  EXPECT_NE(exited, 0u);
  ledger.mark_reported();
  EXPECT_EQ(ledger.expire(exited + 5, 10), 0u) << "within retention";
  EXPECT_EQ(ledger.expire(exited + 11, 10), 1u);
  EXPECT_EQ(ledger.find_workload(unit("d.service").id), nullptr);
}

TEST(Ledger, RestoredContributorsKeepTheirLastValuesWhenReclaimedAndGoWhenNot) {
  Ledger ledger;
  const CounterId tokens = ledger.counter("tokens_out", Source::client);
  Workload& w = ledger.restore_workload(unit("e.service"), {"server"}, 0);
  LabelSet& ls = ledger.label_set(w, "team=x");
  const std::uint32_t slot = ledger.restore_counter(ls, tokens, 500, 500);
  Contributor& back = ledger.restore_contributor("shm:back", w, Source::client);
  ledger.restore_cell(back, ls, slot, 300);
  ledger.restore_contributor("shm:gone", w, Source::client);
  EXPECT_TRUE(w.exited()) << "nothing reports for a restored workload until a source re-attaches";
  Contributor& again = ledger.contributor("shm:back", w, Source::client);
  EXPECT_EQ(&again, &back);
  EXPECT_FALSE(w.exited());
  ledger.update(again, ledger.cell(again, ls, tokens), 350);  // 50 done since the checkpoint
  EXPECT_EQ(counter_of(ls, tokens).total, 550u);
  EXPECT_EQ(counter_of(ls, tokens).delta(), 50u);
  ledger.drop_unclaimed_contributors();
  EXPECT_EQ(ledger.find_contributor("shm:gone"), nullptr);
  EXPECT_NE(ledger.find_contributor("shm:back"), nullptr);
}

TEST(Ledger, IncrementsAndRequestsMarkTheLabelSetChanged) {
  Ledger ledger;
  const CounterId opens = ledger.counter("device_opens:195:0", Source::kernel_probes);
  Workload& w = ledger.workload(unit("f.service"));
  LabelSet& whole = ledger.label_set(w, "");
  LabelSet& ls = ledger.label_set(w, "a=b\nc=d");
  ASSERT_EQ(ls.labels.size(), 2u);
  EXPECT_EQ(ls.labels[1].first, "c");
  EXPECT_EQ(ls.labels[1].second, "d");
  ledger.mark_reported();
  ledger.add(whole, opens, 2);
  ledger.add(whole, opens, 3);
  EXPECT_EQ(counter_of(whole, opens).total, 5u);
  ledger.record_request(ls, 1000, 2000, 30, 500);
  ASSERT_TRUE(ls.tails);
  EXPECT_EQ(ls.tails->tokens.count(), 1u);
  ASSERT_EQ(ledger.changed_workloads().size(), 1u);
  EXPECT_EQ(ledger.changed_workloads()[0]->changed_label_sets.size(), 2u);
}

}  // namespace
}  // namespace tally::ledger
