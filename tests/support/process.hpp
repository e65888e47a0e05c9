#pragma once
// A real child process for integration tests: started with posix_spawn, stdout and stderr captured through pipes,
// stopped (SIGKILL as a last resort) and reaped on destruction so no test leaves a daemon behind.

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tally::test {

struct ExitStatus {
  bool exited = false;  // normal exit (else killed by a signal)
  int code = 0;         // exit code, or signal number when !exited
};

class Process {
 public:
  // `env` entries are added to (or override) the test's own environment.
  Process(std::vector<std::string> argv, std::map<std::string, std::string> env = {});
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  void signal(int signal_number) const;

  // Waits for the child to exit; nullopt when the deadline passes first.
  std::optional<ExitStatus> wait(std::chrono::milliseconds deadline);
  bool running();

  // Reads what the child wrote so far (non-blocking) and returns all of it.
  const std::string& stdout_text();
  const std::string& stderr_text();
  // Waits until stdout holds at least `lines` complete lines; returns them all.
  std::vector<std::string> wait_for_stdout_lines(std::size_t lines, std::chrono::milliseconds deadline);
  // Waits until stderr contains `needle`.
  bool wait_for_stderr(const std::string& needle, std::chrono::milliseconds deadline);

 private:
  void drain();
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  std::string stdout_;
  std::string stderr_;
  std::optional<ExitStatus> status_;
};

// Runs a command to completion and returns its exit status and stdout+stderr.
struct CommandResult {
  ExitStatus status;
  std::string output;
};
CommandResult run_command(std::vector<std::string> argv, std::chrono::milliseconds deadline,
                          std::map<std::string, std::string> env = {});

}  // namespace tally::test
