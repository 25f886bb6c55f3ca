// The fast non-GEMM layers (float, through their Layer objects) against the double references of
// kernels/norm_pool_ref.hpp, in every activation layout (plain, nChw16c, NCHW16n), plus the loss.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "kernels/batchnorm.hpp"
#include "kernels/norm_pool_ref.hpp"
#include "nn/layers/basic.hpp"
#include "nn/layers/batchnorm2d.hpp"
#include "nn/loss.hpp"

using namespace trainer;

namespace {

using Vec = std::vector<double>;
const Layout kLayouts[] = {Layout::plain, Layout::nChw16c, Layout::NCHW16n};

// A plain tensor of normal values (scale, offset), converted to `layout`.
Tensor random_tensor(const Shape& shape, Rng& rng, Layout layout = Layout::plain, double scale = 1.0,
                     double offset = 0.0) {
  Tensor t(shape, Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(offset + scale * rng.normal());
  return shape.size() == 4 ? t.to_layout(layout) : t;
}

// Logical contents in plain order, as double.
Vec to_vec(const Tensor& t) {
  const Tensor p = t.layout() == Layout::plain ? t : t.to_layout(Layout::plain);
  return Vec(p.data(), p.data() + p.numel());
}

void expect_close(const Tensor& got, const Vec& want, double tol, const std::string& what) {
  const Vec g = to_vec(got);
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t i = 0; i < g.size(); ++i)
    ASSERT_NEAR(g[i], want[i], tol * (1.0 + std::abs(want[i]))) << what << " at " << i;
}

// The padding of a blocked tensor (channels of nChw16c, images of NCHW16n) must hold zero.
void expect_zero_padding(const Tensor& t, const std::string& what) {
  if (t.layout() == Layout::plain) return;
  const int64_t N = t.dim(0), C = t.dim(1), HW = t.dim(2) * t.dim(3);
  const int64_t positions = t.storage_size() / 16;
  for (int64_t i = 0; i < positions; ++i)
    for (int64_t l = 0; l < 16; ++l) {
      const bool padding = t.layout() == Layout::nChw16c ? ((i / HW) % ((C + 15) / 16)) * 16 + l >= C
                                                         : (i / (C * HW)) * 16 + l >= N;
      if (padding) {
        ASSERT_EQ(t.data()[i * 16 + l], 0.0f) << what << " padding at " << i * 16 + l;
      }
    }
}

void set_param(Param& p, const Vec& v) {
  for (size_t i = 0; i < v.size(); ++i) p.value.data()[i] = static_cast<float>(v[i]);
}

Vec random_vec(int64_t n, Rng& rng, double scale = 1.0, double offset = 0.0) {
  Vec v(static_cast<size_t>(n));
  for (double& x : v) x = static_cast<float>(offset + scale * rng.normal());
  return v;
}

const char* name(Layout l) { return layout_name(l); }

}  // namespace

