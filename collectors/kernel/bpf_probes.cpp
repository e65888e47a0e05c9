#include "collectors/kernel/bpf_probes.hpp"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "agent/base/unique_fd.hpp"
#include "ebpf/tally_abi.h"

#if TALLY_HAVE_BPF_PROGRAMS
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <bpf/btf.h>

#include "ebpf/cgroup_device.skel.h"
#include "ebpf/cgroup_skb.skel.h"
#include "ebpf/iter_task.skel.h"
#include "ebpf/sched_process_exec.skel.h"
#include "ebpf/sched_process_exit.skel.h"
#include "ebpf/sched_process_fork.skel.h"
#include "ebpf/sock_msg_length.skel.h"
#include "ebpf/sys_exit.skel.h"
#endif

namespace tally::collectors {

namespace {

void add(KernelCounters& into, const KernelCounters& other) {
  for (const auto& field : kKernelCounterFields) into.*field.member += other.*field.member;
}

}  // namespace

std::vector<std::uint32_t> accelerator_majors(const FsRoot& fs) {
  // Fixed majors first (devices.txt: 195 NVIDIA, 226 DRI), then the dynamic ones by driver name.
  std::vector<std::uint32_t> majors{195, 226};
  static constexpr std::array<std::string_view, 6> kDynamic{
      "nvidia-uvm", "nvidia-caps", "nvidia-nvswitch", "nvidia-caps-imex-channels", "kfd", "accel"};
  std::istringstream in(fs.read_text("proc/devices").value_or(""));
  std::string line;
  bool in_char_section = false;
  while (std::getline(in, line)) {
    if (line.starts_with("Character devices:")) {
      in_char_section = true;
      continue;
    }
    if (line.starts_with("Block devices:")) in_char_section = false;
    if (!in_char_section) continue;
    std::istringstream fields(line);
    std::uint32_t major = 0;
    std::string name;
    if (!(fields >> major >> name)) continue;
    if (std::find(kDynamic.begin(), kDynamic.end(), name) != kDynamic.end() &&
        std::find(majors.begin(), majors.end(), major) == majors.end()) {
      majors.push_back(major);
    }
  }
  if (majors.size() > TALLY_MAX_ACCEL_MAJORS) majors.resize(TALLY_MAX_ACCEL_MAJORS);
  return majors;
}

#if TALLY_HAVE_BPF_PROGRAMS

namespace {

Error errno_error(int error, std::string_view what) {
  const ErrorCode code = (error == EPERM || error == EACCES) ? ErrorCode::permission : ErrorCode::unsupported;
  return make_error(code, "{}: {}", what, std::strerror(error));
}

int libbpf_to_spdlog(enum libbpf_print_level level, const char* format, va_list args) {
  char buffer[1024];
  const int n = std::vsnprintf(buffer, sizeof buffer, format, args);
  std::string_view text(buffer, n < 0 ? 0 : std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buffer - 1));
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  if (level != LIBBPF_DEBUG) spdlog::debug("libbpf: {}", text);
  return n;
}

// Loads the smallest valid program of `type` ("return 1") and unloads it: 0, or -errno (EPERM: privileges;
// EINVAL: the kernel lacks the type). libbpf_probe_bpf_prog_type() folds EPERM into "unsupported".
int probe_program_type(bpf_prog_type type) {
  bpf_insn program[2]{};
  program[0].code = BPF_ALU64 | BPF_MOV | BPF_K;  // r0 = 1
  program[0].dst_reg = BPF_REG_0;
  program[0].imm = 1;
  program[1].code = BPF_JMP | BPF_EXIT;
  // Unnamed: a transient check must not look like one of the tally_* programs that stay attached.
  const int fd = bpf_prog_load(type, nullptr, "GPL", program, 2, nullptr);
  if (fd < 0) return -errno;
  ::close(fd);
  return 0;
}

// Syscall number → what its return value counts towards in the fallback sys_exit program (socket family only), for
// the architecture the agent was built for.
std::array<std::uint8_t, TALLY_MAX_SYSCALLS> syscall_kinds() {
  std::array<std::uint8_t, TALLY_MAX_SYSCALLS> kinds{};
  auto set = [&kinds](long nr, tally_syscall_kind kind) {
    if (nr >= 0 && nr < TALLY_MAX_SYSCALLS) kinds[static_cast<std::size_t>(nr)] = static_cast<std::uint8_t>(kind);
  };
#ifdef SYS_recv
  set(SYS_recv, TALLY_SYSCALL_SOCK_RECV);
#endif
#ifdef SYS_send
  set(SYS_send, TALLY_SYSCALL_SOCK_SEND);
#endif
  set(SYS_recvfrom, TALLY_SYSCALL_SOCK_RECV);
  set(SYS_recvmsg, TALLY_SYSCALL_SOCK_RECV);
  set(SYS_sendto, TALLY_SYSCALL_SOCK_SEND);
  set(SYS_sendmsg, TALLY_SYSCALL_SOCK_SEND);
  set(SYS_recvmmsg, TALLY_SYSCALL_SOCK_RECVMMSG);
  set(SYS_sendmmsg, TALLY_SYSCALL_SOCK_SENDMMSG);
  return kinds;
}

template <typename Skeleton, void (*Destroy)(Skeleton*)>
struct SkeletonDeleter {
  void operator()(Skeleton* skeleton) const { Destroy(skeleton); }
};
template <typename Skeleton, void (*Destroy)(Skeleton*)>
using SkeletonPtr = std::unique_ptr<Skeleton, SkeletonDeleter<Skeleton, Destroy>>;

struct LinkDeleter {
  void operator()(bpf_link* link) const { bpf_link__destroy(link); }
};
using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

struct RingBufferDeleter {
  void operator()(ring_buffer* ring) const { ring_buffer__free(ring); }
};
using RingBufferPtr = std::unique_ptr<ring_buffer, RingBufferDeleter>;

}  // namespace

