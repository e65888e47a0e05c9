#pragma once
// The ledger: every number tallyd knows, per workload and label set, with where it came from (Source) and what
// kind of number it is (Kind). It sits between the sources and the sinks (docs/architecture.md):
//
//  - Sources write through one narrow interface. A source instance whose counters only grow (a client segment,
//    a kernel counter key) is a Contributor: it reports cumulative values per cell with update(), and the ledger
//    adds what is new to the cell's counter. A source that only knows increments uses add(). Gauges are the sum of
//    the live contributors' last values. Requests feed the label set's histograms.
//  - Sinks read it: a report takes what changed since the last report (or everything, for a snapshot) and then
//    calls mark_reported(); the checkpoint saves and restores the whole state.
//
// Deltas exist in one place: Counter::delta(), the increase since the last report. Totals are cumulative since the
// workload was first seen and never go down; they survive agent restarts through the checkpoint, and a contributor
// re-read after a restart adds only what it did since its last value was saved.
//
// Runs on the agent's event loop: no locks, no threads. Memory and work follow what is used and what changed.

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent/base/histogram.hpp"
#include "agent/base/workload_identity.hpp"

namespace tally::ledger {

// Where a number came from.
enum class Source : std::uint8_t { client, kernel_probes, proc_sampling, nvml };
inline constexpr std::size_t kSourceCount = 4;
// What kind of number it is: counted (by the kernel, the driver or the client), a counted total split by a rule,
// or an estimate.
enum class Kind : std::uint8_t { measured, apportioned, estimated };

std::string_view to_string(Source source);
std::string_view to_string(Kind kind);

// What a counter is. Interned once into a CounterId: the same name from two sources is two counters.
struct CounterKey {
  std::string name;
  Source source = Source::client;
  Kind kind = Kind::measured;
  bool gauge = false;  // a level (last value wins), not a cumulative count
  auto operator<=>(const CounterKey&) const = default;
};
using CounterId = std::uint32_t;

struct Counter {
  CounterId id = 0;
  std::uint64_t total = 0;     // cumulative since the workload was first seen
  std::uint64_t reported = 0;  // `total` as the last report carried it
  std::uint64_t delta() const { return total - reported; }
};

struct Gauge {
  CounterId id = 0;
  std::uint64_t value = 0;  // the sum of the live contributors' last values
};

// The tails of the requests recorded under one label set, since this agent instance started.
struct RequestTails {
  ExponentialHistogram ttft_ns, duration_ns, tokens, gpu_time_ns;  // tokens: in + out per request
  void record(std::uint64_t ttft, std::uint64_t duration, std::uint64_t token_count, std::uint64_t gpu_time) {
    ttft_ns.record(ttft);
    duration_ns.record(duration);
    tokens.record(token_count);
    gpu_time_ns.record(gpu_time);
  }
};

struct Workload;

// One label set of a workload, or (text "") the workload as a whole.
struct LabelSet {
  Workload* workload = nullptr;
  std::uint64_t serial = 0;  // unique for the ledger's lifetime
  std::uint32_t slot = 0;    // dense among the live label sets, reused after expiry: sinks index per-entry state by
                             // it (and tell a reused slot by the serial)
  std::string text;          // "key=value" pairs separated by '\n', as interned
  std::vector<std::pair<std::string, std::string>> labels;  // the same, split
  bool refused = false;      // a claim the configuration forbids (tenant rules): reported, not trusted
  std::vector<Counter> counters;  // append-only: a slot index stays valid
  std::vector<Gauge> gauges;      // append-only
  std::unique_ptr<RequestTails> tails;  // made on the first recorded request
  std::uint64_t version = 0;  // bumped by every change
  bool changed = false;       // since the last report
};

struct Quarantine {
  std::string what;    // e.g. the segment file
  std::string reason;  // what was wrong with it
  pid_t pid = 0;
  std::uint64_t unix_ns = 0;
};

class Contributor;

struct Workload {
  WorkloadIdentity identity;
  std::uint64_t serial = 0;
  std::uint32_t slot = 0;  // as LabelSet::slot
  std::set<std::string> names;                   // what its clients called themselves: display only
  std::map<pid_t, std::uint32_t> pids;           // live processes that report for it (with a count of segments)
  std::deque<Quarantine> quarantined;            // the last kQuarantineHistory
  std::array<std::uint32_t, kSourceCount> live{};  // live contributors per source
  std::uint64_t exited_unix_ns = 0;              // when the last contributor went; 0 while one lives
  std::unordered_map<std::string, std::unique_ptr<LabelSet>> label_sets;  // by text
  std::vector<Contributor*> contributors;        // those that report for it (owned by the Ledger)
  std::uint64_t version = 0;  // bumped when its identity, names, pids, quarantines or liveness change
  std::uint64_t content_version = 0;  // bumped by any change of it, its label sets or its contributors
  bool changed = false;       // it, or one of its label sets, changed since the last report
  std::vector<LabelSet*> changed_label_sets;
  bool exited() const;
};

// A source instance whose counters only grow: one client segment, one kernel counter key. Its cells remember the
// last cumulative value it reported for each counter it feeds.
class Contributor {
 public:
  struct Cell {
    LabelSet* label_set = nullptr;
    std::uint32_t slot = 0;  // into label_set->counters, or ->gauges for a gauge
    bool gauge = false;
    std::uint64_t last = 0;
  };
  const std::string& key() const { return key_; }
  Workload& workload() const { return *workload_; }
  Source source() const { return source_; }
  const std::vector<Cell>& cells() const { return cells_; }