TEST(NormPool, BatchNormTrainingMatchesReference) {
  Rng rng(11);
  for (const Shape& s :
       {Shape{4, 16, 7, 7}, Shape{3, 20, 5, 6}, Shape{2, 3, 4, 4}, Shape{20, 5, 3, 3}, Shape{16, 2, 2, 3}}) {
    for (Layout layout : kLayouts) {
      const std::string what = shape_str(s) + " " + name(layout);
      const int64_t N = s[0], C = s[1], HW = s[2] * s[3];
      BatchNorm2d bn("bn", C);
      const Vec gamma = random_vec(C, rng, 0.3, 1.0), beta = random_vec(C, rng);
      set_param(*bn.params()[0], gamma);
      set_param(*bn.params()[1], beta);
      // A mean far from zero checks the shifted accumulation of the variance.
      const Tensor x = random_tensor(s, rng, layout, 2.0, 30.0);
      const Tensor dy = random_tensor(s, rng, layout);
      const Vec xv = to_vec(x), dyv = to_vec(dy);

      Vec y(xv.size()), mean(C), invstd(C), dgamma(C), dbeta(C), dx(xv.size());
      ref::batchnorm_ff_train(xv.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(), N,
                              C, HW, 1e-5);
      ref::batchnorm_wg(xv.data(), dyv.data(), mean.data(), invstd.data(), dgamma.data(), dbeta.data(), N, C,
                        HW);
      ref::batchnorm_bp(xv.data(), dyv.data(), gamma.data(), mean.data(), invstd.data(), dx.data(), N, C, HW);

      Tensor yt, dxt;
      bn.ff({&x}, yt, true);
      EXPECT_EQ(yt.layout(), layout);
      expect_close(yt, y, 2e-5, "bn y " + what);
      expect_zero_padding(yt, "bn y " + what);
      for (int64_t c = 0; c < C; ++c) {
        EXPECT_NEAR(bn.saved_mean()[c], mean[c], 1e-5 * std::abs(mean[c])) << what;
        EXPECT_NEAR(bn.saved_invstd()[c], invstd[c], 1e-5 * invstd[c]) << what;
      }
      // PyTorch's update: momentum 0.1 towards the batch mean and the unbiased batch variance.
      const double M = static_cast<double>(N * HW);
      auto buffers = bn.buffers();
      ASSERT_EQ(buffers.size(), 2u);
      EXPECT_EQ(buffers[0].name, "bn.running_mean");
      EXPECT_EQ(buffers[1].name, "bn.running_var");
      for (int64_t c = 0; c < C; ++c) {
        const double var = 1.0 / (invstd[c] * invstd[c]) - 1e-5;
        EXPECT_NEAR(buffers[0].tensor->data()[c], 0.1 * mean[c], 1e-5 * std::abs(mean[c])) << what;
        EXPECT_NEAR(buffers[1].tensor->data()[c], 0.9 + 0.1 * var * M / (M - 1), 1e-4) << what;
      }

      bn.wg({&x}, yt, dy);
      const Tensor& gg = bn.params()[0]->grad;
      const Tensor& gb = bn.params()[1]->grad;
      for (int64_t c = 0; c < C; ++c) {
        EXPECT_NEAR(gg.data()[c], dgamma[c], 1e-4 * (1 + std::abs(dgamma[c]))) << what;
        EXPECT_NEAR(gb.data()[c], dbeta[c], 1e-4 * (1 + std::abs(dbeta[c]))) << what;
      }
      bn.bp({&x}, yt, dy, {&dxt});
      EXPECT_EQ(dxt.layout(), layout);
      expect_close(dxt, dx, 1e-4, "bn dx after wg " + what);
      expect_zero_padding(dxt, "bn dx " + what);

      // Without wg in between, bp computes the channel sums itself.
      Tensor dx2;
      bn.ff({&x}, yt, true);
      bn.bp({&x}, yt, dy, {&dx2});
      expect_close(dx2, dx, 1e-4, "bn dx without wg " + what);
    }
  }
}

TEST(NormPool, BatchNormIsBitwiseIndependentOfThreadCount) {
  // Channel totals are summed from per-(sample, channel) partials in sample order, whatever the threads.
  Rng rng(19);
  const int keep = omp_get_max_threads();
  for (Layout layout : kLayouts) {
    const Tensor x = random_tensor({6, 20, 9, 9}, rng, layout, 1.0, 3.0);
    const Tensor dy = random_tensor({6, 20, 9, 9}, rng, layout);
    std::vector<Vec> results;
    for (int threads : {1, 3}) {
      omp_set_num_threads(threads);
      BatchNorm2d bn("bn", 20);
      Tensor y, dx;
      bn.ff({&x}, y, true);
      bn.wg({&x}, y, dy);
      bn.bp({&x}, y, dy, {&dx});
      Vec all = to_vec(y);
      const Vec d = to_vec(dx);
      all.insert(all.end(), d.begin(), d.end());
      const Tensor& gg = bn.params()[0]->grad;
      all.insert(all.end(), gg.data(), gg.data() + 20);
      results.push_back(all);
    }
    EXPECT_EQ(results[0], results[1]) << name(layout);
  }
  omp_set_num_threads(keep);
}

