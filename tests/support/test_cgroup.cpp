#include "tests/support/test_cgroup.hpp"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <bpf/bpf.h>

#include "tests/support/deadline.hpp"

namespace tally::test {

std::optional<std::filesystem::path> cgroup2_root() {
  for (const char* candidate : {"/sys/fs/cgroup", "/sys/fs/cgroup/unified"}) {
    struct statfs fs{};
    if (::statfs(candidate, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC) return std::filesystem::path(candidate);
  }
  return std::nullopt;
}

std::uint64_t cgroup_cpu_usec(const std::filesystem::path& cgroup) {
  std::ifstream in(cgroup / "cpu.stat");
  std::string key;
  std::uint64_t value = 0;
  return in >> key >> value && key == "usage_usec" ? value : 0;
}

bool cgroup_frozen(const std::filesystem::path& cgroup) {
  std::ifstream in(cgroup / "cgroup.events");
  for (std::string line; std::getline(in, line);) {
    if (line == "frozen 1") return true;
  }
  return false;
}

TestCgroupParent::TestCgroupParent(const std::filesystem::path& root)
    : path_(root / ("tally-test-" + std::to_string(::getpid()))) {
  std::filesystem::create_directory(path_);
}

namespace {

// Removes a cgroup and every cgroup below it, deepest first (rmdir refuses a cgroup with children). A cgroup whose
// last process just exited may stay busy for a moment, so each rmdir is polled.
void remove_cgroup_tree(const std::filesystem::path& cgroup) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(cgroup, ec)) {
    if (entry.is_directory(ec)) remove_cgroup_tree(entry.path());
  }
  wait_until([&] { return ::rmdir(cgroup.c_str()) == 0 || errno == ENOENT; });
}

}  // namespace

TestCgroupParent::~TestCgroupParent() { remove_cgroup_tree(path_); }

std::filesystem::path TestCgroupParent::make_child(const std::string& name) const {
  const auto child = path_ / name;
  std::filesystem::create_directory(child);
  return child;
}

CgroupProcess::CgroupProcess(const std::filesystem::path& cgroup, std::vector<std::string> argv) {
  const int cgroup_fd = ::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cgroup_fd < 0) throw std::runtime_error("open " + cgroup.string() + ": " + std::strerror(errno));
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  std::vector<char*> args;
  for (auto& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);

  clone_args clone{};
  clone.flags = CLONE_INTO_CGROUP;
  clone.exit_signal = SIGCHLD;
  clone.cgroup = static_cast<std::uint64_t>(cgroup_fd);
  const long pid = ::syscall(SYS_clone3, &clone, sizeof clone);
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    ::dup2(in[0], STDIN_FILENO);
    ::dup2(out[1], STDOUT_FILENO);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  const int saved = errno;
  ::close(cgroup_fd);
  ::close(in[0]);
  ::close(out[1]);
  stdin_fd_ = in[1];
  stdout_fd_ = out[0];
  if (pid < 0) throw std::runtime_error(std::string("clone3(CLONE_INTO_CGROUP): ") + std::strerror(saved));
  pid_ = static_cast<pid_t>(pid);
}

CgroupProcess::~CgroupProcess() {
  close_stdin();
  if (!wait(std::chrono::seconds(5))) {
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(5));
  }
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
}

std::optional<std::string> CgroupProcess::read_line(std::chrono::milliseconds deadline) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (true) {
    if (const auto nl = buffered_.find('\n'); nl != std::string::npos) {
      std::string line = buffered_.substr(0, nl);
      buffered_.erase(0, nl + 1);
      return line;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{stdout_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char chunk[4096];
    const ssize_t n = ::read(stdout_fd_, chunk, sizeof chunk);
    if (n <= 0) return std::nullopt;
    buffered_.append(chunk, static_cast<std::size_t>(n));
  }
}

void CgroupProcess::write_stdin(const std::string& text) {
  if (stdin_fd_ < 0 || ::write(stdin_fd_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    throw std::runtime_error("write to the workload's stdin failed");
  }
}

bool CgroupProcess::wait_reading_stdin(std::chrono::milliseconds deadline) {
  // /proc/PID/syscall: the number of the syscall the task is blocked in, then its arguments (fd first, in hex).
  const std::string reading = std::to_string(SYS_read) + " 0x0 ";
  const std::string path = "/proc/" + std::to_string(pid_) + "/syscall";
  return wait_until([&] {
    std::ifstream in(path);
    std::string line;
    return std::getline(in, line) && line.starts_with(reading);
  }, deadline, std::chrono::milliseconds(1));
}

void CgroupProcess::close_stdin() {
  if (stdin_fd_ >= 0) ::close(stdin_fd_);
  stdin_fd_ = -1;
}

std::optional<ExitStatus> CgroupProcess::wait(std::chrono::milliseconds deadline) {
  if (status_) return status_;
  wait_until([&] {
    int raw = 0;
    if (::waitpid(pid_, &raw, WNOHANG) != pid_) return false;
    status_ = ExitStatus{WIFEXITED(raw), WIFEXITED(raw) ? WEXITSTATUS(raw) : WTERMSIG(raw)};
    return true;
  }, deadline, std::chrono::milliseconds(2));
  return status_;
}

PrivateBpffs::PrivateBpffs() {
  static const std::string private_namespace = [] {
    if (::unshare(CLONE_NEWNS) != 0) return std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      return std::string("make the mounts of a new namespace private: ") + std::strerror(errno);
    }
    return std::string();
  }();
  error_ = private_namespace;
  if (error_.empty() && ::mount("bpf", dir_.path().c_str(), "bpf", 0, nullptr) != 0) {
    error_ = "mount -t bpf bpf " + dir_.path().string() + ": " + std::strerror(errno);
  }
}

PrivateBpffs::~PrivateBpffs() {
  if (error_.empty()) ::umount2(dir_.path().c_str(), MNT_DETACH);
}

BpfObjects bpf_objects_of(pid_t pid) {
  BpfObjects objects;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fdinfo", ec)) {
    std::ifstream in(entry.path());
    std::uint32_t id = 0;
    for (std::string line; std::getline(in, line);) {
      if (std::sscanf(line.c_str(), "prog_id: %u", &id) == 1) objects.programs.insert(id);
      if (std::sscanf(line.c_str(), "link_id: %u", &id) == 1) objects.links.insert(id);
    }
  }
  return objects;
}

bool bpf_program_exists(std::uint32_t id) {
  const int fd = bpf_prog_get_fd_by_id(id);
  if (fd >= 0) ::close(fd);
  return fd >= 0;
}

bool bpf_link_exists(std::uint32_t id) {
  const int fd = bpf_link_get_fd_by_id(id);
  if (fd >= 0) ::close(fd);
  return fd >= 0;
}

}  // namespace tally::test
