// tallyd's control socket (tallyctl plan ...): root only, and whatever arrives on it (garbage, a request without
// end, a command it does not know, a client that goes away) gets a clear answer or nothing, never the agent's life.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent/base/unix_socket.hpp"
#include "tests/support/tallyd_process.hpp"

namespace tally::test {
namespace {

using namespace std::chrono_literals;

// Connects to `path`; -errno on failure.
int connect_to(const std::string& path) {
  const auto address = unix_socket_address(path);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&*address), sizeof *address) != 0) {
    const int error = errno;
    ::close(fd);
    return -error;
  }
  return fd;
}

// Sends `request` as is and reads the answer to the end; "" when the agent closed without one.
std::string ask(const std::string& path, const std::string& request) {
  const int fd = connect_to(path);
  EXPECT_GE(fd, 0) << std::strerror(-fd);
  if (fd < 0) return {};
  const timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  std::string answer;
  char chunk[4096];
  ssize_t n = 0;
  while ((n = ::recv(fd, chunk, sizeof chunk, 0)) > 0) answer.append(chunk, static_cast<std::size_t>(n));
  ::close(fd);
  return answer;
}

std::string error_of(const std::string& answer) {
  const auto json = nlohmann::json::parse(answer, nullptr, false);
  return json.is_object() ? json.value("error", "") : "not JSON: " + answer;
}

TEST(ControlSocket, RootOnlyAndEveryBadRequestGetsAReason) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: the control socket answers root only";
  TallydProcess tallyd(test_config());
  ASSERT_TRUE(tallyd.wait_ready()) << tallyd.process().stderr_text();
  const std::string path = tallyd.control_socket();
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "only root may connect";

  // Another user is kept out by the file mode (the agent's SO_PEERCRED check stands behind it).
  const pid_t child = ::fork();
  if (child == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(2);
    const int fd = connect_to(path);
    ::_exit(fd == -EACCES ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "nobody could connect to the control socket";

  EXPECT_NE(error_of(ask(path, "this is not json\n")).find("malformed request"), std::string::npos);
  EXPECT_EQ(error_of(ask(path, "[1, 2]\n")), "a request is a JSON object");
  EXPECT_EQ(error_of(ask(path, "{\"command\": \"plan.destroy\"}\n")), "unknown command 'plan.destroy'");
  EXPECT_NE(error_of(ask(path, std::string(70 * 1024, 'x'))).find("request longer than"), std::string::npos);
  EXPECT_EQ(ask(path, "{\"command\": \"plan.sh"), "") << "a request cut short is not answered";
  EXPECT_NE(error_of(ask(path, "{\"command\": \"plan.diff\", \"file\": \"relative.toml\"}\n")).find("absolute"),
            std::string::npos);

  // The agent is fine and answers a good request.
  const auto shown = nlohmann::json::parse(ask(path, "{\"command\": \"plan.show\"}\n"), nullptr, false);
  ASSERT_TRUE(shown.is_object());
  EXPECT_FALSE(shown.value("enforcing", true)) << "nothing assigned: no device policy";
  EXPECT_TRUE(tallyd.process().running());
}

}  // namespace
}  // namespace tally::test