 private:
  friend class Ledger;
  std::string key_;
  Workload* workload_ = nullptr;
  Source source_ = Source::client;
  bool claimed_ = false;  // re-attached by its source since the ledger was restored (or made now)
  std::vector<Cell> cells_;
};
using CellRef = std::uint32_t;

class Ledger {
 public:
  static constexpr std::size_t kQuarantineHistory = 16;

  Ledger() = default;
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // --- Names ---
  CounterId counter(std::string_view name, Source source, Kind kind = Kind::measured, bool gauge = false);
  const CounterKey& key(CounterId id) const { return keys_[id]; }

  // --- Workloads and label sets ---
  // The workload with this identity's id, made on first use. A richer identity (more attributes) replaces a
  // poorer one.
  Workload& workload(const WorkloadIdentity& identity);
  Workload* find_workload(std::string_view id);
  // The label set with this text ("" for the workload as a whole), made on first use.
  LabelSet& label_set(Workload& workload, std::string_view text);
  void set_refused(LabelSet& label_set, bool refused);
  void add_name(Workload& workload, const std::string& name);
  void add_pid(Workload& workload, pid_t pid);
  void remove_pid(Workload& workload, pid_t pid);
  void quarantine(Workload& workload, Quarantine quarantine);

  // --- Contributors (cumulative sources) ---
  // The contributor `key` of `workload`, made on first use; one restored from a checkpoint is claimed (its cells
  // keep their last values). Keys are unique across sources (e.g. "shm:<segment>", "kernel:<epoch>:<key>").
  Contributor& contributor(std::string_view key, Workload& workload, Source source);
  Contributor* find_contributor(std::string_view key);
  // The cell of `contributor` for `counter` under `label_set`, a label set of the contributor's own workload (made
  // on first use, with last value 0).
  CellRef cell(Contributor& contributor, LabelSet& label_set, CounterId counter);
  // A new cumulative value for a cell: a counter grows by what is new since the cell's last value (a value below
  // it means the contributor's count restarted, and all of it is new); a gauge takes this contributor's share.
  void update(Contributor& contributor, CellRef cell, std::uint64_t value);
  // The contributor is gone for good: its counts stay in the totals, its gauges leave the sums, and the object is
  // destroyed. Its key is kept as retired until forget_retired(), so that a source that finds it again (a restart
  // before the segment file or map entry was removed) knows not to count it twice.
  void retire(Contributor& contributor);
  bool is_retired(std::string_view key) const { return retired_.contains(std::string(key)); }
  void forget_retired(std::string_view key) { retired_.erase(std::string(key)); }
  const std::set<std::string>& retired() const { return retired_; }
  // Drops the contributors restored from a checkpoint that no source re-attached: their counts stay in the totals.
  void drop_unclaimed_contributors();
  const std::unordered_map<std::string, std::unique_ptr<Contributor>>& contributors() const { return contributors_; }

