// ReLU fusion (Graph::fuse_relus): a ResNet whose ReLUs run inside the batch norms and adds before them
// computes exactly what the unfused one computes (outputs, every gradient, batch-norm buffers), in
// every activation layout, and still records one Op per layer and phase, in the same order.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "nn/layers/conv2d.hpp"
#include "nn/models.hpp"
#include "ops/op_stream.hpp"

using namespace trainer;

namespace {

struct StepResult {
  Tensor out;
  std::vector<Tensor> grads, buffers;
  std::vector<std::string> ops;  // "layer phase", in record order
  std::vector<bool> fused_ops;   // kernel "fused"
  int maps = 0;                  // records with an input map
  int relu_bp_fused = 0;         // adds whose ReLU backward their output's last gradient writer did
  int grad_sums_fused = 0;       // batch norms whose gradient sums their dy's last writer took
};

// Half the weights of every conv pruned, run on the sparse kernels (NCHW16n): their prologue then
// applies the deferred batch norms.
struct SparseSetup {
  std::vector<std::vector<uint8_t>> masks;
  SparsityContext ctx;
};

StepResult train_step(bool fuse, Layout layout, int* fused = nullptr, int* affine = nullptr,
                      NonzeroCapture capture = NonzeroCapture::none, SparseSetup* sparse = nullptr,
                      bool grad_sums = false) {
  auto g = build_model("resnet8", {1, 12, 12}, 10);
  // Off unless asked: the sums taken in a kernel's epilogue are added in another order (same values to
  // rounding), and the tests comparing bits compare the other fusions.
  g->set_fuse_grad_sums(grad_sums);
  Rng init(3);
  g->init(init, InitScheme::kaiming);
  if (sparse) {
    sparse->ctx.mode = KernelMode::sparse;
    sparse->masks.clear();
    sparse->masks.reserve(g->size());
    Rng pick(11);
    for (size_t i = 0; i < g->size(); ++i)
      if (auto* conv = dynamic_cast<Conv2d*>(&g->layer(static_cast<int>(i)))) {
        Param* w = conv->params()[0];
        std::vector<uint8_t> keep(static_cast<size_t>(w->value.numel()));
        for (auto& k : keep) k = pick.uniform() < 0.5 ? 1 : 0;
        for (int64_t e = 0; e < w->value.numel(); ++e)
          if (!keep[static_cast<size_t>(e)]) w->value.data()[e] = 0.0f;
        sparse->masks.push_back(std::move(keep));
        conv->set_sparsity(sparse->masks.back().data(), &sparse->ctx);
      }
  }
  if (fuse) {
    const int n = g->fuse_relus();
    if (fused) *fused = n;
    const int a = g->fuse_affine_inputs();
    if (affine) *affine = a;
  }
  g->set_input_layout(layout);
  const int64_t N = 20;  // not a multiple of 16: the last image block of NCHW16n is padded
  Tensor x({N, 1, 12, 12});
  Rng data(5);
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<float>(data.uniform() * 2.0 - 0.5);
  OpStream ops;
  ops.capture_nonzeros(capture);
  ops.begin_step();
  StepResult r;
  for (int rep = 0; rep < 2; ++rep) {  // two steps: the second reuses every buffer
    r.out = g->forward(x, /*training=*/true, &ops).to_layout(Layout::plain);
    Tensor dy(r.out.shape());
    for (int64_t i = 0; i < dy.numel(); ++i) dy.data()[i] = static_cast<float>(std::sin(0.37 * i + rep));
    g->backward(dy, &ops);
    r.relu_bp_fused = g->fused_relu_backwards();
    r.grad_sums_fused = g->fused_grad_sums();
  }
  for (Param* p : g->params()) r.grads.push_back(p->grad.to_layout(Layout::plain));
  for (const Buffer& b : g->buffers()) r.buffers.push_back(b.tensor->to_layout(Layout::plain));
  for (const Op& op : ops.step_ops()) {
    auto dims = [](const std::array<int64_t, 4>& d) {
      return std::to_string(d[0]) + "x" + std::to_string(d[1]) + "x" + std::to_string(d[2]) + "x" + std::to_string(d[3]);
    };
    r.ops.push_back(op.layer_name + " " + phase_name(op.phase) + " x" + dims(op.x_shape) + " y" + dims(op.y_shape));
    r.fused_ops.push_back(op.kernel == "fused");
    r.maps += op.x_nz != nullptr;
  }
  return r;
}

void expect_identical(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data()[i], b.data()[i]) << what << " element " << i;
}

// Logits, every gradient and every batch-norm buffer, to the bit.
void expect_same_numbers(const StepResult& a, const StepResult& b) {
  expect_identical(a.out, b.out, "logits");
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) expect_identical(a.grads[i], b.grads[i], "grad " + std::to_string(i));
  ASSERT_EQ(a.buffers.size(), b.buffers.size());
  for (size_t i = 0; i < a.buffers.size(); ++i)
    expect_identical(a.buffers[i], b.buffers[i], "buffer " + std::to_string(i));
}

}  // namespace

