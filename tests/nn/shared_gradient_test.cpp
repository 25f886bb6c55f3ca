// An add gives both its inputs the same gradient. Graph::backward has it written once where the second
// input can read the first one's copy safely (Graph::shared_gradients). These tests check that the
// numbers are exactly those of a graph that writes both copies, and that the sharing is refused where
// the shared tensor would change before it is read.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "nn/graph.hpp"
#include "nn/layers/basic.hpp"
#include "nn/layers/batchnorm2d.hpp"
#include "nn/layers/conv2d.hpp"
#include "nn/layers/linear.hpp"

using namespace trainer;

namespace {

// An add that never lets the graph share its inputs' gradient: the reference.
class CopyingAdd : public Add {
 public:
  using Add::Add;
  bool same_dx_for_inputs() const override { return false; }
};

std::unique_ptr<Layer> make_add(bool share, const std::string& name) {
  if (share) return std::make_unique<Add>(name);
  return std::make_unique<CopyingAdd>(name);
}

// stem; an identity residual block; an add of a node and a conv reading that same node (sharing would
// let the conv's bp change the gradient it reads); a block with a projection shortcut; a head.
std::unique_ptr<Graph> build(bool share) {
  auto g = std::make_unique<Graph>();
  int x = g->add(std::make_unique<Conv2d>("stem.conv", 1, 8, 3, 1, 1), {Graph::kInput});
  x = g->add(std::make_unique<BatchNorm2d>("stem.bn", 8), {x});
  x = g->add(std::make_unique<ReLU>("stem.relu"), {x});
  int b = g->add(std::make_unique<Conv2d>("b1.conv0", 8, 8, 3, 1, 1), {x});
  b = g->add(std::make_unique<BatchNorm2d>("b1.bn0", 8), {b});
  b = g->add(std::make_unique<ReLU>("b1.relu0"), {b});
  b = g->add(std::make_unique<Conv2d>("b1.conv1", 8, 8, 3, 1, 1), {b});
  b = g->add(std::make_unique<BatchNorm2d>("b1.bn1", 8), {b});
  x = g->add(make_add(share, "b1.add"), {b, x});
  x = g->add(std::make_unique<ReLU>("b1.relu1"), {x});
  const int c = g->add(std::make_unique<Conv2d>("h.conv", 8, 8, 3, 1, 1), {x});
  x = g->add(make_add(share, "h.add"), {x, c});
  b = g->add(std::make_unique<Conv2d>("b2.conv0", 8, 16, 3, 2, 1), {x});
  b = g->add(std::make_unique<BatchNorm2d>("b2.bn0", 16), {b});
  int s = g->add(std::make_unique<Conv2d>("b2.proj", 8, 16, 1, 2, 0), {x});
  s = g->add(std::make_unique<BatchNorm2d>("b2.proj_bn", 16), {s});
  x = g->add(make_add(share, "b2.add"), {b, s});
  x = g->add(std::make_unique<ReLU>("b2.relu"), {x});
  x = g->add(std::make_unique<GlobalAvgPool>("gap"), {x});
  x = g->add(std::make_unique<Flatten>("flatten"), {x});
  g->add(std::make_unique<Linear>("fc", 16, 5), {x});
  return g;
}

struct Result {
  std::vector<Tensor> grads;
  int shared = 0;
  int relu_bp_fused = 0;
  int buffers = 0;
};

Result step(bool share, bool fuse, Layout layout, bool reuse = true) {
  auto g = build(share);
  g->set_gradient_reuse(reuse);
  Rng init(7);
  g->init(init, InitScheme::kaiming);
  if (fuse) g->fuse_relus();
  g->set_input_layout(layout);
  Tensor x({18, 1, 10, 10});
  Rng data(9);
  for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = static_cast<float>(data.uniform() * 2.0 - 0.5);
  Result r;
  for (int rep = 0; rep < 2; ++rep) {  // the second step reuses every buffer
    const Tensor out = g->forward(x, /*training=*/true).to_layout(Layout::plain);
    Tensor dy(out.shape());
    for (int64_t i = 0; i < dy.numel(); ++i) dy.data()[i] = static_cast<float>(std::cos(0.29 * i + rep));
    g->backward(dy);
  }
  for (Param* p : g->params()) r.grads.push_back(p->grad.to_layout(Layout::plain));
  r.shared = g->shared_gradients();
  r.relu_bp_fused = g->fused_relu_backwards();
  r.buffers = g->gradient_buffers();
  return r;
}

}  // namespace

TEST(SharedGradients, SameNumbersAsWritingBothCopies) {
  for (Layout layout : {Layout::plain, Layout::nChw16c, Layout::NCHW16n})
    for (bool fuse : {false, true}) {
      SCOPED_TRACE(std::string(layout_name(layout)) + (fuse ? " fused" : " unfused"));
      const Result ref = step(false, fuse, layout), got = step(true, fuse, layout);
      EXPECT_EQ(ref.shared, 0);
      EXPECT_EQ(ref.relu_bp_fused, 0);
      // The identity block's and the projection block's adds share; the add whose second input reads
      // its first does not. With the ReLUs fused, the identity block's add has its ReLU's backward done
      // by h.conv (the last to add into its output's gradient): both its inputs then read its own
      // gradient tensor, and its bp is skipped.
      EXPECT_EQ(got.shared, fuse ? 3 : 2);
      EXPECT_EQ(got.relu_bp_fused, fuse ? 1 : 0);
      ASSERT_EQ(ref.grads.size(), got.grads.size());
      for (size_t i = 0; i < ref.grads.size(); ++i) {
        ASSERT_EQ(ref.grads[i].shape(), got.grads[i].shape());
        for (int64_t e = 0; e < ref.grads[i].numel(); ++e)
          ASSERT_EQ(ref.grads[i].data()[e], got.grads[i].data()[e]) << "param " << i << " element " << e;
      }
    }
}

