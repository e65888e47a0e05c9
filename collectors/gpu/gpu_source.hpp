#pragma once
// GPU accounting's thread: opens NVML, samples it every interval, resolves each pid to its workload (from its
// cgroup, as every other path does) and accounts the pass. The event loop takes the passes when fd() is readable.
// NVML never runs on the event loop: a call that blocks for seconds (a GPU falling off the bus) delays only this
// thread's next pass.

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"
#include "agent/base/unique_fd.hpp"
#include "agent/base/workload_identity.hpp"
#include "collectors/gpu/gpu_accounting.hpp"
#include "collectors/gpu/gpu_sampler.hpp"
#include "collectors/nvml/nvml.hpp"

namespace tally::collectors::gpu {

struct GpuPass {
  std::vector<GpuUsage> gpus;
  std::map<std::string, WorkloadIdentity> identities;  // of the workloads named in `gpus`
  std::vector<GpuFailure> failures;                    // node-wide (the device count could not be read)
};

// An older pass folded into the next one when the event loop falls behind: counts add up, levels are the newer's,
// a workload only the older pass saw keeps its counts (holding nothing now), and a GPU only the older pass read
// (the newer could not), or that was lost in one of the two, is kept as it was. Nothing counted is lost.
void fold_pass(GpuPass& older, GpuPass& newer);

// One pass: sample NVML, resolve each pid to its workload, account. What the source's thread does every interval,
// and what bench/gpu_sampling_bench.cpp measures.
//
// A pid's workload is kept from pass to pass while the process lives, held by a pidfd: a later process that reuses
// the pid is never taken for it (it is resolved afresh). Each kept one is read again every kRefreshPasses passes,
// staggered by pid, so a process moved to another cgroup is billed to its new workload from then on. Kept only for
// processes on a GPU in the last pass; on the host only (a capture's pids are not this host's processes).
class GpuPasses {
 public:
  static constexpr std::uint64_t kRefreshPasses = 60;
  GpuPasses(const NvmlLibrary& nvml, IdleOptions idle, FsRoot fs, IdentityRules identity_rules);
  // Where the previous agent stood on a GPU (GpuCursors): sampling and energy continue from there.
  void resume(const std::string& uuid, std::optional<std::uint64_t> last_sample_us,
              std::optional<std::uint64_t> energy_mj);
  GpuPass next();

 private:
  struct Known {
    UniqueFd pidfd;
    WorkloadIdentity identity;
  };
  std::string resolve(pid_t pid, GpuPass& pass);

  GpuSampler sampler_;
  GpuAccounting accounting_;
  FsRoot fs_;
  IdentityRules identity_rules_;
  std::map<pid_t, Known> known_;
  std::uint64_t passes_ = 0;
};

class GpuSource {
 public:
  struct Options {
    std::string library = "libnvidia-ml.so.1";
    std::chrono::milliseconds interval{1000};
    IdleOptions idle;
    IdentityRules identity_rules;
    FsRoot fs;
    std::size_t max_queued = 600;  // passes the event loop has not taken (10 min at 1 Hz); older ones are merged
    // Per GPU uuid, where the previous agent stood (from the checkpoint): see GpuPasses::resume.
    std::map<std::string, std::pair<std::optional<std::uint64_t>, std::optional<std::uint64_t>>> resume;
  };
  // Opens NVML and starts sampling. An error when the library cannot be loaded or initialised.
  static Result<std::unique_ptr<GpuSource>> start(Options options);
  ~GpuSource();
  GpuSource(const GpuSource&) = delete;
  GpuSource& operator=(const GpuSource&) = delete;

  int fd() const { return wake_.get(); }
  // The passes accounted since the last call (reads the eventfd).
  std::vector<GpuPass> take();
  const std::string& driver_version() const { return driver_version_; }
  std::vector<std::string> missing_optional() const;

 private:
  GpuSource(Options options, std::unique_ptr<NvmlLibrary> nvml, UniqueFd wake);
  void run();

  Options options_;
  std::unique_ptr<NvmlLibrary> nvml_;
  std::string driver_version_;
  UniqueFd wake_;
  std::mutex mutex_;
  std::condition_variable stop_signal_;
  bool stopping_ = false;
  std::deque<GpuPass> queue_;
  std::thread thread_;
};

}  // namespace tally::collectors::gpu
