// Conv2d on NCHW16n activations with a weight mask (sparse training): each phase, with the sparse kernels
// and with oneDNN through reorders, equals the double-precision reference on the masked weights; the
// counters add up and attribute the pruned multiplies exactly; a dense WG covers pruned positions only when
// the step asks for it; the Op record carries the kernel and the counters.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "kernels/conv_ref.hpp"
#include "nn/layers/batchnorm2d.hpp"
#include "nn/layers/conv2d.hpp"

using namespace trainer;

namespace {

struct Case {
  int64_t N, C, H, K, kernel, stride, pad;
  bool bias;
  double density;
};

void fill_random(Tensor& t, Rng& rng, double zero_fraction = 0.0) {
  for (int64_t n = 0; n < t.dim(0); ++n)
    for (int64_t c = 0; c < t.dim(1); ++c)
      for (int64_t h = 0; h < t.dim(2); ++h)
        for (int64_t w = 0; w < t.dim(3); ++w)
          t.at(n, c, h, w) = rng.uniform() < zero_fraction ? 0.0f : static_cast<float>(2 * rng.uniform() - 1);
}

std::vector<double> plain_double(const Tensor& t) {
  const Tensor p = t.to_layout(Layout::plain);
  return std::vector<double>(p.data(), p.data() + p.numel());
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << what << " at " << i;
}

class ConvSparse : public ::testing::TestWithParam<std::tuple<Case, KernelMode>> {};

TEST_P(ConvSparse, EveryPhaseMatchesTheReferenceOnMaskedWeights) {
  const auto [cs, mode] = GetParam();
  Rng rng(7 + static_cast<uint64_t>(cs.C * 31 + cs.K));
  Conv2d conv("c", cs.C, cs.K, cs.kernel, cs.stride, cs.pad, cs.bias);
  conv.init(rng);
  // A random mask at the case's density; the weight holds zero at pruned positions (the pruner's
  // invariant).
  Tensor& w = conv.weight().value;
  std::vector<uint8_t> keep(static_cast<size_t>(w.numel()));
  int64_t pruned = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    keep[i] = rng.uniform() < cs.density ? 1 : 0;
    if (!keep[i]) {
      w.data()[i] = 0.0f;
      ++pruned;
    }
  }
  SparsityContext ctx;
  ctx.mode = mode;
  conv.set_sparsity(keep.data(), &ctx);

  Tensor x({cs.N, cs.C, cs.H, cs.H});
  fill_random(x, rng, 0.3);
  const Tensor x16 = x.to_layout(Layout::NCHW16n);
  Tensor y;
  conv.ff({&x16}, y, true);
  ASSERT_EQ(y.layout(), Layout::NCHW16n);
  const ConvGeom g{cs.N, cs.C, cs.H, cs.H, cs.K, cs.kernel, cs.kernel, cs.stride, cs.pad};
  ASSERT_EQ(y.shape(), Shape({cs.N, cs.K, g.P(), g.Q()}));

  const std::vector<double> xd = plain_double(x);
  std::vector<double> wd(w.data(), w.data() + w.numel());
  std::vector<double> bd;
  if (cs.bias) bd.assign(conv.bias().value.data(), conv.bias().value.data() + cs.K);
  std::vector<double> yd(static_cast<size_t>(cs.N * cs.K * g.P() * g.Q()));
  conv2d_ff_ref<double>(g, xd.data(), wd.data(), cs.bias ? bd.data() : nullptr, yd.data());
  expect_close(plain_double(y), yd, 1e-4, "ff");

  Tensor dy({cs.N, cs.K, g.P(), g.Q()});
  fill_random(dy, rng, 0.2);
  const Tensor dy16 = dy.to_layout(Layout::NCHW16n);
  const std::vector<double> dyd = plain_double(dy);

  // wg (at kept positions only: this step needs no dense WG)
  conv.wg({&x16}, y, dy16);
  std::vector<double> dwd(static_cast<size_t>(w.numel())), dbd(static_cast<size_t>(cs.K));
  conv2d_wg_ref<double>(g, xd.data(), dyd.data(), dwd.data(), dbd.data());
  const Tensor& dw = conv.weight().grad;
  for (int64_t i = 0; i < w.numel(); ++i) {
    if (conv.last_kernel(ConvPhase::wg) == ConvKernel::sparse && !keep[i])
      ASSERT_EQ(dw.data()[i], 0.0f) << "the sparse WG wrote a pruned position " << i;
    else
      ASSERT_NEAR(dw.data()[i], dwd[i], 1e-4 * (1.0 + std::abs(dwd[i]))) << "wg at " << i;
  }
  if (cs.bias)  // NOLINT
    expect_close(std::vector<double>(conv.bias().grad.data(), conv.bias().grad.data() + cs.K), dbd, 1e-4,
                 "db");

