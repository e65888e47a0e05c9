#include "shm/segments/segment_file.hpp"

#include "agent/base/clock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>

namespace tally::shm {
namespace {

// The ranges the SIGBUS handler may repair. Fixed-size and lock-free because a signal handler reads it.
struct GuardedRange {
  std::atomic<std::uintptr_t> start{0};
  std::atomic<std::size_t> length{0};
  std::atomic<bool> faulted{false};
};
constexpr std::size_t kGuardedRanges = 8192;
std::array<GuardedRange, kGuardedRanges> g_ranges;  // process-wide by nature: one signal handler per process
std::atomic<bool> g_guard_installed{false};

void on_sigbus(int signal_number, siginfo_t* info, void*) {
  const auto address = reinterpret_cast<std::uintptr_t>(info->si_addr);
  for (GuardedRange& range : g_ranges) {
    const std::uintptr_t start = range.start.load(std::memory_order_acquire);
    const std::size_t length = range.length.load(std::memory_order_acquire);
    if (start != 0 && address >= start && address < start + length) {
      // Replace the whole mapping by zero pages: the faulting read then succeeds, and the owner sees `faulted`.
      void* again = ::mmap(reinterpret_cast<void*>(start), length, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (again != MAP_FAILED) {
        range.faulted.store(true, std::memory_order_release);
        return;
      }
      break;
    }
  }
  // Not ours: default action (the faulting instruction runs again and the process dies as it would have).
  ::signal(signal_number, SIG_DFL);
}

int guard(void* data, std::size_t size) {
  for (std::size_t i = 0; i < g_ranges.size(); ++i) {
    std::uintptr_t expected = 0;
    if (g_ranges[i].start.load(std::memory_order_relaxed) == 0 &&
        g_ranges[i].start.compare_exchange_strong(expected, 1)) {  // claim with a non-address placeholder
      g_ranges[i].faulted.store(false);
      g_ranges[i].length.store(size, std::memory_order_release);
      g_ranges[i].start.store(reinterpret_cast<std::uintptr_t>(data), std::memory_order_release);
      return static_cast<int>(i);
    }
  }
  return -1;
}

void unguard(int slot) {
  if (slot < 0) return;
  g_ranges[static_cast<std::size_t>(slot)].length.store(0, std::memory_order_release);
  g_ranges[static_cast<std::size_t>(slot)].start.store(0, std::memory_order_release);
}

}  // namespace

void install_sigbus_guard() {
  if (g_guard_installed.exchange(true)) return;
  struct sigaction action {};
  action.sa_sigaction = on_sigbus;
  action.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGBUS, &action, nullptr);
}

Result<MappedFile> MappedFile::open(const std::filesystem::path& path, std::uint64_t min_size,
                                    std::uint64_t max_size) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  // Gone is not_found; anything else (EMFILE, ENFILE) is io: may work later.
  if (!fd) {
    return make_error(errno == ENOENT ? ErrorCode::not_found : ErrorCode::io, "{}: cannot open: {}", path.string(),
                      std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return make_error(ErrorCode::io, "{}: fstat: {}", path.string(), std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return make_error(ErrorCode::invalid_argument, "{}: not a regular file", path.string());
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < min_size || size > max_size) {
    return make_error(ErrorCode::invalid_argument, "{}: size {} is outside [{}, {}]", path.string(), size, min_size,
                      max_size);
  }
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (data == MAP_FAILED) return make_error(ErrorCode::io, "{}: mmap: {}", path.string(), std::strerror(errno));
  // The mapping keeps the file; the descriptor is closed here, so a segment costs the agent no descriptor.
  MappedFile file;
  file.path_ = path;
  file.data_ = data;
  file.size_ = size;
  file.guard_slot_ = guard(data, size);
  return file;
}

MappedFile::~MappedFile() {
  unguard(guard_slot_);
  if (data_ != nullptr) ::munmap(data_, size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      guard_slot_(std::exchange(other.guard_slot_, -1)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unguard(guard_slot_);
    if (data_ != nullptr) ::munmap(data_, size_);
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    guard_slot_ = std::exchange(other.guard_slot_, -1);
  }
  return *this;
}

bool MappedFile::intact() const {
  return guard_slot_ < 0 || !g_ranges[static_cast<std::size_t>(guard_slot_)].faulted.load(std::memory_order_acquire);
}

Result<CreatedSegment> create_segment(const std::filesystem::path& path, const std::filesystem::path& control_path,
                                      const SegmentShape& shape, const Producer& producer,
                                      std::string_view workload_name) {
  const format::Layout layout = format::compute_layout(shape.label_capacity, shape.slot_count, shape.lane_records);
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return make_error(ErrorCode::io, "{}: cannot create: {}", path.string(), std::strerror(errno));
  auto fail = [&](std::string_view what) {
    const int saved = errno;
    ::unlink(path.c_str());
    ::unlink(control_path.c_str());
    return make_error(ErrorCode::io, "{}: {}: {}", path.string(), what, std::strerror(saved));
  };
  if (::ftruncate(fd.get(), static_cast<off_t>(layout.segment_size)) != 0) return fail("ftruncate");
  void* data = ::mmap(nullptr, layout.segment_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (data == MAP_FAILED) return fail("mmap");
  auto* h = static_cast<format::Header*>(data);
  format::init_header(*h, shape.label_capacity, shape.slot_count, shape.lane_records);
  h->producer_pid = static_cast<std::uint32_t>(producer.pid);
  h->producer_uid = producer.uid;
  h->producer_start_ticks = producer.start_ticks;
  h->created_unix_ns = unix_time_ns();
  std::memcpy(h->workload_name, workload_name.data(), std::min(workload_name.size(), sizeof h->workload_name - 1));
  h->label_count = 1;
  format::store_release(h->magic, format::kMagic);  // last: a reader never sees a half-made header as valid
  ::munmap(data, layout.segment_size);
  // The file stays the agent's (mode 0600, in a directory only the agent can search): the client writes through
  // the descriptor it is handed, and no other process of its uid can open the file by name.

  const std::uint64_t control_bytes = format::control_size(shape.label_capacity);
  UniqueFd control(::open(control_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!control) return fail("cannot create control file");
  if (::ftruncate(control.get(), static_cast<off_t>(control_bytes)) != 0) return fail("ftruncate control");
  format::ControlHeader ch{};
  ch.magic = format::kControlMagic;
  ch.version = format::kControlVersion;
  ch.label_capacity = shape.label_capacity;
  ch.size = control_bytes;
  ch.decisions_offset = sizeof(format::ControlHeader);
  ch.allowances_offset = format::align64(sizeof(format::ControlHeader) + std::uint64_t{shape.label_capacity} * 4);
  if (::pwrite(control.get(), &ch, sizeof ch, 0) != static_cast<ssize_t>(sizeof ch)) return fail("write control");
  UniqueFd read_only(::open(control_path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!read_only) return fail("reopen control read-only");
  return CreatedSegment{std::move(fd), std::move(read_only)};
}

namespace {

// Label set `handle`'s entry in the control file's table at `offset` (decisions, allowances), or nullptr when the
// handle is out of range or the table is not wholly in the mapping.
template <typename T>
T* control_entry(const MappedFile& control, std::uint32_t handle, std::uint64_t format::ControlHeader::*offset) {
  const auto bytes = control.bytes();
  if (bytes.size() < sizeof(format::ControlHeader)) return nullptr;
  const auto* h = reinterpret_cast<const format::ControlHeader*>(bytes.data());
  if (handle >= h->label_capacity || h->*offset + std::uint64_t{sizeof(T)} * h->label_capacity > bytes.size()) {
    return nullptr;
  }
  return reinterpret_cast<T*>(bytes.data() + h->*offset) + handle;
}

}  // namespace

void set_decision(const MappedFile& control, std::uint32_t handle, std::uint8_t decision, std::uint32_t reason) {
  if (std::uint32_t* word = control_entry<std::uint32_t>(control, handle, &format::ControlHeader::decisions_offset)) {
    format::store_relaxed(*word, format::decision_word(decision, reason));
  }
}

void set_allowance(const MappedFile& control, std::uint32_t handle, std::uint64_t word) {
  // Release (acquire in allowance()): whoever reads a grant sees what the agent wrote before it.
  if (std::uint64_t* entry = control_entry<std::uint64_t>(control, handle, &format::ControlHeader::allowances_offset)) {
    format::store_release(*entry, word);
  }
}

std::uint64_t allowance(const MappedFile& control, std::uint32_t handle) {
  const std::uint64_t* entry = control_entry<std::uint64_t>(control, handle, &format::ControlHeader::allowances_offset);
  return entry != nullptr ? format::load_acquire(*entry) : 0;
}

}  // namespace tally::shm
