#include "shm/segments/metering.hpp"

#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "agent/base/pidfd.hpp"
#include "agent/base/proc.hpp"
#include "shm/format/names.hpp"
#include "tally/client.h"

namespace tally::shm {
namespace {

// epoll data for the registration server's fd; pidfds are registered with their segment's pointer.
constexpr std::uint64_t kRegistrationTag = 0;

constexpr std::uint64_t kMaxSegmentBytes = std::uint64_t{1} << 34;
constexpr std::uint64_t kMaxControlBytes = std::uint64_t{1} << 24;

constexpr std::uint64_t kExitTag = 1;

// After /proc/PID/stat could not be read: true only when the pid is gone for sure. stat() needs no descriptor, so
// it answers even when the agent is out of them (EMFILE), where reading the file cannot.
bool proc_entry_gone(const FsRoot& fs, pid_t pid) {
  struct stat st {};
  return ::stat(fs.path(fmt::format("proc/{}", pid)).c_str(), &st) != 0 && (errno == ENOENT || errno == ESRCH);
}

}  // namespace

Result<std::unique_ptr<MeteringSource>> MeteringSource::start(
    Options options, Listener& listener, const std::function<bool(const std::string&)>& already_retired) {
  install_sigbus_guard();
  auto source = std::unique_ptr<MeteringSource>(new MeteringSource(std::move(options), listener));
  source->epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
  if (!source->epoll_) return make_error(ErrorCode::io, "epoll_create1: {}", std::strerror(errno));
  RegistrationServer::Options server;
  server.socket_path = source->options_.socket_path;
  server.segment_dir = source->options_.segment_dir;
  server.fs_root = source->options_.fs.root();
  server.identity_rules = source->options_.identity_rules;
  server.limits = source->options_.limits;
  server.instance_id = source->options_.instance_id;
  server.socket_mode = source->options_.socket_mode;
  server.socket_group = source->options_.socket_group;
  MeteringSource* raw = source.get();
  server.admit = [raw](const Producer& p, const WorkloadIdentity& id, const SegmentShape& shape) {
    return raw->admit(p, id, shape);
  };
  server.on_unanswered = [raw](const Registration& r) { raw->drop(r.segment_path); };
  auto listening = RegistrationServer::listen(server, [raw](const Registration& r) { return raw->attach(r); });
  if (!listening) return listening.error();
  source->server_ = std::move(*listening);
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = kRegistrationTag;
  if (::epoll_ctl(source->epoll_.get(), EPOLL_CTL_ADD, source->server_->fd(), &event) != 0) {
    return make_error(ErrorCode::io, "epoll_ctl: {}", std::strerror(errno));
  }
  source->restore(already_retired);
  return source;
}

MeteringSource::~MeteringSource() = default;

void MeteringSource::restore(const std::function<bool(const std::string&)>& already_retired) {
  std::error_code ec;
  std::vector<std::filesystem::path> found;
  for (const auto& entry : std::filesystem::directory_iterator(options_.segment_dir, ec)) {
    if (entry.path().extension() == ".seg") found.push_back(entry.path());
  }
  std::size_t attached = 0;
  for (const auto& path : found) {
    const std::string name = path.filename().string();
    if (already_retired(name)) {
      remove_files(name);  // folded into the totals before the last agent stopped: never count it twice
      continue;
    }
    auto registration = read_registration(meta_path_of(path));
    if (!registration) {
      // Created but never handed to a client (the agent died in between): nobody wrote to it.
      spdlog::warn("metering: removing {}: {}", path.string(), registration.error().message);
      remove_files(name);
      continue;
    }
    registration->segment_path = path;
    registration->control_path = control_path_of(path);
    if (auto done = attach(*registration); !done) {
      spdlog::error("metering: cannot re-attach {}: {}", path.string(), done.error().message);
      // Out of descriptors or memory for now: tried again at each sync, its producer's usage is still there.
      if (done.error().code == ErrorCode::io) reattach_.push_back(*registration);
    } else {
      ++attached;
    }
  }
  // Producers that exited while no agent ran: one last drain, then retired.
  on_exits();
  if (attached != 0) spdlog::info("metering: {} segments re-attached", attached);
}

Result<void> MeteringSource::attach(const Registration& registration) {
  auto segment = std::make_unique<Segment>();
  segment->name = registration.segment_path.filename().string();
  segment->registration = registration;
  auto file = MappedFile::open(registration.segment_path, sizeof(format::Header), kMaxSegmentBytes);
  if (!file) return file.error();
  segment->file = std::move(*file);
  if (auto control = MappedFile::open(registration.control_path, sizeof(format::ControlHeader), kMaxControlBytes)) {
    segment->control.emplace(std::move(*control));
    if (initial_allowance_ != 0) {
      // A label set is governed from its first reservation on: words found set (a restart) are kept.
      const auto& header = *reinterpret_cast<const format::ControlHeader*>(segment->control->bytes().data());
      for (std::uint32_t handle = 1; handle < format::load_relaxed(header.label_capacity); ++handle) {
        if (allowance(*segment->control, handle) == 0) set_allowance(*segment->control, handle, initial_allowance_);
      }
    }
  }
  auto reader = SegmentReader::attach(segment->file.bytes());
  segments_.push_back(std::move(segment));
  watches_.emplace_back();
  Segment& s = *segments_.back();
  count(s, +1);
  listener_.on_attached(s);
  if (!reader) {
    retire(segments_.size() - 1, reader.error().message);
    return {};  // registered (the client is answered), but never read
  }
  s.reader.emplace(std::move(*reader));
  watches_.back().heads = s.reader->lane_heads();
  // A producer gone already is retired by the next on_exits(); one that cannot be watched now stays live.
  if (liveness(s) == Liveness::unknown) unwatched_ = true;
  return {};
}

MeteringSource::Liveness MeteringSource::liveness(Segment& s) {
  auto exited_now = [](const UniqueFd& pidfd) {
    switch (process_state(pidfd)) {
      case ProcessState::alive:
        return Liveness::alive;
      case ProcessState::exited:
        return Liveness::exited;
      default:
        return Liveness::unknown;
    }
  };
  if (s.pidfd) return exited_now(*s.pidfd);
  const Producer& producer = s.registration.producer;
  const auto key = std::make_pair(producer.pid, producer.start_ticks);
  if (auto shared = producers_[key].lock()) {  // another segment of the same process is watched already
    s.pidfd = std::move(shared);
    return exited_now(*s.pidfd);
  }
  UniqueFd pidfd = open_pidfd(producer.pid);
  if (!pidfd && errno == ESRCH) return Liveness::exited;
  // Opened first, checked second: a pid reused between the two would show another start time here.
  const auto ticks = read_process_start_ticks(options_.fs, producer.pid);
  if (!ticks) return proc_entry_gone(options_.fs, producer.pid) ? Liveness::exited : Liveness::unknown;
  if (*ticks != producer.start_ticks) return Liveness::exited;
  if (!pidfd) return Liveness::unknown;  // alive, but no descriptor to watch it with (EMFILE): checked again
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u64 = kExitTag;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, pidfd.get(), &event) != 0) return Liveness::unknown;
  s.pidfd = std::make_shared<const UniqueFd>(std::move(pidfd));
  producers_[key] = s.pidfd;
  return exited_now(*s.pidfd);
}

