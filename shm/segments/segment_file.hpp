#pragma once
// Segment files on tmpfs, agent side: creating a client's segment and control file, and mapping an existing one
// (also after an agent restart). A client holds a writable descriptor to its segment and could truncate the file
// under the agent; reading a page past the new end raises SIGBUS. install_sigbus_guard() handles that the way
// Wayland compositors handle wl_shm pools: the handler maps anonymous zero pages over the mapping, marks it
// faulted and returns, and the reader then quarantines the segment (MappedFile::intact()).

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "agent/base/result.hpp"
#include "agent/base/unique_fd.hpp"
#include "shm/format/names.hpp"
#include "shm/format/segment_format.hpp"

namespace tally::shm {

using tally::UniqueFd;

// Installs the process-wide SIGBUS handler described above. Idempotent. The agent calls it once at start.
void install_sigbus_guard();

// A mapped segment (or control) file. Move-only; unmaps on destruction.
class MappedFile {
 public:
  // Maps `path` read-write. Refuses anything but a regular file between `min_size` and `max_size` bytes.
  static Result<MappedFile> open(const std::filesystem::path& path, std::uint64_t min_size, std::uint64_t max_size);
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;

  std::span<std::byte> bytes() const { return {static_cast<std::byte*>(data_), size_}; }
  const std::filesystem::path& path() const { return path_; }
  // False once a read hit a page the file no longer has (it was truncated under us: SIGBUS caught, zero pages
  // mapped in). A truncation the reader never reads past changes nothing it reads.
  bool intact() const;

 private:
  std::filesystem::path path_;
  void* data_ = nullptr;
  std::size_t size_ = 0;
  int guard_slot_ = -1;
};

struct SegmentShape {
  std::uint32_t label_capacity = format::kDefaultLabelSets;
  std::uint32_t slot_count = format::kDefaultSlots;
  std::uint32_t lane_records = format::kDefaultLaneRecords;
};

struct Producer {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  std::uint64_t start_ticks = 0;
};

// Creates `path` (must not exist; mode 0600, the agent's) with a fresh header, and `control_path` (mode 0600, the
// agent's). Returns the segment read-write and the control file read-only descriptors, to be sent to the client:
// the only way a client reaches its segment (docs/shm-format.md, threat model).
struct CreatedSegment {
  UniqueFd segment;
  UniqueFd control_read_only;
};
Result<CreatedSegment> create_segment(const std::filesystem::path& path, const std::filesystem::path& control_path,
                                      const SegmentShape& shape, const Producer& producer,
                                      std::string_view workload_name);

// Writes a decision for one label set into a mapped control file (agent side). Out-of-range handles are ignored.
void set_decision(const MappedFile& control, std::uint32_t handle, std::uint8_t decision, std::uint32_t reason);

// The allowance word (format::allowance_word) of one label set in a mapped control file (agent side). Stored with
// release; out-of-range handles are ignored. Granted amounts only grow while the segment lives (BudgetEntry).
void set_allowance(const MappedFile& control, std::uint32_t handle, std::uint64_t word);
// The word last stored there; 0 (no allowance) for an out-of-range handle. A new agent continues from it.
std::uint64_t allowance(const MappedFile& control, std::uint32_t handle);

}  // namespace tally::shm