  // bp
  Tensor dx;
  std::vector<Tensor*> dxs{&dx};
  conv.bp({&x16}, y, dy16, dxs);
  ASSERT_EQ(dx.layout(), Layout::NCHW16n);
  std::vector<double> dxd(xd.size());
  conv2d_bp_ref<double>(g, dyd.data(), wd.data(), dxd.data());
  expect_close(plain_double(dx), dxd, 1e-4, "bp");

  // bp adding its gradient to one already there (Layer::set_accumulate_dx: the graph asks when another
  // reader of x wrote x's gradient first), in whichever kernel ran.
  Tensor earlier({cs.N, cs.C, cs.H, cs.H});
  fill_random(earlier, rng);
  const std::vector<double> earlier_d = plain_double(earlier);
  Tensor sum = earlier.to_layout(Layout::NCHW16n);
  std::vector<Tensor*> sums{&sum};
  conv.set_accumulate_dx(true);
  conv.bp({&x16}, y, dy16, sums);
  conv.set_accumulate_dx(false);
  std::vector<double> want_sum(dxd.size());
  for (size_t i = 0; i < dxd.size(); ++i) want_sum[i] = earlier_d[i] + dxd[i];
  expect_close(plain_double(sum), want_sum, 1e-4, "bp added to an earlier gradient");

  // The strided phase plan (Layer::set_dx_phases), in whichever kernel ran.
  if (cs.stride > 1) {
    const int64_t st = cs.stride, H = cs.H;
    auto phase_of = [&](size_t i) {  // plain index -> phase of its (h, w)
      const int64_t pos = static_cast<int64_t>(i) % (H * H);
      return static_cast<size_t>((pos / H) % st * st + pos % H % st);
    };
    std::vector<uint8_t> tapless = conv.tapless_dx_phases();
    if (!tapless.empty()) {
      // First writer: the sparse kernel leaves the tap-less phases and says so; dense leaves none.
      std::vector<uint8_t> flags;
      Tensor first(x16.shape(), Layout::NCHW16n);
      std::fill_n(first.data(), first.storage_size(), std::nanf(""));
      std::vector<Tensor*> firsts{&first};
      conv.set_dx_phases(&flags, true);
      conv.bp({&x16}, y, dy16, firsts);
      conv.set_dx_phases(nullptr, false);
      if (conv.last_kernel(ConvPhase::bp) == ConvKernel::sparse)
        EXPECT_EQ(flags, tapless);
      else
        EXPECT_TRUE(flags.empty());
      const std::vector<double> fd = plain_double(first);
      for (size_t i = 0; i < fd.size(); ++i) {
        if (!flags.empty() && flags[phase_of(i)]) {
          ASSERT_TRUE(std::isnan(fd[i])) << i;
        } else {
          ASSERT_NEAR(fd[i], dxd[i], 1e-4 * (1.0 + std::abs(dxd[i]))) << i;
        }
      }
    } else {
      // Second writer: where the first left phases (NaN here), it writes; elsewhere it adds.
      std::vector<uint8_t> flags(static_cast<size_t>(st * st), 0);
      flags[1] = 1;
      flags.back() = 1;
      Tensor prior = earlier;
      for (size_t i = 0; i < earlier_d.size(); ++i)
        if (flags[phase_of(i)]) prior.data()[i] = std::nanf("");
      Tensor second = prior.to_layout(Layout::NCHW16n);
      std::vector<Tensor*> seconds{&second};
      conv.set_accumulate_dx(true);
      conv.set_dx_phases(&flags, false);
      conv.bp({&x16}, y, dy16, seconds);
      conv.set_dx_phases(nullptr, false);
      conv.set_accumulate_dx(false);
      std::vector<double> want(dxd.size());
      for (size_t i = 0; i < dxd.size(); ++i) want[i] = flags[phase_of(i)] ? dxd[i] : want_sum[i];
      expect_close(plain_double(second), want, 1e-4, "bp writing the phases a first writer left");
    }
  }

  // Counters: each phase accounts for every multiply of the dense convolution; the sparse kernels
  // skip exactly the pruned taps' multiplies in ff (N*P*Q per pruned tap).
  for (ConvPhase p : {ConvPhase::ff, ConvPhase::bp, ConvPhase::wg}) {
    const SparseCounters& c = conv.last_counters(p);
    EXPECT_EQ(c.dense_macs, g.macs());
    EXPECT_TRUE(c.adds_up());
    if (mode == KernelMode::dense) {
      EXPECT_EQ(conv.last_kernel(p), ConvKernel::dense);
      EXPECT_EQ(c.executed_macs, g.macs());
    }
    if (mode == KernelMode::sparse) {
      EXPECT_EQ(conv.last_kernel(p), ConvKernel::sparse);
    }
  }
  if (mode == KernelMode::sparse) {
    EXPECT_EQ(conv.last_counters(ConvPhase::ff).skipped_pruned, cs.N * g.P() * g.Q() * pruned);
  }

