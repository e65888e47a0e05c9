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
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "agent/base/result.hpp"
#include "agent/base/unique_fd.hpp"
#include "agent/base/workload_identity.hpp"
#include "collectors/gpu/gpu_accounting.hpp"
#include "collectors/nvml/nvml.hpp"

namespace tally::collectors::gpu {

struct GpuPass {
  std::vector<GpuUsage> gpus;
  std::map<std::string, WorkloadIdentity> identities;  // of the workloads named in `gpus`
  std::vector<GpuFailure> failures;                    // node-wide (the device count could not be read)
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
  std::string resolve(pid_t pid, std::map<std::string, WorkloadIdentity>& identities);

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
