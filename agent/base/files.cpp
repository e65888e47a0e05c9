#include "agent/base/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "agent/base/unique_fd.hpp"

namespace tally {

std::optional<std::string> read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return std::move(text).str();
}

Result<void> write_file_atomically(const std::filesystem::path& path, std::string_view contents,
                                   Durability durability, unsigned mode) {
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  auto tmp = path;
  tmp += ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd) return make_error(ErrorCode::io, "{}: cannot create: {}", tmp.string(), std::strerror(errno));
  ::fchmod(fd.get(), mode);  // the umask may have taken bits the caller asked for
  for (std::size_t done = 0; done < contents.size();) {
    const ssize_t n = ::write(fd.get(), contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int saved = errno;
      ::unlink(tmp.c_str());
      return make_error(ErrorCode::io, "{}: write: {}", tmp.string(), std::strerror(saved));
    }
    done += static_cast<std::size_t>(n);
  }
  if (durability == Durability::synced && ::fsync(fd.get()) != 0) {
    const int saved = errno;
    ::unlink(tmp.c_str());
    return make_error(ErrorCode::io, "{}: fsync: {}", tmp.string(), std::strerror(saved));
  }
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(tmp.c_str());
    return make_error(ErrorCode::io, "{}: rename: {}", path.string(), std::strerror(saved));
  }
  if (durability == Durability::synced) {
    // The rename itself is durable only once the directory is.
    UniqueFd dir(::open(path.has_parent_path() ? path.parent_path().c_str() : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir || ::fsync(dir.get()) != 0) {
      return make_error(ErrorCode::io, "{}: fsync of the directory: {}", path.parent_path().string(),
                        std::strerror(errno));
    }
  }
  return {};
}

}  // namespace tally