  // The Op record carries what ran.
  const Op op = conv.describe(Phase::ff, {&x16}, y);
  EXPECT_EQ(op.kernel, conv_kernel_name(conv.last_kernel(ConvPhase::ff)));
  if (mode != KernelMode::auto_) {
    EXPECT_EQ(op.kernel, mode == KernelMode::dense ? "dense" : "sparse");
  }
  EXPECT_EQ(op.executed_macs + op.skipped(), op.dense_macs);
}

const Case kCases[] = {
    {20, 16, 8, 16, 3, 1, 1, false, 0.1},  // a partial image block (20 = 16 + 4)
    {16, 8, 9, 24, 3, 2, 1, true, 0.3},    // stride 2, bias, odd size
    {32, 16, 8, 32, 1, 2, 0, false, 0.5},  // 1x1 projection shortcut
    {16, 5, 6, 7, 3, 1, 0, true, 1.0},     // no padding, channels not a multiple of 16, all kept
    {16, 16, 6, 16, 3, 1, 1, false, 0.0},  // everything pruned
};

INSTANTIATE_TEST_SUITE_P(Cases, ConvSparse,
                         ::testing::Combine(::testing::ValuesIn(kCases),
                                            ::testing::Values(KernelMode::sparse, KernelMode::dense,
                                                              KernelMode::auto_)));

TEST(ConvSparseWg, DenseWgCoversPrunedPositionsOnlyWhenAsked) {
  Rng rng(3);
  Conv2d conv("c", 16, 16, 3, 1, 1, false);
  conv.init(rng);
  Tensor& w = conv.weight().value;
  std::vector<uint8_t> keep(static_cast<size_t>(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) {
    keep[i] = i % 5 == 0;
    if (!keep[i]) w.data()[i] = 0.0f;
  }
  SparsityContext ctx;
  ctx.mode = KernelMode::sparse;
  conv.set_sparsity(keep.data(), &ctx);
  Tensor x({16, 16, 6, 6}), dy({16, 16, 6, 6});
  fill_random(x, rng);
  fill_random(dy, rng);
  const Tensor x16 = x.to_layout(Layout::NCHW16n), dy16 = dy.to_layout(Layout::NCHW16n);
  Tensor y;
  conv.ff({&x16}, y, true);

  const ConvGeom g{16, 16, 6, 6, 16, 3, 3, 1, 1};
  const std::vector<double> xd = plain_double(x), dyd = plain_double(dy);
  std::vector<double> dwd(static_cast<size_t>(w.numel()));
  conv2d_wg_ref<double>(g, xd.data(), dyd.data(), dwd.data(), nullptr);

  conv.wg({&x16}, y, dy16);
  int64_t nonzero_pruned = 0;
  for (int64_t i = 0; i < w.numel(); ++i) nonzero_pruned += !keep[i] && conv.weight().grad.data()[i] != 0.0f;
  EXPECT_EQ(nonzero_pruned, 0);
  EXPECT_GT(conv.last_counters(ConvPhase::wg).skipped_pruned, 0);

  ctx.dense_wg = true;
  conv.wg({&x16}, y, dy16);
  for (int64_t i = 0; i < w.numel(); ++i)
    ASSERT_NEAR(conv.weight().grad.data()[i], dwd[i], 1e-4 * (1.0 + std::abs(dwd[i]))) << i;
  EXPECT_EQ(conv.last_counters(ConvPhase::wg).skipped_pruned, 0);
}

TEST(ConvSparseWeights, AMaskChangeRebuildsTheStructure) {
  Rng rng(5);
  Conv2d conv("c", 16, 16, 3, 1, 1, false);
  conv.init(rng);
  Tensor& w = conv.weight().value;
  std::vector<uint8_t> keep(static_cast<size_t>(w.numel()), 1);
  SparsityContext ctx;
  ctx.mode = KernelMode::sparse;
  conv.set_sparsity(keep.data(), &ctx);
  Tensor x({16, 16, 5, 5});
  fill_random(x, rng);
  const Tensor x16 = x.to_layout(Layout::NCHW16n);
  Tensor y;
  conv.ff({&x16}, y, true);
  EXPECT_EQ(conv.last_counters(ConvPhase::ff).skipped_pruned, 0);
  // The pruner prunes half of the weights and bumps the generation: the next ff skips them.
  for (int64_t i = 0; i < w.numel(); i += 2) {
    keep[i] = 0;
    w.data()[i] = 0.0f;
  }
  ctx.mask_generation += 1;
  conv.ff({&x16}, y, true);
  EXPECT_EQ(conv.last_counters(ConvPhase::ff).skipped_pruned, 16 * 25 * ((w.numel() + 1) / 2));
  // New values at the same positions are picked up without a rebuild (repack).
  for (int64_t i = 1; i < w.numel(); i += 2) w.data()[i] *= 2.0f;
  conv.ff({&x16}, y, true);
  const ConvGeom g{16, 16, 5, 5, 16, 3, 3, 1, 1};
  const std::vector<double> xd = plain_double(x);
  std::vector<double> wd(w.data(), w.data() + w.numel()), yd(static_cast<size_t>(16 * 16 * 25));
  conv2d_ff_ref<double>(g, xd.data(), wd.data(), nullptr, yd.data());
  expect_close(plain_double(y), yd, 1e-4, "ff after repack");
}

}  // namespace

