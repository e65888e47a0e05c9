// The workload-side client library behind tally/client.h: registration with the agent, label interning, and the
// hot path (per-thread slots written with single-writer stores). See docs/shm-format.md for the format and the
// concurrency contract, and shm/README.md for the design.
//
// Hot path shape: each thread caches (client, attach epoch) -> its slot in a thread_local; a call compares two
// words, then does plain loads and stores into memory only this thread writes. Everything else (attaching,
// taking a slot, interning) is off the hot path.

#include "tally/client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent/base/clock.hpp"
#include "agent/base/unique_fd.hpp"
#include "agent/base/unix_socket.hpp"
#include "shm/format/names.hpp"
#include "shm/format/registration_protocol.hpp"
#include "shm/format/segment_format.hpp"

namespace fmt_ns = tally::shm::format;
namespace proto_ns = tally::shm::protocol;

struct tally_client {
  // Read on every hot-path call by every thread: alone on its line, written once per attach.
  alignas(64) std::atomic<std::uint64_t> epoch{0};  // 0: not attached; else a process-unique attach id

  // Set before `epoch` is published (release), immutable afterwards.
  alignas(64) std::byte* segment = nullptr;
  std::size_t segment_size = 0;
  const std::byte* control = nullptr;
  std::size_t control_size = 0;
  fmt_ns::Header* header = nullptr;
  fmt_ns::Layout layout{};
  std::uint32_t label_capacity = 0;
  std::uint32_t slot_count = 0;
  std::uint32_t lane_records = 0;
  std::uint64_t* gauges = nullptr;
  std::uint64_t* overflow = nullptr;
  const std::uint32_t* decisions = nullptr;

  // Off the hot path.
  alignas(64) std::atomic<std::int64_t> next_attempt_ns{0};
  std::mutex mutex;  // attach, intern, register, close
  bool inert = false;  // the static out-of-memory client: never attaches
  int pending_fd = -1;  // connected socket waiting for the agent's reply
  std::string name;
  std::vector<std::string> labels{std::string()};  // index = handle; 0 unused
  std::unordered_map<std::string, std::uint32_t> label_index;
  std::vector<std::string> counter_names;
  std::string last_error;
};

namespace {

using tally::shm::format::load_acquire;
using tally::shm::format::load_relaxed;
using tally::shm::format::store_relaxed;
using tally::shm::format::store_release;
using tally::monotonic_ns;

// ---------------------------------------------------------------------------------------------------------------
// Settings from the environment, read once per tally_open.

struct Settings {
  std::string socket_path{fmt_ns::kDefaultSocketPath};
  int open_timeout_ms = 100;
  std::int64_t retry_ns = 2'000'000'000;
  std::uint32_t lane_records = 0, slots = 0, label_sets = 0;  // 0: agent default
};

std::uint32_t env_uint(const char* name, std::uint32_t fallback, std::uint32_t maximum) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const unsigned long value = std::strtoul(text, &end, 10);
  if (end == nullptr || *end != '\0' || value > maximum) return fallback;
  return static_cast<std::uint32_t>(value);
}

