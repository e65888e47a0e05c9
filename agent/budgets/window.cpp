#include "agent/budgets/window.hpp"

#include <charconv>

#include <fmt/format.h>

namespace tally::budgets {

using namespace std::chrono;

Result<WindowSpec> parse_window(std::string_view text) {
  if (text == "minute") return WindowSpec{WindowKind::minute, {}};
  if (text == "hour") return WindowSpec{WindowKind::hour, {}};
  if (text == "day") return WindowSpec{WindowKind::day, {}};
  if (text == "month") return WindowSpec{WindowKind::month, {}};
  const auto bad = [&] {
    return make_error(ErrorCode::invalid_argument,
                      "'{}' is not a window: \"minute\", \"hour\", \"day\", \"month\" or \"rolling:<n><s|m|h|d>\" "
                      "(1 s to 31 d)",
                      text);
  };
  constexpr std::string_view prefix = "rolling:";
  if (!text.starts_with(prefix) || text.size() < prefix.size() + 2) return bad();
  const std::string_view amount = text.substr(prefix.size(), text.size() - prefix.size() - 1);
  std::uint64_t n = 0;
  const auto [end, error] = std::from_chars(amount.data(), amount.data() + amount.size(), n);
  if (error != std::errc() || end != amount.data() + amount.size() || n == 0 || n > 31ull * 86400) return bad();
  std::uint64_t unit = 0;
  switch (text.back()) {
    case 's': unit = 1; break;
    case 'm': unit = 60; break;
    case 'h': unit = 3600; break;
    case 'd': unit = 86400; break;
    default: return bad();
  }
  const std::uint64_t length = n * unit;
  if (length > 31ull * 86400) return bad();
  return WindowSpec{WindowKind::rolling, seconds(static_cast<std::int64_t>(length))};
}

std::string to_string(const WindowSpec& window) {
  switch (window.kind) {
    case WindowKind::minute: return "minute";
    case WindowKind::hour: return "hour";
    case WindowKind::day: return "day";
    case WindowKind::month: return "month";
    case WindowKind::rolling: return fmt::format("rolling:{}s", window.length.count());
  }
  return "day";
}

Result<const date::time_zone*> find_time_zone(std::string_view name) {
  try {
    return date::locate_zone(name);
  } catch (const std::exception& error) {
    return make_error(ErrorCode::invalid_argument, "'{}' is not a time zone of this system's tzdata ({})", name,
                      error.what());
  }
}

CalendarWindow calendar_window(WindowKind kind, Seconds now, const date::time_zone& zone) {
  const date::sys_info info = zone.get_info(now);
  const date::local_seconds local{now.time_since_epoch() + info.offset};
  switch (kind) {
    case WindowKind::minute:
    case WindowKind::hour: {
      // The offset in force now: in the repeated hour of a DST change each pass is its own window.
      const seconds length = kind == WindowKind::minute ? seconds(minutes(1)) : seconds(hours(1));
      const date::local_seconds start_local = kind == WindowKind::minute ? date::floor<minutes>(local)
                                                                         : date::floor<hours>(local);
      const Seconds start{start_local.time_since_epoch() - info.offset};
      return {start, start + length};
    }
    case WindowKind::day:
    case WindowKind::month:
    case WindowKind::rolling: {
      const date::local_days day = date::floor<date::days>(local);
      date::local_days first = day, next = day + date::days(1);
      if (kind == WindowKind::month) {
        const date::year_month_day ymd(day);
        const date::year_month this_month = ymd.year() / ymd.month();
        const date::year_month next_month = this_month + date::months(1);
        first = date::local_days(this_month / 1);
        next = date::local_days(next_month / 1);
      }
      return {date::floor<seconds>(zone.to_sys(first, date::choose::earliest)),
              date::floor<seconds>(zone.to_sys(next, date::choose::earliest))};
    }
  }
  return {now, now + seconds(1)};
}

RollingSum::RollingSum(seconds length, unsigned buckets)
    : width_(std::max<seconds>(seconds(1), (length + seconds(buckets) - seconds(1)) / std::max(buckets, 1u))),
      buckets_(std::max(buckets, 1u)) {}

std::int64_t RollingSum::epoch_of(Seconds at) const {
  return date::floor<seconds>(at).time_since_epoch().count() / width_.count();
}

void RollingSum::add(Seconds at, std::uint64_t amount) {
  const std::int64_t epoch = epoch_of(at);
  Bucket& bucket = buckets_[static_cast<std::size_t>(epoch) % buckets_.size()];
  if (bucket.epoch > epoch) return;  // older than what the ring holds there: outside the window already
  if (bucket.epoch != epoch) bucket = Bucket{epoch, 0};
  bucket.amount += amount;
}

std::uint64_t RollingSum::sum(Seconds now) const {
  const std::int64_t newest = epoch_of(now);
  const std::int64_t oldest = newest - static_cast<std::int64_t>(buckets_.size()) + 1;
  std::uint64_t total = 0;
  for (const Bucket& bucket : buckets_) {
    if (bucket.epoch >= oldest && bucket.epoch <= newest) total += bucket.amount;
  }
  return total;
}

std::vector<std::pair<std::int64_t, std::uint64_t>> RollingSum::buckets() const {
  std::vector<std::pair<std::int64_t, std::uint64_t>> used;
  for (const Bucket& bucket : buckets_) {
    if (bucket.epoch >= 0 && bucket.amount != 0) used.emplace_back(bucket.epoch, bucket.amount);
  }
  return used;
}

void RollingSum::restore(std::int64_t epoch, std::uint64_t amount) {
  Bucket& bucket = buckets_[static_cast<std::size_t>(epoch) % buckets_.size()];
  if (epoch < bucket.epoch) return;  // a newer slice already holds the slot
  if (epoch > bucket.epoch) bucket = Bucket{epoch, 0};
  bucket.amount += amount;
}

}  // namespace tally::budgets
