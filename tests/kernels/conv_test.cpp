// The oneDNN conv and linear kernels against the plain float reference (kernels/conv_ref.hpp), over
// kernel sizes, strides, paddings, channel counts, both activation layouts, odd spatial sizes and
// batches of 1 and 5.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "kernels/conv_dnnl.hpp"
#include "kernels/conv_ref.hpp"
#include "kernels/linear_dnnl.hpp"

using namespace trainer;

namespace {

Tensor random_tensor(const Shape& shape, Layout layout, Rng& rng) {
  Tensor t(shape, Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(2 * rng.uniform() - 1);
  return t.to_layout(layout);
}

std::vector<float> plain_values(const Tensor& t) {
  const Tensor p = t.to_layout(Layout::plain);
  return std::vector<float>(p.data(), p.data() + p.numel());
}

// Every element within 1e-4 of the reference, relative to the reference's largest magnitude.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float scale = 1.0f;
  for (float v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-4f * scale) << what << " element " << i;
}

// Channel padding of a blocked tensor must stay zero.
void expect_zero_padding(const Tensor& t, const std::string& what) {
  if (t.layout() != Layout::nChw16c || t.dim(1) % 16 == 0) return;
  const int64_t N = t.dim(0), C = t.dim(1), H = t.dim(2), W = t.dim(3), CB = (C + 15) / 16;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t hw = 0; hw < H * W; ++hw)
      for (int64_t c = C; c < CB * 16; ++c)
        ASSERT_EQ(t.data()[((n * CB + CB - 1) * H * W + hw) * 16 + c % 16], 0.0f) << what << " channel " << c;
}

struct ConvCase {
  int64_t N, C, H, W, K, R, stride, pad;
  bool bias;
  Layout layout;
};

std::string describe(const ConvCase& c) {
  return fmt::format("N{} C{} {}x{} K{} R{} s{} p{}{} {}", c.N, c.C, c.H, c.W, c.K, c.R, c.stride, c.pad,
                     c.bias ? " bias" : "", layout_name(c.layout));
}

// Runs ff, wg and bp through `conv` (which may already hold primitives for other geometries) and
// compares each with the reference.
void check_conv(ConvDnnl& conv, const ConvCase& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  Rng rng(seed);
  const ConvGeom g{c.N, c.C, c.H, c.W, c.K, c.R, c.R, c.stride, c.pad};
  const Tensor x = random_tensor({c.N, c.C, c.H, c.W}, c.layout, rng);
  const Tensor w = random_tensor({c.K, c.C, c.R, c.R}, Layout::plain, rng);
  const Tensor b = random_tensor({c.K}, Layout::plain, rng);
  const Tensor dy = random_tensor({c.N, c.K, g.P(), g.Q()}, conv.y_layout(), rng);

  Tensor y, dx, dw, db;
  conv.ff(x, w, c.bias ? &b : nullptr, y);
  conv.wg(x, dy, dw, c.bias ? &db : nullptr);
  conv.bp(x, dy, w, dx);

  const std::vector<float> xp = plain_values(x), dyp = plain_values(dy);
  std::vector<float> y_ref(static_cast<size_t>(c.N * c.K * g.P() * g.Q())), dx_ref(xp.size()),
      dw_ref(static_cast<size_t>(w.numel())), db_ref(static_cast<size_t>(c.K));
  conv2d_ff_ref<float>(g, xp.data(), w.data(), c.bias ? b.data() : nullptr, y_ref.data());
  conv2d_bp_ref<float>(g, dyp.data(), w.data(), dx_ref.data());
  conv2d_wg_ref<float>(g, xp.data(), dyp.data(), dw_ref.data(), db_ref.data());

  ASSERT_EQ(y.shape(), (Shape{c.N, c.K, g.P(), g.Q()}));
  EXPECT_EQ(y.layout(), c.K % 16 == 0 ? Layout::nChw16c : Layout::plain);
  EXPECT_EQ(dx.shape(), x.shape());
  EXPECT_EQ(dx.layout(), x.layout());
  expect_close(plain_values(y), y_ref, "y");
  expect_close(plain_values(dx), dx_ref, "dx");
  expect_close(plain_values(dw), dw_ref, "dw");
  if (c.bias) expect_close(plain_values(db), db_ref, "db");
  expect_zero_padding(dx, "dx");
}

}  // namespace

