#include "agent/partitioning/device_policy.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/random.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "agent/base/unique_fd.hpp"
#include "collectors/kernel/bpf_loading.hpp"
#include "ebpf/tally_policy_abi.h"

#if TALLY_HAVE_BPF_PROGRAMS
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "ebpf/gpu_policy.skel.h"
#include "ebpf/gpu_policy_mkdir.skel.h"
#endif

namespace tally::partitioning {

using collectors::bpf_errno_error;

namespace {

// The maps, pinned under maps/, tally_policy_state last (a directory without it holds a partial set), and the
// links under links/.
constexpr std::array<const char*, 5> kMaps{"tally_policy_devices", "tally_policy_cgroups", "tally_policy_paths",
                                           "tally_policy_denials", "tally_policy_events"};
constexpr const char* kStateMap = "tally_policy_state";
constexpr std::array<const char*, 2> kLinks{"tally_gpu_policy", "tally_gpu_policy_mkdir"};

std::filesystem::path pinned_map(const std::filesystem::path& dir, std::string_view name) { return dir / "maps" / name; }
std::filesystem::path pinned_link(const std::filesystem::path& dir, std::string_view name) {
  return dir / "links" / name;
}

}  // namespace

#if TALLY_HAVE_BPF_PROGRAMS

namespace {

struct RingBufferDeleter {
  void operator()(ring_buffer* ring) const { ring_buffer__free(ring); }
};

tally_policy_path path_key(std::string_view path) {
  tally_policy_path key{};
  std::memcpy(key.path, path.data(), std::min(path.size(), sizeof key.path - 1));
  return key;
}

Result<void> make_pin_dirs(const std::filesystem::path& pin_dir) {
  std::filesystem::path existing = pin_dir;
  std::error_code ec;
  while (!existing.empty() && !std::filesystem::exists(existing, ec)) existing = existing.parent_path();
  struct statfs fs{};
  if (::statfs(existing.empty() ? "." : existing.c_str(), &fs) != 0) {
    return bpf_errno_error(errno, fmt::format("statfs {}", existing.string()));
  }
  if (fs.f_type != static_cast<decltype(fs.f_type)>(BPF_FS_MAGIC)) {
    return make_error(ErrorCode::unsupported,
                      "{}: not on a BPF filesystem, so the GPU policy cannot be pinned there (mount one with "
                      "`mount -t bpf bpf /sys/fs/bpf`, or set [partitioning] pin_dir = \"\")",
                      pin_dir.string());
  }
  for (const auto& dir : {pin_dir / "maps", pin_dir / "links"}) {
    std::filesystem::create_directories(dir, ec);
    if (ec) return make_error(ErrorCode::io, "create {}: {}", dir.string(), ec.message());
  }
  return {};
}

// Iterates a hash map's keys.
template <typename Key, typename Fn>
Result<void> for_each_key(int fd, std::string_view name, Fn&& fn) {
  Key key{};
  const Key* previous = nullptr;
  errno = 0;
  while (bpf_map_get_next_key(fd, previous, &key) == 0) {
    fn(key);
    previous = &key;
  }
  if (errno != ENOENT && errno != 0) return bpf_errno_error(errno, fmt::format("read map {}", name));
  return {};
}

// Detaches a link whoever else holds it. A tracing link (the mkdir program) cannot be detached (EOPNOTSUPP): it
// goes with its last fd and pin, and while it lingers it only fills maps nothing reads. EINVAL: already detached.
Result<void> detach_link(int fd, std::string_view what) {
  if (bpf_link_detach(fd) != 0 && errno != EINVAL && errno != EOPNOTSUPP) {
    return bpf_errno_error(errno, fmt::format("detach {}", what));
  }
  return {};
}

}  // namespace

using collectors::SkeletonPtr;

struct DevicePolicy::Impl {
  SkeletonPtr<tally_gpu_policy, tally_gpu_policy__destroy> device;
  SkeletonPtr<tally_gpu_policy_mkdir, tally_gpu_policy_mkdir__destroy> mkdir;
  std::map<std::string, UniqueFd, std::less<>> maps;
  std::vector<UniqueFd> links;  // device program's link, mkdir program's link
  std::unique_ptr<ring_buffer, RingBufferDeleter> ring;
  std::filesystem::path pin_dir;
  bool adopted = false;
  bool released = false;
  std::uint64_t generation = 0;
  const std::function<void(const PolicyEvent&)>* handler = nullptr;