  // --- Other writes ---
  // An increment, for sources that see increments rather than cumulative values.
  void add(LabelSet& label_set, CounterId counter, std::uint64_t amount);
  void record_request(LabelSet& label_set, std::uint64_t ttft_ns, std::uint64_t duration_ns, std::uint64_t tokens,
                      std::uint64_t gpu_time_ns);

  // --- Reading (sinks) ---
  const std::unordered_map<std::string, std::unique_ptr<Workload>>& workloads() const { return workloads_; }
  // Workloads with anything changed since the last mark_reported(), each with its changed label sets.
  const std::vector<Workload*>& changed_workloads() const { return changed_; }
  // After a report: the totals it carried become the baseline of the next deltas; nothing is changed any more.
  void mark_reported();
  // Removes workloads whose last contributor left more than `retention_ns` before `now_unix_ns`.
  std::size_t expire(std::uint64_t now_unix_ns, std::uint64_t retention_ns);
  // Bumped by every write: a sink can tell whether anything changed since it last looked.
  std::uint64_t generation() const { return generation_; }
  // Bounds of the slots in use (LabelSet::slot < label_set_slots()).
  std::uint32_t label_set_slots() const { return label_set_slots_.bound(); }
  std::uint32_t workload_slots() const { return workload_slots_.bound(); }

  // --- Source cursors ---
  // Where a source stands in a stream it reads again after a restart (NVML: the newest utilization sample taken and
  // the energy counter's reading, per GPU), saved in the checkpoint with the totals they led to, so that a restart
  // neither skips nor repeats. Keys name the source, e.g. "nvml:GPU-…:sample_us".
  // Other state that must be durable with the totals it counted uses the same map (budgets: "budget:<name>:…").
  void set_cursor(const std::string& key, std::uint64_t value);
  // Removes the cursors whose key starts with `prefix` (e.g. a budget no longer configured).
  void erase_cursors(std::string_view prefix);
  const std::map<std::string, std::uint64_t, std::less<>>& cursors() const { return cursors_; }

  // --- Restoring (the checkpoint) ---
  Workload& restore_workload(const WorkloadIdentity& identity, std::set<std::string> names,
                             std::uint64_t exited_unix_ns);
  // Returns the counter's slot in the label set.
  std::uint32_t restore_counter(LabelSet& label_set, CounterId counter, std::uint64_t total, std::uint64_t reported);
  // A contributor as saved: not claimed until its source re-attaches it.
  Contributor& restore_contributor(std::string_view key, Workload& workload, Source source);
  void restore_cell(Contributor& contributor, LabelSet& label_set, std::uint32_t slot, std::uint64_t last);
  void restore_retired(std::string key) { retired_.insert(std::move(key)); }

 private:
  std::uint32_t counter_slot(LabelSet& label_set, CounterId counter);
  std::uint32_t gauge_slot(LabelSet& label_set, CounterId counter);
  void touch(LabelSet& label_set);  // its numbers changed
  void touch(Workload& workload);   // its identity, names, pids, quarantines or liveness changed
  void mark_changed(Workload& workload);
  void set_live(Workload& workload, Source source, int change);
  void contributors_changed(Workload& workload);  // a contributor or a cell came or went: the checkpoint's concern
  void erase_contributor(Contributor& contributor);

  std::vector<CounterKey> keys_;
  std::map<CounterKey, CounterId, std::less<>> ids_;
  std::unordered_map<std::string, std::unique_ptr<Workload>> workloads_;
  std::unordered_map<std::string, std::unique_ptr<Contributor>> contributors_;
  std::set<std::string> retired_;
  std::map<std::string, std::uint64_t, std::less<>> cursors_;
  std::vector<Workload*> changed_;
  // Dense indexes for live objects, recycled.
  class Slots {
   public:
    std::uint32_t take() {
      if (free_.empty()) return next_++;
      const std::uint32_t slot = free_.back();
      free_.pop_back();
      return slot;
    }
    void give_back(std::uint32_t slot) { free_.push_back(slot); }
    std::uint32_t bound() const { return next_; }

   private:
    std::uint32_t next_ = 0;
    std::vector<std::uint32_t> free_;
  };
  Slots label_set_slots_, workload_slots_;
  std::uint64_t next_serial_ = 1;
  std::uint64_t generation_ = 0;
};

}  // namespace tally::ledger