TEST(ConvDnnl, MatchesReferenceAcrossShapesAndLayouts) {
  const Layout P = Layout::plain, B = Layout::nChw16c;
  const std::vector<ConvCase> cases = {
      // N, C,  H,  W,  K, R, stride, pad, bias, x layout
      {1, 1, 9, 11, 16, 3, 1, 1, true, P},  // first layer of a grey-scale model
      {5, 3, 13, 13, 16, 3, 2, 1, false, P},
      {5, 16, 7, 9, 16, 3, 1, 1, true, B},     // the common residual-block conv
      {5, 16, 15, 15, 32, 1, 2, 0, false, B},  // 1x1 strided shortcut
      {1, 32, 9, 9, 32, 5, 1, 2, true, B},
      {5, 6, 11, 11, 16, 5, 1, 0, false, P},  // LeNet-5's second conv
      {5, 1, 12, 12, 6, 5, 1, 2, true, P},    // LeNet-5's first conv: plain in and out
      {1, 3, 15, 15, 16, 7, 2, 2, false, P},  // ResNet-18's stem
      {5, 6, 9, 9, 16, 3, 1, 1, false, B},    // blocked input with padding channels
      {5, 32, 7, 7, 6, 3, 2, 1, true, B},     // blocked in, plain out
      {5, 32, 9, 9, 16, 3, 1, 1, false, P},   // plain input with many channels
      {1, 16, 5, 5, 16, 7, 1, 1, false, B},   // kernel exactly as large as the padded input
      {5, 16, 8, 8, 16, 3, 2, 0, false, B},
  };
  uint64_t seed = 1;
  for (const ConvCase& c : cases) {
    ConvDnnl conv(c.C, c.K, c.R, c.R, c.stride, c.pad, c.bias);
    check_conv(conv, c, seed++);
  }
}

TEST(ConvDnnl, CachedPrimitivesServeEachGeometry) {
  // One layer sees the training batch, the smaller last batch, and both layouts; each must still be
  // right when it comes back.
  ConvDnnl conv(16, 16, 3, 3, 1, 1, true);
  const Layout P = Layout::plain, B = Layout::nChw16c;
  check_conv(conv, {5, 16, 7, 7, 16, 3, 1, 1, true, B}, 100);
  check_conv(conv, {2, 16, 7, 7, 16, 3, 1, 1, true, B}, 101);
  check_conv(conv, {2, 16, 7, 7, 16, 3, 1, 1, true, P}, 102);
  check_conv(conv, {5, 16, 7, 7, 16, 3, 1, 1, true, B}, 103);
  check_conv(conv, {1, 16, 9, 5, 16, 3, 1, 1, true, B}, 104);
}

TEST(ConvDnnl, BpUsesCurrentWeightsAfterAnotherGeometry) {
  // ff on geometry A, ff on B with new weights, then bp on A: the copy A's ff reordered is stale.
  for (auto [C, K] : {std::pair<int64_t, int64_t>{16, 16}, {1, 6}}) {
    ConvDnnl conv(C, K, 3, 3, 1, 1, false);
    Rng rng(7);
    const Layout l = C % 16 == 0 ? Layout::nChw16c : Layout::plain;
    const Tensor xa = random_tensor({3, C, 6, 6}, l, rng), xb = random_tensor({2, C, 6, 6}, l, rng);
    const Tensor w1 = random_tensor({K, C, 3, 3}, Layout::plain, rng);
    Tensor w = random_tensor({K, C, 3, 3}, Layout::plain, rng);
    Tensor y, dx;
    conv.ff(xa, w1, nullptr, y);
    conv.ff(xb, w, nullptr, y);
    const Tensor dy = random_tensor({3, K, 6, 6}, conv.y_layout(), rng);
    conv.bp(xa, dy, w, dx);
    const ConvGeom g{3, C, 6, 6, K, 3, 3, 1, 1};
    std::vector<float> dx_ref(static_cast<size_t>(xa.numel()));
    const std::vector<float> dyp = plain_values(dy);
    conv2d_bp_ref<float>(g, dyp.data(), w.data(), dx_ref.data());
    expect_close(plain_values(dx), dx_ref, "dx");
  }
}

TEST(ConvDnnl, RepeatedPhasesAreBitwiseIdentical) {
  // Same thread count, same inputs: the same bits (wg reduces over the batch across threads).
  ConvDnnl conv(16, 32, 3, 3, 1, 1, true);
  Rng rng(9);
  const Tensor x = random_tensor({8, 16, 10, 10}, Layout::nChw16c, rng);
  const Tensor w = random_tensor({32, 16, 3, 3}, Layout::plain, rng),
               b = random_tensor({32}, Layout::plain, rng);
  const Tensor dy = random_tensor({8, 32, 10, 10}, Layout::nChw16c, rng);
  Tensor y[2], dx[2], dw[2], db[2];
  for (int i = 0; i < 2; ++i) {
    conv.ff(x, w, &b, y[i]);
    conv.wg(x, dy, dw[i], &db[i]);
    conv.bp(x, dy, w, dx[i]);
  }
  for (auto* pair : {y, dx, dw, db})
    for (int64_t i = 0; i < pair[0].storage_size(); ++i) ASSERT_EQ(pair[0].data()[i], pair[1].data()[i]) << i;
}

