// ExponentialHistogram: OTel bucket indexing at scale 6, quantiles within 1% of exact, merging, tail shares.
#include "agent/base/histogram.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace tally::shm {
namespace {

// Reference index from the definition: bucket i holds (base^i, base^(i+1)], base = 2^(1/64).
std::int32_t reference_index(std::uint64_t v) {
  const long double l = std::log2l(static_cast<long double>(v)) * 64.0L;
  auto i = static_cast<std::int32_t>(std::ceil(l)) - 1;
  return i;
}

TEST(ExponentialHistogram, IndexMatchesTheOtelDefinition) {
  for (std::uint64_t v = 1; v < 200000; ++v) ASSERT_EQ(ExponentialHistogram::bucket_index(v), reference_index(v)) << v;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200000; ++i) {
    const std::uint64_t v = rng() >> (rng() % 63);
    if (v == 0) continue;
    ASSERT_EQ(ExponentialHistogram::bucket_index(v), reference_index(v)) << v;
  }
  for (int e = 0; e < 64; ++e) {  // powers of two sit at the top of the bucket below them
    EXPECT_EQ(ExponentialHistogram::bucket_index(std::uint64_t{1} << e), e * 64 - 1);
  }
}

double exact_quantile(std::vector<std::uint64_t> values, double q) {
  std::sort(values.begin(), values.end());
  const auto rank = std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size()))));
  return static_cast<double>(values[rank - 1]);
}

TEST(ExponentialHistogram, QuantilesWithinOnePercent) {
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> latency(14.0, 1.5);
  std::vector<std::uint64_t> values;
  ExponentialHistogram h;
  for (int i = 0; i < 100000; ++i) {
    const auto v = static_cast<std::uint64_t>(latency(rng)) + 1;
    values.push_back(v);
    h.record(v);
  }
  for (double q : {0.5, 0.9, 0.95, 0.99, 0.999, 1.0}) {
    const double exact = exact_quantile(values, q);
    EXPECT_NEAR(h.quantile(q), exact, exact * 0.01) << "q=" << q;
  }
  EXPECT_EQ(h.max(), *std::max_element(values.begin(), values.end()));
  EXPECT_EQ(h.count(), values.size());
}

TEST(ExponentialHistogram, MergeEqualsRecordingEverythingInOne) {
  ExponentialHistogram a, b, all;
  std::mt19937_64 rng(3);
  for (int i = 0; i < 5000; ++i) {
    const std::uint64_t v = rng() % 1000000;
    (i % 2 ? a : b).record(v);
    all.record(v);
  }
  b.record(1);  // extends b below a's range
  all.record(1);
  a.merge(b);
  EXPECT_EQ(a.count(), all.count());
  EXPECT_EQ(a.sum(), all.sum());
  EXPECT_EQ(a.zero_count(), all.zero_count());
  ASSERT_EQ(a.offset(), all.offset());
  EXPECT_EQ(a.counts(), all.counts());
}

TEST(ExponentialHistogram, TopShareOfTheCostliestOnePercent) {
  ExponentialHistogram h;
  // 990 requests of 100 tokens and 10 of 10000: the top 1% holds 100000 of 199000 tokens.
  for (int i = 0; i < 990; ++i) h.record(100);
  for (int i = 0; i < 10; ++i) h.record(10000);
  EXPECT_NEAR(h.top_share(0.01), 100000.0 / 199000.0, 0.01);
  EXPECT_EQ(ExponentialHistogram{}.top_share(0.01), 0.0);
}

TEST(ExponentialHistogram, EmptyAndZeroValues) {
  ExponentialHistogram h;
  EXPECT_EQ(h.quantile(0.5), 0.0);
  h.record(0);
  h.record(0);
  h.record(10);
  EXPECT_EQ(h.zero_count(), 2u);
  EXPECT_EQ(h.quantile(0.5), 0.0);
  EXPECT_NEAR(h.quantile(1.0), 10.0, 0.1);
}

}  // namespace
}  // namespace tally::shm