// Large outputs are written with non-temporal stores (plain and NCHW16n; the input gradient above 2 or
// 8 MiB by machine, the forward apply above 8 MiB): the same values as the formulas, the ReLU's and the
// residual's included, and the padding images still zero.
TEST(NormPool, BatchNormPassesOverLargeTensorsMatchFormulas) {
  Rng rng(23);
  const Shape s{36, 24, 56,
                56};  // 10.8 MB plain, 14.5 MB NCHW16n (three blocks, the last with 4 real images)
  const int64_t N = s[0], C = s[1], HW = s[2] * s[3];
  const Vec a = random_vec(C, rng), b = random_vec(C, rng), d = random_vec(C, rng);
  std::vector<float> af(a.begin(), a.end()), bf(b.begin(), b.end()), df(d.begin(), d.end());
  for (Layout layout : {Layout::plain, Layout::NCHW16n}) {
    const std::string what = name(layout);
    const Tensor x = random_tensor(s, rng, layout), r = random_tensor(s, rng, layout),
                 dy = random_tensor(s, rng, layout);
    const Vec xv = to_vec(x), rv = to_vec(r), dyv = to_vec(dy);
    Vec y(xv.size()), yr(xv.size()), dx(xv.size()), dxr(xv.size());
    for (int64_t i = 0; i < N * C * HW; ++i) {
      const int64_t c = (i / HW) % C;
      const double v = static_cast<double>(af[c]) * xv[i] + bf[c];
      y[i] = std::max(0.0, v);
      yr[i] = std::max(0.0, v + rv[i]);
      dx[i] = a[c] * dyv[i] + b[c] * xv[i] + d[c];
      dxr[i] = a[c] * (v > 0 ? dyv[i] : 0.0) + b[c] * xv[i] + d[c];
    }
    Tensor yt, yrt, dxt, dxrt;
    batchnorm_apply(x, af.data(), bf.data(), yt, true);
    expect_close(yt, y, 1e-6, "apply relu " + what);
    expect_zero_padding(yt, "apply relu " + what);
    batchnorm_apply_add(x, af.data(), bf.data(), r, yrt, true);
    expect_close(yrt, yr, 1e-6, "apply add relu " + what);
    expect_zero_padding(yrt, "apply add relu " + what);
    batchnorm_bp_apply(x, dy, af.data(), bf.data(), df.data(), dxt);
    expect_close(dxt, dx, 1e-5, "bp " + what);
    expect_zero_padding(dxt, "bp " + what);
    const FusedRelu fr{af.data(), bf.data()};
    batchnorm_bp_apply(x, dy, af.data(), bf.data(), df.data(), dxrt, &fr);
    expect_close(dxrt, dxr, 1e-5, "bp relu " + what);
    expect_zero_padding(dxrt, "bp relu " + what);
    // Streamed or not (the default threshold differs by machine), the input gradient has the same bits.
    for (const FusedRelu* relu : {static_cast<const FusedRelu*>(nullptr), &fr}) {
      Tensor streamed, cached;
      batchnorm_bp_apply(x, dy, af.data(), bf.data(), df.data(), streamed, relu, 0);
      batchnorm_bp_apply(x, dy, af.data(), bf.data(), df.data(), cached, relu,
                         std::numeric_limits<int64_t>::max());
      EXPECT_EQ(to_vec(streamed), to_vec(cached)) << what << (relu ? " relu" : "");
      EXPECT_EQ(to_vec(streamed), to_vec(relu ? dxrt : dxt)) << what << (relu ? " relu" : "");
    }
  }
}

