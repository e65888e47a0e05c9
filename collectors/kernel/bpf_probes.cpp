#include "collectors/kernel/bpf_probes.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/random.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

#include <spdlog/spdlog.h>

#include "agent/base/unique_fd.hpp"
#include "collectors/kernel/bpf_loading.hpp"
#include "collectors/kernel/kernel_cgroups.hpp"
#include "ebpf/tally_abi.h"

#if TALLY_HAVE_BPF_PROGRAMS
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <bpf/btf.h>

#include "ebpf/cgroup_attach_task.skel.h"
#include "ebpf/cgroup_device.skel.h"
#include "ebpf/cgroup_mkdir.skel.h"
#include "ebpf/cgroup_rmdir.skel.h"
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

// struct tally_counters (what the programs write) and KernelCounters are the same u64 fields in the same order, so
// a per-CPU copy is read as a KernelCounters and summed through kKernelCounterFields. Checked field by field:
#define TALLY_SAME_COUNTER(field)                                                     \
  static_assert(offsetof(tally_counters, field) == offsetof(KernelCounters, field) && \
                    sizeof(tally_counters::field) == sizeof(KernelCounters::field),   \
                "tally_counters and KernelCounters differ at " #field)
TALLY_SAME_COUNTER(io_read_bytes);
TALLY_SAME_COUNTER(io_write_bytes);
TALLY_SAME_COUNTER(socket_rx_bytes);
TALLY_SAME_COUNTER(socket_tx_bytes);
TALLY_SAME_COUNTER(net_rx_bytes);
TALLY_SAME_COUNTER(net_tx_bytes);
TALLY_SAME_COUNTER(processes_started);
TALLY_SAME_COUNTER(processes_exited);
TALLY_SAME_COUNTER(execs);
TALLY_SAME_COUNTER(gpu_device_opens);
TALLY_SAME_COUNTER(events_dropped);
#undef TALLY_SAME_COUNTER
static_assert(sizeof(tally_counters) == sizeof(KernelCounters), "a field is missing on one side");

// ...and kKernelCounterFields names every field of KernelCounters once, in declaration order (aggregate
// initialisation below is positional).
constexpr KernelCounters numbered_through_the_table() {
  KernelCounters counters;
  std::uint64_t n = 0;
  for (const auto& field : kKernelCounterFields) counters.*field.member = ++n;
  return counters;
}
static_assert(numbered_through_the_table() == KernelCounters{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11},
              "kKernelCounterFields must list every KernelCounters field once, in order");

static_assert(kOverflowKey == TALLY_OVERFLOW_KEY && kProcessKeyBit == TALLY_PROCESS_KEY_BIT &&
                  process_key(5, 7) == (TALLY_PROCESS_KEY_BIT | 7ULL << TALLY_PID_BITS | 5),
              "process keys differ between bpf_probes.hpp and tally_abi.h");

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

struct LinkDeleter {
  void operator()(bpf_link* link) const { bpf_link__destroy(link); }
};
using LinkPtr = std::unique_ptr<bpf_link, LinkDeleter>;

struct RingBufferDeleter {
  void operator()(ring_buffer* ring) const { ring_buffer__free(ring); }
};
using RingBufferPtr = std::unique_ptr<ring_buffer, RingBufferDeleter>;

// The maps the programs share (declared in tally_maps.bpf.h and tally_threads.bpf.h), with the layout an adopted
// pin must have, and tally_meta, which the loader makes itself. A pin directory holds them under maps/ and the
// links, named after their programs, under links/; tally_meta is pinned last, so a directory without it is a
// partial set.
struct SharedMap {
  const char* name;
  bpf_map_type type;
  std::uint32_t key_size;
  std::uint32_t value_size;
};
constexpr std::array<SharedMap, 4> kSharedMaps{{
    {"tally_counters", BPF_MAP_TYPE_PERCPU_HASH, sizeof(std::uint64_t), sizeof(tally_counters)},
    {"tally_events", BPF_MAP_TYPE_RINGBUF, 0, 0},
    {"tally_stats", BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(std::uint32_t), sizeof(tally_stats)},
    {"tally_threads", BPF_MAP_TYPE_TASK_STORAGE, sizeof(int), sizeof(tally_thread)},
}};
constexpr const char* kMetaMap = "tally_meta";
constexpr const char* kIterProgram = "tally_iter_task";

std::filesystem::path pinned_map(const std::filesystem::path& pin_dir, std::string_view name) {
  return pin_dir / "maps" / name;
}
std::filesystem::path pinned_link(const std::filesystem::path& pin_dir, std::string_view name) {
  return pin_dir / "links" / name;
}

std::string hex(const std::uint8_t* bytes, std::size_t size) {
  std::string text;
  for (std::size_t i = 0; i < size; ++i) text += fmt::format("{:02x}", bytes[i]);
  return text;
}

Result<bool> on_bpffs(const std::filesystem::path& path) {
  struct statfs fs{};
  if (::statfs(path.c_str(), &fs) != 0) return bpf_errno_error(errno, fmt::format("statfs {}", path.string()));
  return fs.f_type == static_cast<decltype(fs.f_type)>(BPF_FS_MAGIC);
}

Result<void> make_dirs(std::initializer_list<std::filesystem::path> dirs) {
  for (const auto& dir : dirs) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return make_error(ErrorCode::io, "create {}: {}", dir.string(), ec.message());
  }
  return {};
}