namespace {

// The sparse convolution's epilogue sums y per channel; a batch norm reading that y takes its batch
// statistics from them instead of a pass of its own, and normalises the same (to float rounding).
TEST(ConvSparseSums, BatchNormTakesItsStatisticsFromTheConvolution) {
  Rng rng(9);
  Conv2d conv("c", 16, 32, 3, 1, 1, /*bias=*/true);
  conv.init(rng);
  Tensor& w = conv.weight().value;
  std::vector<uint8_t> keep(static_cast<size_t>(w.numel()));
  for (int64_t i = 0; i < w.numel(); ++i) {
    keep[i] = rng.uniform() < 0.2 ? 1 : 0;
    if (!keep[i]) w.data()[i] = 0.0f;
  }
  for (int64_t k = 0; k < 32; ++k)
    conv.bias().value.data()[k] = static_cast<float>(k) * 0.1f;  // a nonzero mean
  SparsityContext ctx;
  ctx.mode = KernelMode::sparse;
  conv.set_sparsity(keep.data(), &ctx);
  Tensor x({20, 16, 7, 7});
  fill_random(x, rng, 0.4);
  const Tensor x16 = x.to_layout(Layout::NCHW16n);
  Tensor y;
  conv.ff({&x16}, y, true);
  const ChannelSums* sums = conv.output_sums();
  ASSERT_NE(sums, nullptr);
  EXPECT_EQ(sums->of, &y);
  EXPECT_EQ(sums->count, 20 * 7 * 7);
  const Tensor yp = y.to_layout(Layout::plain);
  for (int64_t k = 0; k < 32; ++k) {
    double s = 0, s2 = 0;
    for (int64_t n = 0; n < 20; ++n)
      for (int64_t i = 0; i < 49; ++i) {
        const double v = yp.data()[(n * 32 + k) * 49 + i];
        s += v;
        s2 += v * v;
      }
    ASSERT_NEAR(sums->sum[k], s, 1e-4 * (1 + std::abs(s))) << k;
    ASSERT_NEAR(sums->sumsq[k], s2, 1e-4 * (1 + s2)) << k;
  }

  BatchNorm2d with("bn", 32), without("bn", 32);
  Tensor a, b;
  with.set_input_sums(sums);
  with.ff({&y}, a, true);
  without.ff({&y}, b, true);
  // One-pass sums (float per lane within an image block, double across blocks) against the batch norm's
  // own shifted two-moment pass: with channel means of up to ~3 standard deviations here, the variance
  // loses a few digits to cancellation, so outputs agree to 1e-4 relative, not to float rounding.
  const Tensor ap = a.to_layout(Layout::plain), bp = b.to_layout(Layout::plain);
  for (int64_t i = 0; i < ap.numel(); ++i)
    ASSERT_NEAR(ap.data()[i], bp.data()[i], 1e-4 * (1 + std::abs(bp.data()[i]))) << i;
  for (int64_t k = 0; k < 32; ++k) {
    EXPECT_NEAR(with.buffers()[0].tensor->data()[k], without.buffers()[0].tensor->data()[k], 1e-5);
    EXPECT_NEAR(with.buffers()[1].tensor->data()[k], without.buffers()[1].tensor->data()[k], 1e-5);
  }
  // Sums of another tensor are not used: the batch norm falls back to its own pass.
  Tensor other = y;
  with.set_input_sums(sums);
  with.ff({&other}, a, true);
  const Tensor ap2 = a.to_layout(Layout::plain);
  for (int64_t i = 0; i < ap2.numel(); ++i) ASSERT_NEAR(ap2.data()[i], bp.data()[i], 1e-5) << i;
  // A dense (oneDNN) ff leaves no sums.
  ctx.mode = KernelMode::dense;
  conv.ff({&x16}, y, true);
  EXPECT_EQ(conv.output_sums(), nullptr);
}

}  // namespace