TEST(NormPool, BatchNormEvalUsesRunningStats) {
  Rng rng(12);
  const Shape s{3, 20, 4, 5};
  for (Layout layout : kLayouts) {
    BatchNorm2d bn("bn", 20, 0.1, 1e-5);
    const Vec gamma = random_vec(20, rng, 0.3, 1.0), beta = random_vec(20, rng);
    set_param(*bn.params()[0], gamma);
    set_param(*bn.params()[1], beta);
    Tensor y;
    // Three training steps move the running statistics as PyTorch's would.
    Vec want_rm(20, 0.0), want_rv(20, 1.0);
    for (int step = 0; step < 3; ++step) {
      const Tensor x = random_tensor(s, rng, layout, 1.5, 2.0);
      bn.ff({&x}, y, true);
      const Vec xv = to_vec(x);
      Vec yr(xv.size()), mean(20), invstd(20);
      ref::batchnorm_ff_train(xv.data(), gamma.data(), beta.data(), yr.data(), mean.data(), invstd.data(), 3,
                              20, 20, 1e-5);
      for (int64_t c = 0; c < 20; ++c) {
        const double unbiased = (1.0 / (invstd[c] * invstd[c]) - 1e-5) * 60.0 / 59.0;
        want_rm[c] = 0.9 * want_rm[c] + 0.1 * mean[c];
        want_rv[c] = 0.9 * want_rv[c] + 0.1 * unbiased;
      }
    }
    auto buffers = bn.buffers();
    const Vec rm(buffers[0].tensor->data(), buffers[0].tensor->data() + 20);
    const Vec rv(buffers[1].tensor->data(), buffers[1].tensor->data() + 20);
    for (int64_t c = 0; c < 20; ++c) {
      EXPECT_NEAR(rm[c], want_rm[c], 1e-5) << "running mean, channel " << c;
      EXPECT_NEAR(rv[c], want_rv[c], 1e-5) << "running variance, channel " << c;
    }

    const Tensor x = random_tensor(s, rng, layout, 1.5, 2.0);
    const Tensor dy = random_tensor(s, rng, layout);
    const Vec xv = to_vec(x), dyv = to_vec(dy);
    Vec want(xv.size());
    ref::batchnorm_ff_eval(xv.data(), gamma.data(), beta.data(), rm.data(), rv.data(), want.data(), 3, 20, 20,
                           1e-5);
    bn.ff({&x}, y, false);
    expect_close(y, want, 2e-5, std::string("bn eval y ") + name(layout));
    expect_zero_padding(y, "bn eval y");
    for (int64_t c = 0; c < 20; ++c)
      EXPECT_EQ(buffers[0].tensor->data()[c], rm[c]) << "eval leaves running stats";

    // The running statistics are constants in evaluation: dx = gamma / sqrt(rv + eps) * dy.
    Tensor dx;
    bn.bp({&x}, y, dy, {&dx});
    for (size_t i = 0; i < want.size(); ++i) {
      const size_t c = (i / 20) % 20;
      want[i] = gamma[c] / std::sqrt(rv[c] + 1e-5) * dyv[i];
    }
    expect_close(dx, want, 2e-5, std::string("bn eval dx ") + name(layout));
  }
}

