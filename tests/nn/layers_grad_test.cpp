// The reference layers' bp (and batch norm's wg) against central finite differences of their own ff,
// in double, with the scalar loss L = sum(y * r) for a fixed random r (so dL/dy = r).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <vector>

#include "core/rng.hpp"
#include "kernels/norm_pool_ref.hpp"

using namespace trainer;

namespace {

using Vec = std::vector<double>;

Vec random_vec(int64_t n, Rng& rng, double scale = 1.0, double offset = 0.0) {
  Vec v(static_cast<size_t>(n));
  for (double& x : v) x = offset + scale * rng.normal();
  return v;
}

double dot(const Vec& a, const Vec& b) { return std::inner_product(a.begin(), a.end(), b.begin(), 0.0); }

// Central difference of loss() with respect to every entry of v, compared with the analytic gradient.
void expect_gradient(Vec& v, const Vec& analytic, const std::function<double()>& loss, const char* what,
                     double h = 1e-5, double tol = 1e-6) {
  ASSERT_EQ(v.size(), analytic.size()) << what;
  double scale = 1e-3;
  for (double g : analytic) scale = std::max(scale, std::abs(g));
  for (size_t i = 0; i < v.size(); ++i) {
    const double keep = v[i];
    v[i] = keep + h;
    const double up = loss();
    v[i] = keep - h;
    const double down = loss();
    v[i] = keep;
    const double numeric = (up - down) / (2 * h);
    ASSERT_NEAR(analytic[i], numeric, tol * scale) << what << " entry " << i;
  }
}

struct Shape4 {
  int64_t N, C, H, W;
  int64_t size() const { return N * C * H * W; }
};

}  // namespace

TEST(LayersGrad, BatchNormTrainingBpAndWg) {
  Rng rng(1);
  for (Shape4 s : {Shape4{2, 3, 4, 5}, Shape4{3, 17, 3, 3}, Shape4{5, 2, 1, 1}}) {
    const int64_t HW = s.H * s.W;
    Vec x = random_vec(s.size(), rng, 2.0, 1.5);
    Vec gamma = random_vec(s.C, rng, 0.5, 1.0);
    Vec beta = random_vec(s.C, rng);
    const Vec r = random_vec(s.size(), rng);
    Vec y(x.size()), mean(s.C), invstd(s.C);
    auto loss = [&] {
      ref::batchnorm_ff_train(x.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(), s.N,
                              s.C, HW, 1e-5);
      return dot(y, r);
    };
    loss();
    Vec dgamma(s.C), dbeta(s.C), dx(x.size());
    ref::batchnorm_wg(x.data(), r.data(), mean.data(), invstd.data(), dgamma.data(), dbeta.data(), s.N, s.C,
                      HW);
    ref::batchnorm_bp(x.data(), r.data(), gamma.data(), mean.data(), invstd.data(), dx.data(), s.N, s.C, HW);
    expect_gradient(x, dx, loss, "batchnorm dx");
    expect_gradient(gamma, dgamma, loss, "batchnorm dgamma");
    expect_gradient(beta, dbeta, loss, "batchnorm dbeta");
  }
}

TEST(LayersGrad, BatchNormEvalIsAffine) {
  // Evaluation with running statistics is y = gamma*(x - rm)/sqrt(rv + eps) + beta.
  Rng rng(2);
  const Shape4 s{2, 5, 3, 2};
  const Vec x = random_vec(s.size(), rng), gamma = random_vec(s.C, rng), beta = random_vec(s.C, rng);
  const Vec rm = random_vec(s.C, rng);
  Vec rv(s.C);
  for (double& v : rv) v = 0.5 + rng.uniform();
  Vec y(x.size());
  ref::batchnorm_ff_eval(x.data(), gamma.data(), beta.data(), rm.data(), rv.data(), y.data(), s.N, s.C,
                         s.H * s.W, 1e-5);
  for (int64_t i = 0; i < s.size(); ++i) {
    const int64_t c = (i / (s.H * s.W)) % s.C;
    EXPECT_NEAR(y[i], gamma[c] * (x[i] - rm[c]) / std::sqrt(rv[c] + 1e-5) + beta[c], 1e-12);
  }
}

