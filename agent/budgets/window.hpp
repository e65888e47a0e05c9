#pragma once
// Budget windows (docs/budgets.md). A calendar window (minute, hour, day, month) begins at a boundary of local time
// in the budgets' time zone: a "day" is the local day, 23 or 25 hours long across a DST change, a "month" the local
// month. A rolling window ("rolling:15m") is the last N seconds, kept as a ring of buckets: usage leaves it at most
// one bucket (1/60 of the window) late, never early, so a limit is never loosened by the granularity.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <date/tz.h>

#include "agent/base/result.hpp"

namespace tally::budgets {

using Seconds = std::chrono::sys_seconds;

enum class WindowKind { minute, hour, day, month, rolling };

struct WindowSpec {
  WindowKind kind = WindowKind::day;
  std::chrono::seconds length{0};  // rolling only
  bool operator==(const WindowSpec&) const = default;
};

// "minute", "hour", "day", "month", or "rolling:<n><s|m|h|d>" (1 s to 31 d). The error says what is allowed.
Result<WindowSpec> parse_window(std::string_view text);
std::string to_string(const WindowSpec& window);

// A time zone by its IANA name ("UTC", "Europe/Berlin"), from the system's tzdata; the error names it.
Result<const date::time_zone*> find_time_zone(std::string_view name);

struct CalendarWindow {
  Seconds start, end;  // [start, end)
  bool operator==(const CalendarWindow&) const = default;
};

// The calendar window of `kind` (not rolling) that holds `now`, in `zone`. Minutes and hours follow the offset in
// force at `now` (the repeated hour of a DST change is two windows); days and months run from local midnight to
// local midnight (a midnight that does not exist is the first instant after it).
CalendarWindow calendar_window(WindowKind kind, Seconds now, const date::time_zone& zone);

// The sum of what was added in the last `length`, in buckets.
class RollingSum {
 public:
  explicit RollingSum(std::chrono::seconds length, unsigned buckets = 60);
  void add(Seconds at, std::uint64_t amount);
  // What was added in (now - length, now], give or take one bucket at the old end (kept, never dropped early).
  std::uint64_t sum(Seconds now) const;
  std::chrono::seconds bucket_width() const { return width_; }
  // What it holds, to be saved and restored (e.g. across agent restarts): (epoch, amount) per bucket in use.
  std::vector<std::pair<std::int64_t, std::uint64_t>> buckets() const;
  void restore(std::int64_t epoch, std::uint64_t amount);

 private:
  struct Bucket {
    std::int64_t epoch = -1;  // which width-long slice of time it holds
    std::uint64_t amount = 0;
  };
  std::int64_t epoch_of(Seconds at) const;
  std::chrono::seconds width_;
  std::vector<Bucket> buckets_;
};

}  // namespace tally::budgets
