// The analysis stage against brute force: effectual MACs and the nonzeros of every operand line, for
// ff, bp and wg of small convolutions (strided, padded, 1x1) and a linear layer.
#include "chip/workload.hpp"

#include <gtest/gtest.h>

#include "chip_test_util.hpp"
#include "core/error.hpp"

namespace trainer {
namespace {

using testing::conv_op;
using testing::ConvShape;

struct Brute {
  double effectual = 0, valid = 0;
  std::vector<int32_t> a, b;
};

// Direct loops over every product (n, k, p, q, c, r, s) of the convolution.
Brute brute_force(const Op& op, const ConvShape& s) {
  const int64_t P = s.P(), Q = s.Q();
  auto bit = [](const std::shared_ptr<const Bitmap>& m, int64_t i) { return m ? m->test(i) : true; };
  auto xi = [&](int64_t n, int64_t c, int64_t h, int64_t w) { return ((n * s.C + c) * s.H + h) * s.W + w; };
  auto wi = [&](int64_t k, int64_t c, int64_t r, int64_t q) { return ((k * s.C + c) * s.R + r) * s.S + q; };
  auto yi = [&](int64_t n, int64_t k, int64_t p, int64_t q) { return ((n * s.K + k) * P + p) * Q + q; };
  Brute out;
  if (op.phase == Phase::ff) out.a.assign(s.N * P * Q, 0), out.b.assign(s.K, 0);
  if (op.phase == Phase::bp) out.a.assign(s.N * s.H * s.W, 0), out.b.assign(s.C, 0);
  if (op.phase == Phase::wg) out.a.assign(s.C * s.R * s.S, 0), out.b.assign(s.K, 0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t p = 0; p < P; ++p)
        for (int64_t q = 0; q < Q; ++q)
          for (int64_t c = 0; c < s.C; ++c)
            for (int64_t r = 0; r < s.R; ++r)
              for (int64_t t = 0; t < s.S; ++t) {
                const int64_t h = p * s.stride + r - s.pad, w = q * s.stride + t - s.pad;
                if (h < 0 || h >= s.H || w < 0 || w >= s.W) continue;
                out.valid += 1;
                const bool xv = bit(op.x_nz, xi(n, c, h, w)), wv = bit(op.w_nz, wi(k, c, r, t)),
                           dv = bit(op.dy_nz, yi(n, k, p, q));
                if (op.phase == Phase::ff) {
                  out.effectual += xv && wv;
                  if (k == 0) out.a[(n * P + p) * Q + q] += xv;  // each x of the field once
                } else if (op.phase == Phase::bp) {
                  out.effectual += dv && wv;
                  if (c == 0) out.a[(n * s.H + h) * s.W + w] += dv;
                } else {
                  out.effectual += xv && dv;
                  if (k == 0) out.a[(c * s.R + r) * s.S + t] += xv;
                }
              }
  // Lines of b cover the whole reduction (structural holes included).
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t r = 0; r < s.R; ++r)
        for (int64_t t = 0; t < s.S; ++t) {
          if (op.phase == Phase::ff) out.b[k] += bit(op.w_nz, wi(k, c, r, t));
          if (op.phase == Phase::bp) out.b[c] += bit(op.w_nz, wi(k, c, r, t));
        }
  if (op.phase == Phase::wg)
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t k = 0; k < s.K; ++k)
        for (int64_t p = 0; p < P; ++p)
          for (int64_t q = 0; q < Q; ++q) out.b[k] += bit(op.dy_nz, yi(n, k, p, q));
  return out;
}

class WorkloadVsBrute : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};

