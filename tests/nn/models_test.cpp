// The model zoo: every model builds for Fashion-MNIST and CIFAR shapes, has exactly the parameter
// count of the same architecture in PyTorch (bench/pytorch_train.py), and runs a training step.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "nn/loss.hpp"
#include "nn/models.hpp"

using namespace trainer;

namespace {

struct Case {
  const char* model;
  Shape input;
  int64_t params;  // counted by PyTorch for the same architecture
};

}  // namespace

TEST(Models, ParameterCountsMatchPyTorch) {
  const Case cases[] = {
      {"lenet5", {1, 28, 28}, 61706},      {"lenet5", {3, 32, 32}, 83126},
      {"resnet8", {1, 28, 28}, 77754},     {"resnet8", {3, 32, 32}, 78042},
      {"resnet20", {1, 28, 28}, 272186},   {"resnet20", {3, 32, 32}, 272474},
      {"resnet18", {1, 28, 28}, 11172810}, {"resnet18", {3, 32, 32}, 11173962},
  };
  for (const Case& c : cases) {
    auto g = build_model(c.model, c.input, 10);
    EXPECT_EQ(g->num_parameters(), c.params) << c.model << " " << shape_str(c.input);
  }
}

TEST(Models, EveryModelRunsATrainingStep) {
  for (const char* name : {"lenet5", "resnet8", "resnet14", "vgg8"}) {
    SCOPED_TRACE(name);
    auto g = build_model(name, {1, 28, 28}, 10);
    Rng rng(7);
    g->init(rng);
    Tensor x({4, 1, 28, 28});
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<float>(rng.normal());
    const Tensor& logits = g->forward(x, true);
    ASSERT_EQ(logits.shape(), (Shape{4, 10}));
    SoftmaxCrossEntropy loss;
    const float l = loss.ff(logits, {0, 1, 2, 3});
    EXPECT_TRUE(std::isfinite(l));
    Tensor dlogits;
    loss.bp(dlogits);
    g->backward(dlogits);
    double grad_norm = 0;
    for (Param* p : g->params())
      for (int64_t i = 0; i < p->grad.numel(); ++i) grad_norm += double(p->grad.data()[i]) * p->grad.data()[i];
    EXPECT_GT(grad_norm, 0.0);
  }
}

TEST(Models, BadNamesAndShapesAreRefusedWithMessages) {
  try {
    build_model("resnet9", {1, 28, 28}, 10);
    FAIL() << "resnet9 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("6n+2"), std::string::npos) << e.what();
  }
  try {
    build_model("alexnet", {1, 28, 28}, 10);
    FAIL() << "alexnet accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("alexnet"), std::string::npos) << e.what();
  }
  EXPECT_THROW(build_model("lenet5", {1, 8, 8}, 10), Error);
  EXPECT_THROW(build_model("resnet8", {1, 28}, 10), Error);
  EXPECT_THROW(build_model("resnet8", {1, 28, 28}, 1), Error);
}
