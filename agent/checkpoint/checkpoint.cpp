#include "agent/checkpoint/checkpoint.hpp"

#include <pthread.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <unordered_map>

#include "agent/base/clock.hpp"
#include "agent/base/files.hpp"
#include "agent/ledger/value_wire.hpp"
#include "tally/v1/checkpoint.pb.h"

namespace tally::agent {
namespace {

constexpr std::uint32_t kCheckpointVersion = 2;  // 1 was metering.json, before the ledger

}  // namespace

std::string save_checkpoint(const ledger::Ledger& ledger) {
  v1::LedgerCheckpoint checkpoint;
  checkpoint.set_version(kCheckpointVersion);
  checkpoint.set_written_unix_ns(unix_time_ns());
  std::unordered_map<const ledger::Workload*, std::uint32_t> workload_index;
  std::unordered_map<const ledger::LabelSet*, std::uint32_t> label_set_index;
  for (const auto& [id, workload] : ledger.workloads()) {
    workload_index[workload.get()] = static_cast<std::uint32_t>(checkpoint.workloads_size());
    v1::CheckpointWorkload& w = *checkpoint.add_workloads();
    w.set_id(workload->identity.id);
    w.set_kind(std::string(to_string(workload->identity.kind)));
    w.set_cgroup_path(workload->identity.cgroup_path);
    for (const auto& [k, v] : workload->identity.attributes) (*w.mutable_attributes())[k] = v;
    for (const auto& name : workload->names) w.add_names(name);
    w.set_exited_unix_ns(workload->exited() ? workload->exited_unix_ns : 0);
    for (const auto& [text, label_set] : workload->label_sets) {
      label_set_index[label_set.get()] = static_cast<std::uint32_t>(w.label_sets_size());
      v1::CheckpointLabelSet& l = *w.add_label_sets();
      l.set_labels(text);
      l.set_refused(label_set->refused);
      for (const ledger::Counter& counter : label_set->counters) {
        const ledger::CounterKey& key = ledger.key(counter.id);
        v1::CheckpointCounter& c = *l.add_counters();
        c.set_name(key.name);
        c.set_source(ledger::to_wire(key.source));
        c.set_kind(ledger::to_wire(key.kind));
        c.set_total(counter.total);
        c.set_reported(counter.reported);
      }
    }
  }
  for (const auto& [key, contributor] : ledger.contributors()) {
    v1::CheckpointContributor& c = *checkpoint.add_contributors();
    c.set_key(key);
    c.set_workload(workload_index.at(&contributor->workload()));
    c.set_source(ledger::to_wire(contributor->source()));
    for (const ledger::Contributor::Cell& cell : contributor->cells()) {
      if (cell.gauge) continue;  // a level, re-read from the source: nothing to continue from
      v1::CheckpointCell& out = *c.add_cells();
      out.set_workload(workload_index.at(cell.label_set->workload));
      out.set_label_set(label_set_index.at(cell.label_set));
      out.set_counter(cell.slot);
      out.set_last(cell.last);
    }
  }
  for (const auto& key : ledger.retired()) checkpoint.add_retired_contributors(key);
  return checkpoint.SerializeAsString();
}

Result<void> restore_checkpoint(ledger::Ledger& ledger, std::string_view bytes, std::string_view source_name) {
  v1::LedgerCheckpoint checkpoint;
  if (!checkpoint.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return make_error(ErrorCode::invalid_argument, "{}: not a tally checkpoint (protobuf does not parse)", source_name);
  }
  if (checkpoint.version() != kCheckpointVersion) {
    return make_error(ErrorCode::unsupported, "{}: checkpoint version {} (this agent reads {})", source_name,
                      checkpoint.version(), kCheckpointVersion);
  }
  // Checked whole before anything is loaded: a corrupt file loads nothing.
  auto corrupt = [&](std::string_view what) {
    return make_error(ErrorCode::invalid_argument, "{}: corrupt checkpoint: {}", source_name, what);
  };
  for (const auto& w : checkpoint.workloads()) {
    if (w.id().empty() || !workload_kind_from_string(w.kind())) return corrupt("a workload without id or kind");
    for (const auto& l : w.label_sets()) {
      for (const auto& c : l.counters()) {
        if (c.name().empty() || !ledger::from_wire(c.source()) || !ledger::from_wire(c.kind())) return corrupt("a malformed counter");
      }
    }
  }
  for (const auto& c : checkpoint.contributors()) {
    if (c.key().empty() || c.workload() >= static_cast<std::uint32_t>(checkpoint.workloads_size()) ||
        !ledger::from_wire(c.source())) {
      return corrupt("a contributor without key, workload or source");
    }
    for (const auto& cell : c.cells()) {
      if (cell.workload() >= static_cast<std::uint32_t>(checkpoint.workloads_size())) return corrupt("a cell's workload");
      const auto& w = checkpoint.workloads(static_cast<int>(cell.workload()));
      if (cell.label_set() >= static_cast<std::uint32_t>(w.label_sets_size())) return corrupt("a cell's label set");
      if (cell.counter() >= static_cast<std::uint32_t>(w.label_sets(static_cast<int>(cell.label_set())).counters_size())) {
        return corrupt("a cell's counter");
      }
    }
  }

  std::vector<ledger::Workload*> workloads;
  std::vector<std::vector<ledger::LabelSet*>> label_sets;
  std::vector<std::vector<std::vector<std::uint32_t>>> slots;  // [workload][label set][counter] -> slot
  for (const auto& w : checkpoint.workloads()) {
    WorkloadIdentity identity;
    identity.id = w.id();
    identity.kind = *workload_kind_from_string(w.kind());
    identity.cgroup_path = w.cgroup_path();
    identity.attributes = {w.attributes().begin(), w.attributes().end()};
    ledger::Workload& workload =
        ledger.restore_workload(identity, {w.names().begin(), w.names().end()}, w.exited_unix_ns());
    workloads.push_back(&workload);
    label_sets.emplace_back();
    slots.emplace_back();
    for (const auto& l : w.label_sets()) {
      ledger::LabelSet& label_set = ledger.label_set(workload, l.labels());
      ledger.set_refused(label_set, l.refused());
      label_sets.back().push_back(&label_set);
      slots.back().emplace_back();
      for (const auto& c : l.counters()) {
        const auto id = ledger.counter(c.name(), *ledger::from_wire(c.source()), *ledger::from_wire(c.kind()));
        slots.back().back().push_back(ledger.restore_counter(label_set, id, c.total(), c.reported()));
      }
    }
  }
  for (const auto& c : checkpoint.contributors()) {
    ledger::Contributor& contributor =
        ledger.restore_contributor(c.key(), *workloads[c.workload()], *ledger::from_wire(c.source()));
    for (const auto& cell : c.cells()) {
      ledger.restore_cell(contributor, *label_sets[cell.workload()][cell.label_set()],
                          slots[cell.workload()][cell.label_set()][cell.counter()], cell.last());
    }
  }
  for (const auto& key : checkpoint.retired_contributors()) ledger.restore_retired(key);
  return {};
}

Result<void> load_checkpoint(ledger::Ledger& ledger, const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return {};
  const auto bytes = read_file(path);
  auto restored = bytes ? restore_checkpoint(ledger, *bytes, path.string())
                        : Result<void>(make_error(ErrorCode::io, "{}: cannot read", path.string()));
  if (restored) return {};
  auto aside = path;
  aside += ".corrupt";
  std::filesystem::rename(path, aside, ec);
  return make_error(restored.error().code, "{} (moved aside to {})", restored.error().message, aside.string());
}

Result<std::unique_ptr<CheckpointWriter>> CheckpointWriter::start(std::filesystem::path path) {
  std::unique_ptr<CheckpointWriter> writer(new CheckpointWriter(std::move(path)));
  writer->event_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!writer->event_) return make_error(ErrorCode::io, "eventfd: {}", std::strerror(errno));
  writer->thread_ = std::thread([w = writer.get()] { w->run(); });
  return writer;
}