TEST_P(WorkloadVsBrute, AllPhases) {
  const auto [R, stride, pad, H] = GetParam();
  ConvShape s;
  s.N = 3, s.C = 5, s.H = H, s.W = H + 1, s.K = 7, s.R = R, s.S = R, s.stride = stride, s.pad = pad;
  uint64_t seed = 11;
  for (Phase phase : {Phase::ff, Phase::bp, Phase::wg}) {
    const Op op = conv_op(s, phase, 0.4, 0.3, 0.5, seed++);
    const ConvWork w = analyse_exact(op);
    const Brute b = brute_force(op, s);
    SCOPED_TRACE(phase_name(phase));
    EXPECT_EQ(w.effectual_macs, b.effectual);
    EXPECT_EQ(w.valid_macs, b.valid);
    EXPECT_EQ(w.dense_macs, static_cast<double>(op.dense_macs));
    EXPECT_EQ(w.a_line_nnz, b.a);
    EXPECT_EQ(w.b_line_nnz, b.b);
    ASSERT_EQ(w.a_line_len.size(), w.a_line_nnz.size());
    for (size_t i = 0; i < w.a_line_len.size(); ++i) ASSERT_LE(w.a_line_nnz[i], w.a_line_len[i]);
    // The lines of a dense operand are exactly their structural lengths.
    Op dense = op;
    dense.x_nz = dense.w_nz = dense.dy_nz = nullptr;
    const ConvWork wd = analyse_exact(dense);
    EXPECT_EQ(wd.a_line_nnz, wd.a_line_len);
    EXPECT_EQ(wd.effectual_macs, wd.valid_macs);
    // Statistical analysis: same shapes, expected effectual products at the maps' densities.
    const ConvWork st = analyse_statistical(op);
    EXPECT_EQ(st.a_line_len, w.a_line_len);
    EXPECT_EQ(st.a_nnz, w.a_nnz);
    EXPECT_NEAR(st.effectual_macs, w.valid_macs * w.a_density() * w.b_density(), 1e-9);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, WorkloadVsBrute,
                         ::testing::Values(std::make_tuple(3, 1, 1, 6), std::make_tuple(3, 2, 1, 7),
                                           std::make_tuple(1, 2, 0, 6), std::make_tuple(5, 1, 2, 5),
                                           std::make_tuple(3, 1, 0, 5), std::make_tuple(2, 2, 0, 8)));

TEST(Workload, LinearLayer) {
  // linear: x [N, C] -> y [N, K] is a 1x1 convolution over 1x1 maps.
  Op op;
  op.layer_name = "fc";
  op.kind = "linear";
  op.phase = Phase::ff;
  op.x_shape = {4, 70, 1, 1};
  op.w_shape = {10, 70, 1, 1};
  op.y_shape = {4, 10, 1, 1};
  op.x_nz = testing::random_map({4, 70}, 0.5, 1);
  op.w_nz = testing::random_map({10, 70}, 0.2, 2);
  const ConvWork w = analyse_exact(op);
  double eff = 0;
  for (int n = 0; n < 4; ++n)
    for (int k = 0; k < 10; ++k)
      for (int c = 0; c < 70; ++c) eff += op.x_nz->test(n * 70 + c) && op.w_nz->test(k * 70 + c);
  EXPECT_EQ(w.effectual_macs, eff);
  EXPECT_EQ(w.rows, 4);
  EXPECT_EQ(w.cols, 10);
  EXPECT_EQ(w.reduction, 70);
}

TEST(Workload, BitHelpers) {
  Bitmap b(Shape{300});
  Rng rng(5);
  for (int i = 0; i < 300; ++i)
    if (rng.uniform() < 0.5) b.set(i);
  for (int begin : {0, 1, 63, 64, 65, 130})
    for (int len : {0, 1, 9, 63, 64, 65, 128, 150}) {
      if (begin + len > 300) continue;
      int64_t n = 0;
      std::vector<int32_t> c(len, 0), expect(len, 0);
      for (int i = 0; i < len; ++i) n += b.test(begin + i), expect[i] = b.test(begin + i);
      EXPECT_EQ(popcount_range(b.words(), begin, begin + len), n) << begin << "+" << len;
      accumulate_bits(b.words(), begin, len, c.data());
      EXPECT_EQ(c, expect) << begin << "+" << len;
    }
}

TEST(Workload, BadShapesAreNamed) {
  ConvShape s;
  Op op = conv_op(s, Phase::ff, 0.5, 0.5, 0.5, 1, "stage1.conv");
  op.y_shape[2] = 9;
  try {
    analyse_exact(op);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stage1.conv"), std::string::npos) << e.what();
  }
  op = conv_op(s, Phase::ff, 0.5, 0.5, 0.5, 1, "stage1.conv");
  op.x_nz = testing::random_map({1, 2, 3}, 0.5, 3);
  EXPECT_THROW(analyse_exact(op), Error);
}

}  // namespace
}  // namespace trainer