  int map_fd(std::string_view name) const {
    const auto it = maps.find(name);
    return it == maps.end() ? -1 : it->second.get();
  }

  Result<tally_policy_state> read_state() const {
    tally_policy_state state{};
    const std::uint32_t zero = 0;
    if (bpf_map_lookup_elem(map_fd(kStateMap), &zero, &state) != 0) return bpf_errno_error(errno, "read tally_policy_state");
    return state;
  }

  Result<void> load_and_attach(const std::filesystem::path& cgroup2_root) {
    device.reset(tally_gpu_policy__open());
    mkdir.reset(tally_gpu_policy_mkdir__open());
    if (!device || !mkdir) return bpf_errno_error(errno, "open the GPU policy's BPF skeletons");
    if (int err = tally_gpu_policy__load(device.get()); err != 0) {
      return bpf_errno_error(-err, "load BPF program tally_gpu_policy (needs Linux 6.1+; --log-level debug shows the "
                               "verifier's log)");
    }
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, device->obj) {
      if (bpf_map__is_internal(map)) continue;
      UniqueFd own(::fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 0));
      if (!own) return bpf_errno_error(errno, "dup a GPU policy map");
      maps.emplace(bpf_map__name(map), std::move(own));
    }
    bpf_object__for_each_map(map, mkdir->obj) {
      if (bpf_map__is_internal(map)) continue;
      if (int err = bpf_map__reuse_fd(map, map_fd(bpf_map__name(map))); err != 0) {
        return bpf_errno_error(-err, fmt::format("share map {}", bpf_map__name(map)));
      }
    }
    if (int err = tally_gpu_policy_mkdir__load(mkdir.get()); err != 0) {
      return bpf_errno_error(-err, "load BPF program tally_gpu_policy_mkdir");
    }
    tally_policy_state state{};
    state.abi_version = TALLY_POLICY_ABI_VERSION;
    if (::getrandom(state.epoch, sizeof state.epoch, 0) != static_cast<ssize_t>(sizeof state.epoch)) {
      return bpf_errno_error(errno, "getrandom");
    }
    const std::uint32_t zero = 0;
    if (bpf_map_update_elem(map_fd(kStateMap), &zero, &state, BPF_ANY) != 0) {
      return bpf_errno_error(errno, "write tally_policy_state");
    }
    const UniqueFd root(::open(cgroup2_root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root) return bpf_errno_error(errno, fmt::format("open cgroup v2 root {}", cgroup2_root.string()));
    // A link on the root: multi-attach, so programs others attach anywhere keep running (a denial by either stands).
    bpf_link* device_link = bpf_program__attach_cgroup(device->progs.tally_gpu_policy, root.get());
    if (device_link == nullptr) {
      return bpf_errno_error(errno, fmt::format("attach tally_gpu_policy to {}", cgroup2_root.string()));
    }
    links.emplace_back(::fcntl(bpf_link__fd(device_link), F_DUPFD_CLOEXEC, 0));
    bpf_link__destroy(device_link);  // our dup holds it
    bpf_link* mkdir_link = bpf_program__attach(mkdir->progs.tally_gpu_policy_mkdir);
    if (mkdir_link == nullptr) return bpf_errno_error(errno, "attach tally_gpu_policy_mkdir");
    links.emplace_back(::fcntl(bpf_link__fd(mkdir_link), F_DUPFD_CLOEXEC, 0));
    bpf_link__destroy(mkdir_link);
    for (const UniqueFd& link : links) {
      if (!link) return bpf_errno_error(EBADF, "dup a GPU policy link");
    }
    return {};
  }

