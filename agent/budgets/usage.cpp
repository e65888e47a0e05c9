#include "agent/budgets/usage.hpp"

namespace tally::budgets {

BudgetUsage::BudgetUsage(WindowSpec window, const date::time_zone& zone, Limits limits)
    : spec_(window), zone_(&zone), limits_(limits), rolling_(window.kind == WindowKind::rolling ? window.length
                                                                                               : std::chrono::seconds(60)) {}

CalendarWindow BudgetUsage::window_at(Seconds now) const {
  if (spec_.kind == WindowKind::rolling) return {now - spec_.length, now};
  return calendar_window(spec_.kind, now, *zone_);
}

void BudgetUsage::roll(Seconds now, std::vector<Crossing>& crossings) {
  if (spec_.kind == WindowKind::rolling) return;
  const CalendarWindow current = window_at(now);
  if (current == window_) return;
  // A clock stepped back into an earlier window is not a new window: usage is never handed back by a clock.
  if (window_.end != Seconds{} && current.start < window_.start) return;
  if (hard_reached_ || soft_reached_) {
    crossings.push_back({Crossing::Kind::lifted, used_, limits_.hard.value_or(limits_.soft.value_or(0)), window_});
  }
  window_ = current;
  used_ = 0;
  soft_reached_ = hard_reached_ = false;
}

std::uint64_t BudgetUsage::used(Seconds now) {
  if (spec_.kind == WindowKind::rolling) return rolling_.sum(now);
  std::vector<Crossing> ignored;
  roll(now, ignored);
  return used_;
}

std::vector<Crossing> BudgetUsage::record(std::uint64_t amount, Seconds now) {
  std::vector<Crossing> crossings;
  roll(now, crossings);
  std::uint64_t total = 0;
  if (spec_.kind == WindowKind::rolling) {
    if (amount != 0) rolling_.add(now, amount);
    total = rolling_.sum(now);
  } else {
    used_ += amount;
    total = used_;
  }
  const CalendarWindow window = window_at(now);
  if (spec_.kind == WindowKind::rolling) {
    // A rolling window forgets: a limit reached is lifted once usage falls back under it.
    if (hard_reached_ && limits_.hard && total < *limits_.hard) {
      crossings.push_back({Crossing::Kind::lifted, total, *limits_.hard, window});
      hard_reached_ = false;
    }
    if (soft_reached_ && limits_.soft && total < *limits_.soft) soft_reached_ = false;
  }
  if (!soft_reached_ && limits_.soft && total >= *limits_.soft) {
    soft_reached_ = true;
    crossings.push_back({Crossing::Kind::soft_reached, total, *limits_.soft, window});
  }
  if (!hard_reached_ && limits_.hard && total >= *limits_.hard) {
    hard_reached_ = true;
    crossings.push_back({Crossing::Kind::hard_reached, total, *limits_.hard, window});
  }
  return crossings;
}

std::optional<std::uint64_t> BudgetUsage::remaining(Seconds now) {
  if (!limits_.hard) return std::nullopt;
  const std::uint64_t total = used(now);
  return total >= *limits_.hard ? 0 : *limits_.hard - total;
}

SavedUsage BudgetUsage::save() const {
  SavedUsage saved;
  saved.soft_reached = soft_reached_;
  saved.hard_reached = hard_reached_;
  if (spec_.kind == WindowKind::rolling) {
    saved.buckets = rolling_.buckets();
  } else {
    saved.window_start = window_.start.time_since_epoch().count();
    saved.used = used_;
  }
  return saved;
}

std::vector<Crossing> BudgetUsage::restore(const SavedUsage& saved, Seconds now) {
  std::vector<Crossing> crossings;
  roll(now, crossings);
  const std::uint64_t limit = limits_.hard.value_or(limits_.soft.value_or(0));
  std::uint64_t total = 0;
  if (spec_.kind == WindowKind::rolling) {
    for (const auto& [epoch, amount] : saved.buckets) rolling_.restore(epoch, amount);
    total = rolling_.sum(now);
  } else if (saved.window_start == window_.start.time_since_epoch().count()) {
    used_ = saved.used;
    total = used_;
  } else {
    // The window it was saved in is over: what was in force then is lifted now.
    if (saved.hard_reached || saved.soft_reached) {
      crossings.push_back({Crossing::Kind::lifted, saved.used, limit,
                           calendar_window(spec_.kind, Seconds(std::chrono::seconds(saved.window_start)), *zone_)});
    }
    return crossings;
  }
  soft_reached_ = saved.soft_reached && limits_.soft && total >= *limits_.soft;
  hard_reached_ = saved.hard_reached && limits_.hard && total >= *limits_.hard;
  if (saved.hard_reached && !hard_reached_) {
    crossings.push_back({Crossing::Kind::lifted, total, limit, window_at(now)});
  }
  for (auto& crossing : record(0, now)) crossings.push_back(crossing);
  return crossings;
}

}  // namespace tally::budgets
