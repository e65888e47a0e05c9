#include "agent/base/logging.hpp"

#include <sys/stat.h>
#include <sys/uio.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/systemd_sink.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-journal.h>

namespace tally {

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");
  if (stream == nullptr) return false;
  unsigned long long device = 0, inode = 0;
  if (std::sscanf(stream, "%llu:%llu", &device, &inode) != 2) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == device && st.st_ino == inode;
}

void init_logging(spdlog::level::level_enum level) {
  std::shared_ptr<spdlog::logger> logger;
  if (stderr_is_journal()) {
    // The journal stamps time, unit and pid itself; our pattern adds only the message.
    logger = std::make_shared<spdlog::logger>("tally", std::make_shared<spdlog::sinks::systemd_sink_mt>("tallyd"));
    logger->set_pattern("%v");
  } else {
    logger = spdlog::stderr_color_mt("tally");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  logger->set_level(level);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(std::move(logger));
}

std::optional<spdlog::level::level_enum> parse_log_level(std::string_view name) {
  const auto level = spdlog::level::from_str(std::string(name));
  if (level == spdlog::level::off && name != "off") return std::nullopt;
  return level;
}

std::optional<std::uint64_t> LogThrottle::admit(std::uint64_t key, Clock::time_point now) {
  if (now - swept_ >= window_) {  // forget quiet keys with nothing left to say, at most once a window
    std::erase_if(keys_, [&](const auto& entry) {
      return now - entry.second.logged >= window_ && entry.second.suppressed == 0;
    });
    swept_ = now;
  }
  auto [it, first] = keys_.try_emplace(key, Key{now, 0});
  if (first) return 0;
  Key& k = it->second;
  if (now - k.logged < window_) {
    ++k.suppressed;
    return std::nullopt;
  }
  const std::uint64_t suppressed = k.suppressed;
  k = Key{now, 0};
  return suppressed;
}

namespace {

int syslog_priority(spdlog::level::level_enum level) {
  switch (level) {
    case spdlog::level::critical: return 2;
    case spdlog::level::err: return 3;
    case spdlog::level::warn: return 4;
    case spdlog::level::info: return 6;
    default: return 7;
  }
}

}  // namespace

void journal_entry(spdlog::level::level_enum level, const std::string& message, std::vector<std::string> fields) {
  if (level < spdlog::get_level()) return;
  if (!stderr_is_journal()) {
    spdlog::log(level, "{}", message);
    return;
  }
  fields.push_back("MESSAGE=" + message);
  fields.push_back(fmt::format("PRIORITY={}", syslog_priority(level)));
  fields.push_back("SYSLOG_IDENTIFIER=tallyd");
  std::vector<iovec> entries;
  for (std::string& field : fields) entries.push_back(iovec{field.data(), field.size()});
  if (sd_journal_sendv(entries.data(), static_cast<int>(entries.size())) < 0) spdlog::log(level, "{}", message);
}

}  // namespace tally

