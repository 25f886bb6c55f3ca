// The sparse conv kernels (kernels/sparse_conv.hpp) against the dense reference (kernels/conv_ref.hpp,
// in double, on masked weights): random shapes, strides, paddings and kernel sizes, densities 0% to
// 100%, empty output channels, zero planes and all-zero tensors, the fused prologue / epilogue / output
// mask, both backends (AVX-512 and portable), every tile shape and slab size; plus the counters (exact
// values, and executed + skipped = dense) and determinism across thread counts.
#include "kernels/sparse_conv.hpp"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "kernels/conv_ref.hpp"
#include "kernels/eltwise.hpp"
#include "kernels/sparse_weights.hpp"

using namespace trainer;

namespace {

struct Case {
  int64_t N, C, H, W, K, R, S, stride, pad;
  double density;
};

std::string describe(const Case& c) {
  return "N" + std::to_string(c.N) + " C" + std::to_string(c.C) + " " + std::to_string(c.H) + "x" +
         std::to_string(c.W) + " K" + std::to_string(c.K) + " " + std::to_string(c.R) + "x" +
         std::to_string(c.S) + " s" + std::to_string(c.stride) + " p" + std::to_string(c.pad) + " d" +
         std::to_string(c.density);
}

ConvGeom geom_of(const Case& c) {
  ConvGeom g;
  g.N = c.N, g.C = c.C, g.H = c.H, g.W = c.W, g.K = c.K, g.R = c.R, g.S = c.S, g.stride = c.stride,
  g.pad = c.pad;
  return g;
}

Tensor random_plain(const Shape& shape, Rng& rng) {
  Tensor t(shape, Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(2 * rng.uniform() - 1);
  return t;
}

// Kept with probability `density`; output channel `empty_k` (if any) keeps nothing.
Tensor random_mask(const Shape& shape, double density, int64_t empty_k, Rng& rng) {
  Tensor m(shape, Layout::plain);
  const int64_t per_k = shape[1] * shape[2] * shape[3];
  for (int64_t i = 0; i < m.numel(); ++i)
    m.data()[i] = (i / per_k != empty_k && rng.uniform() < density) ? 1.0f : 0.0f;
  return m;
}

std::vector<double> to_double(const Tensor& plain) {
  return std::vector<double>(plain.data(), plain.data() + plain.numel());
}

std::vector<double> masked(const Tensor& w, const Tensor& m) {
  std::vector<double> out(static_cast<size_t>(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) out[i] = m.data()[i] != 0.0f ? w.data()[i] : 0.0;
  return out;
}

void expect_close(const Tensor& got_any, const std::vector<double>& want, const std::string& what) {
  const Tensor got = got_any.to_layout(Layout::plain);
  ASSERT_EQ(static_cast<size_t>(got.numel()), want.size()) << what;
  double scale = 1.0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got.data()[i], want[i], 2e-5 * scale) << what << " element " << i;
}

// The padding images of the last block of an NCHW16n tensor must hold zero.
void expect_zero_padding_images(const Tensor& t, const std::string& what) {
  ASSERT_EQ(t.layout(), Layout::NCHW16n);
  const int64_t N = t.dim(0), NB = (N + 15) / 16, plane = t.dim(1) * t.dim(2) * t.dim(3);
  if (N % 16 == 0) return;
  const float* last = t.data() + (NB - 1) * plane * 16;
  for (int64_t v = 0; v < plane; ++v)
    for (int64_t l = N % 16; l < 16; ++l)
      ASSERT_EQ(last[v * 16 + l], 0.0f) << what << " vector " << v << " lane " << l;
}

void expect_adds_up(const SparseCounters& c, const ConvGeom& g, const std::string& what) {
  EXPECT_EQ(c.dense_macs, g.macs()) << what;
  EXPECT_TRUE(c.adds_up()) << what << ": executed " << c.executed_macs << " + skipped " << c.skipped()
                           << " != dense " << c.dense_macs;
  EXPECT_GE(c.executed_macs, 0) << what;
}

// Zeroes the planes (n-block nb, channel c) listed, in a plain tensor [N, C, H, W].
void zero_planes(Tensor& t, const std::vector<std::pair<int64_t, int64_t>>& planes) {
  const int64_t N = t.dim(0), C = t.dim(1), HW = t.dim(2) * t.dim(3);
  for (auto [nb, c] : planes)
    for (int64_t n = nb * 16; n < std::min(N, nb * 16 + 16); ++n)
      std::fill(t.data() + (n * C + c) * HW, t.data() + (n * C + c + 1) * HW, 0.0f);
}

// Dense MACs of the multiplies whose (image block, channel) is listed, per output channel k: kept taps of
// (k, c) x real images x P*Q. `by_input` says whether the plane is an input channel c (else output k).
int64_t plane_macs(const ConvGeom& g, const Tensor& mask,
                   const std::vector<std::pair<int64_t, int64_t>>& planes, bool by_input) {
  int64_t total = 0;
  const int64_t RS = g.R * g.S;
  for (auto [nb, ch] : planes) {
    const int64_t n_real = std::min<int64_t>(16, g.N - nb * 16);
    int64_t kept = 0;
    for (int64_t k = 0; k < g.K; ++k)
      for (int64_t c = 0; c < g.C; ++c)
        if ((by_input ? c : k) == ch)
          for (int64_t rs = 0; rs < RS; ++rs) kept += mask.data()[(k * g.C + c) * RS + rs] != 0.0f;
    total += kept * n_real * g.P() * g.Q();
  }
  return total;
}

struct Run {
  SparseImpl impl = SparseImpl::best;
  SparseConvOptions opt;
};

// One case's operands and its dense reference results (computed once, checked against many options).
struct Prepared {
  Case cs;
  ConvGeom g;
  Tensor x, w, mask, dy, x16, dy16;
  SparseWeights sw;
  std::vector<double> y_ref, dx_ref, dw_ref, db_ref;

  Prepared(const Case& c, uint64_t seed) : cs(c), g(geom_of(c)) {
    Rng rng(seed);
    x = random_plain({g.N, g.C, g.H, g.W}, rng);
    w = random_plain({g.K, g.C, g.R, g.S}, rng);
    mask = random_mask(w.shape(), cs.density, g.K > 2 ? 1 : -1, rng);
    dy = random_plain({g.N, g.K, g.P(), g.Q()}, rng);
    x16 = x.to_layout(Layout::NCHW16n);
    dy16 = dy.to_layout(Layout::NCHW16n);
    sw.build(w, mask, g.stride, g.pad);
    const std::vector<double> wm = masked(w, mask), xd = to_double(x), dyd = to_double(dy);
    y_ref.resize(static_cast<size_t>(g.N * g.K * g.P() * g.Q()));
    conv2d_ff_ref<double>(g, xd.data(), wm.data(), nullptr, y_ref.data());
    dx_ref.resize(static_cast<size_t>(g.N * g.C * g.H * g.W));
    conv2d_bp_ref<double>(g, dyd.data(), wm.data(), dx_ref.data());
    // WG: the gradient at kept positions, zero at pruned ones.
    dw_ref.resize(static_cast<size_t>(w.numel()));
    db_ref.resize(static_cast<size_t>(g.K));
    conv2d_wg_ref<double>(g, xd.data(), dyd.data(), dw_ref.data(), db_ref.data());
    for (int64_t i = 0; i < w.numel(); ++i)
      if (mask.data()[i] == 0.0f) dw_ref[i] = 0.0;
  }
};

// FF, BP and WG of a prepared case against its reference, with the given options.
void check_prepared(const Prepared& pc, const SparseConvOptions& opt, const std::string& tag) {
  const ConvGeom& g = pc.g;
  const std::string what = tag + " " + describe(pc.cs);
  SparseConvScratch scratch;
  const int64_t kept = pc.sw.nnz();
  const int64_t pruned_macs = (pc.w.numel() - kept) * g.N * g.P() * g.Q();

  Tensor y;
  const SparseCounters cf = sparse_conv_ff(pc.x16, pc.sw, y, scratch, {}, {}, {}, opt);
  expect_close(y, pc.y_ref, "ff " + what);
  expect_zero_padding_images(y, "ff " + what);
  expect_adds_up(cf, g, "ff " + what);
  EXPECT_EQ(cf.skipped_pruned, pruned_macs) << what;
  EXPECT_EQ(cf.executed_macs, kept * g.N * g.P() * g.Q()) << what;

  Tensor dx;
  const SparseCounters cb = sparse_conv_bp(pc.dy16, pc.sw, pc.x.shape(), dx, scratch, opt);
  expect_close(dx, pc.dx_ref, "bp " + what);
  expect_zero_padding_images(dx, "bp " + what);
  expect_adds_up(cb, g, "bp " + what);
  EXPECT_EQ(cb.skipped_pruned, pruned_macs) << what;
  EXPECT_EQ(cb.executed_macs, kept * g.N * g.P() * g.Q()) << what;

  Tensor dw, db;
  const SparseCounters cw = sparse_conv_wg(pc.x16, pc.dy16, pc.sw, dw, &db, scratch, {}, opt);
  expect_close(dw, pc.dw_ref, "wg " + what);
  expect_close(db, pc.db_ref, "wg db " + what);
  expect_adds_up(cw, g, "wg " + what);
  EXPECT_EQ(cw.skipped_pruned, pruned_macs) << what;
  EXPECT_EQ(cw.executed_macs, kept * g.N * g.P() * g.Q()) << what;
}

// Both backends on one case.
void check_case(const Case& cs, uint64_t seed) {
  const Prepared pc(cs, seed);
  SparseConvOptions opt;
  check_prepared(pc, opt, "best");
  opt.impl = SparseImpl::scalar;
  check_prepared(pc, opt, "scalar");
}

SparseConvOptions with_impl(SparseImpl impl) {
  SparseConvOptions o;
  o.impl = impl;
  return o;
}

}  // namespace

TEST(SparseWeights, FormsHoldEveryKeptTapOnce) {
  Rng rng(3);
  const Tensor w = random_plain({6, 5, 3, 3}, rng);
  const Tensor m = random_mask(w.shape(), 0.4, 2, rng);
  for (int64_t stride : {1, 2}) {
    SparseWeights sw;
    sw.build(w, m, stride, 1);
    int64_t kept = 0;
    for (int64_t i = 0; i < m.numel(); ++i) kept += m.data()[i] != 0.0f;
    ASSERT_EQ(sw.nnz(), kept);
    EXPECT_EQ(sw.nnz_per_k()[2], 0);
    std::vector<int> seen_ff(static_cast<size_t>(w.numel())), seen_bp(static_cast<size_t>(w.numel()));
    for (int64_t e = 0; e < sw.nnz(); ++e) {
      ++seen_ff[sw.ff_src()[e]];
      ++seen_bp[sw.bp_src()[e]];
      EXPECT_EQ(sw.ff_val()[e], w.data()[sw.ff_src()[e]]);
      EXPECT_EQ(sw.bp_val()[e], w.data()[sw.bp_src()[e]]);
    }
    for (int64_t i = 0; i < w.numel(); ++i) {
      EXPECT_EQ(seen_ff[i], m.data()[i] != 0.0f ? 1 : 0);
      EXPECT_EQ(seen_bp[i], m.data()[i] != 0.0f ? 1 : 0);
    }
    // BP segments: (c, phase, k) holds exactly the taps of (k, c) in that phase.
    const int64_t K = 6, C = 5, NPH = stride * stride;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ph = 0; ph < NPH; ++ph)
        for (int64_t k = 0; k < K; ++k)
          for (int32_t e = sw.bp_ptr()[(c * NPH + ph) * K + k]; e < sw.bp_ptr()[(c * NPH + ph) * K + k + 1];
               ++e) {
            const int64_t src = sw.bp_src()[e], r = (src / 3) % 3, s = src % 3;
            EXPECT_EQ(src / 9, k * C + c);
            EXPECT_EQ(((r - 1) % stride + stride) % stride * stride + ((s - 1) % stride + stride) % stride,
                      ph);
          }
  }
}