// Makes the pin directory, which must be on a BPF filesystem: checked on the nearest existing ancestor before
// anything is created, so a missing bpffs leaves no stray directory behind.
Result<void> make_pin_dir(const std::filesystem::path& pin_dir) {
  std::filesystem::path existing = pin_dir;
  std::error_code ec;
  while (!existing.empty() && !std::filesystem::exists(existing, ec)) existing = existing.parent_path();
  auto bpffs = on_bpffs(existing.empty() ? std::filesystem::path(".") : existing);
  if (!bpffs) return bpffs.error();
  if (!*bpffs) {
    return make_error(ErrorCode::unsupported,
                      "{}: not on a BPF filesystem, so the probes cannot be pinned there (mount one with "
                      "`mount -t bpf bpf /sys/fs/bpf`)",
                      pin_dir.string());
  }
  return make_dirs({pin_dir});
}

struct MapInfo {
  bpf_map_type type;
  std::uint32_t key_size, value_size, max_entries;
};
std::optional<MapInfo> map_info(int fd) {
  bpf_map_info info{};
  __u32 length = sizeof info;
  if (bpf_obj_get_info_by_fd(fd, &info, &length) != 0) return std::nullopt;
  return MapInfo{static_cast<bpf_map_type>(info.type), info.key_size, info.value_size, info.max_entries};
}

KernelCounters sum_cpus(const tally_counters* per_cpu, int cpus) {
  KernelCounters sum;
  for (int cpu = 0; cpu < cpus; ++cpu) {
    const auto one = std::bit_cast<KernelCounters>(per_cpu[cpu]);  // same layout: checked at the top of this file
    for (const auto& field : kKernelCounterFields) sum.*field.member += one.*field.member;
  }
  return sum;
}

std::optional<KernelEvent> decode_event(const void* data, std::size_t size) {
  std::uint32_t type = 0;
  if (size < sizeof type) return std::nullopt;
  std::memcpy(&type, data, sizeof type);
  KernelEvent event;
  switch (type) {
    case TALLY_EVENT_CGROUP_MKDIR:
    case TALLY_EVENT_CGROUP_RMDIR: {
      if (size < sizeof(tally_cgroup_event)) return std::nullopt;
      tally_cgroup_event raw;
      std::memcpy(&raw, data, sizeof raw);
      event.type = type == TALLY_EVENT_CGROUP_MKDIR ? KernelEvent::Type::cgroup_created
                                                    : KernelEvent::Type::cgroup_removed;
      event.cgroup_id = raw.cgroup_id;
      event.key = raw.cgroup_id;
      event.timestamp_ns = raw.timestamp_ns;
      event.path.assign(raw.path, strnlen(raw.path, sizeof raw.path));
      return event;
    }
    case TALLY_EVENT_EXEC: event.type = KernelEvent::Type::exec; break;
    case TALLY_EVENT_EXIT: event.type = KernelEvent::Type::exit; break;
    case TALLY_EVENT_DEVICE_OPEN: event.type = KernelEvent::Type::device_open; break;
    default: return std::nullopt;  // a newer kind of record: unknown here, skipped
  }
  if (size < sizeof(tally_event)) return std::nullopt;
  tally_event raw;
  std::memcpy(&raw, data, sizeof raw);
  event.pid = static_cast<pid_t>(raw.pid);
  event.ppid = static_cast<pid_t>(raw.ppid);
  event.exit_code = static_cast<int>(raw.exit_code);
  event.cgroup_id = raw.cgroup_id;
  event.key = raw.key;
  event.timestamp_ns = raw.timestamp_ns;
  event.major = raw.major;
  event.minor = raw.minor;
  event.read = (raw.access & TALLY_DEVICE_ACCESS_READ) != 0;
  event.write = (raw.access & TALLY_DEVICE_ACCESS_WRITE) != 0;
  event.comm.assign(raw.comm, strnlen(raw.comm, sizeof raw.comm));
  return event;
}

}  // namespace

