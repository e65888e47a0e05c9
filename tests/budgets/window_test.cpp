// Budget windows: calendar boundaries in a time zone (DST days of 23 and 25 hours, half-hour offsets, months of
// every length), rolling windows in buckets, and a budget's crossings once per window.
#include "agent/budgets/usage.hpp"
#include "agent/budgets/window.hpp"

#include <gtest/gtest.h>

namespace tally::budgets {
namespace {

using namespace std::chrono;
using namespace date::literals;

// A UTC instant from calendar fields.
Seconds utc(date::year_month_day day, int h = 0, int m = 0, int s = 0) {
  return date::sys_days(day) + hours(h) + minutes(m) + seconds(s);
}

const date::time_zone& zone(std::string_view name) {
  auto found = find_time_zone(name);
  EXPECT_TRUE(found) << found.error().message;
  return **found;
}

TEST(Window, ParsesCalendarAndRollingWindowsAndSaysWhatIsAllowed) {
  EXPECT_EQ(*parse_window("day"), (WindowSpec{WindowKind::day, {}}));
  EXPECT_EQ(*parse_window("month"), (WindowSpec{WindowKind::month, {}}));
  EXPECT_EQ(*parse_window("rolling:15m"), (WindowSpec{WindowKind::rolling, seconds(900)}));
  EXPECT_EQ(*parse_window("rolling:2h"), (WindowSpec{WindowKind::rolling, seconds(7200)}));
  EXPECT_EQ(*parse_window("rolling:31d"), (WindowSpec{WindowKind::rolling, seconds(31 * 86400)}));
  for (const char* bad : {"week", "rolling:", "rolling:0m", "rolling:15", "rolling:15w", "rolling:-1m",
                          "rolling:32d", "rolling:1.5h", "Day"}) {
    const auto parsed = parse_window(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_NE(parsed.error().message.find("\"rolling:<n><s|m|h|d>\""), std::string::npos) << parsed.error().message;
  }
  EXPECT_EQ(to_string(*parse_window("rolling:15m")), "rolling:900s");
  EXPECT_FALSE(find_time_zone("Mars/Olympus_Mons"));
}

TEST(Window, CalendarDaysAreLocalDaysAcrossDaylightSavingChanges) {
  const auto& utc_zone = zone("UTC");
  EXPECT_EQ(calendar_window(WindowKind::day, utc(2026_y / 12 / 2, 11), utc_zone),
            (CalendarWindow{utc(2026_y / 12 / 2), utc(2026_y / 12 / 3)}));
  const auto& new_york = zone("America/New_York");
  // 2026-03-08: clocks go from 02:00 to 03:00 EST→EDT: a 23-hour day.
  const auto spring = calendar_window(WindowKind::day, utc(2026_y / 3 / 8, 12), new_york);
  EXPECT_EQ(spring, (CalendarWindow{utc(2026_y / 3 / 8, 5), utc(2026_y / 3 / 9, 4)}));
  EXPECT_EQ(spring.end - spring.start, hours(23));
  // 2026-11-01: 02:00 EDT back to 01:00 EST: a 25-hour day.
  const auto fall = calendar_window(WindowKind::day, utc(2026_y / 11 / 1, 12), new_york);
  EXPECT_EQ(fall, (CalendarWindow{utc(2026_y / 11 / 1, 4), utc(2026_y / 11 / 2, 5)}));
  EXPECT_EQ(fall.end - fall.start, hours(25));
  // The last second of a local day is in it; the next is the next day's first.
  EXPECT_EQ(calendar_window(WindowKind::day, utc(2026_y / 3 / 9, 3, 59, 59), new_york), spring);
  EXPECT_EQ(calendar_window(WindowKind::day, utc(2026_y / 3 / 9, 4), new_york).start, utc(2026_y / 3 / 9, 4));
}

TEST(Window, HoursFollowTheOffsetInForceIncludingTheRepeatedHourAndHalfHourZones) {
  const auto& new_york = zone("America/New_York");
  // 01:30 EDT and, an hour later, 01:30 EST: the repeated hour is two windows of one hour each.
  EXPECT_EQ(calendar_window(WindowKind::hour, utc(2026_y / 11 / 1, 5, 30), new_york),
            (CalendarWindow{utc(2026_y / 11 / 1, 5), utc(2026_y / 11 / 1, 6)}));
  EXPECT_EQ(calendar_window(WindowKind::hour, utc(2026_y / 11 / 1, 6, 30), new_york),
            (CalendarWindow{utc(2026_y / 11 / 1, 6), utc(2026_y / 11 / 1, 7)}));
  // India is UTC+05:30: its hours start at half past, UTC.
  EXPECT_EQ(calendar_window(WindowKind::hour, utc(2026_y / 12 / 2, 11), zone("Asia/Kolkata")),
            (CalendarWindow{utc(2026_y / 12 / 2, 10, 30), utc(2026_y / 12 / 2, 11, 30)}));
  EXPECT_EQ(calendar_window(WindowKind::minute, utc(2026_y / 12 / 2, 11, 7, 42), zone("UTC")),
            (CalendarWindow{utc(2026_y / 12 / 2, 11, 7), utc(2026_y / 12 / 2, 11, 8)}));
}

TEST(Window, MonthsOfEveryLengthInTheirZone) {
  const auto& utc_zone = zone("UTC");
  EXPECT_EQ(calendar_window(WindowKind::month, utc(2028_y / 2 / 15), utc_zone),
            (CalendarWindow{utc(2028_y / 2 / 1), utc(2028_y / 3 / 1)}));
  EXPECT_EQ(calendar_window(WindowKind::month, utc(2026_y / 12 / 31, 23, 59, 59), utc_zone),
            (CalendarWindow{utc(2026_y / 12 / 1), utc(2027_y / 1 / 1)}));
  // Berlin's March 2026 starts at 23:00 UTC the day before (CET) and ends at 22:00 UTC (CEST since the 29th).
  EXPECT_EQ(calendar_window(WindowKind::month, utc(2026_y / 3 / 15), zone("Europe/Berlin")),
            (CalendarWindow{utc(2026_y / 2 / 28, 23), utc(2026_y / 3 / 31, 22)}));
}

TEST(RollingSum, UsageLeavesTheWindowAsTimePassesNeverEarly) {
  RollingSum sum(seconds(60));
  EXPECT_EQ(sum.bucket_width(), seconds(1));
  const Seconds t0 = utc(2026_y / 12 / 2, 12);
  sum.add(t0, 100);
  sum.add(t0 + seconds(30), 5);
  EXPECT_EQ(sum.sum(t0 + seconds(59)), 105u);
  EXPECT_EQ(sum.sum(t0 + seconds(60)), 5u) << "the first addition left the window";
  EXPECT_EQ(sum.sum(t0 + seconds(90)), 0u);
  sum.add(t0 + seconds(120), 7);  // the ring's buckets are reused
  EXPECT_EQ(sum.sum(t0 + seconds(120)), 7u);
  sum.add(t0, 1000);  // older than the window: already gone
  EXPECT_EQ(sum.sum(t0 + seconds(120)), 7u);
  RollingSum coarse(seconds(900));
  EXPECT_EQ(coarse.bucket_width(), seconds(15));
  coarse.add(t0, 1);
  EXPECT_EQ(coarse.sum(t0 + seconds(899)), 1u);
  EXPECT_EQ(coarse.sum(t0 + seconds(915)), 0u);
}

TEST(BudgetUsage, SoftThenHardOncePerWindowAndLiftedWhenTheWindowRolls) {
  BudgetUsage usage(*parse_window("day"), zone("UTC"), Limits{800, 1000});
  const Seconds morning = utc(2026_y / 12 / 2, 9);
  EXPECT_TRUE(usage.record(500, morning).empty());
  auto crossed = usage.record(400, morning + hours(1));
  ASSERT_EQ(crossed.size(), 1u);
  EXPECT_EQ(crossed[0].kind, Crossing::Kind::soft_reached);
  EXPECT_EQ(crossed[0].used, 900u);
  EXPECT_EQ(crossed[0].window, (CalendarWindow{utc(2026_y / 12 / 2), utc(2026_y / 12 / 3)}));
  EXPECT_EQ(*usage.remaining(morning + hours(1)), 100u);
  crossed = usage.record(100, morning + hours(2));
  ASSERT_EQ(crossed.size(), 1u);
  EXPECT_EQ(crossed[0].kind, Crossing::Kind::hard_reached);
  EXPECT_EQ(crossed[0].limit, 1000u);
  EXPECT_TRUE(usage.hard_reached());
  EXPECT_TRUE(usage.record(50, morning + hours(3)).empty()) << "said once per window";
  EXPECT_EQ(*usage.remaining(morning + hours(3)), 0u);
  EXPECT_TRUE(usage.record(0, morning - hours(2)).empty()) << "a clock stepped back opens no window";
  crossed = usage.record(0, utc(2026_y / 12 / 3, 0, 0, 1));
  ASSERT_EQ(crossed.size(), 1u);
  EXPECT_EQ(crossed[0].kind, Crossing::Kind::lifted);
  EXPECT_EQ(crossed[0].used, 1050u) << "the ended window's usage, overshoot included";
  EXPECT_FALSE(usage.hard_reached());
  EXPECT_EQ(usage.used(utc(2026_y / 12 / 3, 1)), 0u);
}

TEST(BudgetUsage, ARollingWindowLiftsWhenUsageFallsBackUnderTheLimit) {
  BudgetUsage usage(*parse_window("rolling:1m"), zone("UTC"), Limits{std::nullopt, 100});
  const Seconds t0 = utc(2026_y / 12 / 2, 12);
  auto crossed = usage.record(100, t0);
  ASSERT_EQ(crossed.size(), 1u);
  EXPECT_EQ(crossed[0].kind, Crossing::Kind::hard_reached);
  EXPECT_TRUE(usage.record(0, t0 + seconds(59)).empty());
  crossed = usage.record(0, t0 + seconds(60));
  ASSERT_EQ(crossed.size(), 1u);
  EXPECT_EQ(crossed[0].kind, Crossing::Kind::lifted);
  EXPECT_EQ(*usage.remaining(t0 + seconds(60)), 100u);
}

}  // namespace
}  // namespace tally::budgets
