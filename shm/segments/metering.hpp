#pragma once
// The shared-memory metering source: the lifecycle of every client segment (registered, re-attached after an
// agent restart, drained, retired when its producer exits or when it fails validation) and the tenant rules that
// decide which label claims a client may make. It records nothing itself: a Listener (the agent's wiring into its
// ledger) is told what each segment holds.
//
// Work follows what changed: a drain reads the counters of the label sets and slots in use and the lanes with
// records; a producer's exit arrives as its pidfd becoming readable, never from polling /proc. One descriptor, fd(),
// covers the registration socket and every producer's pidfd (one per producer process, shared by its segments), for
// the event loop.
//
// A segment is retired only on a confirmed exit: its producer's pidfd readable, pidfd_open saying ESRCH, or /proc
// showing the pid gone (ENOENT) or started at another time. A transient failure (EMFILE, ENOMEM) to watch or check
// a producer leaves its segment live and unwatched; it is checked again at every sync until it is watched or gone.
//
// Retiring keeps the files: the caller removes them (remove_files) once what they held is durable elsewhere.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"
#include "agent/base/unique_fd.hpp"
#include "shm/segments/registration_server.hpp"
#include "shm/segments/segment_file.hpp"
#include "shm/segments/segment_reader.hpp"

namespace tally::shm {

// Who may claim which tenants in their label sets: a client matching a rule (by uid, or by a cgroup path prefix)
// may only claim the tenants of the rules it matches ("*": any). A client matching no rule is unrestricted.
struct TenantRule {
  std::optional<std::uint32_t> uid;
  std::string cgroup_prefix;
  std::vector<std::string> tenants;
  bool operator==(const TenantRule&) const = default;
};

// One client segment as the agent reads it.
struct Segment {
  std::string name;  // the file name: unique, chosen by the agent
  Registration registration;
  MappedFile file;
  std::optional<MappedFile> control;
  std::optional<SegmentReader> reader;  // absent when the segment never validated
  std::vector<LabelSet> label_sets{LabelSet{}};  // by handle, as reported: a refused tenant renamed
  std::vector<bool> refused{false};               // by handle
  std::vector<std::uint32_t> changed;  // handles whose counters or gauges changed in the last read
  std::uint64_t dropped = 0;           // events its lanes could not take, as last told
  bool active = true;                  // events came, or its counters moved, since its counters were last read
  // Readable once the producer has exited; shared by the producer's segments. Null while not watched (a transient
  // error): the segment stays live and is checked again.
  std::shared_ptr<const UniqueFd> pidfd;
};

class MeteringSource {
 public:
  // What a segment holds, told as it happens. `segment` stays valid until on_retired returns.
  class Listener {
   public:
    virtual ~Listener() = default;
    // A segment was attached (registered now, or found again after an agent restart).
    virtual void on_attached(const Segment& segment) = 0;
    // New label sets, changed counters or gauges (segment.changed), and the request events read now.
    virtual void on_drained(const Segment& segment, std::span<const RequestEvent> events) = 0;
    // The segment is final: its producer exited (after one last drain), or it failed validation
    // (`quarantine_reason` says why; what was validated before stays counted). It is never read again.
    virtual void on_retired(const Segment& segment, const std::string& quarantine_reason) = 0;
  };

  struct Options {
    std::filesystem::path socket_path;
    std::filesystem::path segment_dir;
    SegmentLimits limits;
    std::vector<TenantRule> tenant_rules;
    FsRoot fs;
    IdentityRules identity_rules;  // how a client's cgroup names its workload
    std::string instance_id;  // this agent's instance: part of every new segment's name
    // Bounds per client ([metering] in docs/operations.md): a registration past them is refused with the reason.
    std::size_t max_segments_per_uid = 1024, max_segments_per_cgroup = 1024;
    std::uint64_t max_bytes_per_uid = std::uint64_t{8} << 30;  // segment bytes (tmpfs) all of a uid's segments span
    std::uint64_t drain_budget = 65536;  // events taken from one segment per drain; the rest wait in its lanes
    mode_t socket_mode = 0666;
    std::optional<gid_t> socket_group;
  };

  // Listens for clients and re-attaches the segments a previous agent left, except those `already_retired` says
  // were folded into the totals before (their files are removed).
  static Result<std::unique_ptr<MeteringSource>> start(Options options, Listener& listener,
                                                       const std::function<bool(const std::string&)>& already_retired);
  ~MeteringSource();
  MeteringSource(const MeteringSource&) = delete;
  MeteringSource& operator=(const MeteringSource&) = delete;

