#include "tests/support/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tests/support/deadline.hpp"

extern char** environ;

namespace tally::test {
namespace {

void read_available(int fd, std::string& into) {
  if (fd < 0) return;
  char buffer[4096];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      into.append(buffer, static_cast<std::size_t>(n));
      continue;
    }
    return;  // 0 (EOF) or EAGAIN
  }
}

std::vector<std::string> complete_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    lines.push_back(text.substr(start, nl - start));
  }
  return lines;
}

}  // namespace

Process::Process(std::vector<std::string> argv, std::map<std::string, std::string> env) {
  std::map<std::string, std::string> merged;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    const auto eq = entry.find('=');
    if (eq != std::string::npos) merged[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  for (auto& [key, value] : env) merged[key] = value;
  std::vector<std::string> env_strings;
  for (auto& [key, value] : merged) env_strings.push_back(key + "=" + value);
  std::vector<char*> envp, args;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (auto& s : argv) args.push_back(s.data());
  args.push_back(nullptr);

  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
  // The test blocks signals for its own reasons at times; the child starts with a clean mask and handlers.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty, all;
  sigemptyset(&empty);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  const int rc = posix_spawn(&pid_, args[0], &actions, &attr, args.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(out[1]);
  ::close(err[1]);
  stdout_fd_ = out[0];
  stderr_fd_ = err[0];
  fcntl(stdout_fd_, F_SETFL, O_NONBLOCK);
  fcntl(stderr_fd_, F_SETFL, O_NONBLOCK);
  if (rc != 0) {
    pid_ = -1;
    throw std::runtime_error(std::string("posix_spawn ") + argv[0] + ": " + std::strerror(rc));
  }
}

Process::~Process() {
  if (pid_ > 0 && !status_) {
    ::kill(pid_, SIGTERM);
    if (!wait(std::chrono::seconds(5))) {
      ::kill(pid_, SIGKILL);
      wait(std::chrono::seconds(5));
    }
  }
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
  if (stderr_fd_ >= 0) ::close(stderr_fd_);
}

void Process::signal(int signal_number) const {
  if (pid_ > 0 && !status_) ::kill(pid_, signal_number);
}

bool Process::running() {
  if (status_) return false;
  int raw = 0;
  const pid_t r = ::waitpid(pid_, &raw, WNOHANG);
  if (r == pid_) {
    status_ = ExitStatus{WIFEXITED(raw), WIFEXITED(raw) ? WEXITSTATUS(raw) : WTERMSIG(raw)};
    return false;
  }
  return true;
}

std::optional<ExitStatus> Process::wait(std::chrono::milliseconds deadline) {
  wait_until([&] {
    drain();
    return !running();
  }, deadline, std::chrono::milliseconds(2));
  drain();
  return status_;
}

void Process::drain() {
  read_available(stdout_fd_, stdout_);
  read_available(stderr_fd_, stderr_);
}

const std::string& Process::stdout_text() {
  drain();
  return stdout_;
}

const std::string& Process::stderr_text() {
  drain();
  return stderr_;
}

std::vector<std::string> Process::wait_for_stdout_lines(std::size_t lines, std::chrono::milliseconds deadline) {
  wait_until([&] { return complete_lines(stdout_text()).size() >= lines; }, deadline);
  return complete_lines(stdout_text());
}

bool Process::wait_for_stderr(const std::string& needle, std::chrono::milliseconds deadline) {
  return wait_until([&] { return stderr_text().find(needle) != std::string::npos; }, deadline);
}

CommandResult run_command(std::vector<std::string> argv, std::chrono::milliseconds deadline,
                          std::map<std::string, std::string> env) {
  Process process(std::move(argv), std::move(env));
  auto status = process.wait(deadline);
  if (!status) {
    process.signal(SIGKILL);
    status = process.wait(std::chrono::seconds(5));
  }
  return {status.value_or(ExitStatus{false, SIGKILL}), process.stdout_text() + process.stderr_text()};
}

}  // namespace tally::test
