// tally_ebpf_workload: the workload the eBPF tests observe. The test starts it directly inside a test cgroup
// (clone3 with CLONE_INTO_CGROUP), so everything it does, from its first instruction, belongs to that cgroup.
// Each mode does one thing, prints one result line on stdout, then waits for stdin to close before exiting, so
// the test can read /proc/PID/io and the BPF counters while the process is still alive and idle.
//
//   io PATH BYTES           write BYTES to PATH in 4 KiB writes, read them back; prints "io done"
//   io-threads PATH BYTES N the same split over N threads (pwrite/pread), which have exited when it prints "io done"
//   tcp-listen [read]       bind 127.0.0.1:0, print "port N", accept one peer, recv (or read) to EOF;
//                           prints "received N"
//   tcp-send PORT BYTES [write]  connect to 127.0.0.1:PORT, send (or write) BYTES, close; prints "sent N"
//   exec                    execs itself as "exit 7": the exec and the exit happen in this cgroup
//   exit CODE               exits with CODE at once
//   open PATH               open(PATH, O_RDWR); prints "open errno N"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

void wait_for_stdin_close() {
  char byte;
  while (::read(STDIN_FILENO, &byte, 1) > 0) {
  }
}

int fail(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  return 1;
}

int run_io(const char* path, std::size_t bytes) {
  const int fd = ::open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("open");
  std::vector<char> block(4096, 'x');
  for (std::size_t done = 0; done < bytes;) {
    const ssize_t n = ::write(fd, block.data(), std::min(block.size(), bytes - done));
    if (n <= 0) return fail("write");
    done += static_cast<std::size_t>(n);
  }
  if (::lseek(fd, 0, SEEK_SET) != 0) return fail("lseek");
  for (std::size_t done = 0; done < bytes;) {
    const ssize_t n = ::read(fd, block.data(), block.size());
    if (n <= 0) return fail("read");
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  std::printf("io done\n");
  return 0;
}

// Each thread writes its share at its own offset and reads it back, then exits: the bytes are the threads', not
// the main thread's, and /proc/PID/io keeps them after the threads are gone.
int run_io_threads(const char* path, std::size_t bytes, unsigned threads) {
  const int fd = ::open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("open");
  const std::size_t share = bytes / threads;
  std::vector<std::thread> workers;
  std::vector<int> failed(threads, 0);
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<char> block(4096, 'x');
      const off_t base = static_cast<off_t>(t * share);
      for (std::size_t done = 0; done < share;) {
        const ssize_t n =
            ::pwrite(fd, block.data(), std::min(block.size(), share - done), base + static_cast<off_t>(done));
        if (n <= 0) return void(failed[t] = 1);
        done += static_cast<std::size_t>(n);
      }
      for (std::size_t done = 0; done < share;) {
        const ssize_t n =
            ::pread(fd, block.data(), std::min(block.size(), share - done), base + static_cast<off_t>(done));
        if (n <= 0) return void(failed[t] = 1);
        done += static_cast<std::size_t>(n);
      }
    });
  }
  for (auto& worker : workers) worker.join();
  ::close(fd);
  for (int f : failed) {
    if (f) return fail("pwrite/pread");
  }
  std::printf("io done\n");
  return 0;
}

sockaddr_in loopback(unsigned port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return address;
}

int run_tcp_listen(bool use_read) {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address = loopback(0);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) return fail("bind");
  if (::listen(listener, 1) != 0) return fail("listen");
  socklen_t length = sizeof address;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
  std::printf("port %u\n", ntohs(address.sin_port));
  std::fflush(stdout);
  const int peer = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (peer < 0) return fail("accept");
  std::vector<char> buffer(65536);
  std::size_t received = 0;
  while (true) {
    const ssize_t n =
        use_read ? ::read(peer, buffer.data(), buffer.size()) : ::recv(peer, buffer.data(), buffer.size(), 0);
    if (n < 0) return fail("recv");
    if (n == 0) break;
    received += static_cast<std::size_t>(n);
  }
  ::close(peer);
  ::close(listener);
  std::printf("received %zu\n", received);
  return 0;
}

int run_tcp_send(unsigned port, std::size_t bytes, bool use_write) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address = loopback(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) return fail("connect");
  std::vector<char> block(16384, 'y');
  std::size_t sent = 0;
  while (sent < bytes) {
    const std::size_t chunk = std::min(block.size(), bytes - sent);
    const ssize_t n = use_write ? ::write(fd, block.data(), chunk) : ::send(fd, block.data(), chunk, 0);
    if (n <= 0) return fail("send");
    sent += static_cast<std::size_t>(n);
  }
  ::close(fd);
  std::printf("sent %zu\n", sent);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string mode = argc > 1 ? argv[1] : "";
  int status = 2;
  if (mode == "io" && argc == 4) {
    status = run_io(argv[2], std::strtoull(argv[3], nullptr, 10));
  } else if (mode == "io-threads" && argc == 5) {
    status = run_io_threads(argv[2], std::strtoull(argv[3], nullptr, 10),
                            std::max(1U, static_cast<unsigned>(std::strtoul(argv[4], nullptr, 10))));
  } else if (mode == "tcp-listen" && (argc == 2 || (argc == 3 && std::string(argv[2]) == "read"))) {
    status = run_tcp_listen(argc == 3);
  } else if (mode == "tcp-send" && (argc == 4 || (argc == 5 && std::string(argv[4]) == "write"))) {
    status = run_tcp_send(static_cast<unsigned>(std::strtoul(argv[2], nullptr, 10)),
                          std::strtoull(argv[3], nullptr, 10), argc == 5);
  } else if (mode == "exec" && argc == 2) {
    char exit_mode[] = "exit";
    char code[] = "7";
    char* const args[] = {argv[0], exit_mode, code, nullptr};
    ::execv(argv[0], args);  // argv[0] is the absolute path the test started us with
    return fail("execv");
  } else if (mode == "exit" && argc == 3) {
    return std::atoi(argv[2]);
  } else if (mode == "open" && argc == 3) {
    const int fd = ::open(argv[2], O_RDWR | O_CLOEXEC);
    std::printf("open errno %d\n", fd < 0 ? errno : 0);
    if (fd >= 0) ::close(fd);
    status = 0;
  } else {
    std::fprintf(stderr, "usage: see the comment at the top of tests/ebpf/workload.cpp\n");
    return 2;
  }
  if (status == 0) wait_for_stdin_close();
  return status;
}
