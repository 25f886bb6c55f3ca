// The chip model and the engine agree on the work of the same Op: a pruned convolution run by the
// engine's sparse kernels, recorded with its real nonzero maps, is costed by the chip model, and the
// model's effectual multiplies equal the multiplies the engine executed, phase by phase.
//
// The engine skips pruned weights per tap and zero activations / errors per plane (a channel of a block
// of 16 images); the chip skips zeros per element. So the operands here are nonzero everywhere except
// in whole planes, and the convolution has no padding (the engine counts multiplies by padding as
// executed, the chip does not): then the two counts describe the same set of products.
#include <gtest/gtest.h>

#include "chip/model.hpp"
#include "chip/spec.hpp"
#include "core/bitmap.hpp"
#include "core/rng.hpp"
#include "nn/layers/conv2d.hpp"

namespace trainer {
namespace {

// Values in [0.5, 1) with random signs (never zero), except channels listed in zero_channels, which are
// zero for every image.
Tensor operand(const Shape& s, const std::vector<int64_t>& zero_channels, Rng& rng) {
  Tensor t(s);
  for (int64_t n = 0; n < s[0]; ++n)
    for (int64_t c = 0; c < s[1]; ++c) {
      const bool zero = std::find(zero_channels.begin(), zero_channels.end(), c) != zero_channels.end();
      for (int64_t h = 0; h < s[2]; ++h)
        for (int64_t w = 0; w < s[3]; ++w)
          t.at(n, c, h, w) = zero ? 0.0f : static_cast<float>((0.5 + 0.5 * rng.uniform()) * (rng.uniform() < 0.5 ? -1 : 1));
    }
  return t;
}

TEST(ChipEngineAgreement, EffectualMacsEqualTheEngineExecutedOnes) {
  for (const int64_t stride : {1, 2}) {
    SCOPED_TRACE(stride);
    Rng rng(17 + stride);
    const int64_t N = 16, C = 8, H = 9, K = 12, R = 3;
    Conv2d conv("c", C, K, R, stride, /*padding=*/0, /*bias=*/false);
    conv.init(rng);
    Tensor& w = conv.weight().value;
    std::vector<uint8_t> keep(static_cast<size_t>(w.numel()));
    for (int64_t i = 0; i < w.numel(); ++i) {
      keep[i] = rng.uniform() < 0.3 ? 1 : 0;
      if (!keep[i]) w.data()[i] = 0.0f;
    }
    SparsityContext ctx;
    ctx.mode = KernelMode::sparse;
    conv.set_sparsity(keep.data(), &ctx);

    const Tensor x = operand({N, C, H, H}, {2, 5}, rng);
    const Tensor x16 = x.to_layout(Layout::NCHW16n);
    Tensor y;
    conv.ff({&x16}, y, true);
    const Tensor dy = operand(y.shape(), {1, 7, 8}, rng);
    const Tensor dy16 = dy.to_layout(Layout::NCHW16n);
    conv.wg({&x16}, y, dy16);
    Tensor dx;
    std::vector<Tensor*> dxs{&dx};
    conv.bp({&x16}, y, dy16, dxs);

    auto record = [&](Phase p) {
      Op op = conv.describe(p, {&x16}, y);
      op.layer = 0;
      if (p != Phase::bp) op.x_nz = std::make_shared<const Bitmap>(Bitmap::nonzeros_of(x));
      if (p != Phase::wg) op.w_nz = std::make_shared<const Bitmap>(Bitmap::nonzeros_of(w));
      if (p != Phase::ff) op.dy_nz = std::make_shared<const Bitmap>(Bitmap::nonzeros_of(dy));
      return op;
    };
    const Op ff = record(Phase::ff), wg = record(Phase::wg), bp = record(Phase::bp);
    ASSERT_EQ(ff.kernel, "sparse");
    EXPECT_GT(ff.skipped_pruned, 0u);
    EXPECT_GT(ff.skipped_zero_activation, 0u);
    EXPECT_GT(bp.skipped_zero_error, 0u);

    const ChipModel model(load_chip_spec(std::string(TRAINER_SOURCE_DIR) + "/configs/chips/trainer-28nm.yaml"),
                          CostMode::exact);
    // ff and bp on their own; wg after its ff (the chip skips the gradients of pruned weights, as the
    // engine does, using the weight map its ff recorded).
    EXPECT_DOUBLE_EQ(model.cost_op(ff).effectual_macs, static_cast<double>(ff.executed_macs));
    EXPECT_DOUBLE_EQ(model.cost_op(bp).effectual_macs, static_cast<double>(bp.executed_macs));
    // wg: the engine computes dW at kept taps only; the chip model does too (speculation skips the
    // gradients of pruned weights), but it splits the effectual products between needed and skipped
    // outputs by their share of the PE slots (docs/chip-model.md, "Speculation"), not exactly. So: the
    // chip's count over every tap is exact, the engine's over the kept taps is exact, and the chip's
    // count over the kept taps is close.
    const int64_t P = y.dim(2);
    int64_t kept_taps = 0, all_taps = 0;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t rs = 0; rs < R * R; ++rs)
          if (c != 2 && c != 5 && k != 1 && k != 7 && k != 8) {
            all_taps += N * P * P;
            if (keep[(k * C + c) * R * R + rs]) kept_taps += N * P * P;
          }
    EXPECT_EQ(static_cast<int64_t>(wg.executed_macs), kept_taps);
    EXPECT_DOUBLE_EQ(model.cost_op(wg).effectual_macs, static_cast<double>(all_taps));
    const std::vector<OpCost> step = model.cost_step({ff, wg});
    ASSERT_EQ(step.size(), 2u);
    EXPECT_NEAR(step[1].effectual_macs, static_cast<double>(kept_taps), 0.05 * kept_taps);
  }
}

}  // namespace
}  // namespace trainer