TEST(SparseWeights, RepackTakesNewValuesKeepsStructure) {
  Rng rng(5);
  Tensor w = random_plain({4, 3, 3, 3}, rng);
  const Tensor m = random_mask(w.shape(), 0.5, -1, rng);
  SparseWeights sw;
  sw.build(w, m, 1, 1);
  const uint64_t v = sw.structure_version();
  for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] *= -3.0f;
  sw.repack(w);
  EXPECT_EQ(sw.structure_version(), v);
  for (int64_t e = 0; e < sw.nnz(); ++e) EXPECT_EQ(sw.ff_val()[e], w.data()[sw.ff_src()[e]]);
  SparseWeights nz;
  nz.build_from_nonzeros(w, 1, 1);  // every value nonzero: all kept
  EXPECT_EQ(nz.nnz(), w.numel());
}

// A regression: each build overload once had its own version counter, so two structures built by
// different overloads could share a version and a scratch reused between them kept stale tap offsets.
TEST(SparseWeights, EveryBuildGetsItsOwnVersionWhateverTheOverload) {
  Rng rng(11);
  Tensor w({16, 16, 3, 3});
  for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = static_cast<float>(rng.uniform() - 0.5);
  std::vector<uint8_t> keep(static_cast<size_t>(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) keep[i] = i % 5 == 0;
  SparseWeights full, part, nz;
  full.build(w, static_cast<const uint8_t*>(nullptr), 1, 1);
  part.build(w, keep.data(), 1, 1);
  nz.build_from_nonzeros(w, 1, 1);
  EXPECT_NE(full.structure_version(), part.structure_version());
  EXPECT_NE(full.structure_version(), nz.structure_version());
  EXPECT_NE(part.structure_version(), nz.structure_version());
  EXPECT_EQ(full.nnz(), w.numel());

  // One scratch, the sparse structure first, then the full one: the full WG equals the reference.
  Tensor x({16, 16, 6, 6}), dy({16, 16, 6, 6});
  for (Tensor* t : {&x, &dy})
    for (int64_t i = 0; i < t->numel(); ++i) t->data()[i] = static_cast<float>(rng.uniform() - 0.5);
  const Tensor x16 = x.to_layout(Layout::NCHW16n), dy16 = dy.to_layout(Layout::NCHW16n);
  const ConvGeom g{16, 16, 6, 6, 16, 3, 3, 1, 1};
  std::vector<double> xd(x.data(), x.data() + x.numel()), dyd(dy.data(), dy.data() + dy.numel());
  std::vector<double> dwd(static_cast<size_t>(w.numel()));
  conv2d_wg_ref<double>(g, xd.data(), dyd.data(), dwd.data(), nullptr);
  SparseConvScratch scratch;
  Tensor dw;
  sparse_conv_wg(x16, dy16, part, dw, nullptr, scratch);
  sparse_conv_wg(x16, dy16, full, dw, nullptr, scratch);
  for (int64_t i = 0; i < w.numel(); ++i)
    ASSERT_NEAR(dw.data()[i], dwd[i], 1e-4 * (1 + std::abs(dwd[i]))) << i;
}

TEST(SparseConv, MatchesReferenceOnRandomShapesAndDensities) {
  Rng pick(11);
  const double densities[] = {0.0, 0.05, 0.5, 1.0};
  int cases = 0;
  for (int rep = 0; rep < 6; ++rep) {
    for (double d : densities) {
      Case c;
      c.N = 1 + static_cast<int64_t>(pick.below(21));  // 1..21: one or two image blocks
      c.C = 1 + static_cast<int64_t>(pick.below(20));
      c.K = 1 + static_cast<int64_t>(pick.below(20));
      c.R = std::vector<int64_t>{1, 3, 3, 2, 5}[pick.below(5)];
      c.S = pick.below(4) == 0 ? std::vector<int64_t>{1, 3, 2}[pick.below(3)] : c.R;
      c.stride = 1 + static_cast<int64_t>(pick.below(2));
      c.pad = static_cast<int64_t>(pick.below(static_cast<uint64_t>(std::min(c.R, c.S))));
      c.H = std::max<int64_t>(c.R, 1 + static_cast<int64_t>(pick.below(11)));
      c.W = std::max<int64_t>(c.S, 1 + static_cast<int64_t>(pick.below(11)));
      c.density = d;
      check_case(c, 100 + cases);
      ++cases;
    }
  }
}

TEST(SparseConv, ResNetLikeShapesBothBackends) {
  const Case cases[] = {
      {32, 16, 12, 12, 16, 3, 3, 1, 1, 0.1},
      {20, 16, 12, 12, 32, 3, 3, 2, 1, 0.3},
      {16, 32, 6, 6, 32, 3, 3, 1, 1, 0.5},
      {17, 16, 8, 8, 32, 1, 1, 2, 0, 0.4},
      {16, 24, 4, 4, 40, 3, 3, 1, 1, 0.9},
      {33, 8, 9, 7, 12, 3, 3, 2, 1, 1.0},
      // WG in groups of 8 channels (30% kept, many tiles per band), with a last group of 4.
      {16, 20, 14, 14, 16, 3, 3, 1, 1, 0.3},
      // A strided WG on an output 17 wide: 1x8 tiles and a column left over.
      {18, 16, 34, 34, 16, 3, 3, 2, 1, 0.3},
  };
  int i = 0;
  for (const Case& c : cases) check_case(c, 200 + i++);
}

TEST(SparseConv, EveryTileShapeChannelGroupAndBand) {
  const Case cases[] = {{18, 20, 11, 13, 9, 3, 3, 1, 1, 0.5},
                        {18, 20, 11, 13, 9, 3, 3, 2, 1, 0.5},
                        {5, 7, 9, 10, 6, 3, 3, 3, 1, 0.6},
                        {5, 7, 9, 10, 6, 5, 5, 1, 2, 0.3}};
  int i = 0;
  for (const Case& c : cases) {
    const Prepared pc(c, 300 + i++);
    for (int tile : {1, 2, 3, 4, 5, 6, 7, 8})
      for (int cgroup : {0, 3})
        for (int band : {0, 1, 3}) {
          SparseConvOptions o;
          o.tile = tile, o.channel_group = cgroup, o.band_rows = band, o.stream_output = band % 2;
          o.shared_slabs = cgroup ? 1 : 0;
          o.split_images = tile % 2 ? 1 : 0;
          check_prepared(pc, o,
                         "tile" + std::to_string(tile) + " cg" + std::to_string(cgroup) + " band" +
                             std::to_string(band));
        }
  }
}

// The default tile is the 2x8 where its slab region fits the L1 data cache (the 4x4 where it fits twice
// the L1), else the one-row tile of that width; 1x7 and the strided 1x8 whatever the cache (their narrower
// alternatives were slower).
TEST(SparseConv, DefaultTileFitsTheL1) {
  const int64_t k32 = 32 << 10, k48 = 48 << 10;
  // 16 channels, 3x3 taps: 2x8 reads 4 x 10 positions (40 KiB), 1x8 3 x 10 (30 KiB).
  EXPECT_EQ(sparse_conv_default_tile(32, 1, 16, 3, 3, false, k48), 1);
  EXPECT_EQ(sparse_conv_default_tile(32, 1, 16, 3, 3, false, k32), 3);
  EXPECT_EQ(sparse_conv_default_tile(8, 1, 8, 3, 3, false, k32), 1);  // 8 channels: 20 KiB
  // 4x4 reads 6 x 6 (36 KiB) at stride 1, 9 x 9 (81 KiB) at stride 2; it gives way past twice the L1.
  EXPECT_EQ(sparse_conv_default_tile(4, 1, 16, 3, 3, false, k32), 4);
  EXPECT_EQ(sparse_conv_default_tile(4, 1, 16, 3, 3, false, 16 << 10), 8);
  EXPECT_EQ(sparse_conv_default_tile(4, 2, 16, 3, 3, false, k48), 4);
  EXPECT_EQ(sparse_conv_default_tile(4, 2, 16, 3, 3, false, k32), 8);
  EXPECT_EQ(sparse_conv_default_tile(6, 1, 1, 3, 3, false, k32), 4);
  // Kept whatever the cache: 1x7 on rows a multiple of 7, 1x8 at stride 2, one-row tiles on AVX2.
  EXPECT_EQ(sparse_conv_default_tile(28, 1, 64, 3, 3, false, 1024), 6);
  EXPECT_EQ(sparse_conv_default_tile(16, 2, 64, 3, 3, false, 1024), 3);
  EXPECT_EQ(sparse_conv_default_tile(32, 1, 16, 3, 3, true, 1 << 20), 3);
  EXPECT_EQ(sparse_conv_default_tile(3, 1, 16, 3, 3, false, 1 << 20), 3);
  EXPECT_GT(l1_data_cache_bytes(), 0);
  EXPECT_THROW(sparse_conv_default_tile(0, 1, 16, 3, 3, false, k32), Error);
  EXPECT_THROW(sparse_conv_default_tile(8, 1, 16, 3, 3, false, 0), Error);
}

// The kernels under the default choice with a small and a large L1: the one-row and the two-row or 4x4
// tiles on the same problems (FF at stride 1 and 2, BP by phases).
TEST(SparseConv, DefaultTilesForSmallAndLargeL1) {
  const Case cases[] = {{18, 20, 11, 13, 9, 3, 3, 1, 1, 0.5},
                        {17, 16, 10, 10, 12, 3, 3, 2, 1, 0.4},
                        {16, 24, 5, 6, 20, 3, 3, 1, 1, 0.8},
                        {20, 12, 8, 8, 16, 3, 3, 2, 1, 0.3}};
  int i = 0;
  for (const Case& c : cases) {
    const Prepared pc(c, 500 + i++);
    for (int64_t l1 : {int64_t{4} << 10, int64_t{1} << 20}) {
      SparseConvOptions o;
      o.l1_bytes = l1;
      check_prepared(pc, o, "l1 " + std::to_string(l1));
    }
  }
}

// Widths that are multiples of 7 (28, 14, 7: ResNet-20 on 28x28 images) get their own tile shapes by
// default (2x7, 1x7, 1x14), with rows left over under the two-row tiles.
TEST(SparseConv, SevenWideOutputsDefaultTiles) {
  const Case cases[] = {{18, 12, 28, 28, 10, 3, 3, 1, 1, 0.3}, {17, 10, 28, 28, 12, 3, 3, 2, 1, 0.4},
                        {16, 20, 14, 14, 9, 3, 3, 1, 1, 0.5},  {20, 16, 14, 14, 24, 3, 3, 2, 1, 0.2},
                        {18, 24, 7, 7, 16, 3, 3, 1, 1, 0.6},   {16, 8, 7, 14, 12, 1, 1, 2, 0, 0.7}};
  int i = 0;
  for (const Case& c : cases) check_case(c, 400 + i++);
}

// A strided 1x1 (the ResNet shortcut) copies only the input positions it reads into its slab: odd and
// even sizes, strides 2 and 3, with and without padding.
TEST(SparseConv, StridedOneByOneReadsASubsampledSlab) {
  const Case cases[] = {{18, 12, 9, 11, 10, 1, 1, 2, 0, 0.5},
                        {17, 8, 10, 13, 6, 1, 1, 3, 0, 0.7},
                        {16, 8, 9, 9, 8, 1, 1, 2, 1, 0.5},
                        {20, 16, 28, 28, 32, 1, 1, 2, 0, 0.1},
                        {5, 6, 8, 8, 7, 1, 1, 2, 0, 1.0}};
  int i = 0;
  for (const Case& c : cases) check_case(c, 500 + i++);
}

TEST(SparseConv, ZeroPlanesAreSkippedAndCounted) {
  for (SparseImpl impl : {SparseImpl::best, SparseImpl::scalar}) {
    const Case cs{40, 10, 7, 7, 8, 3, 3, 1, 1, 0.5};
    const ConvGeom g = geom_of(cs);
    Rng rng(7);
    Tensor x = random_plain({g.N, g.C, g.H, g.W}, rng);
    const Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
    const Tensor mask = random_mask(w.shape(), cs.density, 3, rng);
    Tensor dy = random_plain({g.N, g.K, g.P(), g.Q()}, rng);
    const std::vector<std::pair<int64_t, int64_t>> x_zero = {{0, 2}, {1, 2}, {2, 9}, {1, 0}};
    const std::vector<std::pair<int64_t, int64_t>> dy_zero = {{0, 5}, {2, 0}, {2, 7}};
    zero_planes(x, x_zero);
    zero_planes(dy, dy_zero);
    SparseWeights sw;
    sw.build(w, mask, g.stride, g.pad);
    SparseConvScratch scratch;
    SparseConvOptions opt = with_impl(impl);
    const std::vector<double> wm = masked(w, mask), xd = to_double(x), dyd = to_double(dy);

    std::vector<double> y_ref(static_cast<size_t>(g.N * g.K * g.P() * g.Q()));
    conv2d_ff_ref<double>(g, xd.data(), wm.data(), nullptr, y_ref.data());
    Tensor y;
    const SparseCounters cf = sparse_conv_ff(x.to_layout(Layout::NCHW16n), sw, y, scratch, {}, {}, {}, opt);
    expect_close(y, y_ref, "ff zero planes");
    expect_adds_up(cf, g, "ff zero planes");
    EXPECT_EQ(cf.skipped_zero_activation, plane_macs(g, mask, x_zero, true));
    EXPECT_GT(cf.skipped_zero_activation, 0);

    std::vector<double> dx_ref(static_cast<size_t>(g.N * g.C * g.H * g.W));
    conv2d_bp_ref<double>(g, dyd.data(), wm.data(), dx_ref.data());
    Tensor dx;
    const SparseCounters cb = sparse_conv_bp(dy.to_layout(Layout::NCHW16n), sw, x.shape(), dx, scratch, opt);
    expect_close(dx, dx_ref, "bp zero planes");
    expect_adds_up(cb, g, "bp zero planes");
    EXPECT_EQ(cb.skipped_zero_error, plane_macs(g, mask, dy_zero, false));
    EXPECT_GT(cb.skipped_zero_error, 0);

    std::vector<double> dw_ref(static_cast<size_t>(w.numel()));
    conv2d_wg_ref<double>(g, xd.data(), dyd.data(), dw_ref.data(), nullptr);
    for (int64_t i = 0; i < w.numel(); ++i)
      if (mask.data()[i] == 0.0f) dw_ref[i] = 0.0;
    Tensor dw;
    const SparseCounters cw = sparse_conv_wg(x.to_layout(Layout::NCHW16n), dy.to_layout(Layout::NCHW16n), sw,
                                             dw, nullptr, scratch, {}, opt);
    expect_close(dw, dw_ref, "wg zero planes");
    expect_adds_up(cw, g, "wg zero planes");
    // Zero error first, then zero activation among the multiplies whose error plane is not zero.
    EXPECT_EQ(cw.skipped_zero_error, plane_macs(g, mask, dy_zero, false));
    int64_t both = 0;  // x plane and dy plane zero in the same block: counted as zero error
    for (auto [nbx, c] : x_zero)
      for (auto [nbd, k] : dy_zero)
        if (nbx == nbd)
          for (int64_t rs = 0; rs < 9; ++rs)
            both +=
                (mask.data()[(k * g.C + c) * 9 + rs] != 0.0f) * std::min<int64_t>(16, g.N - nbx * 16) * 49;
    EXPECT_EQ(cw.skipped_zero_activation, plane_macs(g, mask, x_zero, true) - both);
  }
}

TEST(SparseConv, AllZeroTensors) {
  const Case cs{20, 6, 5, 5, 7, 3, 3, 1, 1, 0.5};
  const ConvGeom g = geom_of(cs);
  Rng rng(9);
  const Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
  const Tensor mask = random_mask(w.shape(), cs.density, -1, rng);
  SparseWeights sw;
  sw.build(w, mask, 1, 1);
  SparseConvScratch scratch;
  const Tensor x({g.N, g.C, g.H, g.W}, Layout::NCHW16n), dy({g.N, g.K, g.P(), g.Q()}, Layout::NCHW16n);
  std::vector<float> bias(static_cast<size_t>(g.K));
  for (int64_t k = 0; k < g.K; ++k) bias[k] = 0.5f * static_cast<float>(k) - 1.0f;
  std::vector<double> sum(static_cast<size_t>(g.K)), sumsq(static_cast<size_t>(g.K));
  ConvEpilogue epi;
  epi.bias = bias.data(), epi.sum = sum.data(), epi.sumsq = sumsq.data();
  Tensor y;
  const SparseCounters cf = sparse_conv_ff(x, sw, y, scratch, {}, epi);
  expect_adds_up(cf, g, "ff all zero");
  EXPECT_EQ(cf.executed_macs, 0);
  EXPECT_EQ(cf.skipped_zero_activation, sw.nnz() * g.N * g.P() * g.Q());
  expect_zero_padding_images(y, "ff all zero with bias");
  const double m = static_cast<double>(g.N * g.P() * g.Q());
  for (int64_t k = 0; k < g.K; ++k) {
    EXPECT_EQ(y.at(3, k, 2, 4), bias[k]);
    EXPECT_NEAR(sum[k], bias[k] * m, 1e-3);
    EXPECT_NEAR(sumsq[k], bias[k] * bias[k] * m, 1e-3);
  }
  Tensor dx, dw, db;
  const SparseCounters cb = sparse_conv_bp(dy, sw, x.shape(), dx, scratch);
  expect_adds_up(cb, g, "bp all zero");
  EXPECT_EQ(cb.executed_macs, 0);
  for (int64_t i = 0; i < dx.storage_size(); ++i) ASSERT_EQ(dx.data()[i], 0.0f);
  const SparseCounters cw = sparse_conv_wg(x, dy, sw, dw, &db, scratch);
  expect_adds_up(cw, g, "wg all zero");
  EXPECT_EQ(cw.executed_macs, 0);
  for (int64_t i = 0; i < dw.numel(); ++i) ASSERT_EQ(dw.data()[i], 0.0f);
}

TEST(SparseConv, PrologueEpilogueAndMaskMatchTheUnfusedComputation) {
  const Case cases[] = {{21, 12, 8, 8, 10, 3, 3, 1, 1, 0.4}, {18, 12, 9, 8, 10, 3, 3, 2, 1, 0.4}};
  for (const Case& cs : cases)
    for (SparseImpl impl : {SparseImpl::best, SparseImpl::scalar}) {
      const ConvGeom g = geom_of(cs);
      const std::string what = describe(cs) + (impl == SparseImpl::best ? " best" : " scalar");
      Rng rng(21);
      Tensor x = random_plain({g.N, g.C, g.H, g.W}, rng);
      const Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
      const Tensor mask = random_mask(w.shape(), cs.density, 2, rng);
      const Tensor dy = random_plain({g.N, g.K, g.P(), g.Q()}, rng);
      std::vector<float> scale(static_cast<size_t>(g.C)), shift(static_cast<size_t>(g.C)),
          bias(static_cast<size_t>(g.K));
      for (auto& v : scale) v = static_cast<float>(0.5 + rng.uniform());
      for (auto& v : shift) v = static_cast<float>(rng.uniform() - 0.6);
      for (auto& v : bias) v = static_cast<float>(rng.uniform() - 0.5);
      shift[4] = -5.0f;  // channel 4 dies under the ReLU: a zero plane only visible after the prologue
      SparseWeights sw;
      sw.build(w, mask, g.stride, g.pad);
      SparseConvScratch scratch;
      const SparseConvOptions opt = with_impl(impl);

      // The unfused computation: x' = relu(x * scale + shift), then conv + bias.
      std::vector<double> xt(static_cast<size_t>(x.numel()));
      const int64_t HW = g.H * g.W;
      for (int64_t i = 0; i < x.numel(); ++i) {
        const int64_t c = (i / HW) % g.C;
        xt[i] = std::max(0.0, static_cast<double>(x.data()[i]) * scale[c] + shift[c]);
      }
      const std::vector<double> wm = masked(w, mask);
      std::vector<double> bd(bias.begin(), bias.end());
      std::vector<double> y_ref(static_cast<size_t>(g.N * g.K * g.P() * g.Q()));
      conv2d_ff_ref<double>(g, xt.data(), wm.data(), bd.data(), y_ref.data());

      // Output mask over 16-image vectors: every third position of channel 0 and all of channel 5 skipped.
      const int64_t NB = (g.N + 15) / 16, PQ = g.P() * g.Q();
      std::vector<uint8_t> keep(static_cast<size_t>(NB * g.K * PQ), 1);
      for (int64_t nb = 0; nb < NB; ++nb)
        for (int64_t pq = 0; pq < PQ; ++pq) {
          if (pq % 3 == 0) keep[(nb * g.K + 0) * PQ + pq] = 0;
          keep[(nb * g.K + 5) * PQ + pq] = 0;
        }
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t k = 0; k < g.K; ++k)
          for (int64_t pq = 0; pq < PQ; ++pq)
            if (!keep[((n / 16) * g.K + k) * PQ + pq]) y_ref[(n * g.K + k) * PQ + pq] = 0.0;
      std::vector<double> sum_ref(static_cast<size_t>(g.K)), sq_ref(static_cast<size_t>(g.K));
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t k = 0; k < g.K; ++k)
          for (int64_t pq = 0; pq < PQ; ++pq) {
            const double v = y_ref[(n * g.K + k) * PQ + pq];
            sum_ref[k] += v, sq_ref[k] += v * v;
          }

      ConvPrologue pro;
      pro.scale = scale.data(), pro.shift = shift.data(), pro.relu = true;
      std::vector<double> sum(static_cast<size_t>(g.K), -1.0), sumsq(static_cast<size_t>(g.K), -1.0);
      ConvEpilogue epi;
      epi.bias = bias.data(), epi.sum = sum.data(), epi.sumsq = sumsq.data();
      ConvOutputMask om;
      om.keep = keep.data();
      Tensor y;
      const SparseCounters cf =
          sparse_conv_ff(x.to_layout(Layout::NCHW16n), sw, y, scratch, pro, epi, om, opt);
      expect_close(y, y_ref, "fused ff " + what);
      expect_zero_padding_images(y, "fused ff " + what);
      expect_adds_up(cf, g, "fused ff " + what);
      EXPECT_GT(cf.skipped_masked_output, 0) << what;
      EXPECT_EQ(cf.skipped_zero_activation, plane_macs(
                                                g, mask,
                                                [&] {
                                                  std::vector<std::pair<int64_t, int64_t>> p;
                                                  for (int64_t nb = 0; nb < NB; ++nb) p.push_back({nb, 4});
                                                  return p;
                                                }(),
                                                true))
          << what;
      for (int64_t k = 0; k < g.K; ++k) {
        EXPECT_NEAR(sum[k], sum_ref[k], 1e-4 * (1 + std::fabs(sum_ref[k]))) << what << " k " << k;
        EXPECT_NEAR(sumsq[k], sq_ref[k], 1e-4 * (1 + sq_ref[k])) << what << " k " << k;
      }

      // Each epilogue alone, and the statistics without bias (the instantiations differ).
      ConvEpilogue stats_only;
      stats_only.sum = sum.data();
      std::vector<double> y_nob(static_cast<size_t>(g.N * g.K * PQ));
      conv2d_ff_ref<double>(g, xt.data(), wm.data(), nullptr, y_nob.data());
      sparse_conv_ff(x.to_layout(Layout::NCHW16n), sw, y, scratch, pro, stats_only, {}, opt);
      expect_close(y, y_nob, "stats-only ff " + what);
      for (int64_t k = 0; k < g.K; ++k) {
        double s = 0;
        for (int64_t n = 0; n < g.N; ++n)
          for (int64_t pq = 0; pq < PQ; ++pq) s += y_nob[(n * g.K + k) * PQ + pq];
        EXPECT_NEAR(sum[k], s, 1e-4 * (1 + std::fabs(s))) << what;
      }
      ConvEpilogue bias_only;
      bias_only.bias = bias.data();
      std::vector<double> y_b(static_cast<size_t>(g.N * g.K * PQ));
      conv2d_ff_ref<double>(g, xt.data(), wm.data(), bd.data(), y_b.data());
      sparse_conv_ff(x.to_layout(Layout::NCHW16n), sw, y, scratch, pro, bias_only, {}, opt);
      expect_close(y, y_b, "bias-only ff " + what);
      expect_zero_padding_images(y, "bias-only ff " + what);

      // WG reads x through the same prologue.
      std::vector<double> dw_ref(static_cast<size_t>(w.numel()));
      const std::vector<double> dyd = to_double(dy);
      conv2d_wg_ref<double>(g, xt.data(), dyd.data(), dw_ref.data(), nullptr);
      for (int64_t i = 0; i < w.numel(); ++i)
        if (mask.data()[i] == 0.0f) dw_ref[i] = 0.0;
      Tensor dw;
      const SparseCounters cw = sparse_conv_wg(x.to_layout(Layout::NCHW16n), dy.to_layout(Layout::NCHW16n),
                                               sw, dw, nullptr, scratch, pro, opt);
      expect_close(dw, dw_ref, "fused wg " + what);
      expect_adds_up(cw, g, "fused wg " + what);
      EXPECT_GT(cw.skipped_zero_activation, 0) << what;
    }
}

