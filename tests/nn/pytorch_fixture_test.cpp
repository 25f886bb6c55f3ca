// Layer outputs and gradients against fixtures produced by PyTorch (tests/fixtures/make_fixtures.py).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.hpp"
#include "nn/layers/basic.hpp"
#include "nn/layers/batchnorm2d.hpp"
#include "nn/layers/conv2d.hpp"
#include "nn/layers/linear.hpp"
#include "nn/loss.hpp"

using namespace trainer;

namespace {

std::map<std::string, Tensor> load_fixture(const std::string& name) {
  const std::string path = std::string(TRAINER_FIXTURE_DIR) + "/" + name + ".txt";
  std::ifstream in(path);
  if (!in) throw Error("cannot open fixture " + path);
  std::map<std::string, Tensor> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream s(line);
    std::string key;
    int ndim = 0;
    s >> key >> ndim;
    Shape shape(ndim);
    for (auto& d : shape) s >> d;
    Tensor t(shape);
    for (int64_t i = 0; i < t.numel(); ++i) s >> t.data()[i];
    if (!s) throw Error("fixture " + path + ": short line for " + key);
    out.emplace(key, std::move(t));
  }
  return out;
}

// Compares logical contents (any layout) with a tolerance relative to the tensor's magnitude.
void expect_close(const Tensor& got, const Tensor& want, const char* what, double rtol = 1e-4) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  const Tensor g = got.rank() == 4 ? got.to_layout(Layout::plain) : got;
  double scale = 1e-6;
  for (int64_t i = 0; i < want.numel(); ++i) scale = std::max(scale, std::fabs(double(want.data()[i])));
  for (int64_t i = 0; i < want.numel(); ++i)
    ASSERT_NEAR(g.data()[i], want.data()[i], rtol * scale) << what << " at " << i;
}

// Runs ff, wg (if any params), bp on a layer and checks y, dx and parameter gradients.
void check_layer(Layer& layer, std::map<std::string, Tensor>& f, Layout layout) {
  Tensor x = f.at("x").to_layout(layout);
  Tensor y;
  layer.ff({&x}, y, true);
  expect_close(y, f.at("y"), "y");
  Tensor dy = f.at("dy");
  if (y.rank() == 4) dy = dy.to_layout(y.layout());
  if (!layer.params().empty()) layer.wg({&x}, y, dy);
  Tensor dx;
  layer.bp({&x}, y, dy, {&dx});
  EXPECT_EQ(dx.layout(), x.layout());
  expect_close(dx, f.at("dx"), "dx");
  for (Param* p : layer.params()) {
    const std::string key = p->name.substr(p->name.rfind('.') + 1);
    expect_close(p->grad, f.at("d" + key), p->name.c_str());
  }
}

void set_params(Layer& layer, std::map<std::string, Tensor>& f) {
  for (Param* p : layer.params()) {
    const std::string key = p->name.substr(p->name.rfind('.') + 1);
    p->value = f.at(key);
  }
}

class PyTorchFixture : public ::testing::TestWithParam<Layout> {};

}  // namespace

TEST_P(PyTorchFixture, Conv2d) {
  for (const char* name : {"conv2d_3x3_s2_p1", "conv2d_5x5_p2_bias", "conv2d_1x1_s2_c16", "conv2d_3x3_c16"}) {
    SCOPED_TRACE(name);
    auto f = load_fixture(name);
    const float* c = f.at("config").data();  // [C, K, R, stride, pad, bias]
    Conv2d conv("conv", int64_t(c[0]), int64_t(c[1]), int64_t(c[2]), int64_t(c[3]), int64_t(c[4]), c[5] != 0);
    set_params(conv, f);
    check_layer(conv, f, GetParam());
  }
}

TEST_P(PyTorchFixture, BatchNorm2dTrainingAndEval) {
  for (const char* name : {"batchnorm2d_c3", "batchnorm2d_c20"}) {
    SCOPED_TRACE(name);
    auto f = load_fixture(name);
    BatchNorm2d bn("bn", f.at("x").dim(1));
    set_params(bn, f);
    check_layer(bn, f, GetParam());
    for (const Buffer& b : bn.buffers()) {
      const std::string key = b.name.substr(b.name.rfind('.') + 1);
      expect_close(*b.tensor, f.at(key), b.name.c_str());
    }
    Tensor x = f.at("x").to_layout(GetParam()), y;
    bn.ff({&x}, y, false);
    expect_close(y, f.at("y_eval"), "y_eval");
  }
}

TEST_P(PyTorchFixture, ReluMaxPoolGlobalAvgPool) {
  {
    auto f = load_fixture("relu");
    ReLU relu("relu");
    check_layer(relu, f, GetParam());
  }
  for (const char* name : {"maxpool_k2", "maxpool_k3_s2_p1"}) {
    SCOPED_TRACE(name);
    auto f = load_fixture(name);
    const float* c = f.at("config").data();
    MaxPool2d pool("pool", int64_t(c[0]), int64_t(c[1]), int64_t(c[2]));
    check_layer(pool, f, GetParam());
  }
  {
    auto f = load_fixture("global_avg_pool");
    GlobalAvgPool gap("gap");
    check_layer(gap, f, GetParam());
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, PyTorchFixture, ::testing::Values(Layout::plain, Layout::nChw16c),
                         [](const auto& info) { return std::string(layout_name(info.param)); });

TEST(PyTorchFixtureFlat, Linear) {
  auto f = load_fixture("linear");
  Linear fc("fc", f.at("x").dim(1), f.at("y").dim(1), true);
  set_params(fc, f);
  check_layer(fc, f, Layout::plain);
}

TEST(PyTorchFixtureFlat, SoftmaxCrossEntropy) {
  auto f = load_fixture("softmax_cross_entropy");
  std::vector<int32_t> labels;
  for (int64_t i = 0; i < f.at("labels").numel(); ++i) labels.push_back(int32_t(f.at("labels").data()[i]));
  SoftmaxCrossEntropy loss;
  EXPECT_NEAR(loss.ff(f.at("logits"), labels), f.at("loss").data()[0], 1e-5);
  Tensor d;
  loss.bp(d);
  expect_close(d, f.at("dlogits"), "dlogits");
}
