#include "sparsity/schedule.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "core/error.hpp"

using namespace trainer;

TEST(CubicSchedule, ValuesFollowZhuGupta) {
  const CubicSchedule s{0.0, 0.8, 100, 1100, 100};
  EXPECT_DOUBLE_EQ(s.sparsity_at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.sparsity_at(100), 0.0);
  // p = 0.25: 0.8 (1 - 0.75^3) = 0.4625; p = 0.5: 0.8 (1 - 0.125) = 0.7.
  EXPECT_NEAR(s.sparsity_at(350), 0.4625, 1e-12);
  EXPECT_NEAR(s.sparsity_at(600), 0.7, 1e-12);
  EXPECT_DOUBLE_EQ(s.sparsity_at(1100), 0.8);
  EXPECT_DOUBLE_EQ(s.sparsity_at(5000), 0.8);
  const CubicSchedule from_half{0.5, 0.9, 0, 10, 1};
  // s_f + (s_i - s_f)(1 - p)^3 at p = 0.3: 0.9 - 0.4 * 0.343.
  EXPECT_NEAR(from_half.sparsity_at(3), 0.9 - 0.4 * 0.343, 1e-12);
  // Non-decreasing in between.
  double last = 0.0;
  for (int64_t t = 0; t <= 1200; ++t) {
    EXPECT_GE(s.sparsity_at(t), last);
    last = s.sparsity_at(t);
  }
}

TEST(CubicSchedule, UpdateStepsEveryDeltaTAndAtTheEnd) {
  const CubicSchedule s{0.0, 0.8, 100, 1100, 100};
  EXPECT_FALSE(s.is_update_step(0));
  EXPECT_FALSE(s.is_update_step(99));
  EXPECT_TRUE(s.is_update_step(100));
  EXPECT_FALSE(s.is_update_step(150));
  EXPECT_TRUE(s.is_update_step(200));
  EXPECT_TRUE(s.is_update_step(1100));
  EXPECT_FALSE(s.is_update_step(1200));
  const CubicSchedule ragged{0.0, 0.5, 0, 250, 100};
  EXPECT_TRUE(ragged.is_update_step(0));
  EXPECT_TRUE(ragged.is_update_step(200));
  EXPECT_TRUE(ragged.is_update_step(250));
  EXPECT_FALSE(ragged.is_update_step(300));
}

TEST(CubicSchedule, ValidateNamesTheField) {
  EXPECT_THROW((CubicSchedule{0.0, 1.0, 0, 10, 1}.validate()), Error);
  EXPECT_THROW((CubicSchedule{0.6, 0.5, 0, 10, 1}.validate()), Error);
  EXPECT_THROW((CubicSchedule{0.0, 0.5, 10, 10, 1}.validate()), Error);
  EXPECT_THROW((CubicSchedule{0.0, 0.5, 0, 10, 0}.validate()), Error);
  EXPECT_NO_THROW((CubicSchedule{0.0, 0.5, 0, 10, 1}.validate()));
}

TEST(CosineDropSchedule, DecaysToZeroAtTheEnd) {
  const CosineDropSchedule s{0.3, 0, 1000, 100};
  EXPECT_DOUBLE_EQ(s.fraction_at(0), 0.3);
  EXPECT_NEAR(s.fraction_at(500), 0.15, 1e-12);
  EXPECT_NEAR(s.fraction_at(250), 0.15 * (1.0 + std::cos(std::numbers::pi / 4)), 1e-12);
  EXPECT_EQ(s.fraction_at(1000), 0.0);
  EXPECT_EQ(s.fraction_at(2000), 0.0);
  EXPECT_FALSE(s.is_update_step(0));
  EXPECT_TRUE(s.is_update_step(100));
  EXPECT_FALSE(s.is_update_step(150));
  EXPECT_TRUE(s.is_update_step(900));
  EXPECT_FALSE(s.is_update_step(1000));
  EXPECT_THROW((CosineDropSchedule{0.0, 0, 10, 1}.validate()), Error);
}