TEST(SparseConv, RepackedValuesAreUsed) {
  const Case cs{16, 8, 6, 6, 8, 3, 3, 1, 1, 0.3};
  const ConvGeom g = geom_of(cs);
  Rng rng(31);
  const Tensor x = random_plain({g.N, g.C, g.H, g.W}, rng);
  Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
  const Tensor mask = random_mask(w.shape(), cs.density, -1, rng);
  SparseWeights sw;
  sw.build(w, mask, 1, 1);
  SparseConvScratch scratch;
  Tensor y;
  sparse_conv_ff(x.to_layout(Layout::NCHW16n), sw, y, scratch);
  for (int64_t i = 0; i < w.numel(); ++i) w.data()[i] = static_cast<float>(rng.uniform() - 0.5);
  sw.repack(w);
  sparse_conv_ff(x.to_layout(Layout::NCHW16n), sw, y, scratch);
  std::vector<double> y_ref(static_cast<size_t>(g.N * g.K * g.P() * g.Q()));
  const std::vector<double> xd = to_double(x), wm = masked(w, mask);
  conv2d_ff_ref<double>(g, xd.data(), wm.data(), nullptr, y_ref.data());
  expect_close(y, y_ref, "ff after repack");
}

TEST(SparseConv, SameBitsWithOneOrTwoThreads) {
  const Case cs{32, 24, 10, 10, 20, 3, 3, 1, 1, 0.3};
  const ConvGeom g = geom_of(cs);
  Rng rng(41);
  const Tensor x = random_plain({g.N, g.C, g.H, g.W}, rng).to_layout(Layout::NCHW16n);
  const Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
  const Tensor dy = random_plain({g.N, g.K, g.P(), g.Q()}, rng).to_layout(Layout::NCHW16n);
  const Tensor mask = random_mask(w.shape(), cs.density, 4, rng);
  SparseWeights sw;
  sw.build(w, mask, 1, 1);
  SparseConvScratch scratch;
  const int saved = omp_get_max_threads();
  Tensor y[2], dx[2], dw[2];
  std::vector<double> sum[2];
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t + 1);
    sum[t].resize(static_cast<size_t>(g.K));
    ConvEpilogue epi;
    epi.sum = sum[t].data();
    sparse_conv_ff(x, sw, y[t], scratch, {}, epi);
    sparse_conv_bp(dy, sw, x.shape(), dx[t], scratch);
    sparse_conv_wg(x, dy, sw, dw[t], nullptr, scratch);
  }
  omp_set_num_threads(saved);
  auto same = [](const Tensor& a, const Tensor& b) {
    return a.storage_size() == b.storage_size() &&
           std::equal(a.data(), a.data() + a.storage_size(), b.data());
  };
  EXPECT_TRUE(same(y[0], y[1]));
  EXPECT_TRUE(same(dx[0], dx[1]));
  EXPECT_TRUE(same(dw[0], dw[1]));
  EXPECT_EQ(sum[0], sum[1]);
}

