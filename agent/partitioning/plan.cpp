#include "agent/partitioning/plan.hpp"

#include <charconv>

namespace tally::partitioning {

std::string_view to_string(DefaultAccess access) { return access == DefaultAccess::open ? "open" : "deny"; }
std::string_view to_string(OnStop on_stop) { return on_stop == OnStop::keep ? "keep" : "release"; }

Result<void> check_workload_selector(std::string_view workload) {
  if (workload.starts_with("cgroup:")) {
    const std::string_view path = workload.substr(7);
    if (path.empty() || path.front() != '/' || path == "/") {
      return make_error(ErrorCode::invalid_argument,
                        "'{}': a cgroup path must be absolute and not the root (the root cannot be granted)", workload);
    }
    return {};
  }
  for (std::string_view prefix : {"systemd:", "user:", "k8s:pod:", "slurm:job:", "docker:"}) {
    if (workload.starts_with(prefix) && workload.size() > prefix.size()) return {};
  }
  return make_error(ErrorCode::invalid_argument,
                    "'{}' is not a workload that can hold a GPU: expected cgroup:/path, systemd:<unit>, "
                    "user:<uid>:<unit>, k8s:pod:<uid>[:<container>], slurm:job:<id> or docker:<id>",
                    workload);
}

Result<GpuSelector> parse_gpu_selector(std::string_view text) {
  GpuSelector selector;
  const std::size_t mig = text.find("/mig/");
  selector.gpu = std::string(text.substr(0, mig));
  if (selector.gpu.empty() || selector.gpu.find('/') != std::string::npos) {
    return make_error(ErrorCode::invalid_argument,
                      "'{}' is not a GPU: expected an index, a UUID, a PCI bus id, or <gpu>/mig/<n>", text);
  }
  if (mig != std::string_view::npos) {
    const std::string_view number = text.substr(mig + 5);
    unsigned slice = 0;
    const auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), slice);
    if (number.empty() || error != std::errc() || end != number.data() + number.size()) {
      return make_error(ErrorCode::invalid_argument, "'{}': the MIG slice after /mig/ must be a number", text);
    }
    selector.slice = slice;
  }
  return selector;
}

}  // namespace tally::partitioning