  // Opens a pinned policy of this ABI; nullopt (with the reason) when the directory holds none, or another.
  Result<std::optional<std::string>> adopt(const std::filesystem::path& dir) {
    UniqueFd state_fd(bpf_obj_get(pinned_map(dir, kStateMap).c_str()));
    if (!state_fd) {
      if (errno == EPERM || errno == EACCES) return bpf_errno_error(errno, pinned_map(dir, kStateMap).string());
      return std::optional<std::string>("no complete policy pinned");
    }
    maps.emplace(kStateMap, std::move(state_fd));
    auto state = read_state();
    if (!state || state->abi_version != TALLY_POLICY_ABI_VERSION) {
      maps.clear();
      return std::optional<std::string>(
          fmt::format("a policy of ABI version {} (this agent's is {})", state ? state->abi_version : 0,
                      TALLY_POLICY_ABI_VERSION));
    }
    for (const char* name : kMaps) {
      UniqueFd fd(bpf_obj_get(pinned_map(dir, name).c_str()));
      if (!fd) {
        maps.clear();
        return std::optional<std::string>(fmt::format("an incomplete policy (map {} missing)", name));
      }
      maps.emplace(name, std::move(fd));
    }
    for (const char* name : kLinks) {
      UniqueFd fd(bpf_obj_get(pinned_link(dir, name).c_str()));
      if (!fd) {
        maps.clear();
        links.clear();
        return std::optional<std::string>(fmt::format("an incomplete policy (link {} missing)", name));
      }
      links.push_back(std::move(fd));
    }
    adopted = true;
    generation = state->generation;
    return std::optional<std::string>();
  }

  Result<void> pin(const std::filesystem::path& dir) const {
    TALLY_TRY(make_pin_dirs(dir));
    auto pin_one = [](int fd, const std::filesystem::path& path) -> Result<void> {
      if (bpf_obj_pin(fd, path.c_str()) != 0) return bpf_errno_error(errno, fmt::format("pin {}", path.string()));
      return {};
    };
    for (std::size_t i = 0; i < kLinks.size(); ++i) TALLY_TRY(pin_one(links[i].get(), pinned_link(dir, kLinks[i])));
    for (const char* name : kMaps) TALLY_TRY(pin_one(map_fd(name), pinned_map(dir, name)));
    return pin_one(map_fd(kStateMap), pinned_map(dir, kStateMap));
  }

  Result<void> open_ring() {
    ring.reset(ring_buffer__new(map_fd("tally_policy_events"), &Impl::on_event, this, nullptr));
    if (!ring) return bpf_errno_error(errno, "open ring buffer tally_policy_events");
    return {};
  }

  static int on_event(void* context, void* data, std::size_t size) {
    auto* impl = static_cast<Impl*>(context);
    if (impl->handler == nullptr || size < sizeof(tally_policy_event)) return 0;
    tally_policy_event raw;
    std::memcpy(&raw, data, sizeof raw);
    PolicyEvent event;
    switch (raw.type) {
      case TALLY_POLICY_EVENT_DENIED: event.type = PolicyEvent::Type::denied; break;
      case TALLY_POLICY_EVENT_COVERED: event.type = PolicyEvent::Type::covered; break;
      case TALLY_POLICY_EVENT_MKDIR: event.type = PolicyEvent::Type::mkdir; break;
      default: return 0;
    }
    event.pid = static_cast<pid_t>(raw.pid);
    event.cgroup_id = raw.cgroup_id;
    event.count = raw.count;
    event.major = raw.major;
    event.minor = raw.minor;
    event.read = (raw.access & BPF_DEVCG_ACC_READ) != 0;
    event.write = (raw.access & BPF_DEVCG_ACC_WRITE) != 0;
    event.comm.assign(raw.comm, strnlen(raw.comm, sizeof raw.comm));
    event.path.assign(raw.path, strnlen(raw.path, sizeof raw.path));
    (*impl->handler)(event);
    return 0;
  }
};

