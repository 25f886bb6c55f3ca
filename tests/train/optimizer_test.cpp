// SGD against values computed with torch.optim.SGD (PyTorch 1.13) on the same parameters, gradients
// and per-step learning rates: w = [1, -2, 0.5] with weight decay, b = [0.3, -0.7] without;
// gradients g1..g3 below, learning rates 0.1, 0.05, 0.2.
#include "train/optimizer.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "core/error.hpp"

namespace trainer {
namespace {

const std::vector<std::vector<float>> kGrads = {
    {0.1f, -0.2f, 0.3f}, {-0.5f, 0.4f, 0.05f}, {0.2f, 0.2f, -0.1f}};
const std::vector<float> kLrs = {0.1f, 0.05f, 0.2f};

struct Params {
  Param w, b;
  // Aggregate initialisation: assigning a short literal to Param::name trips a GCC 12 -Wrestrict false
  // positive at -O3.
  Params() : w{"w", Tensor({3}), Tensor({3}), true}, b{"b", Tensor({2}), Tensor({2}), false} {
    const float wv[] = {1.0f, -2.0f, 0.5f}, bv[] = {0.3f, -0.7f};
    for (int i = 0; i < 3; ++i) w.value.data()[i] = wv[i];
    for (int i = 0; i < 2; ++i) b.value.data()[i] = bv[i];
  }
};

void run(Sgd& sgd, Params& p, OpStream* ops = nullptr) {
  for (size_t s = 0; s < kGrads.size(); ++s) {
    for (int i = 0; i < 3; ++i) p.w.grad.data()[i] = kGrads[s][i];
    for (int i = 0; i < 2; ++i) p.b.grad.data()[i] = kGrads[s][i];
    sgd.step(kLrs[s], ops);
  }
}

void expect_values(const Tensor& t, const std::vector<float>& want) {
  ASSERT_EQ(t.numel(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(t.data()[i], want[i], 2e-6f) << "element " << i;
}

TEST(Sgd, MomentumWithWeightDecayMatchesPyTorch) {
  Params p;
  Sgd sgd({&p.w, &p.b}, SgdOptions{0.9f, false, 0.01f});
  run(sgd, p);
  expect_values(p.w.value, {1.03693819f, -2.05593657f, 0.41287905f});
  expect_values(p.b.value, {0.344300032f, -0.770599961f});
  expect_values(sgd.momentum_buffers()[0], {-0.141913429f, 0.34412688f, 0.200805932f});
  EXPECT_EQ(sgd.steps(), 3);
}

TEST(Sgd, NesterovWithWeightDecayMatchesPyTorch) {
  Params p;
  Sgd sgd({&p.w, &p.b}, SgdOptions{0.9f, true, 0.01f});
  run(sgd, p);
  expect_values(p.w.value, {1.00471008f, -2.08343673f, 0.407629222f});
  expect_values(p.b.value, {0.31487f, -0.803539991f});
  expect_values(sgd.momentum_buffers()[0], {-0.141875938f, 0.344321907f, 0.200273737f});
}

TEST(Sgd, NesterovWithoutWeightDecayMatchesPyTorch) {
  Params p;
  Sgd sgd({&p.w, &p.b}, SgdOptions{0.9f, true, 0.0f});
  run(sgd, p);
  expect_values(p.w.value, {1.01487005f, -2.10353994f, 0.412259996f});
  expect_values(sgd.momentum_buffers()[0], {-0.168999985f, 0.398000002f, 0.188000023f});
}

TEST(Sgd, PlainSgdKeepsNoBuffers) {
  Params p;
  Sgd sgd({&p.w, &p.b}, SgdOptions{0.0f, false, 0.01f});
  run(sgd, p);
  expect_values(p.w.value, {0.971478581f, -2.03301716f, 0.485831738f});
  expect_values(p.b.value, {0.275000036f, -0.74000001f});
  EXPECT_TRUE(sgd.momentum_buffers().empty());
}

TEST(Sgd, LargeParameterTakesTheParallelPathWithTheSameResult) {
  // Large enough for the OpenMP path; every element must equal the small-tensor result.
  const int64_t n = 100003;
  Param big{"big", Tensor({n}), Tensor({n}), true};
  Sgd sgd({&big}, SgdOptions{0.9f, true, 0.01f});
  for (size_t s = 0; s < kGrads.size(); ++s) {
    for (int64_t i = 0; i < n; ++i) {
      if (s == 0) big.value.data()[i] = (i % 3 == 0) ? 1.0f : (i % 3 == 1 ? -2.0f : 0.5f);
      big.grad.data()[i] = kGrads[s][i % 3];
    }
    sgd.step(kLrs[s]);
  }
  const float want[] = {1.00471008f, -2.08343673f, 0.407629222f};
  for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(big.value.data()[i], want[i % 3], 2e-6f) << "element " << i;
}

TEST(Sgd, RecordsOneUpdateOpPerStep) {
  Params p;
  Sgd sgd({&p.w, &p.b}, SgdOptions{});
  OpStream ops;
  ops.begin_step();
  run(sgd, p, &ops);
  ASSERT_EQ(ops.step_ops().size(), 3u);
  for (const Op& op : ops.step_ops()) {
    EXPECT_EQ(op.phase, Phase::update);
    EXPECT_EQ(op.layer, -1);
    EXPECT_EQ(op.kind, "sgd");
    EXPECT_EQ(op.x_shape[0], 5);  // all parameter elements
  }
}

TEST(Sgd, RejectsBadOptionsAndShapes) {
  Params p;
  EXPECT_THROW(Sgd({&p.w}, SgdOptions{1.0f, false, 0.0f}), Error);
  EXPECT_THROW(Sgd({&p.w}, SgdOptions{0.9f, false, -1.0f}), Error);
  EXPECT_THROW(Sgd({&p.w}, SgdOptions{0.0f, true, 0.0f}), Error);
  Sgd sgd({&p.w}, SgdOptions{});
  p.w.grad = Tensor({4});
  try {
    sgd.step(0.1f);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace trainer