struct KernelProbes::Impl {
  // Probes loaded now: their objects (programs and maps) and links; destroyed in reverse order, links first.
  // Adopted probes have none of these: their pins hold them.
  SkeletonPtr<tally_iter_task, tally_iter_task__destroy> iter;
  SkeletonPtr<tally_sock_msg_length, tally_sock_msg_length__destroy> sock;  // socket bytes, Linux 6.3+
  SkeletonPtr<tally_sys_exit, tally_sys_exit__destroy> sys_exit;            // or the fallback: only one is open
  SkeletonPtr<tally_sched_process_fork, tally_sched_process_fork__destroy> fork;
  SkeletonPtr<tally_sched_process_exec, tally_sched_process_exec__destroy> exec;
  SkeletonPtr<tally_sched_process_exit, tally_sched_process_exit__destroy> exit;
  SkeletonPtr<tally_cgroup_attach_task, tally_cgroup_attach_task__destroy> attach_task;
  SkeletonPtr<tally_cgroup_mkdir, tally_cgroup_mkdir__destroy> mkdir;
  SkeletonPtr<tally_cgroup_rmdir, tally_cgroup_rmdir__destroy> rmdir;
  SkeletonPtr<tally_cgroup_skb, tally_cgroup_skb__destroy> skb;
  SkeletonPtr<tally_cgroup_device, tally_cgroup_device__destroy> device;
  std::vector<LinkPtr> links;
  // Adopted probes: the pinned links, opened (they keep the programs alive while we run, as the skeletons do).
  std::vector<UniqueFd> adopted_links;

  // Our own fd of each shared map and tally_meta, by name: a dup of the fd of the object that created it, or
  // opened from its pin. The iterator's link likewise.
  std::map<std::string, UniqueFd, std::less<>> maps;
  UniqueFd iter_link;
  RingBufferPtr ring;

  bool adopted = false;
  std::string epoch;
  std::uint64_t capacity = 0;
  std::uint64_t entries = 0;  // keys in tally_counters at the last read_counters()
  bool batch_lookup = true;   // until the kernel says it cannot (before 5.6)
  const std::function<void(const KernelEvent&)>* handler = nullptr;
  // The io bytes last reported per key: settled + unsettled dips while a thread is between PF_EXITING and its exit
  // tracepoint, or a settlement between the map read and the pass (counted in neither), and is never reported
  // lower than before.
  std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> reported_io;

  int map_fd(std::string_view name) const {
    const auto it = maps.find(name);
    return it == maps.end() ? -1 : it->second.get();
  }

  // Opens every skeleton, so that a missing tracepoint fails before anything is attached. Socket bytes come from
  // the sock_*_length tracepoints, or on kernels before 6.3 from the sys_exit fallback: never both.
  Result<void> open(bool socket_tracepoints) {
    iter.reset(tally_iter_task__open());
    if (socket_tracepoints) {
      sock.reset(tally_sock_msg_length__open());
    } else {
      sys_exit.reset(tally_sys_exit__open());
    }
    fork.reset(tally_sched_process_fork__open());
    exec.reset(tally_sched_process_exec__open());
    exit.reset(tally_sched_process_exit__open());
    attach_task.reset(tally_cgroup_attach_task__open());
    mkdir.reset(tally_cgroup_mkdir__open());
    rmdir.reset(tally_cgroup_rmdir__open());
    skb.reset(tally_cgroup_skb__open());
    device.reset(tally_cgroup_device__open());
    if (!iter || !(sock || sys_exit) || !fork || !exec || !exit || !attach_task || !mkdir || !rmdir || !skb ||
        !device) {
      return bpf_errno_error(errno, "open BPF skeletons");
    }
    return {};
  }