Result<std::unique_ptr<DevicePolicy>> DevicePolicy::start(const DevicePolicyOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->pin_dir = options.pin_dir;
  std::string replaced;
  if (!options.pin_dir.empty()) {
    auto adopted = impl->adopt(options.pin_dir);
    if (!adopted) return adopted.error();
    if (!adopted->has_value()) {
      TALLY_TRY(impl->open_ring());
      return std::unique_ptr<DevicePolicy>(new DevicePolicy(std::move(impl)));
    }
    replaced = **adopted;
  }
  TALLY_TRY(impl->load_and_attach(options.cgroup2_root));
  if (!options.pin_dir.empty()) {
    // The new policy is attached before whatever was pinned goes: no moment without one.
    if (pinned(options.pin_dir)) TALLY_TRY(remove_pinned(options.pin_dir));
    if (auto pinned_now = impl->pin(options.pin_dir); !pinned_now) {
      (void)remove_pinned(options.pin_dir);
      return pinned_now.error();
    }
  }
  TALLY_TRY(impl->open_ring());
  return std::unique_ptr<DevicePolicy>(new DevicePolicy(std::move(impl)));
}

Result<bool> DevicePolicy::remove_pinned(const std::filesystem::path& pin_dir) {
  bool found = false;
  std::error_code ec;
  for (const char* name : kLinks) {
    const auto path = pinned_link(pin_dir, name);
    const UniqueFd link(bpf_obj_get(path.c_str()));
    if (link) {
      found = true;
      // Detached whoever else holds it (an agent still running, a stray fd): nothing of the policy stays in force.
      TALLY_TRY(detach_link(link.get(), path.string()));
    }
  }
  for (const char* sub : {"links", "maps"}) {
    for (const auto& entry : std::filesystem::directory_iterator(pin_dir / sub, ec)) {
      found = true;
      std::filesystem::remove(entry.path(), ec);
    }
    std::filesystem::remove(pin_dir / sub, ec);
  }
  std::filesystem::remove(pin_dir, ec);  // only if empty
  return found;
}

DevicePolicy::~DevicePolicy() = default;  // unpinned links go with their last fd; pinned ones stay

bool DevicePolicy::adopted() const { return impl_->adopted; }
std::uint64_t DevicePolicy::generation() const { return impl_->generation; }

