#pragma once
// The ledger's durable state: a sink that writes what the last published report carried, and the one place that
// restores it at start.
//
// What it holds (proto/tally/v1/checkpoint.proto): every workload's identity and totals with what was last
// reported (so totals survive and deltas continue), every contributor's last cumulative value per counter (so a
// source re-read after a restart adds only what is new, however long the agent was down), and the retired
// contributors whose files or map entries are not removed yet (so nothing is counted twice).
//
// When: after a report is published, and only when the ledger changed since the last checkpoint. The file is
// written and fsync'ed on a thread of its own: the event loop never waits for the disk. The caller learns which
// checkpoint is durable (durable_generation) and only then removes what it retired.
//
// A later durable outbox replaces the file: it stores the same bytes in the transaction that stores the report.

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/result.hpp"
#include "agent/base/unique_fd.hpp"
#include "agent/ledger/ledger.hpp"

namespace tally::agent {

// Encodes the ledger's state as the bytes of a tally.v1.LedgerCheckpoint, by hand (agent/base/protobuf_wire.hpp),
// keeping each workload's bytes until it changes: a checkpoint costs what changed since the last one plus a copy,
// not a walk over every counter (a node of 1,000 workloads x 16 label sets is ~100 ms through protobuf's classes).
// One encoder serves one ledger.
class CheckpointEncoder {
 public:
  std::string encode(const ledger::Ledger& ledger, std::uint64_t written_unix_ns);

 private:
  struct WorkloadBytes {
    std::uint64_t serial = 0;           // tells a reused slot from the workload that had it
    std::uint64_t content_version = 0;  // Workload::content_version when the bytes were made
    bool valid = false;
    std::string bytes;                  // a CheckpointWorkload, tag and length included
  };
  void encode_workload(const ledger::Ledger& ledger, const ledger::Workload& workload, std::string& out);

  std::vector<WorkloadBytes> workloads_;      // by Workload::slot
  std::vector<std::uint32_t> label_set_index_;  // by LabelSet::slot: its index in its workload's message
};

// The same, with an encoder of its own and the time now (tests, tools).
std::string save_checkpoint(const ledger::Ledger& ledger);
// Loads those bytes into an empty ledger: totals, what was reported, contributors (unclaimed until their sources
// re-attach them) and retired contributors. An Error says what is wrong (and loads nothing).
Result<void> restore_checkpoint(ledger::Ledger& ledger, std::string_view bytes, std::string_view source_name);

// Reads the checkpoint file into `ledger`. A missing file is a first start. A corrupt one is moved aside (next to it,
// with a .corrupt suffix, for the operator) and the Error says why: the caller logs it and starts empty.
Result<void> load_checkpoint(ledger::Ledger& ledger, const std::filesystem::path& path);

// Writes checkpoints on its own thread, newest first: one submitted while another is written replaces any that
// still waits (only the newest matters).
class CheckpointWriter {
 public:
  static Result<std::unique_ptr<CheckpointWriter>> start(std::filesystem::path path);
  // Waits for the checkpoint being written, then stops the thread.
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Hands over checkpoint `generation` (increasing).
  void submit(std::uint64_t generation, std::string bytes);
  // Writes `bytes` now, on the calling thread, after anything pending (the final checkpoint at shutdown).
  Result<void> write_now(std::uint64_t generation, std::string bytes);

  // Readable (an eventfd) when a write finished; call on_readable() to take the news.
  int fd() const { return event_.get(); }
  void on_readable();
  // The newest checkpoint known to be on disk, synced: 0 when none yet.
  std::uint64_t durable_generation() const;
  // The last write's error, if it failed (the writer retries with the next checkpoint).
  std::optional<Error> last_error() const;
  const std::filesystem::path& path() const { return path_; }

 private:
  explicit CheckpointWriter(std::filesystem::path path) : path_(std::move(path)) {}
  void run();

  std::filesystem::path path_;
  UniqueFd event_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::optional<std::pair<std::uint64_t, std::string>> pending_;  // guarded by mutex_
  bool writing_ = false;                                          // guarded by mutex_
  bool stopping_ = false;                                         // guarded by mutex_
  std::uint64_t durable_ = 0;                                     // guarded by mutex_
  std::optional<Error> error_;                                    // guarded by mutex_
  std::thread thread_;
};

}  // namespace tally::agent