  // The objects in load order, the iterator last (its own error message says which kernel it needs).
  std::vector<std::pair<bpf_object_skeleton*, bpf_object*>> objects() const {
    std::vector<std::pair<bpf_object_skeleton*, bpf_object*>> all;
    if (sock) all.emplace_back(sock->skeleton, sock->obj);
    if (sys_exit) all.emplace_back(sys_exit->skeleton, sys_exit->obj);
    all.emplace_back(fork->skeleton, fork->obj);
    all.emplace_back(exec->skeleton, exec->obj);
    all.emplace_back(exit->skeleton, exit->obj);
    all.emplace_back(attach_task->skeleton, attach_task->obj);
    all.emplace_back(mkdir->skeleton, mkdir->obj);
    all.emplace_back(rmdir->skeleton, rmdir->obj);
    all.emplace_back(skb->skeleton, skb->obj);
    all.emplace_back(device->skeleton, device->obj);
    all.emplace_back(iter->skeleton, iter->obj);
    return all;
  }

  // The root cgroup's id for every program that keys a task, the syscall table of this architecture (fallback
  // only) and the accelerator majors of this node.
  void set_rodata(const ProbeOptions& options, std::uint64_t root_cgroup_id) {
    for (__u64* root_id : {&iter->rodata->tally_root_cgroup_id, &fork->rodata->tally_root_cgroup_id,
                           &exec->rodata->tally_root_cgroup_id, &exit->rodata->tally_root_cgroup_id,
                           &attach_task->rodata->tally_root_cgroup_id, &device->rodata->tally_root_cgroup_id,
                           sock ? &sock->rodata->tally_root_cgroup_id : &sys_exit->rodata->tally_root_cgroup_id}) {
      *root_id = root_cgroup_id;
    }
    if (sys_exit) {
      const auto kinds = syscall_kinds();
      std::copy(kinds.begin(), kinds.end(), sys_exit->rodata->tally_syscall_kind);
    }
    for (std::size_t i = 0; i < options.accelerator_majors.size() && i < TALLY_MAX_ACCEL_MAJORS; ++i) {
      device->rodata->tally_accel_majors[i] = options.accelerator_majors[i];
    }
  }

  // Loads every object, with the counters map sized to `counters_capacity`.
  Result<void> load_all(std::uint32_t counters_capacity) {
    for (const auto& [skeleton, object] : objects()) {
      if (bpf_map* counters = bpf_object__find_map_by_name(object, "tally_counters")) {
        if (int err = bpf_map__set_max_entries(counters, counters_capacity); err != 0) {
          return bpf_errno_error(-err, "size map tally_counters");
        }
      }
    }
    for (const auto& [skeleton, object] : objects()) {
      if (auto loaded = load(skeleton, object); !loaded) {
        if (object != iter->obj) return loaded.error();
        return make_error(loaded.error().code, "the BPF task iterator needs Linux 5.8 or later: {}",
                          loaded.error().message);
      }
    }
    capacity = counters_capacity;
    return {};
  }

