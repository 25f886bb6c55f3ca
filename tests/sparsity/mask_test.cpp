#include "sparsity/mask.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "core/rng.hpp"

using namespace trainer;

namespace {

Mask random_mask(const Shape& shape, double keep, uint64_t seed) {
  Mask m(shape);
  Rng rng(seed);
  for (int64_t i = 0; i < m.size(); ++i) m.set(i, rng.uniform() < keep);
  return m;
}

}  // namespace

TEST(Mask, StartsDenseAndCounts) {
  Mask m({4, 3, 3, 3});
  EXPECT_EQ(m.size(), 108);
  EXPECT_EQ(m.count_kept(), 108);
  EXPECT_DOUBLE_EQ(m.density(), 1.0);
  m.set(0, false);
  m.set(107, false);
  m.set(50, false);
  EXPECT_EQ(m.count_pruned(), 3);
  EXPECT_DOUBLE_EQ(m.sparsity(), 3.0 / 108.0);
  m.fill(false);
  EXPECT_EQ(m.count_kept(), 0);
}

TEST(Mask, ApplyZeroesExactlyThePrunedWeightsEvenNaN) {
  Tensor w({2, 5});
  for (int64_t i = 0; i < 10; ++i) w.data()[i] = static_cast<float>(i + 1);
  w.data()[3] = std::numeric_limits<float>::quiet_NaN();
  Mask m({2, 5});
  m.set(3, false);
  m.set(7, false);
  m.apply(w);
  for (int64_t i = 0; i < 10; ++i) {
    if (i == 3 || i == 7)
      EXPECT_EQ(w.data()[i], 0.0f) << i;
    else
      EXPECT_EQ(w.data()[i], static_cast<float>(i + 1)) << i;
  }
  Tensor wrong({3, 5});
  EXPECT_THROW(m.apply(wrong), Error);
}

TEST(Mask, BytesRoundTripOnOddSizes) {
  for (const Shape& shape : {Shape{3, 5, 3, 3}, Shape{1}, Shape{10, 7}, Shape{64, 64}}) {
    const Mask m = random_mask(shape, 0.3, 42 + static_cast<uint64_t>(shape[0]));
    const std::vector<uint8_t> bytes = m.to_bytes();
    const Mask back = Mask::from_bytes(bytes);
    EXPECT_EQ(back, m) << shape_str(shape);
    EXPECT_EQ(back.shape(), shape);
  }
}

TEST(Mask, CorruptBytesFailLoudly) {
  const Mask m = random_mask({9, 9}, 0.5, 7);
  std::vector<uint8_t> bytes = m.to_bytes();
  std::vector<uint8_t> truncated(bytes.begin(), bytes.end() - 1);
  EXPECT_THROW(Mask::from_bytes(truncated, "mask of conv1"), Error);
  try {
    Mask::from_bytes(truncated, "mask of conv1");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("conv1"), std::string::npos);
  }
  std::vector<uint8_t> trailing = bytes;
  trailing.push_back(0);
  EXPECT_THROW(Mask::from_bytes(trailing), Error);
  EXPECT_THROW(Mask::from_bytes({}), Error);
}

TEST(Mask, SubsetAndBitmap) {
  Mask a({20}), b({20});
  a.set(3, false);
  EXPECT_TRUE(a.is_subset_of(b));
  EXPECT_FALSE(b.is_subset_of(a));
  const Bitmap bm = a.to_bitmap();
  EXPECT_EQ(bm.count(), 19);
  EXPECT_FALSE(bm.test(3));
  EXPECT_TRUE(bm.test(4));
}

// Under a magnitude mask, WG is masked, and an SGD step with momentum and weight decay (written out here as
// torch.optim.SGD computes it) must leave the pruned weights at exactly zero.
TEST(Mask, MaskedGradientKeepsPrunedWeightsAtZeroThroughSgd) {
  const Shape shape{8, 4, 3, 3};
  const Mask m = random_mask(shape, 0.2, 3);
  Tensor w(shape), g(shape), buf(shape);
  Rng rng(11);
  for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = static_cast<float>(rng.normal());
  m.apply(w);
  const float lr = 0.1f, mom = 0.9f, wd = 5e-4f;
  for (int step = 0; step < 5; ++step) {
    for (int64_t i = 0; i < g.numel(); ++i) g.data()[i] = static_cast<float>(rng.normal());
    mask_gradient(m, g);
    for (int64_t i = 0; i < w.numel(); ++i) {
      const float gi = g.data()[i] + wd * w.data()[i];
      buf.data()[i] = step == 0 ? gi : mom * buf.data()[i] + gi;
      w.data()[i] -= lr * buf.data()[i];
    }
  }
  int64_t moved = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    if (!m.kept(i))
      ASSERT_EQ(w.data()[i], 0.0f) << i;
    else
      moved += w.data()[i] != 0.0f;
  }
  EXPECT_EQ(moved, m.count_kept());
}

TEST(Mask, PickByMagnitudeIsDeterministicOnTies) {
  const float v[8] = {0.5f, -0.1f, 0.1f, 2.0f, -2.0f, 0.1f, 3.0f, std::numeric_limits<float>::quiet_NaN()};
  std::vector<int64_t> c = {0, 1, 2, 3, 4, 5, 6, 7};
  pick_by_magnitude(c, v, 2, /*largest=*/false);
  std::sort(c.begin(), c.begin() + 2);
  EXPECT_EQ(c[0], 1);
  EXPECT_EQ(c[1], 2);  // 0.1 at 2 and at 5: the lower index wins
  c = {0, 1, 2, 3, 4, 5, 6, 7};
  pick_by_magnitude(c, v, 3, /*largest=*/true);
  std::sort(c.begin(), c.begin() + 3);
  EXPECT_EQ(c[0], 3);  // |2.0| at 3 and 4: 3 wins; NaN (7) counts as largest, then 6 (3.0)
  EXPECT_EQ(c[1], 6);
  EXPECT_EQ(c[2], 7);
}
