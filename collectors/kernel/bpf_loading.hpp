#pragma once
// What every loader of BPF programs (the probes, the GPU device policy) shares: a libbpf skeleton (bpftool gen
// skeleton: <name>__open/__load/__destroy) owned by a unique_ptr, and a failed bpf call's errno as an Error.

#include <cerrno>
#include <cstring>
#include <memory>
#include <string_view>

#include "agent/base/result.hpp"

namespace tally::collectors {

template <typename Skeleton, void (*Destroy)(Skeleton*)>
struct SkeletonDeleter {
  void operator()(Skeleton* skeleton) const { Destroy(skeleton); }
};
template <typename Skeleton, void (*Destroy)(Skeleton*)>
using SkeletonPtr = std::unique_ptr<Skeleton, SkeletonDeleter<Skeleton, Destroy>>;

// EPERM and EACCES are a missing privilege; anything else is what this kernel cannot do.
inline Error bpf_errno_error(int error, std::string_view what) {
  const ErrorCode code = (error == EPERM || error == EACCES) ? ErrorCode::permission : ErrorCode::unsupported;
  return make_error(code, "{}: {}", what, std::strerror(error));
}

}  // namespace tally::collectors
