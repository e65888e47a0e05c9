// tally_ebpf_workload: the workload the eBPF tests observe. The test starts it directly inside a test cgroup
// (clone3 with CLONE_INTO_CGROUP), so everything it does, from its first instruction, belongs to that cgroup.
// Each mode does one thing, prints one result line on stdout, then waits for stdin to close before exiting, so
// the test can read /proc/PID/io and the BPF counters while the process is still alive and idle.
//
//   io PATH BYTES           write BYTES to PATH in 4 KiB writes, read them back; prints "io done"
//   io-rounds PATH BYTES ROUNDS PAUSE_MS
//                           ROUNDS times the same (BYTES rounded up to 4 KiB), each in a thread that exits, with a
//                           pause between rounds; prints "io done"
//   move-io PATH A CGROUP_PROCS B
//                           write A bytes to PATH, print "wrote A", wait for a line on stdin, move itself to another
//                           cgroup (its pid written to CGROUP_PROCS), write B more bytes; prints "io done"
//   move-thread-io PATH A CGROUP_PROCS B
//                           the same, but a second thread writes the bytes and only the main thread moves the
//                           process: "wrote A", (line) move, "moved", (line) the thread writes B, "io done"; the
//                           thread lives until stdin closes
//   io-threads PATH BYTES N the same split over N threads (pwrite/pread), which have exited when it prints "io done"
//   tcp-listen [read]       bind 127.0.0.1:0, print "port N", accept one peer, recv (or read) to EOF;
//                           prints "received N"
//   tcp-send PORT BYTES [write]  connect to 127.0.0.1:PORT, send (or write) BYTES, close; prints "sent N"
//   exec                    execs itself as "exit 7": the exec and the exit happen in this cgroup
//   exit CODE               exits with CODE at once
//   open PATH               open(PATH, O_RDWR); prints "open errno N"
//   spin                    prints "spinning", then burns CPU until stdin closes (the freezer tests watch its CPU
//                           time stop and start again)

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <mutex>
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

