#include "sparsity/distribution.hpp"

#include <gtest/gtest.h>

#include <cmath>

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

// Power p: density proportional to score^p. ResNet-20's two 3x3 shapes of stages 0 and 2, hand-computed:
// scores 38/2304 and 134/36864; at p = 0.5 the ratio of their densities is sqrt(38/2304 * 36864/134) =
// 2.1301 (ERK: 4.5373), and the kept weights still add up to the budget. p = 0 is uniform.
TEST(Erk, PowerTiltsBetweenUniformAndErk) {
  const std::vector<Shape> shapes = {{16, 16, 3, 3}, {64, 64, 3, 3}};
  const double n0 = 2304.0, n2 = 36864.0, budget = 0.1 * (n0 + n2);
  const std::vector<double> erk = erk_densities(shapes, 0.1), half = erk_densities(shapes, 0.1, 0.5),
                            flat = erk_densities(shapes, 0.1, 0.0);
  EXPECT_NEAR(erk[0] / erk[1], (38.0 / 2304.0) / (134.0 / 36864.0), 1e-9);
  EXPECT_NEAR(half[0] / half[1], std::sqrt((38.0 / 2304.0) / (134.0 / 36864.0)), 1e-9);
  EXPECT_NEAR(half[0] / half[1], 2.1301, 1e-4);
  EXPECT_NEAR(n0 * half[0] + n2 * half[1], budget, 1e-9);
  EXPECT_NEAR(flat[0], 0.1, 1e-12);
  EXPECT_NEAR(flat[1], 0.1, 1e-12);
  EXPECT_LT(half[0], erk[0]);  // the small layer loses density to the large one
  EXPECT_GT(half[1], erk[1]);
  // The default is ERK itself; a power clamps like ERK does (at p = 3 the small layer would be 1.45 dense: it
  // is kept dense, and the large one takes the rest of the budget).
  EXPECT_EQ(erk_densities(shapes, 0.1, 1.0), erk);
  const std::vector<double> steep = erk_densities(shapes, 0.1, 3.0);
  EXPECT_DOUBLE_EQ(steep[0], 1.0);
  EXPECT_NEAR(steep[1], 0.04375, 1e-12);
  EXPECT_NEAR(n0 * steep[0] + n2 * steep[1], budget, 1e-9);
  EXPECT_THROW(erk_densities(shapes, 0.1, -0.5), Error);
  EXPECT_THROW(erk_densities(shapes, 0.1, std::nan("")), Error);
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
