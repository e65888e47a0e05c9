#pragma once
// The device nodes behind each GPU and MIG slice of this node, as the device policy needs them: /dev/nvidia<minor>
// (major 195) per GPU and, for MIG, /dev/nvidia-caps/nvidia-cap<N> per GPU instance and compute instance (the
// nvidia-caps major, minors from /proc/driver/nvidia-caps/mig-minors, keyed by the GPU's minor). GPUs and slices
// come from NVML where it is loaded (index, UUID, bus id, minor, MIG devices), else from
// /proc/driver/nvidia/gpus/*/information (no slices). Read again after any MIG change: minors may move.
// AMD GPUs (amdgpu) come from /sys/class/drm: each one's render node and card node (major 226), numbered after the
// NVIDIA GPUs in PCI bus order; /dev/kfd is one node for all of them and stays open.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "agent/base/fs_root.hpp"
#include "collectors/nvml/nvml.hpp"

namespace tally::partitioning {

inline constexpr std::uint32_t kNvidiaMajor = 195;

// How MIG slices are isolated on this node. Only device files can be enforced by a cgroup device policy.
enum class MigIsolation {
  none,          // no MIG capabilities here (no MIG-capable driver, or MIG unused)
  device_files,  // /dev/nvidia-caps: the driver's device-file capabilities (nvidia-caps major, mig-minors)
  proc_files,    // /proc/driver/nvidia/capabilities only: access by file permissions, not by device number
};
std::string_view to_string(MigIsolation isolation);

struct DeviceNode {
  std::uint32_t major = 0, minor = 0;
  std::string path;  // "/dev/nvidia0", "/dev/nvidia-caps/nvidia-cap21"
  bool operator==(const DeviceNode&) const = default;
  auto operator<=>(const DeviceNode&) const = default;
};

struct SliceNodes {
  unsigned index = 0;  // the n of "<gpu>/mig/<n>": NVML's MIG device index
  unsigned gpu_instance_id = 0, compute_instance_id = 0;
  std::string uuid;                // MIG-…
  std::vector<DeviceNode> caps;    // GPU instance and compute instance access capabilities
  bool operator==(const SliceNodes&) const = default;
};

struct GpuNodes {
  unsigned index = 0;
  std::string vendor = "nvidia";  // or "amd"
  std::string uuid, bus_id, name;
  std::optional<DeviceNode> node;  // /dev/nvidia<minor> (AMD: /dev/dri/renderD<n>); unset when the minor is unknown
  std::vector<DeviceNode> also;    // more nodes of the same GPU (AMD: /dev/dri/card<n>)
  bool mig_enabled = false;
  std::vector<SliceNodes> slices;
  bool operator==(const GpuNodes&) const = default;
};

struct GpuInventory {
  std::optional<std::uint32_t> caps_major;  // nvidia-caps in /proc/devices
  MigIsolation mig_isolation = MigIsolation::none;
  std::vector<GpuNodes> gpus;
  std::vector<std::string> problems;  // what could not be read, per GPU: said, never fatal
  // The GPU `selector` names (index, UUID, bus id in NVML's or sysfs's form, case-insensitive); nullptr if none.
  const GpuNodes* find(std::string_view selector) const;
};

// Reads the inventory: NVML (may be null) for GPUs and slices, `fs` for minors and majors.
GpuInventory read_gpu_inventory(const collectors::NvmlLibrary* nvml, const FsRoot& fs = FsRoot());

}  // namespace tally::partitioning
