// Gradients of convolution and linear layers:
//  - the double-precision reference bp and wg against central finite differences of the reference ff,
//    for the loss L = sum(y * r) with random r (so dL/dy = r);
//  - the Conv2d and Linear layers (float, oneDNN) against the reference, through the Layer interface;
//  - shape checking, parameters, initialisation and the Op record.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "kernels/conv_ref.hpp"
#include "nn/layers/conv2d.hpp"
#include "nn/layers/linear.hpp"

using namespace trainer;

namespace {

std::vector<double> random_vector(size_t n, Rng& rng) {
  std::vector<double> v(n);
  for (double& e : v) e = 2 * rng.uniform() - 1;
  return v;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Checks analytic[i] == dL/dv[i] for every element of v, by central differences of loss().
template <typename Loss>
void check_against_finite_differences(std::vector<double>& v, const std::vector<double>& analytic, Loss loss,
                                      const char* what) {
  const double h = 1e-5;
  for (size_t i = 0; i < v.size(); ++i) {
    const double saved = v[i];
    v[i] = saved + h;
    const double up = loss();
    v[i] = saved - h;
    const double down = loss();
    v[i] = saved;
    const double numeric = (up - down) / (2 * h);
    ASSERT_NEAR(analytic[i], numeric, 1e-7 * std::max(1.0, std::fabs(numeric))) << what << " element " << i;
  }
}

Tensor random_tensor(const Shape& shape, Layout layout, Rng& rng) {
  Tensor t(shape, Layout::plain);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(2 * rng.uniform() - 1);
  return t.to_layout(layout);
}

std::vector<float> plain_values(const Tensor& t) {
  const Tensor p = t.rank() == 4 ? t.to_layout(Layout::plain) : t;
  return std::vector<float>(p.data(), p.data() + p.numel());
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float scale = 1.0f;
  for (float v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-4f * scale) << what << " element " << i;
}

// Runs f and expects a trainer::Error whose message names `layer`.
template <typename F>
void expect_error_naming(F f, const std::string& layer) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(layer), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(ConvReference, GradientsMatchFiniteDifferences) {
  struct Case {
    int64_t N, C, H, W, K, R, stride, pad;
  };
  Rng rng(1);
  for (const Case& c :
       {Case{2, 3, 6, 5, 4, 3, 1, 1}, Case{1, 2, 7, 7, 3, 3, 2, 0}, Case{2, 2, 5, 6, 2, 1, 2, 0},
        Case{1, 2, 4, 4, 2, 5, 1, 2}, Case{1, 1, 9, 8, 2, 4, 3, 1}}) {
    SCOPED_TRACE(fmt::format("C{} K{} R{} s{} p{}", c.C, c.K, c.R, c.stride, c.pad));
    const ConvGeom g{c.N, c.C, c.H, c.W, c.K, c.R, c.R, c.stride, c.pad};
    std::vector<double> x = random_vector(static_cast<size_t>(c.N * c.C * c.H * c.W), rng);
    std::vector<double> w = random_vector(static_cast<size_t>(c.K * c.C * c.R * c.R), rng);
    std::vector<double> b = random_vector(static_cast<size_t>(c.K), rng);
    const std::vector<double> r = random_vector(static_cast<size_t>(c.N * c.K * g.P() * g.Q()), rng);
    std::vector<double> y(r.size());
    auto loss = [&] {
      conv2d_ff_ref<double>(g, x.data(), w.data(), b.data(), y.data());
      return dot(y, r);
    };
    std::vector<double> dx(x.size()), dw(w.size()), db(b.size());
    conv2d_bp_ref<double>(g, r.data(), w.data(), dx.data());
    conv2d_wg_ref<double>(g, x.data(), r.data(), dw.data(), db.data());
    check_against_finite_differences(x, dx, loss, "dx");
    check_against_finite_differences(w, dw, loss, "dw");
    check_against_finite_differences(b, db, loss, "db");
  }
}

TEST(LinearReference, GradientsMatchFiniteDifferences) {
  Rng rng(2);
  for (auto [N, I, O] : {std::tuple<int64_t, int64_t, int64_t>{1, 5, 3}, {4, 7, 6}, {3, 16, 10}}) {
    std::vector<double> x = random_vector(static_cast<size_t>(N * I), rng);
    std::vector<double> w = random_vector(static_cast<size_t>(O * I), rng);
    std::vector<double> b = random_vector(static_cast<size_t>(O), rng);
    const std::vector<double> r = random_vector(static_cast<size_t>(N * O), rng);
    std::vector<double> y(r.size());
    auto loss = [&] {
      linear_ff_ref<double>(N, I, O, x.data(), w.data(), b.data(), y.data());
      return dot(y, r);
    };
    std::vector<double> dx(x.size()), dw(w.size()), db(b.size());
    linear_bp_ref<double>(N, I, O, r.data(), w.data(), dx.data());
    linear_wg_ref<double>(N, I, O, x.data(), r.data(), dw.data(), db.data());
    check_against_finite_differences(x, dx, loss, "dx");
    check_against_finite_differences(w, dw, loss, "dw");
    check_against_finite_differences(b, db, loss, "db");
  }
}

TEST(Conv2dLayer, PhasesMatchReference) {
  struct Case {
    int64_t N, C, H, W, K, R, stride, pad;
    bool bias;
    Layout layout;
  };
  Rng rng(3);
  for (const Case& c : {Case{4, 16, 9, 9, 16, 3, 1, 1, false, Layout::nChw16c},
                        Case{4, 16, 9, 9, 32, 1, 2, 0, false, Layout::nChw16c},
                        Case{3, 3, 11, 11, 16, 3, 1, 1, true, Layout::plain},
                        Case{3, 6, 10, 10, 16, 5, 1, 0, true, Layout::plain},
                        Case{2, 1, 12, 12, 6, 5, 1, 2, true, Layout::plain}}) {
    SCOPED_TRACE(fmt::format("C{} K{} {}", c.C, c.K, layout_name(c.layout)));
    Conv2d conv("block.conv", c.C, c.K, c.R, c.stride, c.pad, c.bias);
    conv.init(rng);
    const Tensor x = random_tensor({c.N, c.C, c.H, c.W}, c.layout, rng);
    const Shape y_shape = conv.infer_shape({x.shape()});
    Tensor y;
    conv.ff({&x}, y, true);
    ASSERT_EQ(y.shape(), y_shape);
    const Tensor dy = random_tensor(y_shape, y.layout(), rng);
    Tensor dx;
    conv.wg({&x}, y, dy);
    conv.bp({&x}, y, dy, {&dx});
    ASSERT_EQ(dx.shape(), x.shape());
    ASSERT_EQ(dx.layout(), x.layout());

    const ConvGeom g{c.N, c.C, c.H, c.W, c.K, c.R, c.R, c.stride, c.pad};
    const std::vector<float> xp = plain_values(x), dyp = plain_values(dy);
    const float* w = conv.weight().value.data();
    const float* b = c.bias ? conv.bias().value.data() : nullptr;
    std::vector<float> y_ref(dyp.size()), dx_ref(xp.size()),
        dw_ref(static_cast<size_t>(conv.weight().value.numel())), db_ref(static_cast<size_t>(c.K));
    conv2d_ff_ref<float>(g, xp.data(), w, b, y_ref.data());
    conv2d_bp_ref<float>(g, dyp.data(), w, dx_ref.data());
    conv2d_wg_ref<float>(g, xp.data(), dyp.data(), dw_ref.data(), db_ref.data());
    expect_close(plain_values(y), y_ref, "y");
    expect_close(plain_values(dx), dx_ref, "dx");
    expect_close(plain_values(conv.weight().grad), dw_ref, "weight.grad");
    if (c.bias) expect_close(plain_values(conv.bias().grad), db_ref, "bias.grad");

    // The first layer's input needs no gradient: bp with a null dx does nothing.
    EXPECT_NO_THROW(conv.bp({&x}, y, dy, {nullptr}));
  }
}

TEST(LinearLayer, PhasesMatchReference) {
  Rng rng(4);
  for (bool bias : {true, false}) {
    const int64_t N = 6, I = 24, O = 10;
    Linear fc("head.fc", I, O, bias);
    fc.init(rng);
    const Tensor x = random_tensor({N, I}, Layout::plain, rng);
    Tensor y, dx;
    fc.ff({&x}, y, true);
    ASSERT_EQ(y.shape(), (Shape{N, O}));
    const Tensor dy = random_tensor({N, O}, Layout::plain, rng);
    fc.wg({&x}, y, dy);
    fc.bp({&x}, y, dy, {&dx});
    const float* w = fc.weight().value.data();
    std::vector<float> y_ref(static_cast<size_t>(N * O)), dx_ref(static_cast<size_t>(N * I)),
        dw_ref(static_cast<size_t>(O * I)), db_ref(static_cast<size_t>(O));
    linear_ff_ref<float>(N, I, O, x.data(), w, bias ? fc.bias().value.data() : nullptr, y_ref.data());
    linear_bp_ref<float>(N, I, O, dy.data(), w, dx_ref.data());
    linear_wg_ref<float>(N, I, O, x.data(), dy.data(), dw_ref.data(), db_ref.data());
    expect_close(plain_values(y), y_ref, "y");
    expect_close(plain_values(dx), dx_ref, "dx");
    expect_close(plain_values(fc.weight().grad), dw_ref, "weight.grad");
    if (bias) expect_close(plain_values(fc.bias().grad), db_ref, "bias.grad");
  }
}

TEST(Conv2dLayer, InferShapeRejectsBadShapesNamingTheLayer) {
  Conv2d conv("stage2.block1.conv1", 16, 32, 3, 2, 1);
  EXPECT_EQ(conv.infer_shape({{8, 16, 15, 15}}), (Shape{8, 32, 8, 8}));
  expect_error_naming([&] { conv.infer_shape({{8, 16, 15}}); }, "stage2.block1.conv1");     // rank
  expect_error_naming([&] { conv.infer_shape({{8, 3, 15, 15}}); }, "stage2.block1.conv1");  // channels
  expect_error_naming([&] { conv.infer_shape({{8, 16, 15, 15}, {8, 16, 15, 15}}); }, "stage2.block1.conv1");
  Conv2d big("stem", 3, 16, 7, 1, 1);
  EXPECT_EQ(big.infer_shape({{1, 3, 5, 5}}), (Shape{1, 16, 1, 1}));       // 5 + 2 = 7 fits exactly
  expect_error_naming([&] { big.infer_shape({{1, 3, 4, 9}}); }, "stem");  // kernel larger than padded input
  expect_error_naming([&] { Conv2d("bad.conv", 0, 16, 3); }, "bad.conv");
  expect_error_naming([&] { Conv2d("bad.conv", 3, 16, 3, 0); }, "bad.conv");

  Linear fc("classifier", 64, 10);
  EXPECT_EQ(fc.infer_shape({{5, 64}}), (Shape{5, 10}));
  expect_error_naming([&] { fc.infer_shape({{5, 64, 1, 1}}); }, "classifier");  // needs flatten first
  expect_error_naming([&] { fc.infer_shape({{5, 63}}); }, "classifier");
  Tensor blocked({5, 64, 1, 1}, Layout::nChw16c), y;
  expect_error_naming([&] { fc.ff({&blocked}, y, true); }, "classifier");
}

TEST(Conv2dLayer, ParamsInitAndOpRecord) {
  Conv2d conv("c1", 3, 16, 3, 2, 1, true);
  ASSERT_EQ(conv.params().size(), 2u);
  EXPECT_EQ(conv.params()[0]->name, "c1.weight");
  EXPECT_EQ(conv.params()[0]->value.shape(), (Shape{16, 3, 3, 3}));
  EXPECT_TRUE(conv.params()[0]->weight_decay);
  EXPECT_EQ(conv.params()[1]->name, "c1.bias");
  EXPECT_FALSE(conv.params()[1]->weight_decay);
  EXPECT_EQ(Conv2d("c2", 3, 16, 3).params().size(), 1u);
  EXPECT_STREQ(conv.kind(), "conv2d");

  Rng rng(5);
  conv.init(rng);
  const double bound = 1.0 / std::sqrt(27.0);
  for (Param* p : conv.params()) {
    float lo = 1, hi = -1;
    for (int64_t i = 0; i < p->value.numel(); ++i) {
      lo = std::min(lo, p->value.data()[i]);
      hi = std::max(hi, p->value.data()[i]);
    }
    EXPECT_GE(lo, -bound);
    EXPECT_LE(hi, bound);
    EXPECT_LT(lo, -0.3 * bound) << p->name;  // spread over the range, not all zero
    EXPECT_GT(hi, 0.3 * bound) << p->name;
  }

  const Tensor x({4, 3, 9, 9});
  Tensor y;
  conv.ff({&x}, y, false);
  for (Phase ph : {Phase::ff, Phase::bp, Phase::wg}) {
    const Op op = conv.describe(ph, {&x}, y);
    EXPECT_EQ(op.kind, "conv2d");
    EXPECT_EQ(op.w_shape, (std::array<int64_t, 4>{16, 3, 3, 3}));
    EXPECT_EQ(op.y_shape, (std::array<int64_t, 4>{4, 16, 5, 5}));
    EXPECT_EQ(op.stride, (std::array<int32_t, 2>{2, 2}));
    EXPECT_EQ(op.pad, (std::array<int32_t, 2>{1, 1}));
    EXPECT_EQ(op.dense_macs, 4u * 16 * 5 * 5 * 3 * 3 * 3);
  }

  Linear fc("fc", 20, 7);
  EXPECT_STREQ(fc.kind(), "linear");
  ASSERT_EQ(fc.params().size(), 2u);
  EXPECT_EQ(fc.params()[0]->value.shape(), (Shape{7, 20}));
  EXPECT_FALSE(fc.params()[1]->weight_decay);
  fc.init(rng);
  const Tensor xf({3, 20});
  Tensor yf;
  fc.ff({&xf}, yf, false);
  const Op op = fc.describe(Phase::wg, {&xf}, yf);
  EXPECT_EQ(op.w_shape, (std::array<int64_t, 4>{7, 20, 1, 1}));
  EXPECT_EQ(op.dense_macs, 3u * 7 * 20);
  // The output of ff with zero input is the bias.
  for (int64_t o = 0; o < 7; ++o) EXPECT_EQ(yf.at(1, o), fc.bias().value.data()[o]);
}