Result<void> MeteringSource::admit(const Producer& producer, const WorkloadIdentity& identity,
                                   const SegmentShape& shape) const {
  const std::uint64_t bytes =
      format::compute_layout(shape.label_capacity, shape.slot_count, shape.lane_records).segment_size;
  const auto uid = by_uid_.find(producer.uid);
  const Share share = uid == by_uid_.end() ? Share{} : uid->second;
  if (share.segments >= options_.max_segments_per_uid) {
    return make_error(ErrorCode::invalid_argument, "uid {} holds {} segments, the most allowed ([metering] "
                      "max_segments_per_uid); retry after some of its processes exit", producer.uid, share.segments);
  }
  if (share.bytes + bytes > options_.max_bytes_per_uid) {
    return make_error(ErrorCode::invalid_argument, "uid {} holds {} MiB of segments; {} MiB more would pass "
                      "[metering] max_mib_per_uid ({} MiB)", producer.uid, share.bytes >> 20, (bytes + (1 << 20) - 1) >> 20,
                      options_.max_bytes_per_uid >> 20);
  }
  const auto cgroup = by_cgroup_.find(identity.cgroup_path);
  if (cgroup != by_cgroup_.end() && cgroup->second >= options_.max_segments_per_cgroup) {
    return make_error(ErrorCode::invalid_argument, "cgroup {} holds {} segments, the most allowed ([metering] "
                      "max_segments_per_cgroup)", identity.cgroup_path, cgroup->second);
  }
  return {};
}

