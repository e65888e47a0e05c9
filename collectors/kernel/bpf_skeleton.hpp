#pragma once
// A libbpf skeleton (bpftool gen skeleton: <name>__open/__load/__destroy) owned by a unique_ptr, for every loader of
// BPF programs (the probes, the GPU device policy).

#include <memory>

namespace tally::collectors {

template <typename Skeleton, void (*Destroy)(Skeleton*)>
struct SkeletonDeleter {
  void operator()(Skeleton* skeleton) const { Destroy(skeleton); }
};
template <typename Skeleton, void (*Destroy)(Skeleton*)>
using SkeletonPtr = std::unique_ptr<Skeleton, SkeletonDeleter<Skeleton, Destroy>>;

}  // namespace tally::collectors
