#include "collectors/gpu/gpu_source.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/base/pidfd.hpp"

namespace tally::collectors::gpu {

void fold_pass(GpuPass& older, GpuPass& newer) {
  for (GpuUsage& o : older.gpus) {
    auto n = std::find_if(newer.gpus.begin(), newer.gpus.end(), [&](const GpuUsage& g) { return g.uuid == o.uuid; });
    if (n == newer.gpus.end()) {
      newer.gpus.push_back(std::move(o));
      continue;
    }
    if (n->lost != o.lost) {  // lost in one pass only: both kept, in order, so neither's counts nor state are lost
      newer.gpus.insert(n, std::move(o));
      continue;
    }
    n->elapsed_ns += o.elapsed_ns;
    n->busy_ns += o.busy_ns;
    n->energy_mj += o.energy_mj;
    n->energy_reset = n->energy_reset || o.energy_reset;
    n->idle_energy_mj += o.idle_energy_mj;
    n->unattributed_energy_mj += o.unattributed_energy_mj;
    n->unattributed_sm_ns += o.unattributed_sm_ns;
    n->sm_scaled_off_ns += o.sm_scaled_off_ns;
    n->future_samples += o.future_samples;
    n->idle_changed = n->idle_changed || o.idle_changed;
    n->idle_holders_changed = n->idle_holders_changed || o.idle_holders_changed;
    n->failures.insert(n->failures.begin(), o.failures.begin(), o.failures.end());
    for (const HolderUsage& oh : o.holders) {
      auto it = std::find_if(n->holders.begin(), n->holders.end(), [&](const auto& h) { return h.workload == oh.workload; });
      if (it == n->holders.end()) {  // gone since: its counts stay, it holds nothing now
        HolderUsage gone = oh;
        gone.memory_bytes = 0;
        gone.holds_memory = false;
        n->holders.push_back(std::move(gone));
        continue;
      }
      it->sm_ns += oh.sm_ns;
      it->allocated_ns += oh.allocated_ns;
      it->energy_mj += oh.energy_mj;
    }
  }
  newer.failures.insert(newer.failures.begin(), older.failures.begin(), older.failures.end());
  newer.identities.merge(older.identities);
}

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

GpuPasses::GpuPasses(const NvmlLibrary& nvml, IdleOptions idle, FsRoot fs, IdentityRules identity_rules)
    : sampler_(nvml), accounting_(idle), fs_(std::move(fs)), identity_rules_(std::move(identity_rules)) {}

void GpuPasses::resume(const std::string& uuid, std::optional<std::uint64_t> last_sample_us,
                       std::optional<std::uint64_t> energy_mj) {
  if (last_sample_us) sampler_.resume_samples(uuid, *last_sample_us);
  if (energy_mj) accounting_.resume_energy(uuid, *energy_mj);
}

GpuPass GpuPasses::next() {
  ++passes_;
  GpuPass pass;
  const NodeReading reading = sampler_.sample();
  std::map<pid_t, std::string> resolved;  // this pass's
  pass.gpus = accounting_.account(reading, [&](pid_t pid) {
    auto [it, fresh] = resolved.try_emplace(pid);
    if (fresh) it->second = resolve(pid, pass);
    return it->second;
  });
  std::erase_if(known_, [&](const auto& entry) { return !resolved.contains(entry.first); });
  pass.failures = reading.failures;
  return pass;
}

std::string GpuPasses::resolve(pid_t pid, GpuPass& pass) {
  if (auto it = known_.find(pid); it != known_.end()) {
    const bool refresh = (passes_ + static_cast<std::uint64_t>(pid)) % kRefreshPasses == 0;
    if (!refresh && process_state(it->second.pidfd) == ProcessState::alive) {
      pass.identities.try_emplace(it->second.identity.id, it->second.identity);
      return it->second.identity.id;
    }
    known_.erase(it);
  }
  // The pidfd first: if its process is still alive after the read, what was read is that process's.
  UniqueFd pidfd = fs_.is_host() ? open_pidfd(pid) : UniqueFd();
  auto identity = identify_process(fs_, pid, identity_rules_);
  if (!identity) return {};  // exited: its share is unattributed
  std::string id = identity->id;
  pass.identities.try_emplace(id, *identity);
  if (pidfd && process_state(pidfd) == ProcessState::alive) {
    known_.emplace(pid, Known{std::move(pidfd), std::move(*identity)});
  }
  return id;
}

void GpuSource::run() {
  GpuPasses passes(*nvml_, options_.idle, options_.fs, options_.identity_rules);
  for (const auto& [uuid, at] : options_.resume) passes.resume(uuid, at.first, at.second);
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    GpuPass pass = passes.next();
    lock.lock();
    if (queue_.size() >= options_.max_queued && queue_.size() >= 2) {
      GpuPass oldest = std::move(queue_.front());
      queue_.pop_front();
      fold_pass(oldest, queue_.front());
    }
    queue_.push_back(std::move(pass));
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_.get(), &one, sizeof one);
    stop_signal_.wait_for(lock, options_.interval, [this] { return stopping_; });
  }
}

}  // namespace tally::collectors::gpu