void MeteringSource::count(const Segment& segment, int sign) {
  Share& share = by_uid_[segment.registration.producer.uid];
  std::size_t& in_cgroup = by_cgroup_[segment.registration.identity.cgroup_path];
  const std::uint64_t bytes = segment.file.bytes().size();
  if (sign > 0) {
    ++share.segments;
    share.bytes += bytes;
    ++in_cgroup;
    return;
  }
  --share.segments;
  share.bytes -= bytes;
  --in_cgroup;
  if (share.segments == 0) by_uid_.erase(segment.registration.producer.uid);
  if (in_cgroup == 0) by_cgroup_.erase(segment.registration.identity.cgroup_path);
}

void MeteringSource::on_readable() {
  epoll_event events[64];
  const int n = ::epoll_wait(epoll_.get(), events, 64, 0);
  bool exits = false;
  for (int i = 0; i < n; ++i) {
    if (events[i].data.u64 == kRegistrationTag) {
      server_->on_readable();
    } else {
      exits = true;
    }
  }
  if (exits) on_exits();
}

void MeteringSource::on_exits() {
  unwatched_ = false;
  for (std::size_t i = 0; i < segments_.size();) {
    Segment& s = *segments_[i];
    const Liveness state = liveness(s);
    if (state != Liveness::exited) {  // running, or not known for sure: a live segment is never retired on a guess
      unwatched_ = unwatched_ || state == Liveness::unknown;
      ++i;
      continue;
    }
    // The producer exited: one last read of everything, then the segment is final.
    if (auto reason = read_one(s, Read::everything)) {
      retire(i, *reason);
    } else {
      spdlog::info("metering: pid {} ({}) exited; segment drained one last time", s.registration.producer.pid,
                   s.registration.identity.id);
      retire(i, "");
    }
  }
}

std::optional<std::string> MeteringSource::refused_tenant(const Segment& segment, const LabelSet& labels) const {
  if (options_.tenant_rules.empty()) return std::nullopt;
  bool restricted = false, allowed = false;
  const std::string tenant = labels.value_of("tenant");
  for (const TenantRule& rule : options_.tenant_rules) {
    const bool matches = (rule.uid && *rule.uid == segment.registration.producer.uid) ||
                         (!rule.cgroup_prefix.empty() &&
                          segment.registration.identity.cgroup_path.starts_with(rule.cgroup_prefix));
    if (!matches) continue;
    restricted = true;
    for (const auto& t : rule.tenants) allowed = allowed || t == "*" || t == tenant;
  }
  bool has_tenant = false;
  for (const auto& [k, v] : labels.pairs) has_tenant = has_tenant || k == "tenant";
  if (!restricted || !has_tenant || allowed) return std::nullopt;
  return tenant;
}

void MeteringSource::adopt_new_labels(Segment& segment) {
  const SegmentReader& reader = *segment.reader;
  while (segment.label_sets.size() < reader.label_count()) {
    const auto handle = static_cast<std::uint32_t>(segment.label_sets.size());
    LabelSet labels = reader.label_set(handle);
    bool refused = false;
    if (auto tenant = refused_tenant(segment, labels)) {
      // Reported, under a name that says it was refused, and denied to the client: never billed as the claim.
      refused = true;
      std::string text;
      for (auto& [k, v] : labels.pairs) {
        if (k == "tenant") k = "refused_tenant";
        format::append_label_pair(text, k, v);
      }
      labels.text = std::move(text);
      spdlog::warn("metering: pid {} (uid {}, {}) may not claim tenant '{}': label set {} refused",
                   segment.registration.producer.pid, segment.registration.producer.uid,
                   segment.registration.identity.id, *tenant, handle);
      if (segment.control) set_decision(*segment.control, handle, TALLY_DENY, TALLY_REASON_LABELS_REFUSED);
    }
    segment.label_sets.push_back(std::move(labels));
    segment.refused.push_back(refused);
  }
}

std::optional<std::string> MeteringSource::read_one(Segment& segment, Read read) {
  if (!segment.reader) return std::nullopt;
  events_.clear();
  segment.changed.clear();
  const std::size_t known = segment.label_sets.size();
  // A producer's last read takes everything; otherwise each segment gets its budget per drain.
  const std::uint64_t budget = read == Read::everything ? UINT64_MAX : options_.drain_budget;
  Result<void> done = read != Read::totals ? segment.reader->drain_events(events_, budget) : Result<void>();
  if (done && read != Read::events) {
    done = segment.reader->read_totals();
    if (done) segment.changed = segment.reader->changed();
  }
  // A truncated file reads as zeros after the SIGBUS guard stepped in: even this read's results are suspect.
  if (!segment.file.intact()) return std::string("segment file was truncated or resized by its writer");
  if (!done) return done.error().message;
  adopt_new_labels(segment);
  if (read != Read::events) segment.active = false;  // read now: active again once something moves
  if (!segment.changed.empty() || !events_.empty() || segment.label_sets.size() != known) segment.active = true;
  if (!segment.changed.empty() || !events_.empty() || segment.label_sets.size() != known ||
      segment.reader->dropped() != segment.dropped) {
    segment.dropped = segment.reader->dropped();
    listener_.on_drained(segment, events_);
  }
  return std::nullopt;
}

