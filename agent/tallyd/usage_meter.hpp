#pragma once
// Workload metering, agent side: registers clients, drains every segment each tick, folds request events into
// histograms, and fills the UsageReport with per-workload totals, deltas, gauges, labels, identity, drops and
// tails. Totals survive restarts: live segments keep their own cumulative counters on tmpfs and are re-attached
// at start; the totals of segments that are gone live in the checkpoint (agent/checkpoint.hpp).
// Runs on the agent's event loop: no threads.

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/checkpoint/checkpoint.hpp"
#include "agent/config/config.hpp"
#include "agent/base/histogram.hpp"
#include "shm/segments/registration_server.hpp"
#include "shm/segments/segment_file.hpp"
#include "shm/segments/segment_reader.hpp"
#include "agent/base/histogram.hpp"
#include "tally/v1/feed.pb.h"

namespace tally::agent {

// What the agent folds per label set from request events.
struct RequestHistograms {
  ExponentialHistogram ttft_ns, duration_ns, tokens, gpu_time_ns;  // tokens: in + out per request
  void fold(const shm::RequestEvent& e) {
    ttft_ns.record(e.ttft_ns);
    duration_ns.record(e.duration_ns);
    tokens.record(e.tokens_in + e.tokens_out);
    gpu_time_ns.record(e.gpu_time_ns);
  }
};

class UsageMeter {
 public:
  // Loads the checkpoint, re-attaches the segments left by a previous instance, and listens for clients.
  static Result<std::unique_ptr<UsageMeter>> start(const MeteringSection& config);
  ~UsageMeter();
  UsageMeter(const UsageMeter&) = delete;
  UsageMeter& operator=(const UsageMeter&) = delete;

  int registration_fd() const { return server_->fd(); }
  void on_registration_readable() { server_->on_readable(); }

  // One tick: drains every segment; a segment that fails validation is quarantined.
  void drain();
  // Fills `report` (one WorkloadUsage per workload), then writes the checkpoint and removes the files of
  // segments that are gone. Exited producers are detected here, drained one last time and retired.
  void report(v1::UsageReport& report);

  std::size_t live_segments() const { return segments_.size(); }
  std::string status() const;

 private:
  struct LabelState {
    shm::LabelSet labels;  // as reported (a refused tenant renamed to refused_tenant)
    bool refused = false;
    CounterMap retired, reported;
    RequestHistograms histograms;
  };
  struct Workload {
    WorkloadIdentity identity;
    std::set<std::string> names;
    std::map<std::string, LabelState> label_sets;  // by label text
    std::uint64_t retired_dropped = 0, reported_dropped = 0;
    std::uint64_t exited_unix_ns = 0;
    std::vector<v1::QuarantinedSegment> quarantined;
  };
  struct Segment {
    shm::Registration registration;
    shm::MappedFile file;
    std::optional<shm::MappedFile> control;
    std::optional<shm::SegmentReader> reader;
    Workload* workload = nullptr;
    std::vector<LabelState*> label_states{nullptr};  // by handle
  };

  explicit UsageMeter(MeteringSection config) : config_(std::move(config)) {}
  Result<void> restore();
  Result<void> attach(const shm::Registration& registration);
  std::optional<std::string> drain_one(Segment& segment);  // the reason to quarantine it, if any
  void adopt_new_labels(Segment& segment);
  std::optional<std::string> refused_tenant(const Segment& segment, const shm::LabelSet& labels) const;
  void retire(std::size_t index, const std::string& quarantine_reason);
  std::map<std::string, CounterMap> current_totals(const Workload& workload) const;
  Checkpoint make_checkpoint() const;
  Workload& workload_for(const WorkloadIdentity& identity);

  MeteringSection config_;
  std::filesystem::path segment_dir_, checkpoint_path_;
  std::unique_ptr<shm::RegistrationServer> server_;
  std::map<std::string, Workload> workloads_;
  std::vector<std::unique_ptr<Segment>> segments_;
  std::set<std::string> retired_segments_;       // folded into the totals: never attach again
  std::vector<std::filesystem::path> to_remove_;  // removed once the checkpoint that retires them is written
  std::vector<shm::RequestEvent> events_;
  std::uint64_t quarantined_total_ = 0;
  bool checkpoint_written_ = false;
};

}  // namespace tally::agent