struct KernelProbes::Impl {
  // Destroyed in reverse order: ring buffer and links first, then the objects (programs and maps).
  SkeletonPtr<tally_iter_task, tally_iter_task__destroy> iter;
  SkeletonPtr<tally_sock_msg_length, tally_sock_msg_length__destroy> sock;  // socket bytes, Linux 6.3+
  SkeletonPtr<tally_sys_exit, tally_sys_exit__destroy> sys_exit;            // or the fallback: only one is open
  SkeletonPtr<tally_sched_process_fork, tally_sched_process_fork__destroy> fork;
  SkeletonPtr<tally_sched_process_exec, tally_sched_process_exec__destroy> exec;
  SkeletonPtr<tally_sched_process_exit, tally_sched_process_exit__destroy> exit;
  SkeletonPtr<tally_cgroup_skb, tally_cgroup_skb__destroy> skb;
  SkeletonPtr<tally_cgroup_device, tally_cgroup_device__destroy> device;
  std::vector<LinkPtr> links;
  RingBufferPtr ring;
  int counters_fd = -1;  // owned by the first object loaded
  int events_fd = -1;
  int iter_link_fd = -1;  // owned by its entry in links
  const std::function<void(const KernelEvent&)>* handler = nullptr;
  // The io bytes last reported per cgroup: exited + live dips while a thread is between PF_EXITING and its exit
  // tracepoint (counted in neither), and is never reported lower than before.
  std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> reported_io;

  // The maps are created by the first object that has them; every later object reuses them.
  Result<void> load(bpf_object_skeleton* skeleton, bpf_object* object) {
    const char* name = bpf_object__name(object);
    bpf_map* counters = bpf_object__find_map_by_name(object, "tally_counters");
    bpf_map* events = bpf_object__find_map_by_name(object, "tally_events");
    if ((counters == nullptr) != (events == nullptr)) {
      return make_error(ErrorCode::not_found, "BPF object {}: has only one of tally_counters/tally_events", name);
    }
    const bool shares_maps = counters != nullptr;
    if (shares_maps && counters_fd >= 0) {
      if (int err = bpf_map__reuse_fd(counters, counters_fd); err != 0) return errno_error(-err, "reuse map");
      if (int err = bpf_map__reuse_fd(events, events_fd); err != 0) return errno_error(-err, "reuse map");
    }
    if (int err = bpf_object__load_skeleton(skeleton); err != 0) {
      return errno_error(-err, fmt::format("load BPF object {} (run with --log-level debug for the verifier log)",
                                           name));
    }
    if (shares_maps && counters_fd < 0) {
      counters_fd = bpf_map__fd(counters);
      events_fd = bpf_map__fd(events);
    }
    return {};
  }

  // Attaches every program of `object`: tracing programs by name through BTF, cgroup programs to the v2 root, the
  // task iterator as a link that read_live_io() instantiates.
  Result<void> attach(bpf_object* object, int cgroup_root_fd, std::vector<std::string>& names) {
    bpf_program* program = nullptr;
    bpf_object__for_each_program(program, object) {
      const bpf_prog_type type = bpf_program__type(program);
      const bool cgroup = type == BPF_PROG_TYPE_CGROUP_SKB || type == BPF_PROG_TYPE_CGROUP_DEVICE;
      bpf_link* link = cgroup ? bpf_program__attach_cgroup(program, cgroup_root_fd) : bpf_program__attach(program);
      if (link == nullptr) {
        return errno_error(errno, fmt::format("attach BPF program {}", bpf_program__name(program)));
      }
      links.emplace_back(link);
      names.emplace_back(bpf_program__name(program));
      if (bpf_program__expected_attach_type(program) == BPF_TRACE_ITER) iter_link_fd = bpf_link__fd(link);
    }
    return {};
  }