TEST(NormPool, BatchNormShapeErrorsNameTheLayer) {
  BatchNorm2d bn("stage1.bn0", 16);
  EXPECT_EQ(std::string(bn.kind()), "batchnorm2d");
  EXPECT_EQ(bn.params()[0]->name, "stage1.bn0.weight");
  EXPECT_EQ(bn.params()[1]->name, "stage1.bn0.bias");
  EXPECT_FALSE(bn.params()[0]->weight_decay);
  EXPECT_FALSE(bn.params()[1]->weight_decay);
  EXPECT_EQ(bn.params()[0]->value.data()[3], 1.0f);
  EXPECT_EQ(bn.params()[1]->value.data()[3], 0.0f);
  try {
    bn.infer_shape({{2, 8, 4, 4}});
    FAIL() << "channel mismatch accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stage1.bn0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(bn.infer_shape({{2, 16}}), Error);
  Tensor y;
  const Tensor one({1, 16, 1, 1});
  EXPECT_THROW(bn.ff({&one}, y, true), Error) << "a single value per channel has no variance";
}

TEST(NormPool, ReluMatchesReference) {
  Rng rng(13);
  for (const Shape& s : {Shape{2, 20, 5, 3}, Shape{3, 32, 4, 4}, Shape{17, 3, 2, 2}, Shape{5, 7}}) {
    for (Layout layout : kLayouts) {
      if (s.size() != 4 && layout != Layout::plain) continue;
      ReLU relu("relu");
      const Tensor x = random_tensor(s, rng, layout), dy = random_tensor(s, rng, layout);
      const Vec xv = to_vec(x), dyv = to_vec(dy);
      Vec y(xv.size()), dx(xv.size());
      ref::relu_ff(xv.data(), y.data(), static_cast<int64_t>(xv.size()));
      ref::relu_bp(y.data(), dyv.data(), dx.data(), static_cast<int64_t>(xv.size()));
      Tensor yt, dxt;
      relu.ff({&x}, yt, true);
      relu.bp({&x}, yt, dy, {&dxt});
      EXPECT_EQ(yt.layout(), x.layout());
      EXPECT_EQ(dxt.layout(), x.layout());
      expect_close(yt, y, 0, "relu y");
      expect_close(dxt, dx, 0, "relu dx");
      if (s.size() == 4) expect_zero_padding(dxt, "relu dx");
    }
  }
}

TEST(NormPool, MaxPoolMatchesReference) {
  struct Case {
    Shape s;
    int64_t k, stride, pad;
  };
  Rng rng(14);
  for (const Case& c :
       {Case{{2, 16, 8, 8}, 2, 0, 0}, Case{{2, 20, 7, 9}, 3, 2, 1}, Case{{1, 5, 6, 6}, 3, 1, 1},
        Case{{2, 17, 5, 6}, 2, 1, 0}, Case{{1, 3, 9, 7}, 3, 3, 0}, Case{{2, 16, 3, 3}, 3, 2, 1},
        Case{{1, 3, 7, 9}, 2, 2, 0}, Case{{2, 18, 5, 5}, 2, 2, 0}, Case{{18, 3, 6, 5}, 3, 2, 1}}) {
    for (Layout layout : kLayouts) {
      for (bool ties : {false, true}) {
        const std::string what = shape_str(c.s) + " k" + std::to_string(c.k) + " s" +
                                 std::to_string(c.stride) + " p" + std::to_string(c.pad) + " " +
                                 name(layout) + (ties ? " ties" : "");
        MaxPool2d pool("pool", c.k, c.stride, c.pad);
        const int64_t stride = c.stride ? c.stride : c.k;
        const int64_t N = c.s[0], C = c.s[1], H = c.s[2], W = c.s[3];
        const int64_t P = ref::pool_out_size(H, c.k, stride, c.pad),
                      Q = ref::pool_out_size(W, c.k, stride, c.pad);
        ASSERT_EQ(pool.infer_shape({c.s}), (Shape{N, C, P, Q}));
        Tensor x = random_tensor(c.s, rng, Layout::plain);
        // Few distinct values make many ties, which must go to the first maximum.
        if (ties)
          for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = std::round(x.data()[i]);
        x = x.to_layout(layout);
        const Tensor dy = random_tensor({N, C, P, Q}, rng, layout);
        const Vec xv = to_vec(x), dyv = to_vec(dy);
        Vec y(dyv.size()), dx(xv.size());
        std::vector<int32_t> argmax(dyv.size());
        ref::maxpool_ff(xv.data(), y.data(), argmax.data(), N, C, H, W, c.k, stride, c.pad);
        ref::maxpool_bp(dyv.data(), argmax.data(), dx.data(), N, C, H, W, P, Q);
        Tensor yt, dxt;
        pool.ff({&x}, yt, true);
        pool.bp({&x}, yt, dy, {&dxt});
        EXPECT_EQ(yt.layout(), layout);
        EXPECT_EQ(dxt.layout(), layout);
        expect_close(yt, y, 0, "maxpool y " + what);
        expect_close(dxt, dx, 1e-6, "maxpool dx " + what);
        expect_zero_padding(yt, "maxpool y " + what);
        expect_zero_padding(dxt, "maxpool dx " + what);
      }
    }
  }
}

TEST(NormPool, MaxPoolShapeErrors) {
  MaxPool2d pool("stage2.pool", 5, 1, 0);
  try {
    pool.infer_shape({{1, 4, 3, 8}});
    FAIL() << "kernel larger than the input accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stage2.pool"), std::string::npos) << e.what();
  }
  EXPECT_EQ(pool.infer_shape({{1, 4, 5, 5}}), (Shape{1, 4, 1, 1}));
  EXPECT_THROW(pool.infer_shape({{4, 5, 5}}), Error);
  EXPECT_THROW(MaxPool2d("p", 2, 2, 2), Error);  // padding > kernel/2
  MaxPool2d padded("p", 3, 2, 1);
  Tensor x({1, 1, 5, 5}), y;
  padded.ff({&x}, y, true);
  const Op op = padded.describe(Phase::ff, {&x}, y);
  EXPECT_EQ(op.stride[0], 2);
  EXPECT_EQ(op.pad[1], 1);
  EXPECT_EQ(op.w_shape[3], 3);
  EXPECT_EQ(op.y_shape, (std::array<int64_t, 4>{1, 1, 3, 3}));
}