Settings read_settings() {
  Settings s;
  if (const char* socket = std::getenv("TALLY_SOCKET"); socket != nullptr && *socket != '\0') s.socket_path = socket;
  s.open_timeout_ms = static_cast<int>(env_uint("TALLY_OPEN_TIMEOUT_MS", 100, 10'000));
  s.retry_ns = std::int64_t{env_uint("TALLY_RETRY_MS", 2000, 3'600'000)} * 1'000'000;
  s.retry_ns = std::max<std::int64_t>(s.retry_ns, 10'000'000);
  s.lane_records = env_uint("TALLY_LANE_RECORDS", 0, fmt_ns::kMaxLaneRecords);
  s.slots = env_uint("TALLY_SLOTS", 0, fmt_ns::kMaxSlots);
  s.label_sets = env_uint("TALLY_LABEL_SETS", 0, fmt_ns::kMaxLabelSets);
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// Live clients, so that a thread exiting after tally_close does not touch an unmapped segment. Process-wide state
// by necessity: thread-exit destructors have nothing else to consult. Locked only off the hot path.

std::mutex g_live_mutex;
std::unordered_map<const tally_client*, std::uint64_t>& live_clients() {
  static auto* live = new std::unordered_map<const tally_client*, std::uint64_t>();  // never destroyed: threads
  return *live;                                                                      // may exit after main
}
std::atomic<std::uint64_t> g_next_epoch{1};

// ---------------------------------------------------------------------------------------------------------------
// Per-thread state.

struct SlotView {
  fmt_ns::SlotHeader* slot = nullptr;  // nullptr: no free slot, this thread uses the overflow shard
  std::uint64_t* counters = nullptr;
  fmt_ns::Record* records = nullptr;
};

// The slots this thread owns, released when the thread exits.
struct OwnedSlots {
  struct Entry {
    tally_client* client;
    std::uint64_t epoch;
    fmt_ns::SlotHeader* slot;
  };
  std::vector<Entry> entries;
  ~OwnedSlots() {
    std::lock_guard lock(g_live_mutex);
    for (const Entry& e : entries) {
      auto it = live_clients().find(e.client);
      if (it == live_clients().end() || it->second != e.epoch) continue;  // closed (or re-created) since
      store_relaxed(e.slot->generation, load_relaxed(e.slot->generation) + 1);
      store_release(e.slot->owner, std::uint32_t{0});
    }
  }
};

tally_client g_inert_client;  // returned only when allocation fails

struct ThreadCache {
  // Starts on a client no caller holds and an epoch no attach has, so the fast path's first comparison never
  // matches a fresh thread (nor a NULL client) and refresh() decides.
  const tally_client* client = &g_inert_client;
  std::uint64_t epoch = UINT64_MAX;
  std::uint32_t label_capacity = 0;
  // Label indexes 1..fast_labels take the fast path: label_capacity - 1 on a slot of our own, 0 on the overflow
  // shard, so that one range check also sends shared (atomic) updates to the slow path.
  std::uint32_t fast_labels = 0;
  std::uint32_t lane_mask = 0;
  bool shared = false;  // overflow shard: atomic RMW
  std::uint64_t* counters = nullptr;
  fmt_ns::SlotHeader* slot = nullptr;
  fmt_ns::Record* records = nullptr;
  std::uint64_t cached_tail = 0;  // last tail read from the agent's line
  std::uint32_t idle_calls = 0;   // calls made while unattached, to rate-limit re-checks without a clock
};

thread_local ThreadCache t_cache;
thread_local OwnedSlots t_owned;
// Slots of other clients this thread uses, when it alternates between clients (rare).
thread_local std::vector<std::pair<std::uint64_t, SlotView>> t_other_slots;

// ---------------------------------------------------------------------------------------------------------------
// Attaching.

void set_error(tally_client* c, std::string message) { c->last_error = std::move(message); }

// Copies what was interned before the attach (or between two label writes) into the segment.
void publish_label(tally_client* c, std::uint32_t handle) {
  if (handle == 0 || handle >= c->label_capacity) return;
  auto* entries = reinterpret_cast<fmt_ns::LabelEntry*>(c->segment + c->layout.labels_offset);
  fmt_ns::LabelEntry& e = entries[handle];
  const std::string& text = c->labels[handle];
  std::memcpy(e.text, text.data(), text.size());
  store_relaxed(e.length, static_cast<std::uint32_t>(text.size()));
  store_release(e.committed, std::uint32_t{1});
  if (load_relaxed(c->header->label_count) < handle + 1) store_release(c->header->label_count, handle + 1);
}

void publish_counter_name(tally_client* c, std::size_t index) {
  char* names = reinterpret_cast<char*>(c->segment + c->layout.names_offset);
  char* slot = names + index * fmt_ns::kCounterNameBytes;
  std::memset(slot, 0, fmt_ns::kCounterNameBytes);
  std::memcpy(slot, c->counter_names[index].data(), c->counter_names[index].size());
  store_release(c->header->user_counter_count, static_cast<std::uint32_t>(index + 1));
}

bool map_reply_fds(tally_client* c, int segment_fd, int control_fd) {
  struct stat st {};
  if (::fstat(segment_fd, &st) != 0 || st.st_size < static_cast<off_t>(sizeof(fmt_ns::Header))) {
    set_error(c, "tally: the agent's segment is too small");
    return false;
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* seg = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, segment_fd, 0);
  if (seg == MAP_FAILED) {
    set_error(c, std::string("tally: mmap of the segment failed: ") + std::strerror(errno));
    return false;
  }
  auto* header = static_cast<fmt_ns::Header*>(seg);
  if (const std::string problem = fmt_ns::header_problem(*header, size); !problem.empty()) {
    ::munmap(seg, size);
    set_error(c, "tally: the agent's segment is not one this library reads: " + problem);
    return false;
  }
  const fmt_ns::Layout layout = fmt_ns::compute_layout(header->label_capacity, header->slot_count,
                                                       header->lane_records, header->version);
  struct stat cst {};
  const std::uint64_t want_control = fmt_ns::control_size(header->label_capacity);
  if (::fstat(control_fd, &cst) != 0 || static_cast<std::uint64_t>(cst.st_size) < want_control) {
    ::munmap(seg, size);
    set_error(c, "tally: the agent's control segment is too small");
    return false;
  }
  void* ctl = ::mmap(nullptr, want_control, PROT_READ, MAP_SHARED, control_fd, 0);
  if (ctl == MAP_FAILED) {
    ::munmap(seg, size);
    set_error(c, std::string("tally: mmap of the control segment failed: ") + std::strerror(errno));
    return false;
  }
  const auto* control = static_cast<const fmt_ns::ControlHeader*>(ctl);
  c->segment = static_cast<std::byte*>(seg);
  c->segment_size = size;
  c->control = static_cast<const std::byte*>(ctl);
  c->control_size = want_control;
  c->header = header;
  c->layout = layout;
  c->label_capacity = header->label_capacity;
  c->slot_count = header->slot_count;
  c->lane_records = header->lane_records;
  c->gauges = reinterpret_cast<std::uint64_t*>(c->segment + layout.gauges_offset);
  c->overflow = reinterpret_cast<std::uint64_t*>(c->segment + layout.overflow_offset);
  c->decisions = control->magic == fmt_ns::kControlMagic && control->decisions_offset + 4ull * c->label_capacity <=
                                                                  want_control
                     ? reinterpret_cast<const std::uint32_t*>(c->control + control->decisions_offset)
                     : nullptr;
  for (std::uint32_t h = 1; h < c->labels.size(); ++h) publish_label(c, h);
  for (std::size_t i = 0; i < c->counter_names.size(); ++i) publish_counter_name(c, i);
  const std::uint64_t epoch = g_next_epoch.fetch_add(1);
  {
    std::lock_guard lock(g_live_mutex);
    live_clients()[c] = epoch;
  }
  c->epoch.store(epoch, std::memory_order_release);
  return true;
}

// Reads the agent's reply if it is there (waiting at most `timeout_ms`). Returns true once attached; closes the
// pending socket when the exchange is over, successful or not.
bool receive_reply(tally_client* c, int timeout_ms) {
  pollfd p{c->pending_fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return false;  // not yet: picked up by a later attempt
  tally::UniqueFd socket(c->pending_fd);
  c->pending_fd = -1;
  proto_ns::Reply reply{};
  alignas(cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))] = {};
  iovec io{&reply, sizeof reply};
  msghdr msg{};
  msg.msg_iov = &io;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(socket.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  tally::UniqueFd fds[2];
  for (cmsghdr* h = CMSG_FIRSTHDR(&msg); h != nullptr; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
      const std::size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
        if (i < 2) fds[i].reset(fd); else ::close(fd);
      }
    }
  }
  if (n != static_cast<ssize_t>(sizeof reply) || reply.magic != proto_ns::kReplyMagic) {
    set_error(c, "tally: malformed reply from the agent");
    return false;
  }
  if (reply.status != proto_ns::Status::ok) {
    reply.message[sizeof reply.message - 1] = '\0';
    set_error(c, std::string("tally: the agent refused this client: ") + reply.message);
    return false;
  }
  if (!fds[0] || !fds[1]) {
    set_error(c, "tally: the agent's reply carried no segment");
    return false;
  }
  return map_reply_fds(c, fds[0].get(), fds[1].get());
}

// Starts an exchange: connect and send the request. Non-blocking; an absent agent fails at once.
bool send_request(tally_client* c, const Settings& s) {
  const auto address = tally::unix_socket_address(s.socket_path);
  if (!address) {
    set_error(c, "tally: TALLY_SOCKET path is empty or too long");
    return false;
  }
  tally::UniqueFd socket(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!socket) return false;
  if (::connect(socket.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof *address) != 0) {
    set_error(c, std::string("tally: no agent at ") + s.socket_path + ": " + std::strerror(errno));
    return false;
  }
  proto_ns::Request request{};
  request.magic = proto_ns::kRequestMagic;
  request.version = proto_ns::kVersion;
  request.lane_records = s.lane_records;
  request.slot_count = s.slots;
  request.label_capacity = s.label_sets;
  std::memcpy(request.workload_name, c->name.data(), std::min(c->name.size(), sizeof request.workload_name - 1));
  if (::send(socket.get(), &request, sizeof request, MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof request) return false;
  c->pending_fd = socket.release();
  return true;
}

// One attach attempt; the caller holds c->mutex.
bool attempt_attach(tally_client* c, int timeout_ms) {
  if (c->inert) return false;
  if (c->epoch.load(std::memory_order_acquire) != 0) return true;
  const Settings s = read_settings();
  c->next_attempt_ns.store(monotonic_ns() + s.retry_ns, std::memory_order_relaxed);
  if (c->pending_fd < 0 && !send_request(c, s)) return false;
  return receive_reply(c, timeout_ms);
}

// Off the hot path, rate-limited: tries to attach when the retry interval has passed. Never waits for the lock.
void maybe_attach(tally_client* c) {
  if (c->inert || monotonic_ns() < c->next_attempt_ns.load(std::memory_order_relaxed)) return;
  std::unique_lock lock(c->mutex, std::try_to_lock);
  if (!lock.owns_lock()) return;
  attempt_attach(c, 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Slots.

SlotView slot_view(tally_client* c, std::uint32_t index) {
  return {reinterpret_cast<fmt_ns::SlotHeader*>(c->segment + c->layout.slot_header(index)),
          reinterpret_cast<std::uint64_t*>(c->segment + c->layout.slot_counters(index)),
          reinterpret_cast<fmt_ns::Record*>(c->segment + c->layout.slot_records(index))};
}

SlotView take_slot(tally_client* c, std::uint64_t epoch) {
  const auto tid = static_cast<std::uint32_t>(::syscall(SYS_gettid));
  for (std::uint32_t i = 0; i < c->slot_count; ++i) {
    SlotView view = slot_view(c, i);
    std::uint32_t expected = 0;
    if (load_relaxed(view.slot->owner) != 0) continue;
    if (!std::atomic_ref<std::uint32_t>(view.slot->owner).compare_exchange_strong(expected, tid,
                                                                                 std::memory_order_acquire)) {
      continue;
    }
    store_relaxed(view.slot->generation, load_relaxed(view.slot->generation) + 1);
    std::atomic_ref<std::uint32_t> used(c->header->slots_used);
    for (std::uint32_t seen = used.load(); seen < i + 1 && !used.compare_exchange_weak(seen, i + 1);) {
    }
    t_owned.entries.push_back({c, epoch, view.slot});
    return view;
  }
  return {nullptr, c->overflow, nullptr};
}

// Fills the thread cache for `c`. Returns false when not attached (and maybe re-checks for an agent).
[[gnu::noinline]] bool refresh(ThreadCache& tc, tally_client* c) {
  if (c == nullptr) return false;
  const std::uint64_t epoch = c->epoch.load(std::memory_order_acquire);
  if (epoch == 0) {
    if ((++tc.idle_calls & 0xfff) == 0) maybe_attach(c);  // a clock read every 4096 idle calls at most
    return false;
  }
  // Park the current entry, then look for one for `c`.
  if (tc.epoch != UINT64_MAX) {
    t_other_slots.push_back({tc.epoch, {tc.shared ? nullptr : tc.slot, tc.counters, tc.records}});
    // head and cached tail live in the slot itself; re-read them when the entry comes back.
  }
  SlotView view{};
  bool found = false;
  for (auto it = t_other_slots.begin(); it != t_other_slots.end(); ++it) {
    if (it->first == epoch) {
      view = it->second;
      t_other_slots.erase(it);
      found = true;
      break;
    }
  }
  if (!found) view = take_slot(c, epoch);
  tc.client = c;
  tc.epoch = epoch;
  tc.label_capacity = c->label_capacity;
  tc.lane_mask = c->lane_records - 1;
  tc.shared = view.slot == nullptr;
  tc.fast_labels = tc.shared ? 0 : c->label_capacity - 1;
  tc.counters = view.counters;
  tc.slot = view.slot;
  tc.records = view.records;
  tc.cached_tail = view.slot ? load_acquire(view.slot->tail) : 0;
  return true;
}

inline bool cache_is_for(const ThreadCache& tc, const tally_client* c) {
  return tc.client == c && tc.epoch == c->epoch.load(std::memory_order_acquire);
}

inline bool cache_for(ThreadCache& tc, tally_client* c) {
  if (cache_is_for(tc, c)) [[likely]] return true;
  return refresh(tc, c);
}

// What tally_record adds to a label set's counters, through `add` (a plain or an atomic add).
template <class Add>
inline void add_request_counters(std::uint64_t* cells, const tally_request& r, Add add) {
  add(cells + TALLY_TOKENS_IN, r.tokens_in);
  add(cells + TALLY_TOKENS_OUT, r.tokens_out);
  add(cells + TALLY_REQUESTS, 1);
  add(cells + TALLY_ERRORS, r.status != 0 ? 1 : 0);
  add(cells + TALLY_GPU_TIME_NS, r.gpu_time_ns);
  add(cells + TALLY_TOOL_CALLS, r.tool_calls);
}

// A cell of our own slot has one writer: a plain load and store, no lock prefix.
inline void add_owned(std::uint64_t* cell, std::uint64_t value) { store_relaxed(*cell, load_relaxed(*cell) + value); }

// A cell of the overflow shard, which threads without a slot share.
void add_shared(std::uint64_t* cell, std::uint64_t value) {
  std::atomic_ref<std::uint64_t>(*cell).fetch_add(value, std::memory_order_relaxed);
}

// Appends the request to this thread's lane, or counts it dropped when the agent has not kept up.
[[gnu::always_inline]] inline void append_record(ThreadCache& tc, std::uint32_t labels, const tally_request& r) {
  const std::uint64_t head = load_relaxed(tc.slot->head);  // we are its only writer: no copy to keep in step
  if (head - tc.cached_tail > tc.lane_mask) [[unlikely]] {
    tc.cached_tail = load_acquire(tc.slot->tail);  // the agent's line: read only when we look full
    if (head - tc.cached_tail > tc.lane_mask) {
      store_relaxed(tc.slot->dropped, load_relaxed(tc.slot->dropped) + 1);
      return;
    }
  }
  fmt_ns::Record& rec = tc.records[head & tc.lane_mask];
  store_relaxed(rec.labels, labels);
  store_relaxed(rec.status, r.status);
  store_relaxed(rec.tool_calls, r.tool_calls);
  store_relaxed(rec.tokens_in, r.tokens_in);
  store_relaxed(rec.tokens_out, r.tokens_out);
  store_relaxed(rec.ttft_ns, r.ttft_ns);
  store_relaxed(rec.duration_ns, r.duration_ns);
  store_relaxed(rec.gpu_time_ns, r.gpu_time_ns);
  store_release(rec.commit, static_cast<std::uint32_t>(head + 1));
  store_release(tc.slot->head, head + 1);
}

// The slow paths: a thread's first call, a re-attach, the overflow shard (atomic adds) and bad arguments.
[[gnu::noinline]] void add_slow(tally_client* c, std::uint32_t labels, tally_counter counter, std::uint64_t value) {
  ThreadCache& tc = t_cache;
  if (!cache_for(tc, c)) return;
  if (labels - 1 >= tc.label_capacity - 1 || static_cast<std::uint32_t>(counter) >= fmt_ns::kCounterCount) return;
  std::uint64_t* cell = tc.counters + std::size_t{labels} * fmt_ns::kCounterCount + counter;
  tc.shared ? add_shared(cell, value) : add_owned(cell, value);
}

[[gnu::noinline]] void record_slow(tally_client* c, std::uint32_t labels, const tally_request* r) {
  ThreadCache& tc = t_cache;
  if (r == nullptr || !cache_for(tc, c)) return;
  if (labels - 1 >= tc.label_capacity - 1) return;
  const tally_request request = *r;
  std::uint64_t* cells = tc.counters + std::size_t{labels} * fmt_ns::kCounterCount;
  if (tc.shared) {
    add_request_counters(cells, request, add_shared);
    std::atomic_ref<std::uint64_t>(c->header->overflow_dropped).fetch_add(1, std::memory_order_relaxed);
    return;
  }
  add_request_counters(cells, request, add_owned);
  append_record(tc, labels, request);
}

}  // namespace

extern "C" {

tally_client* tally_open(const char* workload_name) {
  tally_client* c = new (std::nothrow) tally_client();
  if (c == nullptr) {
    g_inert_client.inert = true;
    return &g_inert_client;
  }
  try {
    c->name = workload_name != nullptr ? workload_name : "";
    if (c->name.size() > 63) c->name.resize(63);
    std::lock_guard lock(c->mutex);
    attempt_attach(c, read_settings().open_timeout_ms);
  } catch (...) {  // std::bad_alloc: stay unattached
  }
  return c;
}

void tally_close(tally_client* c) {
  if (c == nullptr || c == &g_inert_client) return;
  {
    std::lock_guard lock(g_live_mutex);
    live_clients().erase(c);
  }
  if (c->pending_fd >= 0) ::close(c->pending_fd);
  if (c->segment != nullptr) {
    // Hand this process's slots back so a later client (or a reader) sees them free.
    for (std::uint32_t i = 0; i < c->slot_count; ++i) {
      SlotView view = slot_view(c, i);
      if (load_relaxed(view.slot->owner) != 0) {
        store_relaxed(view.slot->generation, load_relaxed(view.slot->generation) + 1);
        store_release(view.slot->owner, std::uint32_t{0});
      }
    }
    ::munmap(c->segment, c->segment_size);
  }
  if (c->control != nullptr) ::munmap(const_cast<std::byte*>(c->control), c->control_size);
  if (t_cache.client == c) t_cache = ThreadCache{};  // other threads' caches never match a new client's epoch
  delete c;
}

uint32_t tally_intern(tally_client* c, const tally_label* labels, size_t n) {
  if (c == nullptr || c->inert || (labels == nullptr && n != 0)) return 0;
  try {
    std::string text;
    for (size_t i = 0; i < n; ++i) {
      if (labels[i].key == nullptr || labels[i].value == nullptr) return 0;
      if (!fmt_ns::append_label_pair(text, labels[i].key, labels[i].value)) return 0;
    }
    if (text.size() > fmt_ns::kLabelTextBytes) return 0;
    std::lock_guard lock(c->mutex);
    if (c->epoch.load(std::memory_order_acquire) == 0 &&
        monotonic_ns() >= c->next_attempt_ns.load(std::memory_order_relaxed)) {
      attempt_attach(c, 0);
    }
    if (auto it = c->label_index.find(text); it != c->label_index.end()) return it->second;
    if (c->labels.size() >= fmt_ns::kMaxLabelSets) return 0;
    const auto handle = static_cast<std::uint32_t>(c->labels.size());
    c->labels.push_back(text);
    c->label_index.emplace(std::move(text), handle);
    if (c->epoch.load(std::memory_order_acquire) != 0) publish_label(c, handle);
    return handle;
  } catch (...) {
    return 0;
  }
}

tally_counter tally_register_counter(tally_client* c, const char* name) {
  if (c == nullptr || c->inert || name == nullptr) return TALLY_COUNTER_INVALID;
  if (!fmt_ns::valid_counter_name(name)) return TALLY_COUNTER_INVALID;
  try {
    std::lock_guard lock(c->mutex);
    for (std::size_t i = 0; i < c->counter_names.size(); ++i) {
      if (c->counter_names[i] == name) return static_cast<tally_counter>(TALLY_USER_COUNTER_0 + i);
    }
    if (c->counter_names.size() >= fmt_ns::kCounterCount - fmt_ns::kBuiltinCounters) return TALLY_COUNTER_INVALID;
    c->counter_names.emplace_back(name);
    if (c->epoch.load(std::memory_order_acquire) != 0) publish_counter_name(c, c->counter_names.size() - 1);
    return static_cast<tally_counter>(TALLY_USER_COUNTER_0 + c->counter_names.size() - 1);
  } catch (...) {
    return TALLY_COUNTER_INVALID;
  }
}

void tally_add(tally_client* c, uint32_t labels, tally_counter counter, uint64_t value) {
  ThreadCache& tc = t_cache;
  if (!cache_is_for(tc, c) || labels - 1 >= tc.fast_labels || static_cast<std::uint32_t>(counter) >= fmt_ns::kCounterCount)
      [[unlikely]] {
    return add_slow(c, labels, counter, value);  // a tail call: the fast path saves no registers
  }
  add_owned(tc.counters + std::size_t{labels} * fmt_ns::kCounterCount + counter, value);
}

void tally_set(tally_client* c, uint32_t labels, tally_gauge gauge, uint64_t value) {
  ThreadCache& tc = t_cache;
  if (!cache_for(tc, c)) return;
  if (labels - 1 >= tc.label_capacity - 1 || static_cast<std::uint32_t>(gauge) >= fmt_ns::kGaugeCount) return;
  store_relaxed(c->gauges[std::size_t{labels} * fmt_ns::kGaugeCount + gauge], value);
}

void tally_record(tally_client* c, uint32_t labels, const tally_request* r) {
  ThreadCache& tc = t_cache;
  if (r == nullptr || !cache_is_for(tc, c) || labels - 1 >= tc.fast_labels) [[unlikely]] {
    return record_slow(c, labels, r);
  }
  std::uint64_t* cells = tc.counters + std::size_t{labels} * fmt_ns::kCounterCount;
  add_request_counters(cells, *r, add_owned);
  append_record(tc, labels, *r);
}

tally_admission tally_admit(tally_client* c, uint32_t labels) {
  ThreadCache& tc = t_cache;
  if (!cache_for(tc, c) || c->decisions == nullptr) return {TALLY_ALLOW, TALLY_REASON_NO_AGENT};
  if (labels - 1 >= tc.label_capacity - 1) return {TALLY_ALLOW, TALLY_REASON_NONE};
  const std::uint32_t word = load_relaxed(c->decisions[labels]);
  const std::uint32_t decision = word & 0xff;
  if (decision > TALLY_DENY) return {TALLY_DENY, TALLY_REASON_POLICY};  // an agent never writes this
  return {static_cast<tally_decision>(decision), word >> 8};
}

int tally_attached(tally_client* c) {
  if (c == nullptr || c->inert) return 0;
  if (c->epoch.load(std::memory_order_acquire) != 0) return 1;
  maybe_attach(c);
  return c->epoch.load(std::memory_order_acquire) != 0 ? 1 : 0;
}

uint64_t tally_dropped(tally_client* c) {
  if (c == nullptr || c->epoch.load(std::memory_order_acquire) == 0) return 0;
  std::uint64_t total = std::atomic_ref<std::uint64_t>(c->header->overflow_dropped).load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < c->slot_count; ++i) total += load_relaxed(slot_view(c, i).slot->dropped);
  return total;
}

const char* tally_last_error(tally_client* c) {
  if (c == nullptr) return "";
  std::lock_guard lock(c->mutex);
  thread_local std::string copy;
  copy = c->last_error;
  return copy.c_str();
}

}  // extern "C"