CheckpointWriter::~CheckpointWriter() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CheckpointWriter::submit(std::uint64_t generation, std::string bytes) {
  {
    std::lock_guard lock(mutex_);
    pending_.emplace(generation, std::move(bytes));
  }
  wake_.notify_all();
}

Result<void> CheckpointWriter::write_now(std::uint64_t generation, std::string bytes) {
  std::unique_lock lock(mutex_);
  pending_.reset();  // superseded by this one
  wake_.wait(lock, [this] { return !writing_; });
  writing_ = true;  // keeps the thread off the file meanwhile
  lock.unlock();
  auto written = write_file_atomically(path_, bytes, Durability::synced);
  lock.lock();
  writing_ = false;
  if (written) durable_ = std::max(durable_, generation);
  wake_.notify_all();
  return written;
}

void CheckpointWriter::run() {
  // Signals are the event loop's: this thread must never be the one the kernel picks to deliver them to.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return stopping_ || (pending_ && !writing_); });
    if (!pending_ || writing_) return;  // stopping, nothing left to write
    auto [generation, bytes] = std::move(*pending_);
    pending_.reset();
    writing_ = true;
    lock.unlock();
    auto written = write_file_atomically(path_, bytes, Durability::synced);
    lock.lock();
    writing_ = false;
    if (written) {
      durable_ = std::max(durable_, generation);
      error_.reset();
    } else {
      error_ = written.error();
    }
    wake_.notify_all();
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(event_.get(), &one, sizeof one);
  }
}

void CheckpointWriter::on_readable() {
  std::uint64_t count = 0;
  [[maybe_unused]] const auto n = ::read(event_.get(), &count, sizeof count);
}

std::uint64_t CheckpointWriter::durable_generation() const {
  std::lock_guard lock(mutex_);
  return durable_;
}

std::optional<Error> CheckpointWriter::last_error() const {
  std::lock_guard lock(mutex_);
  return error_;
}

}  // namespace tally::agent