TEST(NormPool, GlobalAvgPoolMatchesReference) {
  Rng rng(15);
  for (const Shape& s : {Shape{2, 20, 7, 7}, Shape{3, 16, 1, 1}, Shape{1, 5, 40, 40}, Shape{18, 3, 3, 3}}) {
    for (Layout layout : kLayouts) {
      GlobalAvgPool gap("gap");
      const int64_t N = s[0], C = s[1], HW = s[2] * s[3];
      ASSERT_EQ(gap.infer_shape({s}), (Shape{N, C}));
      const Tensor x = random_tensor(s, rng, layout), dy = random_tensor({N, C}, rng);
      const Vec xv = to_vec(x), dyv = to_vec(dy);
      Vec y(dyv.size()), dx(xv.size());
      ref::gap_ff(xv.data(), y.data(), N, C, HW);
      ref::gap_bp(dyv.data(), dx.data(), N, C, HW);
      Tensor yt, dxt;
      gap.ff({&x}, yt, true);
      gap.bp({&x}, yt, dy, {&dxt});
      EXPECT_EQ(yt.layout(), Layout::plain);
      EXPECT_EQ(yt.shape(), (Shape{N, C}));
      EXPECT_EQ(dxt.layout(), layout);
      expect_close(yt, y, 1e-6, "gap y");
      expect_close(dxt, dx, 1e-6, "gap dx");
      expect_zero_padding(dxt, "gap dx");
    }
  }
  EXPECT_THROW(GlobalAvgPool("g").infer_shape({{2, 3}}), Error);
}

TEST(NormPool, FlattenFromEveryLayout) {
  Rng rng(16);
  const Shape s{17, 20, 2, 3};
  const Tensor plain = random_tensor(s, rng);
  for (Layout layout : kLayouts) {
    Flatten flat("flatten");
    ASSERT_EQ(flat.infer_shape({s}), (Shape{17, 120}));
    const Tensor x = plain.to_layout(layout);
    Tensor y, dx;
    flat.ff({&x}, y, true);
    EXPECT_EQ(y.shape(), (Shape{17, 120}));
    EXPECT_EQ(y.layout(), Layout::plain);
    for (int64_t i = 0; i < plain.numel(); ++i)
      ASSERT_EQ(y.data()[i], plain.data()[i]) << name(layout) << " " << i;
    const Tensor dy = random_tensor({17, 120}, rng);
    flat.bp({&x}, y, dy, {&dx});
    EXPECT_EQ(dx.shape(), s);
    EXPECT_EQ(dx.layout(), layout);
    const Vec back = to_vec(dx);
    for (int64_t i = 0; i < dy.numel(); ++i) ASSERT_EQ(back[i], dy.data()[i]) << name(layout) << " " << i;
    expect_zero_padding(dx, "flatten dx");
  }
  EXPECT_THROW(Flatten("f").infer_shape({{5}}), Error);
}

