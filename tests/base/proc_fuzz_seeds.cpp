// Writes the seed corpus for proc_fuzzer: real /proc files and cgroup paths of this machine. The seeder names
// itself with parentheses and spaces (as any process may) so that one stat seed has a hostile command name; it
// reads stat, cgroup and io of itself, its parent and pid 1, and every cgroup path the cgroup v2 hierarchy holds
// (a few levels deep), plus the layouts the workload managers make.
//
// Usage: proc_fuzz_seeds CORPUS_DIR
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "agent/base/files.hpp"
#include "agent/base/proc.hpp"
#include "tests/support/fuzz_seeds.hpp"

namespace {

int g_written = 0;

void write_seed(const std::filesystem::path& corpus, char parser, const std::string& text) {
  std::ofstream(corpus / ("seed-" + std::to_string(g_written++)), std::ios::binary) << parser << text;
}

}  // namespace

int main(int argc, char** argv) {
  const auto corpus_dir = tally::test::seed_corpus_dir(argc, argv);
  if (!corpus_dir) return 2;
  const std::filesystem::path& corpus = *corpus_dir;
  ::prctl(PR_SET_NAME, "a) 1 2 (b", 0, 0, 0);  // what the start-time parser must see through

  std::set<std::string> paths;
  for (const std::string pid : {std::string("self"), std::to_string(::getppid()), std::string("1")}) {
    const std::string dir = "/proc/" + pid + "/";
    if (const auto stat = tally::read_file(dir + "stat")) write_seed(corpus, '\0', *stat);
    if (const auto cgroup = tally::read_file(dir + "cgroup")) {
      write_seed(corpus, '\1', *cgroup);
      if (const auto path = tally::parse_process_cgroup(*cgroup)) paths.insert(*path);
    }
    if (const auto io = tally::read_file(dir + "io")) write_seed(corpus, '\2', *io);
  }
  const auto mount = tally::find_cgroup2_mount();
  if (mount) {
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(*mount, ec);
         !ec && it != std::filesystem::recursive_directory_iterator() && paths.size() < 200; it.increment(ec)) {
      if (it.depth() > 4) it.disable_recursion_pending();
      if (it->is_directory(ec)) paths.insert("/" + std::filesystem::relative(it->path(), *mount).string());
    }
  }
  // Where kubelet, slurmstepd, container engines and systemd put their cgroups, and a user's spoof of each.
  for (const char* path : {"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0a1b2c3d_4e5f.slice/"
                           "cri-containerd-0123456789abcdef0123.scope",
                           "/kubepods/besteffort/pod0a1b2c3d-4e5f/0123456789abcdef0123",
                           "/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0", "/slurm/uid_1000/job_77/step_1",
                           "/system.slice/docker-0123456789abcdef0123456789abcdef.scope",
                           "/machine.slice/libpod-0123456789abcdef0123.scope", "/system.slice/vllm.service",
                           "/user.slice/user-1000.slice/user@1000.service/app.slice/jupyter.service",
                           "/user.slice/user-1000.slice/user@1000.service/job_4242",
                           "/user.slice/user-1000.slice/user@1000.service/kubepods/pod0a1b2c3d-4e5f",
                           "/user.slice/user-1000.slice/session-3.scope", "/"}) {
    paths.insert(path);
  }
  for (const auto& path : paths) write_seed(corpus, '\3', path);
  std::printf("proc_fuzz_seeds: %d seeds in %s\n", g_written, corpus.c_str());
  return 0;
}
