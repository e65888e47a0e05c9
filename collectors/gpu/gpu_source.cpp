#include "collectors/gpu/gpu_source.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "collectors/gpu/gpu_sampler.hpp"
#include "collectors/nvml/nvml.hpp"

namespace tally::collectors::gpu {
namespace {

// An older pass folded into the next one when the event loop falls behind: counts add up, levels are the newer's.
void fold(GpuPass& older, GpuPass& newer) {
  for (GpuUsage& n : newer.gpus) {
    for (const GpuUsage& o : older.gpus) {
      if (o.uuid != n.uuid) continue;
      n.elapsed_ns += o.elapsed_ns;
      n.busy_ns += o.busy_ns;
      n.energy_mj += o.energy_mj;
      n.idle_energy_mj += o.idle_energy_mj;
      n.unattributed_energy_mj += o.unattributed_energy_mj;
      n.unattributed_sm_ns += o.unattributed_sm_ns;
      n.sm_scaled_off_ns += o.sm_scaled_off_ns;
      for (const HolderUsage& oh : o.holders) {
        auto it = std::find_if(n.holders.begin(), n.holders.end(), [&](const auto& h) { return h.workload == oh.workload; });
        if (it == n.holders.end()) {
          HolderUsage gone = oh;
          gone.memory_bytes = 0;
          gone.holds_memory = false;
          n.holders.push_back(gone);
          continue;
        }
        it->sm_ns += oh.sm_ns;
        it->allocated_ns += oh.allocated_ns;
        it->energy_mj += oh.energy_mj;
      }
    }
  }
  newer.identities.merge(older.identities);
}

}  // namespace

Result<std::unique_ptr<GpuSource>> GpuSource::start(Options options) {
  auto nvml = NvmlLibrary::open(options.library);
  if (!nvml) return nvml.error();
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (wake.get() < 0) return make_error(ErrorCode::io, "GPU accounting: eventfd: {}", std::strerror(errno));
  std::unique_ptr<GpuSource> source(new GpuSource(std::move(options), std::move(*nvml), std::move(wake)));
  source->thread_ = std::thread([s = source.get()] { s->run(); });
  return source;
}

GpuSource::GpuSource(Options options, std::unique_ptr<NvmlLibrary> nvml, UniqueFd wake)
    : options_(std::move(options)), nvml_(std::move(nvml)), driver_version_(nvml_->driver_version()),
      wake_(std::move(wake)) {}

GpuSource::~GpuSource() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stop_signal_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::vector<std::string> GpuSource::missing_optional() const { return nvml_->missing_optional(kNvmlAccounting); }

std::vector<GpuPass> GpuSource::take() {
  std::uint64_t ignored = 0;
  [[maybe_unused]] const ssize_t n = ::read(wake_.get(), &ignored, sizeof ignored);
  std::lock_guard lock(mutex_);
  std::vector<GpuPass> out(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

std::string GpuSource::resolve(pid_t pid, std::map<std::string, WorkloadIdentity>& identities) {
  auto identity = identify_process(options_.fs, pid, options_.identity_rules);
  if (!identity) return {};  // exited: its share is unattributed
  std::string id = identity->id;
  identities.try_emplace(id, std::move(*identity));
  return id;
}

void GpuSource::run() {
  GpuSampler sampler(*nvml_);
  GpuAccounting accounting(options_.idle);
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    GpuPass pass;
    const NodeReading reading = sampler.sample();
    std::map<pid_t, std::string> resolved;
    pass.gpus = accounting.account(reading, [&](pid_t pid) {
      auto [it, fresh] = resolved.try_emplace(pid);
      if (fresh) it->second = resolve(pid, pass.identities);
      return it->second;
    });
    pass.failures = reading.failures;
    lock.lock();
    if (queue_.size() >= options_.max_queued && queue_.size() >= 2) {
      GpuPass oldest = std::move(queue_.front());
      queue_.pop_front();
      fold(oldest, queue_.front());
    }
    queue_.push_back(std::move(pass));
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof one);
    stop_signal_.wait_for(lock, options_.interval, [this] { return stopping_; });
  }
}

}  // namespace tally::collectors::gpu