// BP into a gradient that already holds another reader's share: accumulate_output adds in the epilogue,
// and with accumulate_relu takes the sum through the ReLU's backward. Both give the bits of writing the
// result, then adding (then masking where the ReLU's output is not positive) in separate passes.
TEST(SparseConv, AccumulatingBpWithAndWithoutReluMatchesSeparatePasses) {
  const Case cases[] = {{21, 12, 8, 8, 10, 3, 3, 1, 1, 0.4},
                        {18, 12, 9, 8, 10, 3, 3, 2, 1, 0.4},
                        {33, 16, 7, 7, 8, 1, 1, 2, 0, 0.5}};
  for (const Case& cs : cases)
    for (SparseImpl impl : {SparseImpl::best, SparseImpl::scalar}) {
      const ConvGeom g = geom_of(cs);
      SCOPED_TRACE(describe(cs) + (impl == SparseImpl::best ? " best" : " scalar"));
      Rng rng(57);
      const Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
      const Tensor mask = random_mask(w.shape(), cs.density, 1, rng);
      const Tensor dy = random_plain({g.N, g.K, g.P(), g.Q()}, rng).to_layout(Layout::NCHW16n);
      const Shape xs{g.N, g.C, g.H, g.W};
      const Tensor prior = random_plain(xs, rng).to_layout(Layout::NCHW16n);
      // A ReLU's output: zero at about half the positions, one channel all zero.
      Tensor relu_plain = random_plain(xs, rng);
      for (int64_t i = 0; i < relu_plain.numel(); ++i)
        relu_plain.data()[i] = std::max(0.0f, relu_plain.data()[i]);
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t h = 0; h < g.H; ++h)
          for (int64_t x = 0; x < g.W; ++x) relu_plain.at(n, 3, h, x) = 0.0f;
      const Tensor relu_y = relu_plain.to_layout(Layout::NCHW16n);
      SparseWeights sw;
      sw.build(w, mask, g.stride, g.pad);
      SparseConvScratch scratch;
      SparseConvOptions opt = with_impl(impl);
      Tensor share;
      sparse_conv_bp(dy, sw, xs, share, scratch, opt);
      Tensor added = prior;
      add_inplace(added, share);
      Tensor masked = prior;
      add_inplace_relu_bp(masked, share, relu_y);
      int64_t zeroed = 0;
      for (int64_t i = 0; i < masked.storage_size(); ++i) {
        ASSERT_EQ(masked.data()[i], relu_y.data()[i] > 0.0f ? added.data()[i] : 0.0f) << i;
        zeroed += relu_y.data()[i] > 0.0f ? 0 : 1;
      }
      EXPECT_GT(zeroed, masked.storage_size() / 4);

      opt.accumulate_output = true;
      Tensor got = prior;
      sparse_conv_bp(dy, sw, xs, got, scratch, opt);
      ASSERT_EQ(got.storage_size(), added.storage_size());
      for (int64_t i = 0; i < got.storage_size(); ++i) ASSERT_EQ(got.data()[i], added.data()[i]) << i;
      opt.accumulate_relu = &relu_y;
      got = prior;
      sparse_conv_bp(dy, sw, xs, got, scratch, opt);
      for (int64_t i = 0; i < got.storage_size(); ++i) ASSERT_EQ(got.data()[i], masked.data()[i]) << i;
      // A mask needs accumulation, and x's shape.
      SparseConvOptions bad = opt;
      bad.accumulate_output = false;
      EXPECT_THROW(sparse_conv_bp(dy, sw, xs, got, scratch, bad), Error);
      const Tensor small({g.N, g.C, g.H, g.W + 1}, Layout::NCHW16n);
      bad = opt;
      bad.accumulate_relu = &small;
      EXPECT_THROW(sparse_conv_bp(dy, sw, xs, got, scratch, bad), Error);
    }
}

