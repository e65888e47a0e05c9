#include "agent/checkpoint/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

namespace tally::agent {
namespace {

constexpr int kCheckpointVersion = 1;

Result<void> write_all(int fd, const std::string& text, const std::filesystem::path& path) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return make_error(ErrorCode::io, "{}: write: {}", path.string(), std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
  return {};
}

}  // namespace

Result<void> write_checkpoint(const Checkpoint& checkpoint, const std::filesystem::path& path) {
  nlohmann::json workloads = nlohmann::json::object();
  for (const auto& [id, w] : checkpoint.workloads) {
    nlohmann::json labels = nlohmann::json::object();
    for (const auto& [text, l] : w.label_sets) {
      labels[text] = {{"retired", l.retired}, {"reported", l.reported}, {"refused", l.refused}};
    }
    workloads[id] = {{"kind", std::string(to_string(w.identity.kind))},
                     {"cgroup_path", w.identity.cgroup_path},
                     {"attributes", w.identity.attributes},
                     {"names", w.names},
                     {"label_sets", labels},
                     {"retired_dropped", w.retired_dropped},
                     {"reported_dropped", w.reported_dropped},
                     {"exited_unix_ns", w.exited_unix_ns}};
  }
  const nlohmann::json doc = {{"version", kCheckpointVersion},
                              {"workloads", workloads},
                              {"retired_segments", checkpoint.retired_segments}};
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  auto tmp = path;
  tmp += ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::io, "{}: cannot create: {}", tmp.string(), std::strerror(errno));
  auto written = write_all(fd, doc.dump(), tmp);
  const bool synced = written && ::fsync(fd) == 0;
  ::close(fd);
  if (!written) return written.error();
  if (!synced) return make_error(ErrorCode::io, "{}: fsync: {}", tmp.string(), std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return make_error(ErrorCode::io, "{}: rename: {}", path.string(), std::strerror(errno));
  }
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);  // the rename itself is durable
    ::close(dir);
  }
  return {};
}

Result<Checkpoint> read_checkpoint(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return Checkpoint{};
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::io, "{}: cannot read", path.string());
  try {
    const auto doc = nlohmann::json::parse(in);
    if (doc.at("version").get<int>() != kCheckpointVersion) {
      return make_error(ErrorCode::unsupported, "{}: unsupported checkpoint version {}", path.string(),
                        doc.at("version").dump());
    }
    Checkpoint checkpoint;
    checkpoint.retired_segments = doc.at("retired_segments").get<std::set<std::string>>();
    for (const auto& [id, w] : doc.at("workloads").items()) {
      CheckpointWorkload workload;
      workload.identity.id = id;
      const std::string kind = w.at("kind").get<std::string>();
      workload.identity.kind = workload_kind_from_string(kind).value_or(WorkloadKind::cgroup);
      workload.identity.cgroup_path = w.at("cgroup_path").get<std::string>();
      workload.identity.attributes = w.at("attributes").get<std::map<std::string, std::string>>();
      workload.names = w.at("names").get<std::set<std::string>>();
      workload.retired_dropped = w.at("retired_dropped").get<std::uint64_t>();
      workload.reported_dropped = w.at("reported_dropped").get<std::uint64_t>();
      workload.exited_unix_ns = w.at("exited_unix_ns").get<std::uint64_t>();
      for (const auto& [text, l] : w.at("label_sets").items()) {
        CheckpointLabelSet set;
        set.retired = l.at("retired").get<CounterMap>();
        set.reported = l.at("reported").get<CounterMap>();
        set.refused = l.at("refused").get<bool>();
        workload.label_sets.emplace(text, std::move(set));
      }
      checkpoint.workloads.emplace(id, std::move(workload));
    }
    return checkpoint;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::invalid_argument, "{}: corrupt checkpoint: {}", path.string(), e.what());
  }
}

}  // namespace tally::agent