TEST(NormPool, AddEveryLayout) {
  Rng rng(17);
  const Shape s{2, 20, 3, 3};
  for (Layout layout : kLayouts) {
    Add add("add");
    EXPECT_EQ(add.num_inputs(), 2);
    const Tensor a = random_tensor(s, rng, layout), b = random_tensor(s, rng, layout);
    const Tensor dy = random_tensor(s, rng, layout);
    Tensor y, da, db;
    add.ff({&a, &b}, y, true);
    EXPECT_EQ(y.layout(), layout);
    const Vec av = to_vec(a), bv = to_vec(b);
    Vec want(av.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<float>(av[i] + bv[i]);
    expect_close(y, want, 0, "add y");
    add.bp({&a, &b}, y, dy, {&da, nullptr});
    expect_close(da, to_vec(dy), 0, "add dx0");
    EXPECT_TRUE(db.empty()) << "a null gradient is left alone";
    add.bp({&a, &b}, y, dy, {&da, &db});
    expect_close(db, to_vec(dy), 0, "add dx1");
    EXPECT_EQ(db.layout(), layout);
  }
  Add add("stage3.add");
  try {
    add.infer_shape({{2, 16, 4, 4}, {2, 16, 2, 2}});
    FAIL() << "different shapes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stage3.add"), std::string::npos) << e.what();
  }
  const Tensor a(s), b(s, Layout::nChw16c);
  Tensor y;
  EXPECT_THROW(add.ff({&a, &b}, y, true), Error);
}

TEST(NormPool, SoftmaxCrossEntropyMatchesDirectComputation) {
  Rng rng(18);
  const int64_t N = 6, K = 10;
  Tensor logits = random_tensor({N, K}, rng, Layout::plain, 3.0);
  std::vector<int32_t> labels(N);
  for (auto& l : labels) l = static_cast<int32_t>(rng.below(K));
  // A row far from zero: subtracting the maximum keeps it finite.
  for (int64_t k = 0; k < K; ++k) logits.data()[K + k] += 1000.0f;
  SoftmaxCrossEntropy loss;
  const float value = loss.ff(logits, labels);
  double want = 0;
  int64_t correct = 0;
  Vec grad(N * K);
  for (int64_t n = 0; n < N; ++n) {
    const float* z = logits.data() + n * K;
    const double zmax = *std::max_element(z, z + K);
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(z[k] - zmax);
    want += -(z[labels[n]] - zmax - std::log(sum));
    correct += std::max_element(z, z + K) - z == labels[n];
    for (int64_t k = 0; k < K; ++k) grad[n * K + k] = (std::exp(z[k] - zmax) / sum - (k == labels[n])) / N;
  }
  want /= N;
  EXPECT_TRUE(std::isfinite(value));
  EXPECT_NEAR(value, want, 1e-5 * want);
  EXPECT_EQ(loss.correct(), correct);
  Tensor dlogits;
  loss.bp(dlogits);
  EXPECT_EQ(dlogits.shape(), (Shape{N, K}));
  expect_close(dlogits, grad, 1e-6, "dlogits");

  // The reference agrees too.
  const Vec zv = to_vec(logits);
  Vec probs(N * K);
  EXPECT_NEAR(value, ref::softmax_xent_ff(zv.data(), labels.data(), probs.data(), N, K), 1e-5 * want);

  // A confident, correct batch.
  Tensor sure({2, 3});
  sure.at(0, 1) = 50.0f;
  sure.at(1, 2) = 50.0f;
  EXPECT_NEAR(loss.ff(sure, {1, 2}), 0.0, 1e-6);
  EXPECT_EQ(loss.correct(), 2);
  EXPECT_EQ(loss.ff(sure, {0, 2}) > 10.0f, true);
  EXPECT_EQ(loss.correct(), 1);
}

TEST(NormPool, SoftmaxCrossEntropyRejectsBadLabels) {
  SoftmaxCrossEntropy loss;
  const Tensor logits({3, 4});
  try {
    loss.ff(logits, {0, 7, 1});
    FAIL() << "label 7 of 4 classes accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("label 7"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row 1"), std::string::npos) << msg;
  }
  EXPECT_THROW(loss.ff(logits, {0, 1, -1}), Error);
  EXPECT_THROW(loss.ff(logits, {0, 1}), Error);
  EXPECT_THROW(loss.ff(Tensor({3, 4, 1, 1}), {0, 1, 2}), Error);
}