  // Every object declares the shared maps it uses; the first object that has one creates it and every later one
  // reuses it, so all programs count into the same maps.
  Result<void> load(bpf_object_skeleton* skeleton, bpf_object* object) {
    const char* object_name = bpf_object__name(object);
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, object) {
      if (bpf_map__is_internal(map)) continue;  // this object's own .rodata/.bss
      if (const int fd = map_fd(bpf_map__name(map)); fd >= 0) {
        if (int err = bpf_map__reuse_fd(map, fd); err != 0) {
          return bpf_errno_error(-err, fmt::format("reuse map {} in {}", bpf_map__name(map), object_name));
        }
      }
    }
    if (int err = bpf_object__load_skeleton(skeleton); err != 0) {
      return bpf_errno_error(-err, fmt::format("load BPF object {} (run with --log-level debug for the verifier log)",
                                           object_name));
    }
    bpf_object__for_each_map(map, object) {
      if (bpf_map__is_internal(map) || map_fd(bpf_map__name(map)) >= 0) continue;
      UniqueFd own(::fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 0));
      if (!own) return bpf_errno_error(errno, fmt::format("dup map {}", bpf_map__name(map)));
      maps.emplace(bpf_map__name(map), std::move(own));
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
        return bpf_errno_error(errno, fmt::format("attach BPF program {}", bpf_program__name(program)));
      }
      links.emplace_back(link);
      names.emplace_back(bpf_program__name(program));
      if (bpf_program__expected_attach_type(program) == BPF_TRACE_ITER) {
        iter_link.reset(::fcntl(bpf_link__fd(link), F_DUPFD_CLOEXEC, 0));
        if (!iter_link) return bpf_errno_error(errno, "dup the iterator link");
      }
    }
    return {};
  }

  // The overflow entry, which programs charge when the map is full: made before any program can need it.
  Result<void> make_overflow_entry() const {
    const int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return bpf_errno_error(-cpus, "number of possible CPUs");
    const std::vector<tally_counters> zero(static_cast<std::size_t>(cpus));
    const std::uint64_t key = kOverflowKey;
    if (bpf_map_update_elem(map_fd("tally_counters"), &key, zero.data(), BPF_NOEXIST) != 0) {
      return bpf_errno_error(errno, "create the overflow entry of tally_counters");
    }
    return {};
  }

  // tally_meta: this build's ABI version, the number of links and a fresh random epoch.
  Result<void> make_meta(std::size_t link_count) {
    tally_meta meta{};
    meta.abi_version = TALLY_ABI_VERSION;
    meta.links = static_cast<std::uint32_t>(link_count);
    if (::getrandom(meta.epoch, sizeof meta.epoch, 0) != static_cast<ssize_t>(sizeof meta.epoch)) {
      return bpf_errno_error(errno, "getrandom for the probes' epoch");
    }
    UniqueFd fd(bpf_map_create(BPF_MAP_TYPE_ARRAY, kMetaMap, sizeof(std::uint32_t), sizeof meta, 1, nullptr));
    if (!fd) return bpf_errno_error(errno, "create map tally_meta");
    const std::uint32_t key = 0;
    if (bpf_map_update_elem(fd.get(), &key, &meta, BPF_ANY) != 0) return bpf_errno_error(errno, "write map tally_meta");
    epoch = hex(meta.epoch, sizeof meta.epoch);
    maps.emplace(kMetaMap, std::move(fd));
    return {};
  }

  // Pins the maps and links of probes loaded now, tally_meta last; on failure removes what it pinned.
  Result<void> pin(const std::filesystem::path& pin_dir, const std::vector<std::string>& names) const {
    auto pin_all = [&]() -> Result<void> {
      TALLY_TRY(make_dirs({pin_dir / "maps", pin_dir / "links"}));
      auto pin_one = [](int fd, const std::filesystem::path& path) -> Result<void> {
        if (bpf_obj_pin(fd, path.c_str()) != 0) return bpf_errno_error(errno, fmt::format("pin {}", path.string()));
        return {};
      };
      for (const auto& [name, fd] : maps) {
        if (name != kMetaMap) TALLY_TRY(pin_one(fd.get(), pinned_map(pin_dir, name)));
      }
      for (std::size_t i = 0; i < links.size(); ++i) {
        TALLY_TRY(pin_one(bpf_link__fd(links[i].get()), pinned_link(pin_dir, names[i])));
      }
      return pin_one(map_fd(kMetaMap), pinned_map(pin_dir, kMetaMap));
    };
    auto pinned = pin_all();
    if (!pinned) (void)KernelProbes::remove_pinned(pin_dir);
    return pinned;
  }

  // The first pass after a fresh load: every live thread gets its current rchar/wchar as its base, so that what it
  // did before the probes saw it is not reported (tally_threads.bpf.h). Adopted probes took theirs long ago.
  Result<void> take_baseline() {
    iter->bss->tally_baseline_pass = 1;
    auto pass = read_live_io();
    iter->bss->tally_baseline_pass = 0;
    if (!pass) return pass.error();
    return {};
  }

  // One pass of the task iterator: per key, the io bytes not in tally_counters as read just before.
  Result<std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>>> read_live_io() const {
    const UniqueFd pass(bpf_iter_create(iter_link.get()));
    if (!pass) return bpf_errno_error(errno, "run BPF iterator tally_iter_task");
    std::map<std::uint64_t, std::pair<std::uint64_t, std::uint64_t>> live;
    std::vector<char> buffer(1024 * sizeof(tally_task_io));  // records may straddle two reads
    std::size_t filled = 0;
    while (true) {
      const ssize_t n = ::read(pass.get(), buffer.data() + filled, buffer.size() - filled);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return bpf_errno_error(errno, "read BPF iterator tally_iter_task");
      if (n == 0) break;
      filled += static_cast<std::size_t>(n);
      std::size_t used = 0;
      for (; filled - used >= sizeof(tally_task_io); used += sizeof(tally_task_io)) {
        tally_task_io record;
        std::memcpy(&record, buffer.data() + used, sizeof record);
        auto& [read, written] = live[record.key];
        read += record.read_bytes;
        written += record.write_bytes;
      }
      std::memmove(buffer.data(), buffer.data() + used, filled - used);
      filled -= used;
    }
    return live;
  }

  // tally_counters summed over CPUs, with batched lookups: a hash map is walked bucket by bucket, so an entry
  // deleted meanwhile is simply absent. Kernels before 5.6 have no batch operations: walked key by key there.
  Result<std::map<std::uint64_t, KernelCounters>> read_settled() {
    const int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return bpf_errno_error(-cpus, "number of possible CPUs");
    const int fd = map_fd("tally_counters");
    std::map<std::uint64_t, KernelCounters> settled;
    if (batch_lookup) {
      std::uint32_t batch = 256;  // entries per call; doubled when one hash bucket holds more (ENOSPC)
      std::vector<std::uint64_t> keys;
      std::vector<tally_counters> values;
      std::uint64_t position = 0;  // the kernel's cursor (a bucket index) between calls
      bool first = true;
      while (true) {
        keys.resize(batch);
        values.resize(static_cast<std::size_t>(batch) * static_cast<std::size_t>(cpus));
        __u32 count = batch;
        const int error = bpf_map_lookup_batch(fd, first ? nullptr : &position, &position, keys.data(),
                                               values.data(), &count, nullptr) == 0 ? 0 : errno;
        for (std::size_t i = 0; i < count; ++i) {
          settled[keys[i]] = sum_cpus(&values[i * static_cast<std::size_t>(cpus)], cpus);
        }
        if (error == ENOENT) return settled;  // the last batch
        if (first && (error == EINVAL || error == EOPNOTSUPP || error == 524 /* ENOTSUPP */)) {
          batch_lookup = false;
          break;
        }
        if (error == ENOSPC && count == 0) {
          batch *= 2;
        } else if (error != 0) {
          return bpf_errno_error(error, "batch lookup in map tally_counters");
        }
        first = false;
      }
    }
    // Assigned, not added: a concurrent delete makes get_next_key restart from the first key and revisit some.
    std::vector<tally_counters> per_cpu(static_cast<std::size_t>(cpus));
    std::uint64_t key = 0;
    const std::uint64_t* previous = nullptr;
    errno = 0;
    while (bpf_map_get_next_key(fd, previous, &key) == 0) {
      previous = &key;
      if (bpf_map_lookup_elem(fd, &key, per_cpu.data()) != 0) continue;  // deleted meanwhile
      settled[key] = sum_cpus(per_cpu.data(), cpus);
    }
    if (errno != ENOENT && errno != 0) return bpf_errno_error(errno, "read map tally_counters");
    return settled;
  }
};

