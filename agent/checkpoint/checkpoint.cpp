#include "agent/checkpoint/checkpoint.hpp"

#include <pthread.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <set>

#include "agent/base/clock.hpp"
#include "agent/base/files.hpp"
#include "agent/base/protobuf_wire.hpp"
#include "agent/ledger/value_wire.hpp"
#include "tally/v1/checkpoint.pb.h"

namespace tally::agent {
namespace {

constexpr std::uint32_t kCheckpointVersion = 3;  // 1 was metering.json; 2 kept contributors apart from workloads

}  // namespace

namespace field {
// LedgerCheckpoint
constexpr std::uint32_t kVersion = 1, kWrittenUnixNs = 2, kWorkloads = 3, kRetired = 5, kCursors = 6;
// CheckpointWorkload
constexpr std::uint32_t kId = 1, kKind = 2, kCgroupPath = 3, kAttributes = 4, kNames = 5, kExitedUnixNs = 6,
                        kLabelSets = 7, kContributors = 8;
constexpr std::uint32_t kMapKey = 1, kMapValue = 2;
// CheckpointLabelSet
constexpr std::uint32_t kLabels = 1, kRefused = 2, kCounters = 3;
// CheckpointCounter
constexpr std::uint32_t kCounterName = 1, kCounterSource = 2, kCounterKind = 3, kTotal = 4, kReported = 5;
// CheckpointContributor
constexpr std::uint32_t kContributorKey = 1, kCells = 2, kContributorSource = 4;
// CheckpointCell
constexpr std::uint32_t kCellLabelSet = 2, kCellCounter = 3, kCellLast = 4;
}  // namespace field

std::string CheckpointEncoder::encode(const ledger::Ledger& ledger, std::uint64_t written_unix_ns) {
  std::string out;
  wire::put_uint(out, field::kVersion, kCheckpointVersion);
  wire::put_uint(out, field::kWrittenUnixNs, written_unix_ns);
  if (workloads_.size() < ledger.workload_slots()) workloads_.resize(ledger.workload_slots());
  if (label_set_index_.size() < ledger.label_set_slots()) label_set_index_.resize(ledger.label_set_slots());
  for (const auto& [id, workload] : ledger.workloads()) {
    WorkloadBytes& cached = workloads_[workload->slot];
    if (cached.valid && cached.serial == workload->serial && cached.content_version == workload->content_version) {
      out += cached.bytes;
      continue;
    }
    // Changed since the last checkpoint. Cached only once reported: until then its `reported` values move without
    // a version bump (mark_reported), after that every change bumps content_version.
    cached.valid = false;
    if (workload->changed) {
      encode_workload(ledger, *workload, out);
      continue;
    }
    cached.bytes.clear();
    encode_workload(ledger, *workload, cached.bytes);
    cached.serial = workload->serial;
    cached.content_version = workload->content_version;
    cached.valid = true;
    out += cached.bytes;
  }
  for (const auto& key : ledger.retired()) wire::put_string(out, field::kRetired, key);
  for (const auto& [key, value] : ledger.cursors()) {
    const std::size_t entry = wire::begin_message(out, field::kCursors);
    wire::put_string(out, field::kMapKey, key);
    wire::put_uint(out, field::kMapValue, value);
    wire::end_message(out, entry);
  }
  return out;
}

void CheckpointEncoder::encode_workload(const ledger::Ledger& ledger, const ledger::Workload& workload,
                                        std::string& out) {
  const std::size_t begun = wire::begin_message(out, field::kWorkloads);
  const WorkloadIdentity& identity = workload.identity;
  wire::put_string(out, field::kId, identity.id);
  wire::put_string(out, field::kKind, to_string(identity.kind));
  wire::put_string(out, field::kCgroupPath, identity.cgroup_path);
  for (const auto& [key, value] : identity.attributes) {
    const std::size_t entry = wire::begin_message(out, field::kAttributes);
    wire::put_string(out, field::kMapKey, key);
    wire::put_string(out, field::kMapValue, value);
    wire::end_message(out, entry);
  }
  for (const auto& name : workload.names) wire::put_string(out, field::kNames, name);
  wire::put_uint(out, field::kExitedUnixNs, workload.exited() ? workload.exited_unix_ns : 0);
  std::uint32_t index = 0;
  for (const auto& [text, label_set] : workload.label_sets) {
    label_set_index_[label_set->slot] = index++;
    const std::size_t l = wire::begin_message(out, field::kLabelSets);
    wire::put_string(out, field::kLabels, text);
    wire::put_bool(out, field::kRefused, label_set->refused);
    for (const ledger::Counter& counter : label_set->counters) {
      const ledger::CounterKey& key = ledger.key(counter.id);
      const std::size_t c = wire::begin_message(out, field::kCounters);
      wire::put_string(out, field::kCounterName, key.name);
      wire::put_uint(out, field::kCounterSource, static_cast<std::uint64_t>(ledger::to_wire(key.source)));
      wire::put_uint(out, field::kCounterKind, static_cast<std::uint64_t>(ledger::to_wire(key.kind)));
      wire::put_uint(out, field::kTotal, counter.total);
      wire::put_uint(out, field::kReported, counter.reported);
      wire::end_message(out, c);
    }
    wire::end_message(out, l);
  }
  for (const ledger::Contributor* contributor : workload.contributors) {
    const std::size_t c = wire::begin_message(out, field::kContributors);
    wire::put_string(out, field::kContributorKey, contributor->key());
    wire::put_uint(out, field::kContributorSource, static_cast<std::uint64_t>(ledger::to_wire(contributor->source())));
    for (const ledger::Contributor::Cell& cell : contributor->cells()) {
      if (cell.gauge) continue;  // a level, re-read from the source: nothing to continue from
      const std::size_t e = wire::begin_message(out, field::kCells);
      wire::put_uint(out, field::kCellLabelSet, label_set_index_[cell.label_set->slot]);
      wire::put_uint(out, field::kCellCounter, cell.slot);
      wire::put_uint(out, field::kCellLast, cell.last);
      wire::end_message(out, e);
    }
    wire::end_message(out, c);
  }
  wire::end_message(out, begun);
}

std::string save_checkpoint(const ledger::Ledger& ledger) {
  return CheckpointEncoder().encode(ledger, unix_time_ns());
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
  std::set<std::string_view> ids, keys;
  for (const auto& w : checkpoint.workloads()) {
    if (w.id().empty() || !workload_kind_from_string(w.kind())) return corrupt("a workload without id or kind");
    if (!ids.insert(w.id()).second) return corrupt("a workload saved twice");
    for (const auto& l : w.label_sets()) {
      for (const auto& c : l.counters()) {
        if (c.name().empty() || !ledger::from_wire(c.source()) || !ledger::from_wire(c.kind())) {
          return corrupt("a malformed counter");
        }
      }
    }
    for (const auto& c : w.contributors()) {
      if (c.key().empty() || !ledger::from_wire(c.source())) return corrupt("a contributor without key or source");
      if (!keys.insert(c.key()).second) return corrupt("a contributor saved twice");
      for (const auto& cell : c.cells()) {
        if (cell.label_set() >= static_cast<std::uint32_t>(w.label_sets_size())) return corrupt("a cell's label set");
        const auto& label_set = w.label_sets(static_cast<int>(cell.label_set()));
        if (cell.counter() >= static_cast<std::uint32_t>(label_set.counters_size())) return corrupt("a cell's counter");
      }
    }
  }

  for (const auto& w : checkpoint.workloads()) {
    WorkloadIdentity identity;
    identity.id = w.id();
    identity.kind = *workload_kind_from_string(w.kind());
    identity.cgroup_path = w.cgroup_path();
    identity.attributes = {w.attributes().begin(), w.attributes().end()};
    ledger::Workload& workload =
        ledger.restore_workload(identity, {w.names().begin(), w.names().end()}, w.exited_unix_ns());
    std::vector<ledger::LabelSet*> label_sets;
    std::vector<std::vector<std::uint32_t>> slots;  // [label set][counter] -> slot in the ledger's label set
    for (const auto& l : w.label_sets()) {
      ledger::LabelSet& label_set = ledger.label_set(workload, l.labels());
      ledger.set_refused(label_set, l.refused());
      label_sets.push_back(&label_set);
      slots.emplace_back();
      for (const auto& c : l.counters()) {
        const auto id = ledger.counter(c.name(), *ledger::from_wire(c.source()), *ledger::from_wire(c.kind()));
        slots.back().push_back(ledger.restore_counter(label_set, id, c.total(), c.reported()));
      }
    }
    for (const auto& c : w.contributors()) {
      ledger::Contributor& contributor = ledger.restore_contributor(c.key(), workload, *ledger::from_wire(c.source()));
      for (const auto& cell : c.cells()) {
        ledger.restore_cell(contributor, *label_sets[cell.label_set()], slots[cell.label_set()][cell.counter()],
                            cell.last());
      }
    }
  }
  for (const auto& key : checkpoint.retired_contributors()) ledger.restore_retired(key);
  for (const auto& [key, value] : checkpoint.cursors()) ledger.set_cursor(key, value);
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
