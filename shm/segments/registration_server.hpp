#pragma once
// The agent's end of client registration: a Unix stream socket where each client sends one Request
// (registration_protocol.hpp) and receives its segment. Who the client is comes from SO_PEERCRED and
// /proc/PID/cgroup (collectors/workload_identity), never from the request.
//
// Made for an event loop: no threads of its own. fd() is an epoll descriptor that becomes readable when a
// connection or a request is pending; the owner's loop calls on_readable(), which never blocks. A client that
// connects and sends nothing costs one descriptor until it hangs up or `request_timeout` passes, and pending
// connections are bounded per uid and in all (the oldest is closed first).

#include <sys/socket.h>
#include <sys/types.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "agent/base/logging.hpp"
#include "agent/base/result.hpp"
#include "agent/base/workload_identity.hpp"
#include "shm/format/names.hpp"
#include "shm/format/registration_protocol.hpp"
#include "shm/segments/segment_file.hpp"

namespace tally::shm {

// What the agent knows about a segment, from the kernel: stored next to it as <name>.meta (agent-only, mode 0600)
// so that a restarted agent knows whose segment it is even when the producer has exited meanwhile.
struct Registration {
  std::filesystem::path segment_path;
  std::filesystem::path control_path;
  Producer producer;
  std::string workload_name;  // as the client called itself: display only
  WorkloadIdentity identity;
};

Result<void> write_registration(const Registration& registration, const std::filesystem::path& meta_path);
Result<Registration> read_registration(const std::filesystem::path& meta_path);
// Paths of a segment's companions: <stem>.ctl and <stem>.meta next to <stem>.seg.
std::filesystem::path control_path_of(const std::filesystem::path& segment_path);
std::filesystem::path meta_path_of(const std::filesystem::path& segment_path);

// Segment shapes the agent grants: a request's wishes are clamped into [minimum, maximum]; 0 asks for the default.
struct SegmentLimits {
  std::uint32_t default_lane_records = format::kDefaultLaneRecords, max_lane_records = format::kMaxLaneRecords;
  std::uint32_t default_slots = format::kDefaultSlots, max_slots = 256;
  std::uint32_t default_label_sets = format::kDefaultLabelSets, max_label_sets = format::kMaxLabelSets;
  // No segment spans more (tmpfs a client can fill, and what a report may read): a larger wish gets fewer lane
  // records first, then fewer slots, then fewer label sets.
  std::uint64_t max_segment_bytes = std::uint64_t{64} << 20;
};

// A registration request as the agent grants it: the wished-for shape clamped into the limits (lane records a power
// of two), the name made printable. Nothing in it is trusted for identity: that comes from SO_PEERCRED.
struct GrantedRequest {
  SegmentShape shape;
  std::string workload_name;  // printable ASCII, at most 63 bytes
};
// Parses the bytes a client sent on the registration socket (any local process may send anything): exactly one
// protocol::Request. A wrong size or magic is ErrorCode::invalid_argument (the reply says bad_request), another
// protocol version ErrorCode::unsupported (unsupported_version). Pure, so that it can be fuzzed.
Result<GrantedRequest> parse_registration_request(std::span<const std::byte> bytes, const SegmentLimits& limits);

class RegistrationServer {
 public:
  struct Options {
    std::filesystem::path socket_path{std::string(format::kDefaultSocketPath)};
    std::filesystem::path segment_dir = "/run/tally/segments";
    std::filesystem::path fs_root = "/";  // where proc/ is read (FsRoot)
    IdentityRules identity_rules;         // how a client's cgroup names its workload
    std::string instance_id;              // the agent instance: part of each segment's name, so names never repeat
    SegmentLimits limits;
    std::chrono::milliseconds request_timeout{2000};
    // Who may connect: the socket file's mode and group ([metering] socket_mode, socket_group).
    mode_t socket_mode = 0666;
    std::optional<gid_t> socket_group;
    // Connections whose request is not complete yet, per uid and in all: past either, the oldest is closed.
    std::size_t max_pending_per_uid = 16, max_pending = 256;
    // Asked before a segment is made for a client (e.g. its uid's and cgroup's share): an Error refuses it with
    // that message. Empty: everyone is admitted.
    std::function<Result<void>(const Producer&, const WorkloadIdentity&, const SegmentShape&)> admit;
    // Called when the reply granting a segment could not be sent (the client hung up meanwhile, e.g. it gave up
    // waiting): the client never got the segment, so the owner drops it instead of holding it, against the uid's
    // bounds, until the process exits. Empty: nothing is done.
    std::function<void(const Registration&)> on_unanswered;
  };
  // Called for each accepted client, after its segment exists and before the reply is sent. Returning an Error
  // refuses the client with that message (and removes the segment).
  using OnRegistered = std::function<Result<void>(const Registration&)>;

  // Creates the directories, binds and listens. Refuses to take over a socket another live agent answers on; a
  // stale socket file is replaced.
  static Result<std::unique_ptr<RegistrationServer>> listen(Options options, OnRegistered on_registered);
  ~RegistrationServer();
  RegistrationServer(const RegistrationServer&) = delete;
  RegistrationServer& operator=(const RegistrationServer&) = delete;

  int fd() const { return epoll_.get(); }
  void on_readable();

  std::uint64_t accepted() const { return accepted_; }
  std::uint64_t refused() const { return refused_; }

 private:
  RegistrationServer(Options options, OnRegistered on_registered)
      : options_(std::move(options)), on_registered_(std::move(on_registered)) {}
  void accept_all();
  void accept_one(int fd);
  void serve(int fd);
  void expire_pending();
  void close_pending(int fd);
  void evict_oldest(std::optional<uid_t> of_uid);
  void arm_timer();
  // Whether the whole reply was sent.
  bool reply(int fd, int status, const std::string& message, const CreatedSegment* segment);
  // Warnings a client can trigger at will: one line per uid (and kind) per 10 s, the next saying how many were not.
  enum class Warning : std::uint64_t {
    refused = 0,
    evicted = 1ull << 32,
    out_of_descriptors = 2ull << 32,
    unanswered = 3ull << 32,
  };
  void warn_limited(Warning kind, uid_t uid, const std::string& message);

  Options options_;
  OnRegistered on_registered_;
  UniqueFd listener_, epoll_, timer_;
  // Held so that an agent out of descriptors can still accept a connection to refuse it (instead of leaving it in
  // the backlog, where the listener stays readable and the loop would spin).
  UniqueFd reserve_;
  // Accepted, request not complete yet: what has come so far waits here, so a half-written request costs nothing
  // until more bytes arrive or its deadline passes (the timer).
  struct Pending {
    ucred peer{};  // SO_PEERCRED: fixed when the client connected, so read once, at accept
    std::chrono::steady_clock::time_point since;
    std::array<std::byte, sizeof(protocol::Request)> bytes{};
    std::size_t have = 0;
  };
  std::map<int, Pending> pending_;
  LogThrottle warnings_;
  std::uint64_t accepted_ = 0, refused_ = 0, sequence_ = 0;
};

}  // namespace tally::shm