namespace {

int on_ring_event(void* context, void* data, std::size_t size) {
  auto* impl = static_cast<KernelProbes::Impl*>(context);
  if (impl->handler == nullptr) return 0;
  if (const auto event = decode_event(data, size)) (*impl->handler)(*event);
  return 0;
}

// What a pin directory holds: nothing of ours, a complete set of this ABI (opened into an Impl), or something
// else (the reason), which is to be replaced.
struct Pinned {
  std::unique_ptr<KernelProbes::Impl> impl;
  std::vector<std::string> links;
  std::string mismatch;
};

std::vector<std::string> entries_of(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

Result<Pinned> open_pinned(const std::filesystem::path& pin_dir) {
  Pinned pinned;
  const auto links = entries_of(pin_dir / "links");
  const auto maps = entries_of(pin_dir / "maps");
  if (links.empty() && maps.empty()) return pinned;

  UniqueFd meta_fd(bpf_obj_get(pinned_map(pin_dir, kMetaMap).c_str()));
  if (!meta_fd) {
    if (errno == EPERM || errno == EACCES) return bpf_errno_error(errno, pinned_map(pin_dir, kMetaMap).string());
    pinned.mismatch = "an incomplete set (no readable maps/tally_meta)";
    return pinned;
  }
  // abi_version is the first field of every version of tally_meta: read it whatever the value's size.
  const auto meta_info = map_info(meta_fd.get());
  if (!meta_info || meta_info->value_size < sizeof(std::uint32_t)) {
    pinned.mismatch = "a tally_meta map of an unknown layout";
    return pinned;
  }
  std::vector<std::uint8_t> value(meta_info->value_size);
  const std::uint32_t zero = 0;
  if (bpf_map_lookup_elem(meta_fd.get(), &zero, value.data()) != 0) {
    return bpf_errno_error(errno, fmt::format("read {}", pinned_map(pin_dir, kMetaMap).string()));
  }
  std::uint32_t version = 0;
  std::memcpy(&version, value.data(), sizeof version);
  if (version != TALLY_ABI_VERSION || meta_info->value_size != sizeof(tally_meta)) {
    pinned.mismatch = fmt::format("probes of ABI version {} (this agent's is {})", version, TALLY_ABI_VERSION);
    return pinned;
  }
  tally_meta meta;
  std::memcpy(&meta, value.data(), sizeof meta);

  auto impl = std::make_unique<KernelProbes::Impl>();
  for (const SharedMap& expected : kSharedMaps) {
    UniqueFd fd(bpf_obj_get(pinned_map(pin_dir, expected.name).c_str()));
    const auto info = fd ? map_info(fd.get()) : std::nullopt;
    if (!info || info->type != expected.type || info->key_size != expected.key_size ||
        info->value_size != expected.value_size) {
      pinned.mismatch = fmt::format("an incomplete set (map {} missing or of another layout)", expected.name);
      return pinned;
    }
    if (expected.name == std::string_view("tally_counters")) impl->capacity = info->max_entries;
    impl->maps.emplace(expected.name, std::move(fd));
  }
  impl->maps.emplace(kMetaMap, std::move(meta_fd));
  if (links.size() != meta.links) {
    pinned.mismatch = fmt::format("an incomplete set ({} links pinned of {})", links.size(), meta.links);
    return pinned;
  }
  for (const auto& name : links) {
    UniqueFd fd(bpf_obj_get(pinned_link(pin_dir, name).c_str()));
    if (!fd) {
      pinned.mismatch = fmt::format("an incomplete set (link {} cannot be opened: {})", name, std::strerror(errno));
      return pinned;
    }
    if (name == kIterProgram) impl->iter_link.reset(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
    impl->adopted_links.push_back(std::move(fd));
  }
  if (!impl->iter_link) {
    pinned.mismatch = "an incomplete set (no tally_iter_task link)";
    return pinned;
  }
  impl->adopted = true;
  impl->epoch = hex(meta.epoch, sizeof meta.epoch);
  pinned.impl = std::move(impl);
  pinned.links = links;
  return pinned;
}

}  // namespace

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
  if (libbpf_probe_bpf_map_type(BPF_MAP_TYPE_TASK_STORAGE, nullptr) <= 0) {
    return make_error(ErrorCode::unsupported, "the kernel has no BPF task storage (needs Linux 5.11 or later)");
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
  if (options.counters_capacity < 2) {
    return make_error(ErrorCode::invalid_argument, "counters_capacity {} leaves no entry beside the overflow entry",
                      options.counters_capacity);
  }
  const UniqueFd cgroup_root(::open(options.cgroup2_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup_root) {
    return make_error(ErrorCode::not_found, "{}: cannot open the cgroup v2 root: {}", options.cgroup2_root.string(),
                      std::strerror(errno));
  }
  auto root_cgroup_id = cgroup_id_of(options.cgroup2_root);
  if (!root_cgroup_id) return root_cgroup_id.error();

  // Adopt: probes a previous agent pinned keep counting across restarts; a set of another ABI is replaced.
  std::unique_ptr<Impl> impl;
  std::vector<std::string> names;
  if (!options.pin_dir.empty()) {
    TALLY_TRY(make_pin_dir(options.pin_dir));
    auto pinned = open_pinned(options.pin_dir);
    if (!pinned) return pinned.error();
    if (pinned->impl) {
      spdlog::info("probes: adopted the probes pinned in {} (epoch {})", options.pin_dir.string(),
                   pinned->impl->epoch);
      impl = std::move(pinned->impl);
      names = std::move(pinned->links);
    } else if (!pinned->mismatch.empty()) {
      spdlog::warn("probes: {} holds {}: removing them and loading new probes (counters start again)",
                   options.pin_dir.string(), pinned->mismatch);
      auto removed = remove_pinned(options.pin_dir);
      if (!removed) return removed.error();
    }
  }

  if (!impl) {
    impl = std::make_unique<Impl>();
    const bool socket_tracepoints =
        options.socket_hook == SocketHook::tracepoints ||
        (options.socket_hook == SocketHook::automatic && kernel_has_socket_length_tracepoints());
    TALLY_TRY(impl->open(socket_tracepoints));
    impl->set_rodata(options, *root_cgroup_id);
    TALLY_TRY(impl->load_all(options.counters_capacity));
    TALLY_TRY(impl->make_overflow_entry());
    for (const auto& [skeleton, object] : impl->objects()) {
      TALLY_TRY(impl->attach(object, cgroup_root.get(), names));
    }
    TALLY_TRY(impl->make_meta(impl->links.size()));
    TALLY_TRY(impl->take_baseline());
  }

  impl->ring.reset(ring_buffer__new(impl->map_fd("tally_events"), on_ring_event, impl.get(), nullptr));
  if (!impl->ring) return bpf_errno_error(errno, "ring buffer tally_events");
  // Pinned last: a start that fails leaves nothing pinned behind.
  if (!impl->adopted && !options.pin_dir.empty()) TALLY_TRY(impl->pin(options.pin_dir, names));

  std::unique_ptr<KernelProbes> probes(new KernelProbes(std::move(impl)));
  probes->attached_ = std::move(names);
  return probes;
}

Result<bool> KernelProbes::remove_pinned(const std::filesystem::path& pin_dir) {
  std::error_code ec;
  if (!std::filesystem::exists(pin_dir, ec)) return false;
  // Only ever unlink inside a BPF filesystem: a pin_dir elsewhere holds no pins, but may hold files.
  auto bpffs = on_bpffs(pin_dir);
  if (!bpffs) return bpffs.error();
  if (!*bpffs) return make_error(ErrorCode::invalid_argument, "{}: not on a BPF filesystem", pin_dir.string());
  bool removed = false;
  // Links first: their programs detach as soon as no fd holds them, before the maps they write to go.
  for (const char* kind : {"links", "maps"}) {
    const auto dir = pin_dir / kind;
    for (const auto& name : entries_of(dir)) {
      const auto pin = dir / name;
      if (::unlink(pin.c_str()) != 0) return bpf_errno_error(errno, fmt::format("unpin {}", pin.string()));
      removed = true;
    }
    if (::rmdir(dir.c_str()) != 0 && errno != ENOENT) {
      return bpf_errno_error(errno, fmt::format("remove {}", dir.string()));
    }
  }
  return removed;
}

Result<std::map<std::uint64_t, KernelCounters>> KernelProbes::read_counters() {
  // The counters (settled bytes) first, then the live threads. In this order no byte is counted twice: a byte is
  // settled only after it stopped being unsettled (tally_threads.bpf.h), so one settled after the map was read is
  // in neither, which the monotonic clamp below covers, never in both.
  auto read = impl_->read_settled();
  if (!read) return read.error();
  std::map<std::uint64_t, KernelCounters> result = std::move(*read);
  impl_->entries = result.size();

  auto live = impl_->read_live_io();
  if (!live) return live.error();
  for (const auto& [key, io] : *live) {
    KernelCounters& counters = result[key];
    counters.io_read_bytes += io.first;
    counters.io_write_bytes += io.second;
  }
  for (auto& [key, counters] : result) {
    auto& [read_bytes, written] = impl_->reported_io[key];
    read_bytes = std::max(read_bytes, counters.io_read_bytes);
    written = std::max(written, counters.io_write_bytes);
    counters.io_read_bytes = read_bytes;
    counters.io_write_bytes = written;
  }
  return result;
}

void KernelProbes::forget(std::uint64_t key) {
  // The overflow entry stays whatever the caller thinks: programs charge it whenever the map is full.
  if (key != kOverflowKey) bpf_map_delete_elem(impl_->map_fd("tally_counters"), &key);
  impl_->reported_io.erase(key);
}

int KernelProbes::events_fd() const { return ring_buffer__epoll_fd(impl_->ring.get()); }

bool KernelProbes::adopted() const { return impl_->adopted; }
const std::string& KernelProbes::epoch() const { return impl_->epoch; }

ProbeStats KernelProbes::stats() const {
  ProbeStats stats;
  stats.entries = impl_->entries;
  stats.capacity = impl_->capacity;
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return stats;
  std::vector<tally_stats> per_cpu(static_cast<std::size_t>(cpus));
  const std::uint32_t zero = 0;
  if (bpf_map_lookup_elem(impl_->map_fd("tally_stats"), &zero, per_cpu.data()) != 0) return stats;
  for (const tally_stats& cpu : per_cpu) {
    stats.map_full += cpu.map_full;
    stats.ring_full += cpu.ring_full;
  }
  return stats;
}

Result<int> KernelProbes::consume_events(const std::function<void(const KernelEvent&)>& handler) {
  impl_->handler = &handler;
  const int consumed = ring_buffer__consume(impl_->ring.get());
  impl_->handler = nullptr;
  if (consumed < 0) return bpf_errno_error(-consumed, "consume ring buffer tally_events");
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
