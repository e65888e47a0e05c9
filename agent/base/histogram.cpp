#include "agent/base/histogram.hpp"

#include <algorithm>
#include <bit>
#include <cmath>

namespace tally {
namespace {

constexpr int kSubBuckets = 1 << ExponentialHistogram::kScale;  // buckets per power of two
constexpr int kFineBits = 12;                                    // lookup on the top mantissa bits

// boundary[k] = ceil(2^(63 + k/64)): a normalized value n (leading one at bit 63) lies in sub-bucket k when
// boundary[k] <= n < boundary[k+1]. fine[j] is the sub-bucket of the lowest n with those top 12 mantissa bits;
// a fine cell is narrower than a bucket, so at most one step up corrects it.
struct Tables {
  std::array<std::uint64_t, kSubBuckets + 1> boundary{};
  std::array<std::uint8_t, 1 << kFineBits> fine{};
  Tables() {
    for (int k = 0; k <= kSubBuckets; ++k) {
      const long double b = std::exp2l(63.0L + static_cast<long double>(k) / kSubBuckets);
      boundary[static_cast<std::size_t>(k)] =
          k == kSubBuckets ? UINT64_MAX : static_cast<std::uint64_t>(std::ceil(b));
    }
    boundary[0] = std::uint64_t{1} << 63;
    for (std::size_t j = 0; j < fine.size(); ++j) {
      const std::uint64_t n = (std::uint64_t{1} << 63) | (static_cast<std::uint64_t>(j) << (63 - kFineBits));
      int k = 0;
      while (k + 1 < kSubBuckets && n >= boundary[static_cast<std::size_t>(k + 1)]) ++k;
      fine[j] = static_cast<std::uint8_t>(k);
    }
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}
const Tables& g_tables = tables();  // built before main: record() never pays for a guard

}  // namespace

std::int32_t ExponentialHistogram::bucket_index(std::uint64_t v) {
  const int e = 63 - std::countl_zero(v);
  const std::uint64_t n = v << (63 - e);
  const auto& t = g_tables;
  int k = t.fine[(n >> (63 - kFineBits)) & ((1u << kFineBits) - 1)];
  if (k + 1 < kSubBuckets && n >= t.boundary[static_cast<std::size_t>(k + 1)]) ++k;
  std::int32_t index = e * kSubBuckets + k;
  if (n == (std::uint64_t{1} << 63)) --index;  // exact power of two: OTel buckets are upper-inclusive
  return index;
}

double ExponentialHistogram::lower_bound(std::int32_t index) {
  return std::exp2(static_cast<double>(index) / kSubBuckets);
}

double ExponentialHistogram::bucket_value(std::int32_t index) {
  const double lower = lower_bound(index);
  const double upper = lower_bound(index + 1);
  return 2.0 * lower * upper / (lower + upper);
}

void ExponentialHistogram::grow_and_add(std::int32_t index) {
  if (counts_.empty()) {
    offset_ = index;
    counts_.assign(1, 1);
    return;
  }
  if (index < offset_) {
    counts_.insert(counts_.begin(), static_cast<std::size_t>(offset_ - index), 0);
    offset_ = index;
  } else {
    counts_.resize(static_cast<std::size_t>(index - offset_) + 1, 0);
  }
  ++counts_[static_cast<std::size_t>(index - offset_)];
}

ExponentialHistogram ExponentialHistogram::from_parts(std::int32_t offset, std::vector<std::uint64_t> counts,
                                                      std::uint64_t zero_count, std::uint64_t sum, std::uint64_t min,
                                                      std::uint64_t max) {
  ExponentialHistogram h;
  h.offset_ = offset;
  h.counts_ = std::move(counts);
  h.zero_count_ = zero_count;
  h.count_ = zero_count;
  for (std::uint64_t c : h.counts_) h.count_ += c;
  h.sum_ = sum;
  h.min_ = h.count_ ? min : UINT64_MAX;
  h.max_ = max;
  return h;
}

void ExponentialHistogram::merge(const ExponentialHistogram& other) {
  if (other.count_ == 0) return;
  count_ += other.count_;
  sum_ += other.sum_;
  zero_count_ += other.zero_count_;
  min_ = std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  for (std::size_t i = 0; i < other.counts_.size(); ++i) {
    if (other.counts_[i] == 0) continue;
    const std::int32_t index = other.offset_ + static_cast<std::int32_t>(i);
    const auto position = static_cast<std::uint32_t>(index - offset_);
    if (!counts_.empty() && position < counts_.size()) {
      counts_[position] += other.counts_[i];
    } else {
      grow_and_add(index);
      counts_[static_cast<std::size_t>(index - offset_)] += other.counts_[i] - 1;
    }
  }
}

double ExponentialHistogram::quantile(double q) const {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  const auto rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_))));
  std::uint64_t seen = zero_count_;
  if (rank <= seen) return 0;
  for (std::size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (rank <= seen) {
      const double v = bucket_value(offset_ + static_cast<std::int32_t>(i));
      return std::clamp(v, static_cast<double>(min()), static_cast<double>(max_));
    }
  }
  return static_cast<double>(max_);
}

double ExponentialHistogram::top_share(double fraction) const {
  if (count_ == 0 || sum_ == 0) return 0;
  double wanted = std::ceil(std::clamp(fraction, 0.0, 1.0) * static_cast<double>(count_));
  double mass = 0;
  for (std::size_t i = counts_.size(); i-- > 0 && wanted > 0;) {
    const double take = std::min(wanted, static_cast<double>(counts_[i]));
    const double v = std::clamp(bucket_value(offset_ + static_cast<std::int32_t>(i)), static_cast<double>(min()),
                                static_cast<double>(max_));
    mass += take * v;
    wanted -= take;
  }
  return std::min(1.0, mass / static_cast<double>(sum_));
}

}  // namespace tally