Result<PolicyChange> DevicePolicy::install(const PolicyTables& tables, std::uint64_t generation) {
  if (impl_->released) return make_error(ErrorCode::invalid_argument, "the GPU policy was released");
  auto now = installed();
  if (!now) return now.error();
  PolicyChange change;
  const int devices = impl_->map_fd("tally_policy_devices");
  const int cgroups = impl_->map_fd("tally_policy_cgroups");
  const int paths = impl_->map_fd("tally_policy_paths");
  auto put = [](int fd, const void* key, const void* value, std::string_view map) -> Result<void> {
    if (bpf_map_update_elem(fd, key, value, BPF_ANY) != 0) return bpf_errno_error(errno, fmt::format("write map {}", map));
    return {};
  };
  auto drop = [](int fd, const void* key, std::string_view map) -> Result<void> {
    if (bpf_map_delete_elem(fd, key) != 0 && errno != ENOENT) {
      return bpf_errno_error(errno, fmt::format("delete from map {}", map));
    }
    return {};
  };
  // Holders first, widened to what they held and will hold, so that a workload never loses an open the new plan
  // gives it, not even for an instant (a bit may name another node in the new plan; kOpenGrant leaves the
  // assigned workloads' entries only once the open GPUs' nodes are unrestricted again); then the nodes; then the
  // holders narrowed to the new tables, and what went.
  for (const auto& [id, grants] : tables.cgroups) {
    const auto it = now->cgroups.find(id);
    if (it != now->cgroups.end() && it->second == grants) continue;
    ++change.cgroups;
    const std::uint64_t widened = it == now->cgroups.end() ? grants : it->second | grants;
    if (it != now->cgroups.end() && widened == it->second) continue;  // only narrowed: after the nodes
    TALLY_TRY(put(cgroups, &id, &widened, "tally_policy_cgroups"));
  }
  for (const auto& [path, grants] : tables.paths) {
    const auto it = now->paths.find(path);
    if (it != now->paths.end() && it->second == grants) continue;
    ++change.paths;
    const std::uint64_t widened = it == now->paths.end() ? grants : it->second | grants;
    if (it != now->paths.end() && widened == it->second) continue;
    const tally_policy_path key = path_key(path);
    TALLY_TRY(put(paths, &key, &widened, "tally_policy_paths"));
  }
  for (const auto& [device, grants] : tables.devices) {
    if (auto it = now->devices.find(device); it != now->devices.end() && it->second == grants) continue;
    const tally_policy_device_key key{device.first, device.second};
    TALLY_TRY(put(devices, &key, &grants, "tally_policy_devices"));
    ++change.devices;
  }
  for (const auto& [device, grants] : now->devices) {
    if (tables.devices.contains(device)) continue;
    const tally_policy_device_key key{device.first, device.second};
    TALLY_TRY(drop(devices, &key, "tally_policy_devices"));
    ++change.devices;
  }
  for (const auto& [id, grants] : tables.cgroups) {
    if (auto it = now->cgroups.find(id); it != now->cgroups.end() && (it->second | grants) != grants) {
      TALLY_TRY(put(cgroups, &id, &grants, "tally_policy_cgroups"));
    }
  }
  for (const auto& [path, grants] : tables.paths) {
    if (auto it = now->paths.find(path); it != now->paths.end() && (it->second | grants) != grants) {
      const tally_policy_path key = path_key(path);
      TALLY_TRY(put(paths, &key, &grants, "tally_policy_paths"));
    }
  }
  for (const auto& [id, grants] : now->cgroups) {
    if (tables.cgroups.contains(id)) continue;
    TALLY_TRY(drop(cgroups, &id, "tally_policy_cgroups"));
    ++change.cgroups;
  }
  for (const auto& [path, grants] : now->paths) {
    if (tables.paths.contains(path)) continue;
    const tally_policy_path key = path_key(path);
    TALLY_TRY(drop(paths, &key, "tally_policy_paths"));
    ++change.paths;
  }
  auto state = impl_->read_state();
  if (!state) return state.error();
  state->generation = generation;
  const std::uint32_t zero = 0;
  if (bpf_map_update_elem(impl_->map_fd(kStateMap), &zero, &*state, BPF_ANY) != 0) {
    return bpf_errno_error(errno, "write tally_policy_state");
  }
  impl_->generation = generation;
  return change;
}

Result<PolicyTables> DevicePolicy::installed() const {
  PolicyTables tables;
  const int devices = impl_->map_fd("tally_policy_devices");
  const int cgroups = impl_->map_fd("tally_policy_cgroups");
  const int paths = impl_->map_fd("tally_policy_paths");
  std::uint64_t grants = 0;
  TALLY_TRY(for_each_key<tally_policy_device_key>(devices, "tally_policy_devices", [&](const auto& key) {
    if (bpf_map_lookup_elem(devices, &key, &grants) == 0) tables.devices[{key.major, key.minor}] = grants;
  }));
  TALLY_TRY(for_each_key<std::uint64_t>(cgroups, "tally_policy_cgroups", [&](const auto& key) {
    if (bpf_map_lookup_elem(cgroups, &key, &grants) == 0) tables.cgroups[key] = grants;
  }));
  TALLY_TRY(for_each_key<tally_policy_path>(paths, "tally_policy_paths", [&](const auto& key) {
    if (bpf_map_lookup_elem(paths, &key, &grants) == 0) tables.paths[std::string(key.path, strnlen(key.path, sizeof key.path))] = grants;
  }));
  return tables;
}

Result<void> DevicePolicy::grant(std::uint64_t cgroup_id, std::uint64_t grants) {
  if (bpf_map_update_elem(impl_->map_fd("tally_policy_cgroups"), &cgroup_id, &grants, BPF_ANY) != 0) {
    return bpf_errno_error(errno, "write map tally_policy_cgroups");
  }
  return {};
}

