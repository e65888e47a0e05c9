// libFuzzer over the parsers identity rests on: /proc/PID/stat (start time: a process names itself, parentheses
// and all), /proc/PID/cgroup, /proc/PID/io, and identify_cgroup on whatever path the kernel reports (anyone may
// name cgroups below a delegated one). The first byte picks the parser, the rest is the file or the path. Any text
// must give nullopt or a value that reads back the same from a file written the kernel's way; an identity must
// survive its JSON form, and a cgroup below a user's manager never claims to be a job, pod, container or system
// unit. Seeds: this machine's own /proc files and cgroup paths (proc_fuzz_seeds).
#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agent/base/proc.hpp"
#include "agent/base/text.hpp"
#include "agent/base/workload_identity.hpp"

namespace {

using namespace tally;

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void fuzz_stat(std::string_view text) {
  const auto ticks = parse_process_start_ticks(text);
  if (!ticks) return;
  // Field 22 as the kernel writes it (plain decimal between single spaces), after whatever the command name held.
  std::string_view rest = text.substr(text.rfind(')') + 2);
  rest = rest.substr(0, rest.find('\n'));
  std::vector<std::string_view> fields;  // fields[0] is field 3 (the state), fields[19] field 22
  for (std::size_t start = 0; start <= rest.size();) {
    const std::size_t end = std::min(rest.find(' ', start), rest.size());
    if (end > start) fields.push_back(rest.substr(start, end - start));
    start = end + 1;
  }
  check(fields.size() > 19);
  std::string_view field22 = fields[19];
  while (field22.size() > 1 && field22.front() == '0') field22.remove_prefix(1);  // leading zeros are harmless
  check(field22 == std::to_string(*ticks));
  const std::string rewritten = std::string(text.substr(0, text.rfind(')') + 1)) +
                                " S 1 1 1 0 -1 4194560 100 0 0 0 3 4 0 0 20 0 1 0 " + std::to_string(*ticks) +
                                " 1000 200 18446744073709551615\n";
  check(parse_process_start_ticks(rewritten) == ticks);
}

void fuzz_identity(std::string_view path) {
  const WorkloadIdentity identity = identify_cgroup(path);
  check(!identity.id.empty());
  check(identity.cgroup_path == (path.empty() ? std::string("/") : escape_bytes(path)));
  check(identify_cgroup(path) == identity);
  // Anyone may name a cgroup below a delegated one with any bytes: what goes on the wire and into JSON is valid
  // UTF-8 whatever they chose.
  check(valid_utf8(identity.id) && valid_utf8(identity.cgroup_path));
  for (const auto& [key, value] : identity.attributes) check(valid_utf8(value));
  // Its JSON form (the segment's .meta file) is written as text and read back.
  const auto json = nlohmann::json::parse(to_json(identity).dump());
  const auto back = identity_from_json(json);
  check(back.has_value() && *back == identity);
  // Everything below user@UID.service is the user's to name (a delegated subtree).
  if (path.starts_with("/user.slice/") && path.find("/user@") != std::string_view::npos) {
    check(identity.kind != WorkloadKind::kubernetes_pod && identity.kind != WorkloadKind::slurm_job &&
          identity.kind != WorkloadKind::docker_container);
  }
}

void fuzz_cgroup(std::string_view text) {
  const auto path = parse_process_cgroup(text);
  if (!path) return;
  check(path->find('\n') == std::string::npos);
  check(text.find(*path) != std::string_view::npos);
  check(parse_process_cgroup("0::" + *path + "\n") == path);
  check(parse_process_cgroup("12:pids:/\n1:name=systemd:" + *path + "\n") == path);
  fuzz_identity(*path);
}

void fuzz_io(std::string_view text) {
  const auto io = parse_process_io(text);
  if (!io) return;
  // Each is the last line of its name, a whole line of decimal digits (leading zeros are harmless).
  auto last_value = [&](std::string_view name) {
    std::string_view value;
    for (std::string_view rest = text; !rest.empty();) {
      const std::size_t end = std::min(rest.find('\n'), rest.size());
      if (const std::string_view line = rest.substr(0, end); line.starts_with(name)) value = line.substr(name.size());
      rest.remove_prefix(std::min(end + 1, rest.size()));
    }
    while (value.size() > 1 && value.front() == '0') value.remove_prefix(1);
    return std::string(value);
  };
  check(last_value("rchar: ") == std::to_string(io->read_bytes));
  check(last_value("wchar: ") == std::to_string(io->write_bytes));
  const std::string rewritten = "rchar: " + std::to_string(io->read_bytes) + "\nwchar: " +
                                std::to_string(io->write_bytes) + "\nsyscr: 1\nsyscw: 2\nread_bytes: 0\n";
  check(parse_process_io(rewritten) == io);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 4) {
    case 0: fuzz_stat(text); break;
    case 1: fuzz_cgroup(text); break;
    case 2: fuzz_io(text); break;
    case 3: fuzz_identity(text); break;
  }
  return 0;
}
