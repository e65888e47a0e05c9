#include "agent/feed/usage_view.hpp"

#include <set>

namespace tally::agent {
namespace {

void fold(const google::protobuf::RepeatedPtrField<v1::CounterTotal>& totals, std::uint64_t report,
          CounterViews& into) {
  for (const v1::CounterTotal& t : totals) {
    CounterView& c = into[{t.name(), t.source(), t.kind()}];
    c.total = t.total();
    c.delta = t.delta();
    c.reported = report;
    c.kind = t.kind();
  }
}

}  // namespace

std::string label_text(const v1::LabelSetUsage& label_set) {
  std::string text;
  for (const auto& l : label_set.labels()) text += (text.empty() ? "" : "\n") + l.key() + "=" + l.value();
  return text;
}

void UsageView::apply(const v1::UsageReport& report) {
  ++reports_;
  interval_seconds_ =
      static_cast<double>(report.interval_end_unix_ns() - report.interval_start_unix_ns()) / 1e9;
  std::set<std::string> carried;
  for (const v1::WorkloadUsage& w : report.workloads()) {
    carried.insert(w.workload_id());
    WorkloadView& view = workloads_[w.workload_id()];
    view.last = w;
    view.last.clear_label_sets();
    view.last.clear_totals();
    fold(w.totals(), reports_, view.totals);
    for (const v1::LabelSetUsage& ls : w.label_sets()) {
      LabelSetView& label_set = view.label_sets[label_text(ls)];
      label_set.last = ls;
      label_set.last.clear_totals();
      fold(ls.totals(), reports_, label_set.counters);
    }
  }
  if (report.snapshot()) std::erase_if(workloads_, [&](const auto& w) { return !carried.contains(w.first); });
}

}  // namespace tally::agent