// Graph::backward lends each node's gradient a buffer from a pool and takes it back once the last node
// reading it has run. A buffer lent too early, or one a layer assumes to start at zero, changes the
// numbers: they must be exactly those of one buffer per node, with fewer buffers.
TEST(PooledGradients, SameNumbersAsOneBufferPerNode) {
  for (Layout layout : {Layout::plain, Layout::NCHW16n})
    for (bool fuse : {false, true}) {
      SCOPED_TRACE(std::string(layout_name(layout)) + (fuse ? " fused" : " unfused"));
      const Result ref = step(true, fuse, layout, /*reuse=*/false), got = step(true, fuse, layout);
      // One per node whose gradient is written (18 here, 13 with the ReLUs fused), against those live at
      // once: no more than two of each of the four gradient shapes (8x10x10, 16x5x5, the pool's, the
      // flatten's) in this graph.
      EXPECT_LT(got.buffers, ref.buffers);
      EXPECT_LE(got.buffers, 8) << "per node: " << ref.buffers;
      ASSERT_EQ(ref.grads.size(), got.grads.size());
      for (size_t i = 0; i < ref.grads.size(); ++i)
        for (int64_t e = 0; e < ref.grads[i].numel(); ++e)
          ASSERT_EQ(ref.grads[i].data()[e], got.grads[i].data()[e]) << "param " << i << " element " << e;
    }
}

// The strided phase plan (Layer::set_dx_phases): a 1x1 stride-2 convolution, first writer of its input's
// gradient, leaves the three phases its taps do not reach for a 3x3 stride-2 reader to write. When that
// reader's output does not reach the loss, it never runs, and the graph zeroes the phases instead: the
// gradients are those of the same graph with the dead reader at stride 1 (no plan), in sparse kernels.
namespace {

std::vector<Tensor> dead_reader_grads(int64_t dead_stride) {
  Graph g;
  int x = g.add(std::make_unique<Conv2d>("stem", 1, 8, 3, 1, 1), {Graph::kInput});
  g.add(std::make_unique<Conv2d>("dead", 8, 8, 3, dead_stride, 1), {x});  // read by nobody
  x = g.add(std::make_unique<Conv2d>("proj", 8, 16, 1, 2, 0), {x});
  x = g.add(std::make_unique<GlobalAvgPool>("gap"), {x});
  x = g.add(std::make_unique<Flatten>("flatten"), {x});
  g.add(std::make_unique<Linear>("fc", 16, 5), {x});
  Rng init(5);
  g.init(init, InitScheme::kaiming);
  g.set_input_layout(Layout::NCHW16n);
  SparsityContext ctx;
  ctx.mode = KernelMode::sparse;
  std::vector<std::vector<uint8_t>> keeps;
  for (int i : {0, 1, 2}) {
    auto& conv = dynamic_cast<Conv2d&>(g.layer(i));
    keeps.emplace_back(static_cast<size_t>(conv.weight().value.numel()), 1);
    conv.set_sparsity(keeps.back().data(), &ctx);
  }
  // The first step, on 10x10 images, writes the stem's gradient buffer; the second, on 9x9 images, reuses
  // it (32 images: a whole number of blocks, so the resize does not clear it), and the positions its
  // 1x1 stride-2 BP leaves hold the first step's values unless the graph zeroes them.
  for (int rep = 0; rep < 2; ++rep) {
    ctx.mode = rep == 0 ? KernelMode::dense : KernelMode::sparse;
    ++ctx.mask_generation;
    const int64_t hw = rep == 0 ? 10 : 9;
    Tensor in({32, 1, hw, hw});
    Rng data(3);
    for (int64_t i = 0; i < in.numel(); ++i) in.data()[i] = static_cast<float>(data.uniform() * 2.0 - 0.5);
    const Tensor out = g.forward(in, /*training=*/true).to_layout(Layout::plain);
    Tensor dy(out.shape());
    for (int64_t i = 0; i < dy.numel(); ++i) dy.data()[i] = static_cast<float>(std::sin(0.37 * i + rep));
    g.backward(dy);
  }
  EXPECT_EQ(dynamic_cast<Conv2d&>(g.layer(2)).last_kernel(ConvPhase::bp), ConvKernel::sparse);
  std::vector<Tensor> grads;
  for (Param* p : g.params()) grads.push_back(p->grad.to_layout(Layout::plain));
  return grads;
}

}  // namespace

TEST(SharedGradients, PhasesLeftForAReaderThatNeverRunsAreZeroed) {
  const std::vector<Tensor> ref = dead_reader_grads(1), got = dead_reader_grads(2);
  ASSERT_EQ(ref.size(), got.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(ref[i].shape(), got[i].shape());
    for (int64_t e = 0; e < ref[i].numel(); ++e)
      ASSERT_EQ(ref[i].data()[e], got[i].data()[e]) << "param " << i << " element " << e;
  }
}