// The batch-norm gradient sums in BP's epilogue (ConvEpilogue::bn_x): over the final dx (after
// accumulating, and the accumulated ReLU's mask), through the batch norm's own fused-ReLU mask, on the
// real images only; dx itself is the same bits as without them; the sums do not depend on the thread
// count or on how the threads split the work.
TEST(SparseConv, BpEpilogueTakesTheBatchNormGradientSums) {
  const Case cases[] = {{21, 12, 8, 8, 10, 3, 3, 1, 1, 0.4},
                        {18, 12, 9, 8, 10, 3, 3, 2, 1, 0.4},
                        {40, 16, 7, 7, 24, 3, 3, 1, 1, 0.2},
                        {16, 8, 6, 6, 8, 1, 1, 1, 0, 1.0}};
  const int saved = omp_get_max_threads();
  for (const Case& cs : cases)
    for (SparseImpl impl : {SparseImpl::best, SparseImpl::scalar})
      for (int mode = 0; mode < 3; ++mode) {  // write; accumulate; accumulate through a ReLU
        const ConvGeom g = geom_of(cs);
        SCOPED_TRACE(describe(cs) + (impl == SparseImpl::best ? " best" : " scalar") + " mode " +
                     std::to_string(mode));
        Rng rng(91);
        const Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
        const Tensor mask = random_mask(w.shape(), cs.density, 1, rng);
        const Tensor dy = random_plain({g.N, g.K, g.P(), g.Q()}, rng).to_layout(Layout::NCHW16n);
        const Shape xs{g.N, g.C, g.H, g.W};
        Tensor prior = random_plain(xs, rng).to_layout(Layout::NCHW16n);
        // Nonzero padding images in what BP adds to: dx is nonzero there too, and the sums must leave
        // those lanes out (the last block of 21, 18 and 40 images is part padding).
        if (g.N % 16 != 0) {
          float* last = prior.data() + (prior.storage_size() - g.C * g.H * g.W * 16);
          for (int64_t v = 0; v < g.C * g.H * g.W; ++v)
            for (int64_t l = g.N % 16; l < 16; ++l) last[v * 16 + l] = 1.0f + 0.25f * static_cast<float>(l);
        }
        Tensor relu_plain = random_plain(xs, rng);
        for (int64_t i = 0; i < relu_plain.numel(); ++i)
          relu_plain.data()[i] = std::max(0.0f, relu_plain.data()[i]);
        const Tensor relu_y = relu_plain.to_layout(Layout::NCHW16n);
        // The batch norm's input, far from zero mean (the sums are about the mean), and its statistics.
        Tensor bx_plain = random_plain(xs, rng);
        for (int64_t i = 0; i < bx_plain.numel(); ++i) bx_plain.data()[i] += 3.0f;
        const Tensor bx = bx_plain.to_layout(Layout::NCHW16n);
        std::vector<float> mean(static_cast<size_t>(g.C)), scale(mean.size()), shift(mean.size());
        for (int64_t c = 0; c < g.C; ++c) {
          mean[c] = static_cast<float>(2.5 + rng.uniform());
          scale[c] = static_cast<float>(rng.uniform() * 2 - 0.5);  // some negative: the mask flips
          shift[c] = -scale[c] * mean[c];
        }
        SparseWeights sw;
        sw.build(w, mask, g.stride, g.pad);
        SparseConvScratch scratch;
        SparseConvOptions opt = with_impl(impl);
        opt.accumulate_output = mode > 0;
        opt.accumulate_relu = mode == 2 ? &relu_y : nullptr;
        Tensor plain_dx = prior;
        sparse_conv_bp(dy, sw, xs, plain_dx, scratch, opt);
        for (bool relu : {false, true}) {
          // The reference: the sums in double over the dx just written, the mask with one fma.
          const Tensor dxp = plain_dx.to_layout(Layout::plain);
          std::vector<double> want_s(mean.size(), 0.0), want_q(mean.size(), 0.0), mag(mean.size(), 0.0);
          for (int64_t n = 0; n < g.N; ++n)
            for (int64_t c = 0; c < g.C; ++c)
              for (int64_t h = 0; h < g.H; ++h)
                for (int64_t x = 0; x < g.W; ++x) {
                  const float xv = bx_plain.at(n, c, h, x);
                  if (relu && !(std::fma(scale[c], xv, shift[c]) > 0.0f)) continue;
                  const double d = dxp.at(n, c, h, x);
                  want_s[c] += d;
                  want_q[c] += d * (static_cast<double>(xv) - mean[c]);
                  mag[c] += std::fabs(d) * (1 + std::fabs(static_cast<double>(xv) - mean[c]));
                }
          std::vector<double> got_s[3], got_q[3];
          Tensor got_dx[3];
          const int split[3] = {-1, 0, 1};
          for (int run = 0; run < 3; ++run) {
            omp_set_num_threads(run == 0 ? 1 : 2);
            SparseConvOptions o = opt;
            o.split_images = split[run];
            got_s[run].assign(mean.size(), -1.0);
            got_q[run].assign(mean.size(), -1.0);
            ConvEpilogue epi;
            epi.bn_x = &bx;
            epi.bn_mean = mean.data();
            if (relu) epi.bn_relu_scale = scale.data(), epi.bn_relu_shift = shift.data();
            epi.grad_sum = got_s[run].data();
            epi.grad_sum_xc = got_q[run].data();
            got_dx[run] = prior;
            sparse_conv_bp(dy, sw, xs, got_dx[run], scratch, o, epi);
            ASSERT_EQ(got_dx[run].storage_size(), plain_dx.storage_size());
            for (int64_t i = 0; i < plain_dx.storage_size(); ++i)
              ASSERT_EQ(got_dx[run].data()[i], plain_dx.data()[i]) << "dx " << i;
            for (int64_t c = 0; c < g.C; ++c) {
              EXPECT_NEAR(got_s[run][c], want_s[c], 1e-5 * mag[c] + 1e-6) << "sum c " << c;
              EXPECT_NEAR(got_q[run][c], want_q[c], 1e-5 * mag[c] + 1e-6) << "sum_xc c " << c;
            }
          }
          omp_set_num_threads(saved);
          // Two threads, split either way: the same bits.
          EXPECT_EQ(got_s[1], got_s[2]);
          EXPECT_EQ(got_q[1], got_q[2]);
        }
      }
  omp_set_num_threads(saved);
  // Bad requests name what is wrong.
  const Case cs = cases[0];
  const ConvGeom g = geom_of(cs);
  Rng rng(5);
  const Tensor w = random_plain({g.K, g.C, g.R, g.S}, rng);
  SparseWeights sw;
  sw.build(w, random_mask(w.shape(), 0.5, -1, rng), 1, 1);
  SparseConvScratch scratch;
  const Tensor dy = random_plain({g.N, g.K, g.P(), g.Q()}, rng).to_layout(Layout::NCHW16n);
  const Tensor wrong({g.N, g.C, g.H, g.W + 1}, Layout::NCHW16n);
  std::vector<float> mean(static_cast<size_t>(g.C), 0.0f);
  std::vector<double> s(mean.size()), q(mean.size());
  ConvEpilogue epi;
  epi.bn_x = &wrong, epi.bn_mean = mean.data(), epi.grad_sum = s.data(), epi.grad_sum_xc = q.data();
  Tensor dx;
  EXPECT_THROW(sparse_conv_bp(dy, sw, {g.N, g.C, g.H, g.W}, dx, scratch, {}, epi), Error);
  const Tensor right({g.N, g.C, g.H, g.W}, Layout::NCHW16n);
  epi.bn_x = &right;
  epi.grad_sum_xc = nullptr;
  EXPECT_THROW(sparse_conv_bp(dy, sw, {g.N, g.C, g.H, g.W}, dx, scratch, {}, epi), Error);
  epi.grad_sum_xc = q.data();
  Tensor y;
  EXPECT_THROW(sparse_conv_ff(right, sw, y, scratch, {}, epi), Error);
}