bool write_bytes(int fd, std::size_t bytes) {
  std::vector<char> block(4096, 'x');
  for (std::size_t done = 0; done < bytes;) {
    const ssize_t n = ::write(fd, block.data(), std::min(block.size(), bytes - done));
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

int run_io(const char* path, std::size_t bytes) {
  const int fd = ::open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("open");
  if (!write_bytes(fd, bytes)) return fail("write");
  std::vector<char> block(4096);
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

// IO spread over time: ROUNDS rounds of run_io's work on one file, a pause between them, each round in a thread of
// its own that exits (so the bytes are of live and exited threads alike).
int run_io_rounds(const char* path, std::size_t bytes, unsigned rounds, unsigned pause_ms) {
  for (unsigned r = 0; r < rounds; ++r) {
    int status = 0;
    std::thread round([&] {
      const int fd = ::open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      std::vector<char> block(4096, 'x');
      bool ok = fd >= 0;
      for (std::size_t done = 0; ok && done < bytes; done += block.size()) ok = ::write(fd, block.data(), block.size()) > 0;
      ok = ok && ::lseek(fd, 0, SEEK_SET) == 0;
      for (std::size_t done = 0; ok && done < bytes; done += block.size()) ok = ::read(fd, block.data(), block.size()) > 0;
      if (fd >= 0) ::close(fd);
      status = ok ? 0 : 1;
    });
    round.join();
    if (status != 0) return fail("io round");
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));  // spreads the work: nothing waits on it
  }
  std::printf("io done\n");
  return 0;
}

bool read_stdin_line() {
  for (char byte = 0; byte != '\n';) {
    if (::read(STDIN_FILENO, &byte, 1) != 1) return false;
  }
  return true;
}

// Moves the whole process (every thread) to the cgroup whose cgroup.procs is `cgroup_procs`.
bool move_process(const char* cgroup_procs) {
  const int procs = ::open(cgroup_procs, O_WRONLY | O_CLOEXEC);
  if (procs < 0) return false;
  const std::string pid = std::to_string(::getpid());
  const bool moved = ::write(procs, pid.data(), pid.size()) == static_cast<ssize_t>(pid.size());
  ::close(procs);
  return moved;
}

// A single-threaded process that moves itself between two writes: the bytes before the move belong to the cgroup
// it started in, the bytes after to the one it moved to.
int run_move_io(const char* path, std::size_t before, const char* cgroup_procs, std::size_t after) {
  const int fd = ::open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("open");
  if (!write_bytes(fd, before)) return fail("write");
  std::printf("wrote %zu\n", before);
  if (!read_stdin_line()) return fail("read stdin");
  if (!move_process(cgroup_procs)) return fail("move");
  if (!write_bytes(fd, after)) return fail("write");
  ::close(fd);
  std::printf("io done\n");
  return 0;
}

// The same with the bytes written by a second thread, which the kernel moves along with the main thread and
// reports nothing about (the cgroup_attach_task tracepoint names the main thread only).
int run_move_thread_io(const char* path, std::size_t before, const char* cgroup_procs, std::size_t after) {
  const int fd = ::open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("open");
  std::mutex mutex;
  std::condition_variable changed;
  int step = 0;  // 1: wrote before, 2: write after, 3: wrote after, 4: exit
  bool ok = true;
  auto go = [&](int next) {
    std::lock_guard lock(mutex);
    step = next;
    changed.notify_all();
  };
  auto wait_for = [&](int wanted) {  // returns the step reached: `wanted`, or 4 when the main thread gave up
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return step >= wanted; });
    return step;
  };
  std::thread writer([&] {
    ok = write_bytes(fd, before);
    go(1);
    if (wait_for(2) != 2) return;
    ok = ok && write_bytes(fd, after);
    go(3);
    wait_for(4);
  });
  wait_for(1);
  std::printf("wrote %zu\n", before);
  const bool moved = read_stdin_line() && move_process(cgroup_procs);
  if (moved) std::printf("moved\n");
  if (moved && read_stdin_line()) {
    go(2);
    wait_for(3);
    if (ok) std::printf("io done\n");
    wait_for_stdin_close();
  }
  go(4);
  writer.join();
  ::close(fd);
  return moved && ok ? 0 : fail("move or write");
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
  } else if (mode == "io-rounds" && argc == 6) {
    status = run_io_rounds(argv[2], std::strtoull(argv[3], nullptr, 10), static_cast<unsigned>(std::strtoul(argv[4], nullptr, 10)),
                           static_cast<unsigned>(std::strtoul(argv[5], nullptr, 10)));
  } else if (mode == "move-io" && argc == 6) {
    status = run_move_io(argv[2], std::strtoull(argv[3], nullptr, 10), argv[4], std::strtoull(argv[5], nullptr, 10));
  } else if (mode == "move-thread-io" && argc == 6) {
    return run_move_thread_io(argv[2], std::strtoull(argv[3], nullptr, 10), argv[4],
                              std::strtoull(argv[5], nullptr, 10));
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
  } else if (mode == "spin" && argc == 2) {
    std::printf("spinning\n");
    ::fcntl(STDIN_FILENO, F_SETFL, O_NONBLOCK);
    char byte;
    for (std::uint64_t n = 0;; ++n) {
      if ((n & 0xFFFFF) == 0 && ::read(STDIN_FILENO, &byte, 1) == 0) return 0;  // EOF: stdin closed
      asm volatile("" : : "r"(n) : "memory");  // every iteration is work the compiler must keep
    }
  } else if (mode == "open" && argc == 3) {
    const int fd = ::open(argv[2], O_RDWR | O_CLOEXEC);
    std::printf("open errno %d\n", fd < 0 ? errno : 0);
    if (fd >= 0) ::close(fd);
    status = 0;
  } else {
    std::fprintf(stderr, "usage: see the comment at the top of tests/support/cgroup_workload.cpp\n");
    return 2;
  }
  if (status == 0) wait_for_stdin_close();
  return status;
}