void MeteringSource::read_all(Read read, bool every) {
  for (std::size_t i = 0; i < segments_.size();) {
    if (!every && !segments_[i]->active) {
      ++i;
      continue;
    }
    if (auto reason = read_one(*segments_[i], read)) {
      retire(i, *reason);
    } else {
      ++i;
    }
  }
}

bool MeteringSource::lanes_moved(LaneWatch& watch) {
  const SegmentReader::LaneHeads& heads = watch.heads;
  if (heads.slots_used == nullptr) return false;  // never validated: never read
  const std::uint32_t used = std::min(format::load_acquire(*heads.slots_used), heads.slot_count);
  std::uint64_t sum = 0;
  for (std::uint32_t s = 0; s < used; ++s) {
    sum += format::load_acquire(*reinterpret_cast<const std::uint64_t*>(heads.first_head + s * heads.stride));
  }
  if (used == watch.used && sum == watch.head_sum) return false;
  watch.used = used;
  watch.head_sum = sum;
  return true;
}

void MeteringSource::drain(bool every) {
  if (every) {
    read_all(Read::events);
    return;
  }
  for (std::size_t i = 0; i < segments_.size();) {
    // The next segments' words are fetched while this one is looked at: idle segments cost their cache misses in
    // parallel, not one after another.
    if (i + 4 < watches_.size() && watches_[i + 4].heads.slots_used != nullptr) {
      __builtin_prefetch(watches_[i + 4].heads.slots_used);
      __builtin_prefetch(watches_[i + 4].heads.first_head);
    }
    if (!lanes_moved(watches_[i])) {
      ++i;
      continue;
    }
    if (auto reason = read_one(*segments_[i], Read::events)) {
      retire(i, *reason);
    } else {
      if (segments_[i]->reader->backlog()) watches_[i].used = UINT32_MAX;  // cut short: read again next time
      ++i;
    }
  }
}
void MeteringSource::sync(bool every) {
  if (!reattach_.empty()) {
    auto waiting = std::exchange(reattach_, {});
    for (const Registration& r : waiting) {
      if (auto done = attach(r); !done && done.error().code == ErrorCode::io) reattach_.push_back(r);
    }
  }
  if (unwatched_) on_exits();
  read_all(Read::totals, every);
}

void MeteringSource::drop(const std::filesystem::path& segment_path) {
  for (std::size_t i = 0; i < segments_.size(); ++i) {
    if (segments_[i]->registration.segment_path == segment_path) {
      retire(i, "");  // nothing was ever written to it: the client never had it
      return;
    }
  }
}

void MeteringSource::retire(std::size_t index, const std::string& quarantine_reason) {
  std::unique_ptr<Segment> segment = std::move(segments_[index]);
  segments_.erase(segments_.begin() + static_cast<std::ptrdiff_t>(index));
  count(*segment, -1);
  watches_.erase(watches_.begin() + static_cast<std::ptrdiff_t>(index));
  if (segment->pidfd && segment->pidfd.use_count() == 1) {  // the producer's last segment: its pidfd closes now
    producers_.erase({segment->registration.producer.pid, segment->registration.producer.start_ticks});
  }
  // Told before anything else: a client that sees the state word leaves this segment and registers again, off its
  // hot path. Its control file is read-only to it, so only the agent can say so.
  if (segment->control && segment->control->bytes().size() >= sizeof(format::ControlHeader)) {
    auto& control = *reinterpret_cast<format::ControlHeader*>(segment->control->bytes().data());
    format::store_release(control.state, format::kSegmentRetired);
  }
  if (!quarantine_reason.empty()) {
    ++quarantined_;
    spdlog::error("metering: segment {} of pid {} ({}) quarantined: {}", segment->registration.segment_path.string(),
                  segment->registration.producer.pid, segment->registration.identity.id, quarantine_reason);
  }
  listener_.on_retired(*segment, quarantine_reason);
}

void MeteringSource::remove_files(const std::string& name) const {
  const auto path = options_.segment_dir / name;
  std::error_code ec;
  std::filesystem::remove(path, ec);
  std::filesystem::remove(control_path_of(path), ec);
  std::filesystem::remove(meta_path_of(path), ec);
}

}  // namespace tally::shm