// A strided BP reaches only the dx phases its taps land in: a 1x1 at stride 2 one in four. As the first
// writer of a gradient it may leave the others unwritten (leave_phases), and the second writer, which
// reaches every phase, writes them instead of adding to zeros (write_phases): the values of writing
// both shares in full and adding them (then masking through the ReLU).
TEST(SparseConv, StridedBpLeavesTaplessPhasesForTheNextWriter) {
  EXPECT_EQ(sparse_conv_bp_tapless_phases(1, 1, 2, 0), (std::vector<uint8_t>{0, 1, 1, 1}));
  EXPECT_EQ(sparse_conv_bp_tapless_phases(3, 3, 2, 1), (std::vector<uint8_t>{0, 0, 0, 0}));
  // rows: tap r = 0 lands in phase (0 - 1) mod 2 = 1, none in row phase 0
  EXPECT_EQ(sparse_conv_bp_tapless_phases(1, 3, 2, 1), (std::vector<uint8_t>{1, 1, 0, 0}));
  EXPECT_EQ(sparse_conv_bp_tapless_phases(1, 1, 3, 0), (std::vector<uint8_t>{0, 1, 1, 1, 1, 1, 1, 1, 1}));
  EXPECT_TRUE(sparse_conv_bp_tapless_phases(3, 3, 1, 1).empty());

  const Case first{18, 12, 9, 9, 10, 1, 1, 2, 0, 0.5};  // the shortcut: odd sizes, a partial block
  const Case second{18, 12, 9, 9, 8, 3, 3, 2, 1, 0.4};  // the branch's first convolution
  const ConvGeom ga = geom_of(first), gb = geom_of(second);
  const Shape xs{ga.N, ga.C, ga.H, ga.W};
  Rng rng(61);
  SparseWeights swa, swb;
  const Tensor wa = random_plain({ga.K, ga.C, 1, 1}, rng), wb = random_plain({gb.K, gb.C, 3, 3}, rng);
  swa.build(wa, random_mask(wa.shape(), first.density, 1, rng), 2, 0);
  swb.build(wb, random_mask(wb.shape(), second.density, 1, rng), 2, 1);
  const Tensor dya = random_plain({ga.N, ga.K, ga.P(), ga.Q()}, rng).to_layout(Layout::NCHW16n);
  const Tensor dyb = random_plain({gb.N, gb.K, gb.P(), gb.Q()}, rng).to_layout(Layout::NCHW16n);
  Tensor relu_plain = random_plain(xs, rng);
  for (int64_t i = 0; i < relu_plain.numel(); ++i)
    relu_plain.data()[i] = std::max(0.0f, relu_plain.data()[i]);
  const Tensor relu_y = relu_plain.to_layout(Layout::NCHW16n);
  const std::vector<uint8_t> left = sparse_conv_bp_tapless_phases(1, 1, 2, 0);
  auto phase_of = [&](int64_t i) {  // storage index of NCHW16n -> phase of its (h, w)
    const int64_t pos = (i / 16) % (ga.H * ga.W), h = pos / ga.W, w = pos % ga.W;
    return (h % 2) * 2 + w % 2;
  };
  for (SparseImpl impl : {SparseImpl::best, SparseImpl::scalar})
    for (bool relu : {false, true}) {
      SCOPED_TRACE(std::string(impl == SparseImpl::best ? "best" : "scalar") + (relu ? " relu" : ""));
      SparseConvScratch sa, sb;
      // Both shares in full, added (and masked) in separate passes.
      Tensor share_a, share_b;
      sparse_conv_bp(dya, swa, xs, share_a, sa, with_impl(impl));
      sparse_conv_bp(dyb, swb, xs, share_b, sb, with_impl(impl));
      Tensor want = share_a;
      if (relu)
        add_inplace_relu_bp(want, share_b, relu_y);
      else
        add_inplace(want, share_b);

      Tensor got(xs, Layout::NCHW16n);
      std::fill_n(got.data(), got.storage_size(), std::nanf(""));
      SparseConvOptions oa = with_impl(impl);
      oa.leave_phases = &left;
      sparse_conv_bp(dya, swa, xs, got, sa, oa);
      int64_t untouched = 0;
      for (int64_t i = 0; i < got.storage_size(); ++i) {
        if (left[phase_of(i)]) {
          ASSERT_TRUE(std::isnan(got.data()[i])) << i;  // left unwritten
          ++untouched;
        } else {
          ASSERT_EQ(got.data()[i], share_a.data()[i]) << i;
        }
      }
      EXPECT_GT(untouched, got.storage_size() / 2);
      SparseConvOptions ob = with_impl(impl);
      ob.accumulate_output = true;
      ob.accumulate_relu = relu ? &relu_y : nullptr;
      ob.write_phases = &left;
      sparse_conv_bp(dyb, swb, xs, got, sb, ob);
      for (int64_t i = 0; i < got.storage_size(); ++i) ASSERT_EQ(got.data()[i], want.data()[i]) << i;
    }

  // Only tap-less phases may be left, by a first writer; flags are one per phase; write_phases adds.
  SparseConvScratch sc;
  Tensor dx;
  const std::vector<uint8_t> all(4, 1), three(3, 0);
  SparseConvOptions bad;
  bad.leave_phases = &all;
  EXPECT_THROW(sparse_conv_bp(dyb, swb, xs, dx, sc, bad), Error);  // the 3x3 reaches every phase
  bad.leave_phases = &three;
  EXPECT_THROW(sparse_conv_bp(dya, swa, xs, dx, sc, bad), Error);
  bad = SparseConvOptions{};
  bad.write_phases = &left;
  EXPECT_THROW(sparse_conv_bp(dyb, swb, xs, dx, sc, bad), Error);
  sparse_conv_bp(dya, swa, xs, dx, sc, SparseConvOptions{});
  bad = SparseConvOptions{};
  bad.accumulate_output = true;
  bad.leave_phases = &left;
  EXPECT_THROW(sparse_conv_bp(dya, swa, xs, dx, sc, bad), Error);

  // What the graph does when no second writer comes: zero the left phases.
  Tensor z(xs, Layout::NCHW16n);
  std::fill_n(z.data(), z.storage_size(), 1.0f);
  zero_phases(z, left, 2);
  for (int64_t i = 0; i < z.storage_size(); ++i) ASSERT_EQ(z.data()[i], left[phase_of(i)] ? 0.0f : 1.0f) << i;
  EXPECT_THROW(zero_phases(z, three, 2), Error);
}