// ReLU fusion and batch norms applied by their readers (Graph::fuse_affine_inputs) together.
TEST(ReluFusion, SameNumbersAndOpsAsUnfused) {
  for (Layout layout : {Layout::plain, Layout::nChw16c, Layout::NCHW16n}) {
    SCOPED_TRACE(layout_name(layout));
    int fused = 0, affine = 0;
    const StepResult a = train_step(false, layout), b = train_step(true, layout, &fused, &affine);
    EXPECT_EQ(fused, 7);  // resnet8: the stem's, and two per block (after bn1, after the add)
    // Each block's add applies its branch's last batch norm; its conv1, the batch norm (+ ReLU) before.
    EXPECT_EQ(affine, 6);
    expect_same_numbers(a, b);
    // The first two blocks' adds: the next block's conv0, the last to write their output's gradient,
    // takes it through their ReLU (the last block's is read by the pooling alone).
    EXPECT_EQ(a.relu_bp_fused, 0);
    EXPECT_EQ(b.relu_bp_fused, 2);
    // The same records in the same order; the fused ReLUs marked as such, and only they.
    ASSERT_EQ(a.ops, b.ops);
    int marked = 0;
    for (size_t i = 0; i < b.ops.size(); ++i) {
      EXPECT_FALSE(a.fused_ops[i]) << a.ops[i];
      if (b.fused_ops[i]) {
        EXPECT_NE(b.ops[i].find("relu"), std::string::npos) << b.ops[i];
      }
      marked += b.fused_ops[i];
    }
    EXPECT_EQ(marked, 2 * 2 * fused);  // ff and bp of each fused ReLU, over two steps
  }
}

// When maps are captured, the batch norms applied by their readers write their outputs after all (every
// map stays exact): the same numbers and records, now with maps.
TEST(ReluFusion, CapturingStepsStillWriteTheNormalisedTensor) {
  for (Layout layout : {Layout::plain, Layout::NCHW16n}) {
    SCOPED_TRACE(layout_name(layout));
    const StepResult a = train_step(false, layout, nullptr, nullptr, NonzeroCapture::all);
    const StepResult b = train_step(true, layout, nullptr, nullptr, NonzeroCapture::all);
    const StepResult c = train_step(true, layout);
    expect_same_numbers(a, b);
    expect_same_numbers(a, c);
    EXPECT_EQ(a.ops, b.ops);
    EXPECT_EQ(b.ops, c.ops);
    EXPECT_GT(b.maps, 0);
    EXPECT_EQ(c.maps, 0);
    EXPECT_EQ(b.relu_bp_fused, 0);  // the ReLU's Op sees its output gradient before the mask
    EXPECT_EQ(c.relu_bp_fused, 2);
  }
}

// On the sparse kernels, the convolutions apply the batch norms before them in their prologue (ff and
// wg): still the same bits as reading the written-out tensor.
TEST(ReluFusion, SparseKernelPrologueGivesTheSameNumbers) {
  SparseSetup sa, sb;
  const StepResult a = train_step(false, Layout::NCHW16n, nullptr, nullptr, NonzeroCapture::none, &sa);
  const StepResult b = train_step(true, Layout::NCHW16n, nullptr, nullptr, NonzeroCapture::none, &sb);
  expect_same_numbers(a, b);
  EXPECT_EQ(a.ops, b.ops);
  EXPECT_EQ(b.relu_bp_fused, 2);  // in the sparse BP kernel's epilogue
}

// Batch-norm gradient sums taken by the last writer of each batch norm's output gradient (GradSums): on
// the sparse kernels, every batch norm whose gradient's last writer is a convolution's BP gets them from
// its epilogue, and the step's numbers are those of the batch norms summing for themselves, to the
// rounding of a different order of addition (relative 1e-5 of each tensor's largest value).
TEST(ReluFusion, BatchNormGradientSumsFromTheWritersEpilogue) {
  SparseSetup sa, sb;
  const StepResult a = train_step(true, Layout::NCHW16n, nullptr, nullptr, NonzeroCapture::none, &sa, false);
  const StepResult b = train_step(true, Layout::NCHW16n, nullptr, nullptr, NonzeroCapture::none, &sb, true);
  EXPECT_EQ(a.grad_sums_fused, 0);
  // resnet8: each block's bn0 (its conv1 alone writes its gradient), the stem's bn0 (block 0's conv0
  // writes its gradient last), and the bn1 of blocks 0 and 1, through their add (the next block's conv0
  // writes the add's gradient last, through the add's ReLU). Block 2's add is read by the pooling.
  EXPECT_EQ(b.grad_sums_fused, 6);
  auto expect_near = [](const Tensor& x, const Tensor& y, const std::string& what) {
    ASSERT_EQ(x.shape(), y.shape()) << what;
    double scale = 0;
    for (int64_t i = 0; i < x.numel(); ++i)
      scale = std::max(scale, std::fabs(static_cast<double>(x.data()[i])));
    for (int64_t i = 0; i < x.numel(); ++i)
      ASSERT_NEAR(x.data()[i], y.data()[i], 1e-5 * scale + 1e-12) << what << " element " << i;
  };
  expect_near(a.out, b.out, "logits");
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i)
    expect_near(a.grads[i], b.grads[i], "grad " + std::to_string(i));
  for (size_t i = 0; i < a.buffers.size(); ++i)
    expect_near(a.buffers[i], b.buffers[i], "buffer " + std::to_string(i));
  EXPECT_EQ(a.ops, b.ops);
  // Plain and nChw16c activations run oneDNN's BP, which takes no sums: the batch norms sum for themselves.
  for (Layout layout : {Layout::plain, Layout::nChw16c}) {
    const StepResult c = train_step(true, layout, nullptr, nullptr, NonzeroCapture::none, nullptr, true);
    EXPECT_EQ(c.grad_sums_fused, 0) << layout_name(layout);
  }
}
