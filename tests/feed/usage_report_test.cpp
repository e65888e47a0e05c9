// Usage reports encoded by hand, parsed by protobuf: what changed, or everything for a snapshot; totals, deltas,
// kinds and sources; cached bytes never stale; and a subscriber that sees one report in three ends with the same
// totals as one that sees them all.
#include "agent/feed/usage_report.hpp"

#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

#include <random>

#include "agent/feed/usage_view.hpp"
#include "tally/v1/feed.pb.h"

namespace tally::agent {
namespace {

using ledger::Kind;
using ledger::Source;

v1::UsageReport parse(const std::string& bytes) {
  v1::UsageReport report;
  EXPECT_TRUE(report.ParseFromString(bytes)) << "not a UsageReport";
  return report;
}

const v1::WorkloadUsage* find(const v1::UsageReport& report, const std::string& id) {
  for (const auto& w : report.workloads()) {
    if (w.workload_id() == id) return &w;
  }
  return nullptr;
}

const v1::CounterTotal* find(const google::protobuf::RepeatedPtrField<v1::CounterTotal>& totals,
                             const std::string& name) {
  for (const auto& t : totals) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

class UsageReportTest : public ::testing::Test {
 protected:
  UsageReportTest()
      : tokens_(ledger_.counter("tokens_in", Source::client)),
        io_(ledger_.counter("io_write_bytes", Source::kernel_probes)),
        kv_(ledger_.counter("kv_cache_bytes", Source::client, Kind::measured, true)),
        apportioned_(ledger_.counter("gpu_allocated_seconds", Source::nvml, Kind::apportioned)),
        gpu_memory_(ledger_.counter("gpu_memory_bytes", Source::nvml, Kind::measured, true)) {}

  std::string encode(bool snapshot) { return encoder_.encode(ledger_, {1, 2, snapshot, false}); }

  ledger::Ledger ledger_;
  UsageReportEncoder encoder_;
  ledger::CounterId tokens_, io_, kv_, apportioned_, gpu_memory_;
};

TEST_F(UsageReportTest, CarriesTotalsDeltasKindsAndSources) {
  WorkloadIdentity identity = identify_cgroup("/system.slice/infer.service");
  ledger::Workload& w = ledger_.workload(identity);
  ledger_.add_name(w, "vllm");
  ledger_.add_pid(w, 4242);
  ledger::LabelSet& ls = ledger_.label_set(w, "tenant=acme\nmodel=llama");
  ledger::Contributor& client = ledger_.contributor("shm:s", w, Source::client);
  ledger_.update(client, ledger_.cell(client, ls, tokens_), 1234);
  ledger_.update(client, ledger_.cell(client, ls, kv_), 77);
  ledger_.record_request(ls, 10, 20, 30, 40);
  ledger::LabelSet& whole = ledger_.label_set(w, "");
  ledger::Contributor& kernel = ledger_.contributor("kernel:e:9", w, Source::kernel_probes);
  ledger_.update(kernel, ledger_.cell(kernel, whole, io_), 4096);
  ledger_.add(whole, apportioned_, 3);
  ledger::Contributor& driver = ledger_.contributor("nvml:GPU-1:w", w, Source::nvml);
  ledger_.update(driver, ledger_.cell(driver, whole, gpu_memory_), 1 << 20);
  ledger_.set_refused(ls, true);

  const v1::UsageReport report = parse(encode(false));
  EXPECT_EQ(report.interval_start_unix_ns(), 1u);
  EXPECT_EQ(report.interval_end_unix_ns(), 2u);
  EXPECT_FALSE(report.snapshot());
  const v1::WorkloadUsage* usage = find(report, "systemd:infer.service");
  ASSERT_NE(usage, nullptr);
  EXPECT_EQ(usage->kind(), "systemd_unit");
  EXPECT_EQ(usage->cgroup_path(), "/system.slice/infer.service");
  EXPECT_EQ(usage->attributes().at("unit"), "infer.service");
  ASSERT_EQ(usage->names_size(), 1);
  EXPECT_EQ(usage->names(0), "vllm");
  ASSERT_EQ(usage->pids_size(), 1);
  EXPECT_EQ(usage->pids(0), 4242u);
  EXPECT_FALSE(usage->exited());
  EXPECT_EQ(usage->live_segments(), 1u);
  const v1::CounterTotal* io = find(usage->totals(), "io_write_bytes");
  ASSERT_NE(io, nullptr);
  EXPECT_EQ(io->total(), 4096u);
  EXPECT_EQ(io->delta(), 4096u);
  EXPECT_EQ(io->source(), v1::VALUE_SOURCE_KERNEL_PROBES);
  EXPECT_EQ(io->kind(), v1::VALUE_KIND_MEASURED);
  const v1::CounterTotal* allocated = find(usage->totals(), "gpu_allocated_seconds");
  ASSERT_NE(allocated, nullptr);
  EXPECT_EQ(allocated->kind(), v1::VALUE_KIND_APPORTIONED);
  EXPECT_EQ(allocated->source(), v1::VALUE_SOURCE_NVML);
  ASSERT_EQ(usage->gauges().size(), 1u) << "the workload's own gauges, not a label set's";
  EXPECT_EQ(usage->gauges().at("gpu_memory_bytes"), 1u << 20);
  ASSERT_EQ(usage->label_sets_size(), 1);
  const v1::LabelSetUsage& l = usage->label_sets(0);
  ASSERT_EQ(l.labels_size(), 2);
  EXPECT_EQ(l.labels(0).key(), "tenant");
  EXPECT_EQ(l.labels(1).value(), "llama");
  EXPECT_TRUE(l.refused());
  EXPECT_EQ(l.gauges().at("kv_cache_bytes"), 77u);
  const v1::CounterTotal* tokens = find(l.totals(), "tokens_in");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->total(), 1234u);
  EXPECT_EQ(tokens->delta(), 1234u);
  EXPECT_EQ(tokens->source(), v1::VALUE_SOURCE_CLIENT);
  EXPECT_EQ(l.tokens().histogram().count(), 1u);
  EXPECT_EQ(l.ttft_ns().histogram().scale(), 6);
  EXPECT_EQ(l.ttft_ns().max(), 10u);
}

TEST_F(UsageReportTest, AReportCarriesWhatChangedAndASnapshotEverything) {
  ledger::Workload& a = ledger_.workload(identify_cgroup("/a.slice/a.service"));
  ledger::Workload& b = ledger_.workload(identify_cgroup("/b.slice/b.service"));
  ledger::LabelSet& a1 = ledger_.label_set(a, "k=1");
  ledger::LabelSet& a2 = ledger_.label_set(a, "k=2");
  ledger::LabelSet& b1 = ledger_.label_set(b, "k=1");
  ledger_.add(a1, tokens_, 1);
  ledger_.add(a2, tokens_, 2);
  ledger_.add(b1, tokens_, 3);
  encode(false);
  ledger_.mark_reported();
  EXPECT_EQ(parse(encode(false)).workloads_size(), 0) << "nothing changed";

  ledger_.add(a2, tokens_, 5);
  const v1::UsageReport changed = parse(encode(false));
  ASSERT_EQ(changed.workloads_size(), 1);
  ASSERT_EQ(changed.workloads(0).label_sets_size(), 1) << "only the label set that changed";
  EXPECT_EQ(find(changed.workloads(0).label_sets(0).totals(), "tokens_in")->total(), 7u);
  EXPECT_EQ(find(changed.workloads(0).label_sets(0).totals(), "tokens_in")->delta(), 5u);
  ledger_.mark_reported();

  const v1::UsageReport snapshot = parse(encode(true));
  EXPECT_TRUE(snapshot.snapshot());
  ASSERT_EQ(snapshot.workloads_size(), 2);
  std::size_t label_sets = 0;
  for (const auto& w : snapshot.workloads()) {
    for (const auto& l : w.label_sets()) {
      ++label_sets;
      EXPECT_EQ(find(l.totals(), "tokens_in")->delta(), 0u) << "unchanged since the last report";
    }
  }
  EXPECT_EQ(label_sets, 3u);
}

// A reader replaces a workload's gauges with each entry of it: an entry for a changed label set carries them too.
TEST_F(UsageReportTest, EveryEntryOfAWorkloadCarriesItsGauges) {
  ledger::Workload& w = ledger_.workload(identify_cgroup("/a.slice/a.service"));
  ledger::LabelSet& whole = ledger_.label_set(w, "");
  ledger::LabelSet& labelled = ledger_.label_set(w, "k=1");
  ledger::Contributor& driver = ledger_.contributor("nvml:GPU-1:a", w, Source::nvml);
  ledger_.update(driver, ledger_.cell(driver, whole, gpu_memory_), 4096);
  encode(false);
  ledger_.mark_reported();

  ledger_.add(labelled, tokens_, 1);
  const v1::UsageReport report = parse(encode(false));
  ASSERT_EQ(report.workloads_size(), 1);
  EXPECT_TRUE(report.workloads(0).totals().empty()) << "the whole label set did not change";
  ASSERT_TRUE(report.workloads(0).gauges().contains("gpu_memory_bytes"));
  EXPECT_EQ(report.workloads(0).gauges().at("gpu_memory_bytes"), 4096u);
}

// Whatever the encoder kept between reports, its bytes equal those of an encoder that starts afresh.
TEST_F(UsageReportTest, CachedBytesAreNeverStale) {
  std::mt19937_64 random(7);
  std::vector<ledger::LabelSet*> label_sets;
  std::vector<ledger::Contributor*> contributors;
  std::vector<std::uint64_t> values;
  for (int w = 0; w < 5; ++w) {
    ledger::Workload& workload = ledger_.workload(identify_cgroup(fmt::format("/s.slice/w{}.service", w)));
    contributors.push_back(&ledger_.contributor(fmt::format("shm:{}", w), workload, Source::client));
    for (int l = 0; l < 4; ++l) label_sets.push_back(&ledger_.label_set(workload, fmt::format("k={}", l)));
  }
  values.resize(label_sets.size());
  for (int round = 0; round < 60; ++round) {
    for (int n = 0; n < 3; ++n) {
      const std::size_t i = random() % label_sets.size();
      ledger::Contributor& c = *contributors[i / 4];
      values[i] += random() % 1000;
      ledger_.update(c, ledger_.cell(c, *label_sets[i], tokens_), values[i]);
      if (random() % 5 == 0) ledger_.record_request(*label_sets[i], random() % 100, 5, 7, 9);
      if (random() % 7 == 0) ledger_.set_refused(*label_sets[i], random() % 2 == 0);
    }
    if (random() % 9 == 0) ledger_.add_name(contributors[random() % contributors.size()]->workload(), "n");
    const bool snapshot = random() % 3 == 0;
    const std::string cached = encode(snapshot);
    UsageReportEncoder fresh;
    const std::string expected = fresh.encode(ledger_, {1, 2, snapshot, false});
    v1::UsageReport got = parse(cached), want = parse(expected);
    // Workload order follows hash maps: compare as sets.
    google::protobuf::util::MessageDifferencer differencer;
    differencer.TreatAsSet(v1::UsageReport::descriptor()->FindFieldByName("workloads"));
    differencer.TreatAsSet(v1::WorkloadUsage::descriptor()->FindFieldByName("label_sets"));
    std::string differences;
    differencer.ReportDifferencesToString(&differences);
    ASSERT_TRUE(differencer.Compare(want, got)) << "round " << round << ":\n" << differences;
    ledger_.mark_reported();
  }
}

// Totals are cumulative: a subscriber that folds only every third report (and the final snapshot) ends with the
// same totals as one that folds them all.
TEST_F(UsageReportTest, OneReportInThreeGivesTheSameTotals) {
  std::mt19937_64 random(11);
  std::vector<ledger::LabelSet*> label_sets;
  for (int w = 0; w < 6; ++w) {
    ledger::Workload& workload = ledger_.workload(identify_cgroup(fmt::format("/s.slice/x{}.service", w)));
    for (int l = 0; l < 3; ++l) label_sets.push_back(&ledger_.label_set(workload, fmt::format("l={}", l)));
  }
  UsageView all, every_third;
  std::map<std::pair<std::string, std::string>, std::uint64_t> summed_deltas;
  for (int round = 0; round < 40; ++round) {
    for (int n = 0; n < 4; ++n) ledger_.add(*label_sets[random() % label_sets.size()], tokens_, 1 + random() % 50);
    const bool last = round == 39;
    const v1::UsageReport report = parse(encoder_.encode(ledger_, {1, 2, round % 10 == 0, last}));
    ledger_.mark_reported();
    all.apply(report);
    if (round % 3 == 0 || last) every_third.apply(report);
    for (const auto& w : report.workloads()) {
      for (const auto& l : w.label_sets()) {
        // A label set nothing was added to yet has no counter at all.
        if (const auto* t = find(l.totals(), "tokens_in")) summed_deltas[{w.workload_id(), label_text(l)}] += t->delta();
      }
    }
  }
  ASSERT_EQ(all.workloads().size(), 6u);
  for (const auto& [id, w] : all.workloads()) {
    for (const auto& [text, l] : w.label_sets) {
      const auto key = std::make_tuple(std::string("tokens_in"), v1::VALUE_SOURCE_CLIENT, v1::VALUE_KIND_MEASURED);
      if (!l.counters.contains(key)) continue;
      const std::uint64_t total = l.counters.at(key).total;
      EXPECT_EQ(every_third.workloads().at(id).label_sets.at(text).counters.at(key).total, total);
      const std::uint64_t summed = summed_deltas[std::make_pair(id, text)];
      EXPECT_EQ(summed, total) << "the deltas of every report add up to the total";
      const auto* workload = ledger_.find_workload(id);
      ASSERT_NE(workload, nullptr);
      EXPECT_EQ(workload->label_sets.at(text)->counters[0].total, total);
    }
  }
}

TEST_F(UsageReportTest, ASnapshotForgetsExpiredWorkloadsAndSlotsReusedGetNoStaleBytes) {
  ledger::Workload& w = ledger_.workload(identify_cgroup("/s.slice/gone.service"));
  ledger::Contributor& c = ledger_.contributor("kernel:e:3", w, Source::kernel_probes);
  ledger_.update(c, ledger_.cell(c, ledger_.label_set(w, "k=v"), io_), 5);
  encode(true);
  ledger_.retire(c);
  ledger_.mark_reported();
  encode(true);  // cached as it is now
  EXPECT_EQ(ledger_.expire(w.exited_unix_ns + 100, 1), 1u);
  EXPECT_EQ(parse(encode(true)).workloads_size(), 0);
  // A new workload and label set take the freed slots: their bytes are theirs.
  ledger::Workload& next = ledger_.workload(identify_cgroup("/s.slice/next.service"));
  ledger_.add(ledger_.label_set(next, "other=label"), tokens_, 9);
  ledger_.mark_reported();
  const v1::UsageReport report = parse(encode(true));
  ASSERT_EQ(report.workloads_size(), 1);
  EXPECT_EQ(report.workloads(0).workload_id(), "systemd:next.service");
  ASSERT_EQ(report.workloads(0).label_sets_size(), 1);
  EXPECT_EQ(label_text(report.workloads(0).label_sets(0)), "other=label");
  EXPECT_EQ(find(report.workloads(0).label_sets(0).totals(), "tokens_in")->total(), 9u);
}

}  // namespace
}  // namespace tally::agent