// Called from inside a parallel region (nested parallelism off), the kernels get a team of one thread
// but planned for more: every share must still be computed.
TEST(SparseConv, CalledFromInsideAParallelRegion) {
  const Case cs{20, 12, 6, 6, 10, 3, 3, 1, 1, 0.4};
  const Prepared pc(cs, 61);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(2);
  Tensor y, dx, dw;
  SparseCounters cf, cb, cw;
#pragma omp parallel num_threads(2)
  {
#pragma omp single
    {
      SparseConvScratch scratch;
      cf = sparse_conv_ff(pc.x16, pc.sw, y, scratch);
      cb = sparse_conv_bp(pc.dy16, pc.sw, pc.x.shape(), dx, scratch);
      cw = sparse_conv_wg(pc.x16, pc.dy16, pc.sw, dw, nullptr, scratch);
    }
  }
  omp_set_num_threads(saved);
  expect_close(y, pc.y_ref, "nested ff");
  expect_close(dx, pc.dx_ref, "nested bp");
  expect_close(dw, pc.dw_ref, "nested wg");
  EXPECT_TRUE(cf.adds_up() && cb.adds_up() && cw.adds_up());
}

// The slabs, partial sums and statistics a call uses while it runs belong to the calling thread and are
// shared by every scratch (sparse_conv.cpp, Transient): layers of different sizes calling in turn, each
// with its own scratch, and two threads calling at once, still get their own results.
TEST(SparseConv, LayersInTurnAndThreadsAtOnceGetTheirOwnResults) {
  const Prepared big(Case{64, 20, 14, 14, 24, 3, 3, 1, 1, 0.3}, 71);
  const Prepared small(Case{17, 6, 5, 5, 5, 3, 3, 2, 1, 0.6}, 72);
  SparseConvScratch sa, sb;
  Tensor ya, yb, dxa, dxb, dwa, dwb;
  std::vector<double> suma(24), sumb(5);
  for (int round = 0; round < 2; ++round) {
    ConvEpilogue ea, eb;
    ea.sum = suma.data();
    eb.sum = sumb.data();
    sparse_conv_ff(big.x16, big.sw, ya, sa, {}, ea);
    sparse_conv_ff(small.x16, small.sw, yb, sb, {}, eb);
    expect_close(ya, big.y_ref, "turns ff big");
    expect_close(yb, small.y_ref, "turns ff small");
    for (const auto* pc : {&big, &small}) {
      const std::vector<double>& sums = pc == &big ? suma : sumb;
      const ConvGeom& g = pc->g;
      for (int64_t k = 0; k < g.K; ++k) {
        double want = 0;
        for (int64_t n = 0; n < g.N; ++n)
          for (int64_t i = 0; i < g.P() * g.Q(); ++i) want += pc->y_ref[(n * g.K + k) * g.P() * g.Q() + i];
        EXPECT_NEAR(sums[k], want, 1e-4 * (1 + std::fabs(want)))
            << "turns sum " << describe(pc->cs) << " k" << k;
      }
    }
    sparse_conv_bp(big.dy16, big.sw, big.x.shape(), dxa, sa);
    sparse_conv_bp(small.dy16, small.sw, small.x.shape(), dxb, sb);
    expect_close(dxa, big.dx_ref, "turns bp big");
    expect_close(dxb, small.dx_ref, "turns bp small");
    sparse_conv_wg(big.x16, big.dy16, big.sw, dwa, nullptr, sa);
    sparse_conv_wg(small.x16, small.dy16, small.sw, dwb, nullptr, sb);
    expect_close(dwa, big.dw_ref, "turns wg big");
    expect_close(dwb, small.dw_ref, "turns wg small");
  }
  std::thread other([&] { check_prepared(small, SparseConvOptions{}, "other thread"); });
  check_prepared(big, SparseConvOptions{}, "this thread");
  other.join();
}

TEST(SparseConv, RejectsWrongLayoutsAndShapes) {
  Rng rng(51);
  const Tensor w = random_plain({4, 3, 3, 3}, rng);
  SparseWeights sw;
  sw.build_from_nonzeros(w, 1, 1);
  SparseConvScratch scratch;
  Tensor y;
  EXPECT_THROW(sparse_conv_ff(Tensor({2, 3, 5, 5}, Layout::plain), sw, y, scratch), Error);
  EXPECT_THROW(sparse_conv_ff(Tensor({2, 4, 5, 5}, Layout::NCHW16n), sw, y, scratch), Error);
  Tensor dx;
  EXPECT_THROW(sparse_conv_bp(Tensor({2, 4, 4, 4}, Layout::NCHW16n), sw, {2, 3, 5, 5}, dx, scratch), Error);
  SparseWeights unbuilt;
  EXPECT_THROW(sparse_conv_ff(Tensor({2, 3, 5, 5}, Layout::NCHW16n), unbuilt, y, scratch), Error);
}
