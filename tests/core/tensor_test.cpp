#include <gtest/gtest.h>

#include <limits>

#include "core/bitmap.hpp"
#include "core/error.hpp"
#include "core/tensor.hpp"

using namespace trainer;

TEST(Tensor, BlockedLayoutRoundTripsAndPadsWithZero) {
  Tensor t({2, 20, 3, 5});
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t c = 0; c < 20; ++c)
      for (int64_t h = 0; h < 3; ++h)
        for (int64_t w = 0; w < 5; ++w) t.at(n, c, h, w) = static_cast<float>(((n * 20 + c) * 3 + h) * 5 + w);
  Tensor b = t.to_layout(Layout::nChw16c);
  EXPECT_EQ(b.storage_size(), 2 * 32 * 3 * 5);
  EXPECT_EQ(b.at(1, 17, 2, 4), t.at(1, 17, 2, 4));
  // Channels 20..31 of the second block are padding.
  for (int64_t i = 0; i < b.storage_size(); ++i)
    if ((i % 16) >= 4 && ((i / (16 * 15)) % 2) == 1) {
      ASSERT_EQ(b.data()[i], 0.0f) << i;
    }
  Tensor back = b.to_layout(Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(back.data()[i], t.data()[i]);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
}

TEST(Tensor, ShapeChecksFailLoudly) {
  Tensor t({2, 3});
  EXPECT_THROW(check_shape(t, {3, 2}, "logits"), Error);
  EXPECT_THROW(Tensor({2, 3}, Layout::nChw16c), Error);
  EXPECT_THROW(t.reshaped({7}), Error);
  try {
    check_shape(t, {3, 2}, "logits");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("logits"), std::string::npos);
  }
}

TEST(Tensor, ImageBlockedLayoutRoundTrips) {
  Tensor t({19, 3, 2, 2});
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(i + 1);
  Tensor b = t.to_layout(Layout::NCHW16n);
  EXPECT_EQ(b.storage_size(), 32 * 3 * 2 * 2);
  EXPECT_EQ(b.data()[16 * ((1 * 2 + 1) * 2 + 0) + 5], t.at(5, 1, 1, 0));
  EXPECT_EQ(b.at(18, 2, 1, 1), t.at(18, 2, 1, 1));
  int64_t zeros = 0;
  for (int64_t i = 0; i < b.storage_size(); ++i) zeros += b.data()[i] == 0.0f;
  EXPECT_EQ(zeros, 13 * 3 * 2 * 2);  // images 19..31 of the second block are padding
  Tensor back = b.to_layout(Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(back.data()[i], t.data()[i]);
}

namespace trainer {
namespace {

// Between the two blocked layouts directly (the dense-kernel fallback of sparse training), on a tensor
// large enough for the threaded path, with partial blocks of both images and channels.
TEST(Tensor, BlockedLayoutsConvertIntoEachOther) {
  Tensor t({37, 21, 11, 13});
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(i % 1009 + 1);
  const Tensor a = t.to_layout(Layout::nChw16c);
  const Tensor b = a.to_layout(Layout::NCHW16n);
  const Tensor c = b.to_layout(Layout::nChw16c);
  for (int64_t n = 0; n < 37; n += 3)
    for (int64_t ch = 0; ch < 21; ++ch) {
      ASSERT_EQ(b.at(n, ch, 10, 12), t.at(n, ch, 10, 12));
      ASSERT_EQ(b.at(n, ch, 3, 0), t.at(n, ch, 3, 0));
    }
  ASSERT_EQ(c.storage_size(), a.storage_size());
  for (int64_t i = 0; i < a.storage_size(); ++i) ASSERT_EQ(c.data()[i], a.data()[i]) << i;  // padding too
  int64_t zeros = 0;
  for (int64_t i = 0; i < b.storage_size(); ++i) zeros += b.data()[i] == 0.0f;
  EXPECT_EQ(zeros, (48 - 37) * 21 * 11 * 13);  // only the padding images
  const Tensor back = b.to_layout(Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(back.data()[i], t.data()[i]);
}

// The nonzero map of a tensor is in logical order whatever its layout (threaded and serial paths).
TEST(Bitmap, NonzerosAreTheSameInEveryLayout) {
  for (const Shape& shape : {Shape{37, 16, 4, 4}, Shape{19, 5, 3, 7}, Shape{33, 3, 9, 9}, Shape{20, 18, 28, 28}}) {
    Tensor t(shape);
    // Zeros, negative zeros (zero), NaNs (nonzero) and ordinary values.
    for (int64_t i = 0; i < t.numel(); ++i)
      t.data()[i] = (i * 7919) % 3 == 0 ? 0.0f
                    : i % 13 == 0        ? -0.0f
                    : i % 101 == 0       ? std::numeric_limits<float>::quiet_NaN()
                                         : 1.0f + i % 5;
    const Bitmap want = Bitmap::nonzeros_of(t);
    for (int64_t i = 0; i < t.numel(); ++i) ASSERT_EQ(want.test(i), t.data()[i] != 0.0f) << i;
    for (int64_t i = t.numel(); i < static_cast<int64_t>(want.words().size()) * 64; ++i)
      ASSERT_FALSE((want.words()[i >> 6] >> (i & 63)) & 1u) << "bit past the end " << i;
    EXPECT_EQ(want.count(), [&] {
      int64_t n = 0;
      for (int64_t i = 0; i < t.numel(); ++i) n += t.data()[i] != 0.0f;
      return n;
    }());
    for (Layout l : {Layout::nChw16c, Layout::NCHW16n}) {
      const Bitmap got = Bitmap::nonzeros_of(t.to_layout(l));
      ASSERT_EQ(got.size(), want.size());
      for (int64_t i = 0; i < want.size(); ++i) ASSERT_EQ(got.test(i), want.test(i)) << layout_name(l) << " " << i;
    }
  }
}

}  // namespace
}  // namespace trainer
