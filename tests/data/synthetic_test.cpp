// make_synthetic, take_first and channel_stats.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/error.hpp"
#include "data/dataset.hpp"

using namespace trainer;

TEST(Synthetic, IsDeterministicInSeedAndBalanced) {
  const Dataset a = make_synthetic(200, 3, 8, 8, 10, 42);
  const Dataset b = make_synthetic(200, 3, 8, 8, 10, 42);
  const Dataset c = make_synthetic(200, 3, 8, 8, 10, 43);
  EXPECT_EQ(a.name, "synthetic");
  EXPECT_EQ(a.size(), 200);
  EXPECT_EQ(a.image_shape(), (Shape{3, 8, 8}));
  EXPECT_EQ(a.images.size(), 200u * 3 * 8 * 8);
  EXPECT_EQ(a.images, b.images);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.images, c.images);
  std::vector<int> per_class(10, 0);
  for (int32_t l : a.labels) {
    ASSERT_GE(l, 0);
    ASSERT_LT(l, 10);
    ++per_class[l];
  }
  for (int n : per_class) EXPECT_EQ(n, 20);
}

// Nearest class mean (computed on one half, tested on the other) separates the classes: a CNN can
// learn this set, and a tiny one quickly.
TEST(Synthetic, ClassesAreSeparable) {
  const int64_t n = 400, k = 4, dim = 1 * 12 * 12;
  const Dataset ds = make_synthetic(n, 1, 12, 12, k, 7);
  std::vector<double> mean(k * dim, 0.0);
  std::vector<int> count(k, 0);
  for (int64_t i = 0; i < n / 2; ++i) {
    ++count[ds.labels[i]];
    for (int64_t j = 0; j < dim; ++j) mean[ds.labels[i] * dim + j] += ds.images[i * dim + j];
  }
  for (int64_t c = 0; c < k; ++c)
    for (int64_t j = 0; j < dim; ++j) mean[c * dim + j] /= count[c];
  int correct = 0;
  for (int64_t i = n / 2; i < n; ++i) {
    int64_t best = -1;
    double best_d = 1e300;
    for (int64_t c = 0; c < k; ++c) {
      double d = 0;
      for (int64_t j = 0; j < dim; ++j) d += std::pow(ds.images[i * dim + j] - mean[c * dim + j], 2);
      if (d < best_d) best_d = d, best = c;
    }
    correct += best == ds.labels[i];
  }
  EXPECT_GE(correct, static_cast<int>(0.95 * (n / 2)));
  // Not trivially constant either: pixels vary within a class.
  EXPECT_NE(ds.images[0], ds.images[dim]);
}

TEST(Synthetic, TakeFirstKeepsThePrefix) {
  const Dataset ds = make_synthetic(30, 2, 4, 5, 3, 1);
  const Dataset head = take_first(ds, 7);
  EXPECT_EQ(head.size(), 7);
  EXPECT_EQ(head.image_shape(), ds.image_shape());
  EXPECT_EQ(head.num_classes, 3);
  EXPECT_EQ(head.name, ds.name);
  EXPECT_EQ(head.images, std::vector<uint8_t>(ds.images.begin(), ds.images.begin() + 7 * 40));
  EXPECT_EQ(head.labels, std::vector<int32_t>(ds.labels.begin(), ds.labels.begin() + 7));
  EXPECT_EQ(take_first(ds, 1000).images, ds.images);
  EXPECT_EQ(take_first(ds, 0).size(), 0);
  EXPECT_THROW(take_first(ds, -1), Error);
}

TEST(ChannelStats, MatchesADirectComputation) {
  Dataset ds;
  ds.channels = 2;
  ds.height = 1;
  ds.width = 2;
  ds.num_classes = 2;
  // Channel 0 sees 0, 255, 51, 102; channel 1 is constant 255.
  ds.images = {0, 255, 255, 255, 51, 102, 255, 255};
  ds.labels = {0, 1};
  const Normalization s = channel_stats(ds);
  ASSERT_EQ(s.mean.size(), 2u);
  const double m0 = (0 + 1 + 0.2 + 0.4) / 4.0;
  const double v0 = (m0 * m0 + (1 - m0) * (1 - m0) + (0.2 - m0) * (0.2 - m0) + (0.4 - m0) * (0.4 - m0)) / 4.0;
  EXPECT_NEAR(s.mean[0], m0, 1e-6);
  EXPECT_NEAR(s.std[0], std::sqrt(v0), 1e-6);
  EXPECT_NEAR(s.mean[1], 1.0, 1e-6);
  // A constant channel gets std 1 so that normalising never divides by zero.
  EXPECT_EQ(s.std[1], 1.0f);

  Dataset empty = ds;
  empty.images.clear();
  empty.labels.clear();
  EXPECT_THROW(channel_stats(empty), Error);
}