  // One pass of the task iterator: rchar/wchar of every live thread, summed per cgroup id.
  Result<std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>>> read_live_io() const {
    const UniqueFd pass(bpf_iter_create(iter_link_fd));
    if (!pass) return errno_error(errno, "run BPF iterator tally_iter_task");
    std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> live;
    std::vector<char> buffer(1024 * sizeof(tally_task_io));  // records may straddle two reads
    std::size_t filled = 0;
    while (true) {
      const ssize_t n = ::read(pass.get(), buffer.data() + filled, buffer.size() - filled);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno_error(errno, "read BPF iterator tally_iter_task");
      if (n == 0) break;
      filled += static_cast<std::size_t>(n);
      std::size_t used = 0;
      for (; filled - used >= sizeof(tally_task_io); used += sizeof(tally_task_io)) {
        tally_task_io record;
        std::memcpy(&record, buffer.data() + used, sizeof record);
        auto& [read, written] = live[record.cgroup_id];
        read += record.rchar;
        written += record.wchar;
      }
      std::memmove(buffer.data(), buffer.data() + used, filled - used);
      filled -= used;
    }
    return live;
  }
};

static int on_ring_event(void* context, void* data, std::size_t size) {
  auto* impl = static_cast<KernelProbes::Impl*>(context);
  if (impl->handler == nullptr || size < sizeof(tally_event)) return 0;
  tally_event raw;
  std::memcpy(&raw, data, sizeof raw);
  KernelEvent event;
  switch (raw.type) {
    case TALLY_EVENT_EXEC: event.type = KernelEvent::Type::exec; break;
    case TALLY_EVENT_EXIT: event.type = KernelEvent::Type::exit; break;
    case TALLY_EVENT_DEVICE_OPEN: event.type = KernelEvent::Type::device_open; break;
    default: return 0;
  }
  event.pid = static_cast<pid_t>(raw.pid);
  event.ppid = static_cast<pid_t>(raw.ppid);
  event.exit_code = static_cast<int>(raw.exit_code);
  event.cgroup_id = raw.cgroup_id;
  event.key = raw.cgroup_id;
  event.timestamp_ns = raw.timestamp_ns;
  event.major = raw.major;
  event.minor = raw.minor;
  event.read = (raw.access & TALLY_DEVICE_ACCESS_READ) != 0;
  event.write = (raw.access & TALLY_DEVICE_ACCESS_WRITE) != 0;
  event.comm.assign(raw.comm, strnlen(raw.comm, sizeof raw.comm));
  (*impl->handler)(event);
  return 0;
}

void route_libbpf_logs() { libbpf_set_print(libbpf_to_spdlog); }

Result<void> check_bpf_support(const FsRoot& fs) {
  if (!fs.exists("sys/kernel/btf/vmlinux")) {
    return make_error(ErrorCode::unsupported,
                      "no kernel BTF (/sys/kernel/btf/vmlinux): the kernel needs CONFIG_DEBUG_INFO_BTF=y");
  }
  const std::string modes = fs.read_line("sys/kernel/security/lockdown").value_or("");
  if (modes.find("[confidentiality]") != std::string::npos) {
    return make_error(ErrorCode::unsupported,
                      "kernel lockdown is 'confidentiality' (/sys/kernel/security/lockdown): BPF tracing is forbidden");
  }
  struct Needed {
    bpf_prog_type type;
    const char* name;
  };
  for (const Needed needed : {Needed{BPF_PROG_TYPE_RAW_TRACEPOINT, "raw_tracepoint"},
                              Needed{BPF_PROG_TYPE_CGROUP_SKB, "cgroup_skb"},
                              Needed{BPF_PROG_TYPE_CGROUP_DEVICE, "cgroup_device"}}) {
    const int probed = probe_program_type(needed.type);
    if (probed == -EPERM || probed == -EACCES) {
      return make_error(ErrorCode::permission,
                        "loading BPF programs is not permitted: tallyd needs CAP_BPF, CAP_PERFMON and "
                        "CAP_NET_ADMIN (or CAP_SYS_ADMIN), and kernel.unprivileged_bpf_disabled does not apply");
    }
    if (probed < 0) {
      return make_error(ErrorCode::unsupported, "the kernel cannot load BPF programs of type {} ({})", needed.name,
                        std::strerror(-probed));
    }
  }
  if (libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr) <= 0) {
    return make_error(ErrorCode::unsupported, "the kernel has no BPF ring buffer (needs Linux 5.8 or later)");
  }
  return {};
}