Result<std::map<std::tuple<std::uint64_t, std::uint32_t, std::uint32_t>, std::uint64_t>> DevicePolicy::denials()
    const {
  std::map<std::tuple<std::uint64_t, std::uint32_t, std::uint32_t>, std::uint64_t> counts;
  const int fd = impl_->map_fd("tally_policy_denials");
  std::uint64_t count = 0;
  TALLY_TRY(for_each_key<tally_policy_denial_key>(fd, "tally_policy_denials", [&](const auto& key) {
    if (bpf_map_lookup_elem(fd, &key, &count) == 0) counts[{key.cgroup_id, key.major, key.minor}] = count;
  }));
  return counts;
}

int DevicePolicy::events_fd() const { return impl_->ring ? ring_buffer__epoll_fd(impl_->ring.get()) : -1; }

Result<int> DevicePolicy::consume_events(const std::function<void(const PolicyEvent&)>& handler) {
  if (!impl_->ring) return 0;
  impl_->handler = &handler;
  const int n = ring_buffer__consume(impl_->ring.get());
  impl_->handler = nullptr;
  if (n < 0) return bpf_errno_error(-n, "read ring buffer tally_policy_events");
  return n;
}

Result<void> DevicePolicy::release() {
  impl_->ring.reset();
  for (UniqueFd& link : impl_->links) {
    if (link) TALLY_TRY(detach_link(link.get(), "a GPU policy link"));
  }
  impl_->links.clear();
  impl_->released = true;
  if (!impl_->pin_dir.empty()) {
    auto removed = remove_pinned(impl_->pin_dir);
    if (!removed) return removed.error();
  }
  return {};
}

std::vector<std::uint32_t> DevicePolicy::link_ids() const {
  std::vector<std::uint32_t> ids;
  for (const UniqueFd& link : impl_->links) {
    bpf_link_info info{};
    __u32 length = sizeof info;
    if (link && bpf_obj_get_info_by_fd(link.get(), &info, &length) == 0) ids.push_back(info.id);
  }
  return ids;
}

#else  // no BPF programs in this build

struct DevicePolicy::Impl {};

Result<std::unique_ptr<DevicePolicy>> DevicePolicy::start(const DevicePolicyOptions&) {
  return make_error(ErrorCode::unsupported, "this tallyd was built without eBPF programs: no GPU device policy");
}
Result<bool> DevicePolicy::remove_pinned(const std::filesystem::path&) { return false; }
DevicePolicy::~DevicePolicy() = default;
bool DevicePolicy::adopted() const { return false; }
std::uint64_t DevicePolicy::generation() const { return 0; }
Result<PolicyChange> DevicePolicy::install(const PolicyTables&, std::uint64_t) { return PolicyChange{}; }
Result<PolicyTables> DevicePolicy::installed() const { return PolicyTables{}; }
Result<void> DevicePolicy::grant(std::uint64_t, std::uint64_t) { return {}; }
Result<std::map<std::tuple<std::uint64_t, std::uint32_t, std::uint32_t>, std::uint64_t>> DevicePolicy::denials()
    const {
  return std::map<std::tuple<std::uint64_t, std::uint32_t, std::uint32_t>, std::uint64_t>{};
}
int DevicePolicy::events_fd() const { return -1; }
Result<int> DevicePolicy::consume_events(const std::function<void(const PolicyEvent&)>&) { return 0; }
Result<void> DevicePolicy::release() { return {}; }
std::vector<std::uint32_t> DevicePolicy::link_ids() const { return {}; }

#endif

bool DevicePolicy::pinned(const std::filesystem::path& pin_dir) {
  std::error_code ec;
  return !pin_dir.empty() &&
         (std::filesystem::exists(pin_dir / "maps", ec) || std::filesystem::exists(pin_dir / "links", ec));
}

DevicePolicy::DevicePolicy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

}  // namespace tally::partitioning