TEST(ConvDnnl, PicksOptimisedKernelsForTheCommonShapes) {
  // Regression guard: oneDNN's reference kernels are orders of magnitude slower.
  Rng rng(3);
  struct Shape4 {
    int64_t C, K, R, stride, pad;
    Layout layout;
  };
  for (const Shape4& s : {Shape4{16, 16, 3, 1, 1, Layout::nChw16c}, Shape4{16, 32, 3, 2, 1, Layout::nChw16c},
                          Shape4{16, 32, 1, 2, 0, Layout::nChw16c}, Shape4{3, 16, 3, 1, 1, Layout::plain},
                          Shape4{6, 16, 5, 1, 0, Layout::plain}}) {
    ConvDnnl conv(s.C, s.K, s.R, s.R, s.stride, s.pad, false);
    const Tensor x = random_tensor({8, s.C, 12, 12}, s.layout, rng);
    const std::string impl = conv.implementations(x);
    EXPECT_EQ(impl.find("ref"), std::string::npos) << impl;
  }
}

TEST(ConvDnnl, RejectsMismatchedOperands) {
  ConvDnnl conv(16, 16, 3, 3, 1, 1, false);
  Tensor y;
  EXPECT_THROW(conv.ff(Tensor({2, 8, 5, 5}), Tensor({16, 16, 3, 3}), nullptr, y), Error);
  EXPECT_THROW(conv.ff(Tensor({2, 16, 5, 5}), Tensor({16, 8, 3, 3}), nullptr, y), Error);
  Tensor b({16});
  EXPECT_THROW(conv.ff(Tensor({2, 16, 5, 5}), Tensor({16, 16, 3, 3}), &b, y), Error);
  ConvDnnl big(4, 4, 7, 7, 1, 0, false);
  EXPECT_THROW(big.ff(Tensor({1, 4, 5, 5}), Tensor({4, 4, 7, 7}), nullptr, y), Error);
}

TEST(LinearDnnl, MatchesReference) {
  struct Case {
    int64_t N, I, O;
    bool bias;
  };
  Rng rng(11);
  for (const Case& c : {Case{1, 7, 3, true}, Case{5, 64, 10, true}, Case{5, 400, 120, false},
                        Case{128, 33, 17, true}, Case{5, 16, 16, false}}) {
    SCOPED_TRACE(fmt::format("N{} in{} out{}", c.N, c.I, c.O));
    LinearDnnl fc(c.I, c.O, c.bias);
    const Tensor x = random_tensor({c.N, c.I}, Layout::plain, rng);
    const Tensor w = random_tensor({c.O, c.I}, Layout::plain, rng);
    const Tensor b = random_tensor({c.O}, Layout::plain, rng);
    const Tensor dy = random_tensor({c.N, c.O}, Layout::plain, rng);
    Tensor y, dx, dw, db;
    // Twice, with a smaller batch in between, as the last batch of an epoch does.
    for (int pass = 0; pass < 2; ++pass) {
      fc.ff(x, w, c.bias ? &b : nullptr, y);
      fc.wg(x, dy, dw, c.bias ? &db : nullptr);
      fc.bp(dy, w, dx);
      std::vector<float> y_ref(static_cast<size_t>(c.N * c.O)), dx_ref(static_cast<size_t>(c.N * c.I)),
          dw_ref(static_cast<size_t>(c.O * c.I)), db_ref(static_cast<size_t>(c.O));
      linear_ff_ref<float>(c.N, c.I, c.O, x.data(), w.data(), c.bias ? b.data() : nullptr, y_ref.data());
      linear_bp_ref<float>(c.N, c.I, c.O, dy.data(), w.data(), dx_ref.data());
      linear_wg_ref<float>(c.N, c.I, c.O, x.data(), dy.data(), dw_ref.data(), db_ref.data());
      expect_close(plain_values(y), y_ref, "y");
      expect_close(plain_values(dx), dx_ref, "dx");
      expect_close(plain_values(dw), dw_ref, "dw");
      if (c.bias) expect_close(plain_values(db), db_ref, "db");
      if (pass == 0) {
        Tensor ys;
        fc.ff(Tensor({1, c.I}), w, c.bias ? &b : nullptr, ys);
        EXPECT_EQ(ys.shape(), (Shape{1, c.O}));
      }
    }
  }
}

TEST(LinearDnnl, RejectsMismatchedOperands) {
  LinearDnnl fc(8, 4, true);
  Tensor y, b({4});
  EXPECT_THROW(fc.ff(Tensor({2, 7}), Tensor({4, 8}), &b, y), Error);
  EXPECT_THROW(fc.ff(Tensor({2, 8}), Tensor({4, 8}), nullptr, y), Error);
  EXPECT_THROW(fc.ff(Tensor({2, 8, 1, 1}), Tensor({4, 8}), &b, y), Error);
}