bool kernel_has_socket_length_tracepoints() {
  btf* vmlinux = btf__load_vmlinux_btf();
  if (vmlinux == nullptr) return false;
  // Every tracepoint has a btf_trace_<name> typedef in the kernel's BTF: what tp_btf attaches by.
  const bool found = btf__find_by_name_kind(vmlinux, "btf_trace_sock_send_length", BTF_KIND_TYPEDEF) > 0 &&
                     btf__find_by_name_kind(vmlinux, "btf_trace_sock_recv_length", BTF_KIND_TYPEDEF) > 0;
  btf__free(vmlinux);
  return found;
}

KernelProbes::KernelProbes(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KernelProbes::~KernelProbes() = default;

Result<std::unique_ptr<KernelProbes>> KernelProbes::start(const ProbeOptions& options) {
  TALLY_TRY(check_bpf_support());
  const UniqueFd cgroup_root(::open(options.cgroup2_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup_root) {
    return make_error(ErrorCode::not_found, "{}: cannot open the cgroup v2 root: {}", options.cgroup2_root.string(),
                      std::strerror(errno));
  }

  const bool socket_tracepoints =
      options.socket_hook == SocketHook::tracepoints ||
      (options.socket_hook == SocketHook::automatic && kernel_has_socket_length_tracepoints());

  auto impl = std::make_unique<Impl>();
  // Open: every skeleton, so that a missing tracepoint fails before anything is attached. Socket bytes come from
  // the sock_*_length tracepoints, or on kernels before 6.3 from the sys_exit fallback: never both.
  impl->iter.reset(tally_iter_task__open());
  if (socket_tracepoints) {
    impl->sock.reset(tally_sock_msg_length__open());
  } else {
    impl->sys_exit.reset(tally_sys_exit__open());
  }
  impl->fork.reset(tally_sched_process_fork__open());
  impl->exec.reset(tally_sched_process_exec__open());
  impl->exit.reset(tally_sched_process_exit__open());
  impl->skb.reset(tally_cgroup_skb__open());
  impl->device.reset(tally_cgroup_device__open());
  if (!impl->iter || !(impl->sock || impl->sys_exit) || !impl->fork || !impl->exec || !impl->exit || !impl->skb ||
      !impl->device) {
    return errno_error(errno, "open BPF skeletons");
  }

  // Set rodata: the syscall table of this architecture (fallback only) and the accelerator majors of this node.
  if (impl->sys_exit) {
    const auto kinds = syscall_kinds();
    std::copy(kinds.begin(), kinds.end(), impl->sys_exit->rodata->tally_syscall_kind);
  }
  for (std::size_t i = 0; i < options.accelerator_majors.size() && i < TALLY_MAX_ACCEL_MAJORS; ++i) {
    impl->device->rodata->tally_accel_majors[i] = options.accelerator_majors[i];
  }

  // Load (the first object creates the shared maps, the others reuse them), then attach.
  std::vector<std::string> names;
  std::vector<std::pair<bpf_object_skeleton*, bpf_object*>> objects;
  if (impl->sock) objects.emplace_back(impl->sock->skeleton, impl->sock->obj);
  if (impl->sys_exit) objects.emplace_back(impl->sys_exit->skeleton, impl->sys_exit->obj);
  objects.emplace_back(impl->fork->skeleton, impl->fork->obj);
  objects.emplace_back(impl->exec->skeleton, impl->exec->obj);
  objects.emplace_back(impl->exit->skeleton, impl->exit->obj);
  objects.emplace_back(impl->skb->skeleton, impl->skb->obj);
  objects.emplace_back(impl->device->skeleton, impl->device->obj);
  objects.emplace_back(impl->iter->skeleton, impl->iter->obj);
  for (const auto& [skeleton, object] : objects) {
    if (auto loaded = impl->load(skeleton, object); !loaded) {
      if (object != impl->iter->obj) return loaded.error();
      return make_error(loaded.error().code, "the BPF task iterator needs Linux 5.8 or later: {}",
                        loaded.error().message);
    }
  }
  for (const auto& [skeleton, object] : objects) TALLY_TRY(impl->attach(object, cgroup_root.get(), names));

  impl->ring.reset(ring_buffer__new(impl->events_fd, on_ring_event, impl.get(), nullptr));
  if (!impl->ring) return errno_error(errno, "ring buffer tally_events");

  std::unique_ptr<KernelProbes> probes(new KernelProbes(std::move(impl)));
  probes->attached_ = std::move(names);
  return probes;
}

Result<std::map<std::uint64_t, KernelCounters>> KernelProbes::read_counters() {
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return errno_error(-cpus, "number of possible CPUs");
  // The counters (with the bytes of exited threads) first, then the live threads. In this order no thread is
  // counted twice: one added at exit after the map was read had PF_EXITING before the iterator could reach it, so
  // it is in neither, which the monotonic clamp below covers, never in both.
  std::vector<tally_counters> per_cpu(static_cast<std::size_t>(cpus));
  std::map<std::uint64_t, KernelCounters> result;
  std::uint64_t key = 0;
  const std::uint64_t* previous = nullptr;
  errno = 0;
  while (bpf_map_get_next_key(impl_->counters_fd, previous, &key) == 0) {
    previous = &key;
    if (bpf_map_lookup_elem(impl_->counters_fd, &key, per_cpu.data()) != 0) continue;  // deleted meanwhile
    KernelCounters sum;  // assigned, not added: a concurrent delete makes the walk restart and revisit keys
    for (const tally_counters& c : per_cpu) {
      add(sum, KernelCounters{c.io_read_bytes,     c.io_write_bytes,    c.socket_rx_bytes, c.socket_tx_bytes,
                              c.net_rx_bytes,      c.net_tx_bytes,      c.processes_started, c.processes_exited,
                              c.execs,             c.gpu_device_opens,  c.events_dropped});
    }
    result[key] = sum;
  }
  if (errno != ENOENT && errno != 0) return errno_error(errno, "read map tally_counters");

  auto live = impl_->read_live_io();
  if (!live) return live.error();
  for (const auto& [cgroup_id, io] : *live) {
    KernelCounters& counters = result[cgroup_id];
    counters.io_read_bytes += io.first;
    counters.io_write_bytes += io.second;
  }
  for (auto& [cgroup_id, counters] : result) {
    auto& [read, written] = impl_->reported_io[cgroup_id];
    read = std::max(read, counters.io_read_bytes);
    written = std::max(written, counters.io_write_bytes);
    counters.io_read_bytes = read;
    counters.io_write_bytes = written;
  }
  return result;
}

void KernelProbes::forget(std::uint64_t cgroup_id) {
  bpf_map_delete_elem(impl_->counters_fd, &cgroup_id);
  impl_->reported_io.erase(cgroup_id);
}

int KernelProbes::events_fd() const { return ring_buffer__epoll_fd(impl_->ring.get()); }

bool KernelProbes::adopted() const { return false; }
const std::string& KernelProbes::epoch() const {
  static const std::string none;
  return none;
}
ProbeStats KernelProbes::stats() const { return {}; }
Result<bool> KernelProbes::remove_pinned(const std::filesystem::path&) { return false; }

Result<int> KernelProbes::consume_events(const std::function<void(const KernelEvent&)>& handler) {
  impl_->handler = &handler;
  const int consumed = ring_buffer__consume(impl_->ring.get());
  impl_->handler = nullptr;
  if (consumed < 0) return errno_error(-consumed, "consume ring buffer tally_events");
  return consumed;
}

#else  // built without BPF programs (no clang/bpftool at build time, or -DTALLY_BPF=OFF)

struct KernelProbes::Impl {};

void route_libbpf_logs() {}

Result<void> check_bpf_support(const FsRoot&) {
  return make_error(ErrorCode::unsupported, "tallyd was built without eBPF programs (TALLY_BPF=OFF or no clang)");
}

KernelProbes::KernelProbes(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KernelProbes::~KernelProbes() = default;

Result<std::unique_ptr<KernelProbes>> KernelProbes::start(const ProbeOptions&) {
  return check_bpf_support().error();
}

Result<std::map<std::uint64_t, KernelCounters>> KernelProbes::read_counters() {
  return std::map<std::uint64_t, KernelCounters>{};
}
bool kernel_has_socket_length_tracepoints() { return false; }
void KernelProbes::forget(std::uint64_t) {}
int KernelProbes::events_fd() const { return -1; }
bool KernelProbes::adopted() const { return false; }
const std::string& KernelProbes::epoch() const {
  static const std::string none;
  return none;
}
ProbeStats KernelProbes::stats() const { return {}; }
Result<bool> KernelProbes::remove_pinned(const std::filesystem::path&) { return false; }
Result<int> KernelProbes::consume_events(const std::function<void(const KernelEvent&)>&) { return 0; }

#endif

}  // namespace tally::collectors
