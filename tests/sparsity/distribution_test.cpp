#include "sparsity/distribution.hpp"

#include <gtest/gtest.h>

#include "core/error.hpp"

using namespace trainer;

TEST(Erk, Scores) {
  EXPECT_DOUBLE_EQ(erk_score({16, 8, 3, 3}), (16.0 + 8 + 3 + 3) / (16.0 * 8 * 3 * 3));
  EXPECT_DOUBLE_EQ(erk_score({10, 64}), 74.0 / 640.0);
  EXPECT_THROW(erk_score({0, 3}), Error);
}

// Hand-computed: A [2,1,3,3] (N 18, score 9/18), B [64,64] (N 4096, score 1/32), C [16,16,3,3] (N 2304,
// score 38/2304), target density 0.2 of 6418 weights = 1283.6 kept. Unclamped, ε = 1283.6 / (9 + 128 + 38)
// = 7.335 would give A density 3.67 > 1, so A is dense and ε = (1283.6 - 18) / (128 + 38) = 7.62410.
TEST(Erk, HandExampleWithClamp) {
  const std::vector<double> d = erk_densities({{2, 1, 3, 3}, {64, 64}, {16, 16, 3, 3}}, 0.2);
  const double eps = (0.2 * 6418.0 - 18.0) / 166.0;
  ASSERT_EQ(d.size(), 3u);
  EXPECT_DOUBLE_EQ(d[0], 1.0);
  EXPECT_NEAR(d[1], eps / 32.0, 1e-12);
  EXPECT_NEAR(d[1], 0.238253, 1e-6);
  EXPECT_NEAR(d[2], eps * 38.0 / 2304.0, 1e-12);
  EXPECT_NEAR(d[2], 0.125745, 1e-6);
  EXPECT_NEAR(18.0 * d[0] + 4096.0 * d[1] + 2304.0 * d[2], 1283.6, 1e-9);
}

TEST(Erk, EqualShapesGetTheTargetAndExtremesHold) {
  const std::vector<double> d = erk_densities({{8, 8, 3, 3}, {8, 8, 3, 3}}, 0.3);
  EXPECT_NEAR(d[0], 0.3, 1e-12);
  EXPECT_NEAR(d[1], 0.3, 1e-12);
  for (double x : erk_densities({{2, 1, 3, 3}, {64, 64}}, 1.0)) EXPECT_DOUBLE_EQ(x, 1.0);
  for (double x : erk_densities({{2, 1, 3, 3}, {64, 64}}, 0.0)) EXPECT_DOUBLE_EQ(x, 0.0);
  EXPECT_THROW(erk_densities({{2, 2}}, 1.5), Error);
}

TEST(Distribution, ParsesNames) {
  EXPECT_EQ(parse_distribution("erk"), Distribution::erk);
  EXPECT_EQ(parse_distribution("uniform"), Distribution::uniform);
  EXPECT_EQ(parse_distribution("global"), Distribution::global);
  EXPECT_THROW(parse_distribution("ERK!"), Error);
}

TEST(GlobalPrune, CountsFollowOneThresholdWithTiesInOrder) {
  const float a[4] = {0.1f, 0.5f, 0.3f, 0.9f};
  const float b[5] = {0.05f, 0.3f, 0.7f, 0.3f, 0.2f};
  Mask ma({4}), mb({5});
  mb.set(0, false);  // already pruned: not a candidate
  // Kept magnitudes sorted: 0.1 (a), 0.2 (b), 0.3 (a), 0.3 (b), 0.3 (b), 0.5, 0.7, 0.9.
  auto c = global_prune_counts({a, b}, {&ma, &mb}, 4);
  EXPECT_EQ(c[0], 2);  // 0.1 and the first tie at 0.3 (earlier tensor)
  EXPECT_EQ(c[1], 2);  // 0.2 and one 0.3
  c = global_prune_counts({a, b}, {&ma, &mb}, 2);
  EXPECT_EQ(c[0], 1);
  EXPECT_EQ(c[1], 1);
  c = global_prune_counts({a, b}, {&ma, &mb}, 100);
  EXPECT_EQ(c[0], 4);
  EXPECT_EQ(c[1], 4);
  c = global_prune_counts({a, b}, {&ma, &mb}, 0);
  EXPECT_EQ(c[0] + c[1], 0);
}
