#include "agent/ledger/ledger.hpp"

#include <algorithm>
#include <cassert>

#include "agent/base/clock.hpp"

namespace tally::ledger {
namespace {

std::vector<std::pair<std::string, std::string>> split_labels(std::string_view text) {
  std::vector<std::pair<std::string, std::string>> labels;
  while (!text.empty()) {
    const auto end = text.find('\n');
    const std::string_view pair = text.substr(0, end);
    const auto eq = pair.find('=');
    labels.emplace_back(std::string(pair.substr(0, eq)),
                        eq == std::string_view::npos ? std::string() : std::string(pair.substr(eq + 1)));
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
  }
  return labels;
}

}  // namespace

std::string_view to_string(Source source) {
  switch (source) {
    case Source::client: return "client";
    case Source::kernel_probes: return "kernel_probes";
    case Source::proc_sampling: return "proc_sampling";
    case Source::nvml: return "nvml";
  }
  return "unknown";
}

std::string_view to_string(Kind kind) {
  switch (kind) {
    case Kind::measured: return "measured";
    case Kind::apportioned: return "apportioned";
    case Kind::estimated: return "estimated";
  }
  return "unknown";
}

bool Workload::exited() const {
  for (std::uint32_t n : live) {
    if (n != 0) return false;
  }
  return true;
}

CounterId Ledger::counter(std::string_view name, Source source, Kind kind, bool gauge) {
  CounterKey key{std::string(name), source, kind, gauge};
  if (auto it = ids_.find(key); it != ids_.end()) return it->second;
  const auto id = static_cast<CounterId>(keys_.size());
  keys_.push_back(key);
  ids_.emplace(std::move(key), id);
  return id;
}

void Ledger::mark_changed(Workload& workload) {
  ++generation_;
  ++workload.content_version;
  if (!workload.changed) {
    workload.changed = true;
    changed_.push_back(&workload);
  }
}

void Ledger::contributors_changed(Workload& workload) {
  ++generation_;
  ++workload.content_version;
}

void Ledger::erase_contributor(Contributor& contributor) {
  Workload& workload = *contributor.workload_;
  std::erase(workload.contributors, &contributor);
  contributors_changed(workload);
  contributors_.erase(contributor.key_);  // destroys `contributor`
}

void Ledger::touch(Workload& workload) {
  ++workload.version;
  mark_changed(workload);
}

void Ledger::touch(LabelSet& label_set) {
  ++label_set.version;
  mark_changed(*label_set.workload);
  if (!label_set.changed) {
    label_set.changed = true;
    label_set.workload->changed_label_sets.push_back(&label_set);
  }
}

Workload& Ledger::workload(const WorkloadIdentity& identity) {
  auto [it, inserted] = workloads_.try_emplace(identity.id);
  if (inserted) {
    it->second = std::make_unique<Workload>();
    it->second->identity = identity;
    it->second->serial = next_serial_++;
    it->second->slot = workload_slots_.take();
    touch(*it->second);
  } else if (identity.attributes.size() > it->second->identity.attributes.size()) {
    it->second->identity = identity;
    touch(*it->second);
  }
  return *it->second;
}

Workload* Ledger::find_workload(std::string_view id) {
  auto it = workloads_.find(std::string(id));
  return it == workloads_.end() ? nullptr : it->second.get();
}

LabelSet& Ledger::label_set(Workload& workload, std::string_view text) {
  auto [it, inserted] = workload.label_sets.try_emplace(std::string(text));
  if (inserted) {
    auto made = std::make_unique<LabelSet>();
    made->workload = &workload;
    made->serial = next_serial_++;
    made->slot = label_set_slots_.take();
    made->text = std::string(text);
    made->labels = split_labels(text);
    it->second = std::move(made);
    touch(*it->second);
  }
  return *it->second;
}

void Ledger::set_refused(LabelSet& label_set, bool refused) {
  if (label_set.refused == refused) return;
  label_set.refused = refused;
  touch(label_set);
}

void Ledger::add_name(Workload& workload, const std::string& name) {
  if (workload.names.insert(name).second) touch(workload);
}

void Ledger::add_pid(Workload& workload, pid_t pid) {
  if (workload.pids[pid]++ == 0) touch(workload);
}

void Ledger::remove_pid(Workload& workload, pid_t pid) {
  auto it = workload.pids.find(pid);
  if (it == workload.pids.end()) return;
  if (--it->second == 0) {
    workload.pids.erase(it);
    touch(workload);
  }
}

void Ledger::quarantine(Workload& workload, Quarantine quarantine) {
  workload.quarantined.push_back(std::move(quarantine));
  while (workload.quarantined.size() > kQuarantineHistory) workload.quarantined.pop_front();
  touch(workload);
}

void Ledger::set_live(Workload& workload, Source source, int change) {
  const bool was_exited = workload.exited();
  workload.live[static_cast<std::size_t>(source)] += static_cast<std::uint32_t>(change);
  if (was_exited != workload.exited()) {
    workload.exited_unix_ns = workload.exited() ? unix_time_ns() : 0;
    touch(workload);
  }
}

Contributor& Ledger::contributor(std::string_view key, Workload& workload, Source source) {
  auto [it, inserted] = contributors_.try_emplace(std::string(key));
  if (inserted) {
    it->second = std::make_unique<Contributor>();
    it->second->key_ = std::string(key);
    it->second->workload_ = &workload;
    it->second->source_ = source;
    workload.contributors.push_back(it->second.get());
    contributors_changed(workload);
  }
  Contributor& c = *it->second;
  if (!c.claimed_) {
    c.claimed_ = true;
    set_live(*c.workload_, c.source_, +1);
  }
  return c;
}

Contributor* Ledger::find_contributor(std::string_view key) {
  auto it = contributors_.find(std::string(key));
  return it == contributors_.end() ? nullptr : it->second.get();
}

std::uint32_t Ledger::counter_slot(LabelSet& label_set, CounterId counter) {
  for (std::uint32_t i = 0; i < label_set.counters.size(); ++i) {
    if (label_set.counters[i].id == counter) return i;
  }
  label_set.counters.push_back(Counter{counter, 0, 0});
  touch(label_set);
  return static_cast<std::uint32_t>(label_set.counters.size() - 1);
}

std::uint32_t Ledger::gauge_slot(LabelSet& label_set, CounterId counter) {
  for (std::uint32_t i = 0; i < label_set.gauges.size(); ++i) {
    if (label_set.gauges[i].id == counter) return i;
  }
  label_set.gauges.push_back(Gauge{counter, 0});
  touch(label_set);
  return static_cast<std::uint32_t>(label_set.gauges.size() - 1);
}

CellRef Ledger::cell(Contributor& contributor, LabelSet& label_set, CounterId counter) {
  assert(label_set.workload == contributor.workload_ && "a contributor reports for its own workload only");
  const bool gauge = keys_[counter].gauge;
  const std::uint32_t slot = gauge ? gauge_slot(label_set, counter) : counter_slot(label_set, counter);
  for (std::uint32_t i = 0; i < contributor.cells_.size(); ++i) {
    const Contributor::Cell& c = contributor.cells_[i];
    if (c.label_set == &label_set && c.slot == slot && c.gauge == gauge) return i;
  }
  contributor.cells_.push_back(Contributor::Cell{&label_set, slot, gauge, 0});
  contributors_changed(*contributor.workload_);
  return static_cast<CellRef>(contributor.cells_.size() - 1);
}

void Ledger::update(Contributor& contributor, CellRef ref, std::uint64_t value) {
  Contributor::Cell& c = contributor.cells_[ref];
  if (value == c.last) return;
  if (c.gauge) {
    std::uint64_t& sum = c.label_set->gauges[c.slot].value;
    sum = sum - c.last + value;  // modular: exact while every contributor's share is added and removed in turn
  } else {
    // Below the last value the contributor's count restarted (new kernel maps, a recreated segment): all of it
    // is new. Totals never go down.
    c.label_set->counters[c.slot].total += value > c.last ? value - c.last : value;
  }
  c.last = value;
  touch(*c.label_set);
}

void Ledger::retire(Contributor& contributor) {
  for (const Contributor::Cell& c : contributor.cells_) {
    if (c.gauge && c.last != 0) {
      c.label_set->gauges[c.slot].value -= c.last;
      touch(*c.label_set);
    }
  }
  if (contributor.claimed_) set_live(*contributor.workload_, contributor.source_, -1);
  retired_.insert(contributor.key_);
  erase_contributor(contributor);
}

void Ledger::drop_unclaimed_contributors() {
  std::vector<Contributor*> unclaimed;
  for (const auto& [key, contributor] : contributors_) {
    if (!contributor->claimed_) unclaimed.push_back(contributor.get());
  }
  for (Contributor* contributor : unclaimed) erase_contributor(*contributor);
}

void Ledger::add(LabelSet& label_set, CounterId counter, std::uint64_t amount) {
  if (amount == 0) return;
  label_set.counters[counter_slot(label_set, counter)].total += amount;
  touch(label_set);
}

void Ledger::record_request(LabelSet& label_set, std::uint64_t ttft_ns, std::uint64_t duration_ns,
                            std::uint64_t tokens, std::uint64_t gpu_time_ns) {
  if (!label_set.tails) label_set.tails = std::make_unique<RequestTails>();
  label_set.tails->record(ttft_ns, duration_ns, tokens, gpu_time_ns);
  touch(label_set);
}

void Ledger::mark_reported() {
  for (Workload* w : changed_) {
    for (LabelSet* l : w->changed_label_sets) {
      for (Counter& c : l->counters) c.reported = c.total;
      l->changed = false;
    }
    w->changed_label_sets.clear();
    w->changed = false;
  }
  changed_.clear();
}

std::size_t Ledger::expire(std::uint64_t now_unix_ns, std::uint64_t retention_ns) {
  std::size_t expired = 0;
  for (auto it = workloads_.begin(); it != workloads_.end();) {
    const Workload& w = *it->second;
    const bool gone = w.exited() && w.exited_unix_ns != 0 && now_unix_ns - w.exited_unix_ns > retention_ns;
    if (!gone || w.changed) {
      ++it;
      continue;
    }
    // Contributors restored for it but never claimed go with it.
    for (const Contributor* contributor : w.contributors) contributors_.erase(contributor->key_);
    for (const auto& [text, label_set] : w.label_sets) label_set_slots_.give_back(label_set->slot);
    workload_slots_.give_back(w.slot);
    it = workloads_.erase(it);
    ++expired;
    ++generation_;
  }
  return expired;
}

Workload& Ledger::restore_workload(const WorkloadIdentity& identity, std::set<std::string> names,
                                   std::uint64_t exited_unix_ns) {
  Workload& w = workload(identity);
  w.names = std::move(names);
  w.exited_unix_ns = exited_unix_ns != 0 ? exited_unix_ns : unix_time_ns();  // nothing reports for it yet
  return w;
}

std::uint32_t Ledger::restore_counter(LabelSet& label_set, CounterId counter, std::uint64_t total,
                                      std::uint64_t reported) {
  const std::uint32_t slot = counter_slot(label_set, counter);
  Counter& c = label_set.counters[slot];
  c.total = total;
  c.reported = std::min(reported, total);
  return slot;
}

Contributor& Ledger::restore_contributor(std::string_view key, Workload& workload, Source source) {
  if (Contributor* twice = find_contributor(key)) erase_contributor(*twice);  // the last one saved wins
  auto made = std::make_unique<Contributor>();
  made->key_ = std::string(key);
  made->workload_ = &workload;
  made->source_ = source;
  Contributor& c = *made;
  contributors_[std::string(key)] = std::move(made);
  workload.contributors.push_back(&c);
  contributors_changed(workload);
  return c;
}

void Ledger::restore_cell(Contributor& contributor, LabelSet& label_set, std::uint32_t slot, std::uint64_t last) {
  if (slot >= label_set.counters.size() || label_set.workload != contributor.workload_) return;
  contributor.cells_.push_back(Contributor::Cell{&label_set, slot, false, last});
  contributors_changed(*contributor.workload_);
}

void Ledger::set_cursor(const std::string& key, std::uint64_t value) {
  auto [it, fresh] = cursors_.try_emplace(key, value);
  if (!fresh && it->second == value) return;
  it->second = value;
  ++generation_;
}

void Ledger::erase_cursors(std::string_view prefix) {
  const auto erased = std::erase_if(cursors_, [&](const auto& entry) { return entry.first.starts_with(prefix); });
  if (erased != 0) ++generation_;
}

}  // namespace tally::ledger
