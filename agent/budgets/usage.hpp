#pragma once
// One budget's usage in its window, and the moments that matter: the soft limit reached (an event), the hard limit
// reached (the budget's action), and the window rolling over or, for a rolling window, usage falling back under a
// limit (the action lifted). Each crossing is reported once per window. Time is given, never read: the caller's
// clock (tests inject theirs).

#include <cstdint>
#include <optional>
#include <vector>

#include "agent/budgets/window.hpp"

namespace tally::budgets {

struct Limits {
  std::optional<std::uint64_t> soft;  // an event only
  std::optional<std::uint64_t> hard;  // the action
};

struct Crossing {
  enum class Kind {
    soft_reached,   // usage reached the soft limit
    hard_reached,   // usage reached the hard limit: the action applies
    lifted,         // a new window began (or a rolling window's usage fell back under the hard limit)
  };
  Kind kind = Kind::soft_reached;
  std::uint64_t used = 0;
  std::uint64_t limit = 0;
  CalendarWindow window;  // calendar: the window it happened in; rolling: [now - length, now)
};

// A budget's usage as saved (with the ledger's checkpoint) and restored.
struct SavedUsage {
  std::int64_t window_start = 0;  // calendar windows: the window's start, unix seconds
  std::uint64_t used = 0;         // calendar windows
  bool soft_reached = false, hard_reached = false;
  std::vector<std::pair<std::int64_t, std::uint64_t>> buckets;  // rolling windows: RollingSum::buckets()
};

class BudgetUsage {
 public:
  BudgetUsage(WindowSpec window, const date::time_zone& zone, Limits limits);

  // Adds `amount` used at `now` (0: only lets time pass) and returns what was crossed, in order.
  std::vector<Crossing> record(std::uint64_t amount, Seconds now);
  // Usage in the window holding `now`.
  std::uint64_t used(Seconds now);
  // What is left under the hard limit at `now`; nullopt without one.
  std::optional<std::uint64_t> remaining(Seconds now);
  bool hard_reached() const { return hard_reached_; }
  CalendarWindow window_at(Seconds now) const;
  const Limits& limits() const { return limits_; }

  SavedUsage save() const;
  // Continues from what was saved, at `now`, under this usage's limits (they may have changed since): a calendar
  // window that ended meanwhile is over, and what changed is returned (an action lifted, a limit now reached).
  std::vector<Crossing> restore(const SavedUsage& saved, Seconds now);

 private:
  void roll(Seconds now, std::vector<Crossing>& crossings);

  WindowSpec spec_;
  const date::time_zone* zone_;
  Limits limits_;
  CalendarWindow window_{};
  std::uint64_t used_ = 0;  // calendar windows
  RollingSum rolling_;
  bool soft_reached_ = false, hard_reached_ = false;
};

}  // namespace tally::budgets