TEST(LayersGrad, ReluBp) {
  Rng rng(3);
  for (int64_t n : {7, 64, 331}) {
    Vec x = random_vec(n, rng);
    // Keep away from the kink, where the difference quotient is not the derivative.
    for (double& v : x)
      if (std::abs(v) < 1e-3) v = 0.5;
    const Vec r = random_vec(n, rng);
    Vec y(x.size()), dx(x.size());
    auto loss = [&] {
      ref::relu_ff(x.data(), y.data(), n);
      return dot(y, r);
    };
    loss();
    ref::relu_bp(y.data(), r.data(), dx.data(), n);
    expect_gradient(x, dx, loss, "relu dx");
  }
}

TEST(LayersGrad, MaxPoolBp) {
  struct Case {
    Shape4 s;
    int64_t k, stride, pad;
  };
  Rng rng(4);
  for (const Case& c :
       {Case{{2, 3, 6, 6}, 2, 2, 0}, Case{{1, 17, 7, 5}, 3, 2, 1}, Case{{2, 2, 5, 5}, 3, 1, 1},
        Case{{1, 4, 5, 6}, 2, 1, 0}, Case{{1, 2, 9, 7}, 3, 3, 0}}) {
    const Shape4 s = c.s;
    const int64_t P = ref::pool_out_size(s.H, c.k, c.stride, c.pad);
    const int64_t Q = ref::pool_out_size(s.W, c.k, c.stride, c.pad);
    // Distinct values at least 0.01 apart, so that a step of 1e-5 never changes which input wins.
    std::vector<int64_t> perm(static_cast<size_t>(s.size()));
    std::iota(perm.begin(), perm.end(), 0);
    for (size_t i = perm.size(); i > 1; --i) std::swap(perm[i - 1], perm[rng.below(i)]);
    Vec x(perm.size());
    for (size_t i = 0; i < x.size(); ++i) x[i] = 0.01 * static_cast<double>(perm[i]) - 1.0;
    const Vec r = random_vec(s.N * s.C * P * Q, rng);
    Vec y(r.size()), dx(x.size());
    std::vector<int32_t> argmax(r.size());
    auto loss = [&] {
      ref::maxpool_ff(x.data(), y.data(), argmax.data(), s.N, s.C, s.H, s.W, c.k, c.stride, c.pad);
      return dot(y, r);
    };
    loss();
    ref::maxpool_bp(r.data(), argmax.data(), dx.data(), s.N, s.C, s.H, s.W, P, Q);
    expect_gradient(x, dx, loss, "maxpool dx");
  }
}

TEST(LayersGrad, MaxPoolTiesGoToTheFirstMaximum) {
  // One plane of equal values: every window picks its top-left input, as PyTorch does.
  Vec x(16, 1.0), y(4);
  std::vector<int32_t> argmax(4);
  ref::maxpool_ff(x.data(), y.data(), argmax.data(), 1, 1, 4, 4, 2, 2, 0);
  EXPECT_EQ(argmax, (std::vector<int32_t>{0, 2, 8, 10}));
}

TEST(LayersGrad, GlobalAvgPoolBp) {
  Rng rng(5);
  for (Shape4 s : {Shape4{2, 3, 4, 4}, Shape4{1, 17, 3, 5}}) {
    Vec x = random_vec(s.size(), rng);
    const Vec r = random_vec(s.N * s.C, rng);
    Vec y(r.size()), dx(x.size());
    auto loss = [&] {
      ref::gap_ff(x.data(), y.data(), s.N, s.C, s.H * s.W);
      return dot(y, r);
    };
    loss();
    ref::gap_bp(r.data(), dx.data(), s.N, s.C, s.H * s.W);
    expect_gradient(x, dx, loss, "global average pool dx");
  }
}

TEST(LayersGrad, SoftmaxCrossEntropyBp) {
  Rng rng(6);
  for (auto [N, K] : {std::pair<int64_t, int64_t>{1, 2}, {4, 10}, {7, 3}}) {
    Vec z = random_vec(N * K, rng, 3.0);
    std::vector<int32_t> labels(static_cast<size_t>(N));
    for (auto& l : labels) l = static_cast<int32_t>(rng.below(static_cast<uint64_t>(K)));
    Vec probs(z.size()), dz(z.size());
    auto loss = [&] { return ref::softmax_xent_ff(z.data(), labels.data(), probs.data(), N, K); };
    loss();
    ref::softmax_xent_bp(probs.data(), labels.data(), dz.data(), N, K);
    expect_gradient(z, dz, loss, "softmax cross-entropy dlogits");
  }
}