  // Readable when a client registers or a producer exits; then call on_readable().
  int fd() const { return epoll_.get(); }
  void on_readable();

  // Drains the lanes (the request events): often, so that no lane fills. `every` drains every segment (and picks up
  // dropped counts); otherwise only those whose lane heads moved since they were last looked at. Work for an idle
  // segment: two loads in it (slots in use, the sum of their heads) and none in the agent's own state.
  void drain(bool every = true);
  // Reads segments' labels, counters and gauges (once per report: counters are exact whenever read). Work: the
  // label sets and slots in use of each segment read. `every` reads all (snapshots, the final report); otherwise
  // only the active ones: those whose lanes had events or whose counters moved at their last read. A segment that
  // only adds to counters after a quiet spell is read at the next `every`. Retires a segment that fails
  // validation, with the reason.
  void sync(bool every);

  // Removes a retired segment's files (its name as Segment::name).
  void remove_files(const std::string& name) const;

  std::size_t live_segments() const { return segments_.size(); }
  // The allowance word every label set of a segment attached from now on starts with, before the agent looked at it
  // (format::kAllowancePending while budgets govern reservations; 0: none). Written before the client is answered.
  void set_initial_allowance(std::uint64_t word) { initial_allowance_ = word; }
  // Every live segment, e.g. to write the budgets' decisions and allowances into their control files.
  template <typename Visit>
  void for_each_segment(Visit&& visit) const {
    for (const auto& segment : segments_) visit(*segment);
  }
  std::uint64_t quarantined() const { return quarantined_; }

 private:
  MeteringSource(Options options, Listener& listener) : options_(std::move(options)), listener_(listener) {}
  Result<void> attach(const Registration& registration);
  void restore(const std::function<bool(const std::string&)>& already_retired);
  enum class Read { events, totals, everything };
  std::optional<std::string> read_one(Segment& segment, Read read);  // the reason to quarantine it, if any
  void read_all(Read read, bool every = true);
  // Per segment (same index as segments_): where its lane heads are and what they were when last looked at.
  struct LaneWatch {
    SegmentReader::LaneHeads heads;
    std::uint32_t used = UINT32_MAX;
    std::uint64_t head_sum = 0;
  };
  static bool lanes_moved(LaneWatch& watch);
  void adopt_new_labels(Segment& segment);
  std::optional<std::string> refused_tenant(const Segment& segment, const LabelSet& labels) const;
  void retire(std::size_t index, const std::string& quarantine_reason);
  // Retires a segment whose client never received it (it hung up before the reply).
  void drop(const std::filesystem::path& segment_path);
  void on_exits();
  enum class Liveness { alive, exited, unknown };
  // Whether the segment's producer still runs, watching it (a shared pidfd) where it can. `exited` only when sure.
  Liveness liveness(Segment& segment);

  Options options_;
  Listener& listener_;
  std::unique_ptr<RegistrationServer> server_;
  UniqueFd epoll_;
  std::vector<std::unique_ptr<Segment>> segments_;
  std::vector<LaneWatch> watches_;  // kept apart from the segments, dense: a drain of idle segments reads only this
  std::vector<RequestEvent> events_;
  std::uint64_t quarantined_ = 0;
  // One pidfd per producer process (pid, start ticks), however many segments it registered: fds follow processes.
  std::map<std::pair<pid_t, std::uint64_t>, std::weak_ptr<const UniqueFd>> producers_;
  bool unwatched_ = false;
  std::uint64_t initial_allowance_ = 0;
  // What live segments each uid and cgroup holds, for the bounds above.
  struct Share {
    std::size_t segments = 0;
    std::uint64_t bytes = 0;
  };
  std::map<uid_t, Share> by_uid_;
  std::map<std::string, std::size_t> by_cgroup_;
  Result<void> admit(const Producer& producer, const WorkloadIdentity& identity, const SegmentShape& shape) const;
  void count(const Segment& segment, int sign);  // some segment's producer could not be watched: check again at the next sync
  // Segments found at start that could not be mapped for a transient reason (EMFILE): attached at a later sync.
  std::vector<Registration> reattach_;
};

}  // namespace tally::shm
