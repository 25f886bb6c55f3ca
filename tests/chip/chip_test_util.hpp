// Builders for the chip tests: Op records with shapes and nonzero maps made from Tensors with random
// zeros, so the chip model is tested without the engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "chip/spec.hpp"
#include "core/bitmap.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "ops/op.hpp"

namespace trainer::testing {

// A tensor whose elements are zero with probability 1 - density, else uniform in [0.1, 1).
inline Tensor random_sparse_tensor(const Shape& shape, double density, uint64_t seed) {
  Tensor t(shape);
  Rng rng(seed);
  float* p = t.data();
  for (int64_t i = 0; i < t.numel(); ++i)
    p[i] = rng.uniform() < density ? static_cast<float>(0.1 + 0.9 * rng.uniform()) : 0.0f;
  return t;
}

// The nonzero map of such a tensor (built serially: the tests make thousands of tiny maps, and a
// parallel region per map costs more than the map on a busy machine).
inline std::shared_ptr<const Bitmap> random_map(const Shape& shape, double density, uint64_t seed) {
  const Tensor t = random_sparse_tensor(shape, density, seed);
  auto b = std::make_shared<Bitmap>(shape);
  for (int64_t i = 0; i < t.numel(); ++i)
    if (t.data()[i] != 0.0f) b->set(i);
  return b;
}

struct ConvShape {
  int64_t N = 2, C = 3, H = 5, W = 5, K = 4, R = 3, S = 3;
  int32_t stride = 1, pad = 1;
  int64_t P() const { return (H + 2 * pad - R) / stride + 1; }
  int64_t Q() const { return (W + 2 * pad - S) / stride + 1; }
};

// An Op of a conv layer for a phase, with the maps that phase carries (ff: x, w; bp: dy, w; wg: x, dy)
// drawn at the given densities.
inline Op conv_op(const ConvShape& s, Phase phase, double dx, double dw, double ddy, uint64_t seed,
                  const std::string& name = "conv", int32_t layer = 0) {
  Op op;
  op.layer = layer;
  op.layer_name = name;
  op.kind = "conv2d";
  op.phase = phase;
  op.x_shape = {s.N, s.C, s.H, s.W};
  op.w_shape = {s.K, s.C, s.R, s.S};
  op.y_shape = {s.N, s.K, s.P(), s.Q()};
  op.stride = {s.stride, s.stride};
  op.pad = {s.pad, s.pad};
  op.dense_macs = static_cast<uint64_t>(s.N * s.K * s.P() * s.Q() * s.C * s.R * s.S);
  if (phase != Phase::bp) op.x_nz = random_map({s.N, s.C, s.H, s.W}, dx, seed * 3 + 1);
  if (phase != Phase::wg) op.w_nz = random_map({s.K, s.C, s.R, s.S}, dw, seed * 3 + 2);
  if (phase != Phase::ff) op.dy_nz = random_map({s.N, s.K, s.P(), s.Q()}, ddy, seed * 3 + 3);
  return op;
}

// A small, round-numbered chip for tests: 2x2 PEs unless told otherwise.
inline ChipSpec tiny_chip(int rows = 2, int cols = 2) {
  ChipSpec s;
  s.name = "tiny";
  s.source = "tests";
  s.clock_mhz = 100;
  s.precision = Precision::fp16;
  s.pes = rows * cols;
  s.macs_per_pe = {1, 2};
  s.accumulator_bits = 32;
  s.fill_drain_cycles = 1;
  s.regroupings = {{1, rows, cols}};
  s.vector_lanes = 4;
  const char* names[3] = {"weights", "activations", "gradients"};
  for (int b = 0; b < kNumBuffers; ++b) s.buffers[b] = {names[b], 1.0, 4, 64, 0.01, 0.02};
  s.dram_gb_per_s = 1.6;  // 128 bits per cycle at 100 MHz
  s.dram_pj_per_bit = 1.0;
  s.mac_pj = {1.0, 0.25};
  s.register_read_pj_per_bit = 0.001;
  s.register_write_pj_per_bit = 0.002;
  s.metadata_pj = 0.1;
  s.vector_op_pj = 0.5;
  s.leakage_pj_per_cycle = 2.0;
  s.decode_latency_cycles = 1;
  s.encode_elements_per_cycle = 64;
  return s;
}

inline std::string config_path(const std::string& name) {
  return std::string(TRAINER_SOURCE_DIR) + "/configs/chips/" + name;
}

}  // namespace trainer::testing

namespace trainer::testing {

// A map at a density, drawn element by element (cheaper than a Tensor for the large synthetic nets).
inline std::shared_ptr<const Bitmap> random_bits(const Shape& shape, double density, uint64_t seed) {
  auto b = std::make_shared<Bitmap>(shape);
  Rng rng(seed);
  auto& words = b->words();
  const int64_t n = b->size();
  for (int64_t w = 0; w < static_cast<int64_t>(words.size()); ++w) {
    uint64_t bits = 0;
    const int64_t end = std::min<int64_t>(64, n - w * 64);
    for (int64_t i = 0; i < end; ++i) bits |= static_cast<uint64_t>(rng.uniform() < density) << i;
    words[w] = bits;
  }
  return b;
}

// One training step of ResNet-18 (CIFAR shapes: 3x3 stem, no max-pool, 32x32 input) as the engine would
// record it: ff of every layer, the loss, then wg and bp in reverse (no bp for the stem), the update.
// Conv inputs are drawn at density dx (the image dense), weights at dw, conv output gradients at ddy.
inline std::vector<Op> synthetic_resnet18_step(int64_t batch, double dx, double dw, double ddy,
                                               uint64_t seed) {
  struct Layer {
    Op ff;
    bool weighted;
  };
  std::vector<Layer> layers;
  int32_t index = 0;
  uint64_t s = seed;
  auto shape4 = [](const Op&, const std::array<int64_t, 4>& a) { return Shape{a[0], a[1], a[2], a[3]}; };
  auto conv = [&](const std::string& name, int64_t C, int64_t H, int64_t K, int64_t R, int32_t stride,
                  bool image) {
    Op op;
    op.layer = index++;
    op.layer_name = name;
    op.kind = "conv2d";
    op.phase = Phase::ff;
    const int32_t pad = static_cast<int32_t>(R / 2);
    const int64_t P = (H + 2 * pad - R) / stride + 1;
    op.x_shape = {batch, C, H, H};
    op.w_shape = {K, C, R, R};
    op.y_shape = {batch, K, P, P};
    op.stride = {stride, stride};
    op.pad = {pad, pad};
    op.dense_macs = static_cast<uint64_t>(batch * K * P * P * C * R * R);
    op.x_nz = random_bits(shape4(op, op.x_shape), image ? 1.0 : dx, s++);
    op.w_nz = random_bits(shape4(op, op.w_shape), dw, s++);
    layers.push_back({op, true});
    return P;
  };
  auto elementwise = [&](const std::string& name, const char* kind, int64_t C, int64_t H, int64_t P = -1) {
    Op op;
    op.layer = index++;
    op.layer_name = name;
    op.kind = kind;
    op.phase = Phase::ff;
    op.x_shape = {batch, C, H, H};
    op.y_shape = P < 0 ? op.x_shape : std::array<int64_t, 4>{batch, C, P, P};
    layers.push_back({op, std::string(kind) == "batchnorm2d"});
  };
  int64_t H = 32;
  conv("stem.conv", 3, H, 64, 3, 1, true);
  elementwise("stem.bn", "batchnorm2d", 64, H);
  elementwise("stem.relu", "relu", 64, H);
  int64_t C = 64;
  for (int stage = 0; stage < 4; ++stage) {
    const int64_t K = 64 << stage;
    for (int block = 0; block < 2; ++block) {
      const int32_t stride = stage > 0 && block == 0 ? 2 : 1;
      const std::string p = "stage" + std::to_string(stage + 1) + ".block" + std::to_string(block) + ".";
      const int64_t P = conv(p + "conv1", C, H, K, 3, stride, false);
      elementwise(p + "bn1", "batchnorm2d", K, P);
      elementwise(p + "relu1", "relu", K, P);
      conv(p + "conv2", K, P, K, 3, 1, false);
      elementwise(p + "bn2", "batchnorm2d", K, P);
      if (stride != 1 || C != K) {
        conv(p + "shortcut.conv", C, H, K, 1, stride, false);
        elementwise(p + "shortcut.bn", "batchnorm2d", K, P);
      }
      elementwise(p + "add", "add", K, P);
      elementwise(p + "relu2", "relu", K, P);
      C = K, H = P;
    }
  }
  elementwise("pool", "global_avg_pool", C, H, 1);
  {
    Op fc;
    fc.layer = index++;
    fc.layer_name = "fc";
    fc.kind = "linear";
    fc.phase = Phase::ff;
    fc.x_shape = {batch, C, 1, 1};
    fc.w_shape = {10, C, 1, 1};
    fc.y_shape = {batch, 10, 1, 1};
    fc.dense_macs = static_cast<uint64_t>(batch * 10 * C);
    fc.x_nz = random_bits({batch, C}, 0.9, s++);
    fc.w_nz = random_bits({10, C}, dw, s++);
    layers.push_back({fc, true});
  }
  std::vector<Op> step;
  for (const Layer& l : layers) step.push_back(l.ff);
  Op loss;
  loss.layer = -1;
  loss.layer_name = "loss";
  loss.kind = "softmax_cross_entropy";
  loss.phase = Phase::loss;
  loss.x_shape = loss.y_shape = {batch, 10, 1, 1};
  step.push_back(loss);
  int64_t params = 0;
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    const Op& f = it->ff;
    const bool array = f.kind == "conv2d" || f.kind == "linear";
    std::shared_ptr<const Bitmap> dy =
        array ? random_bits(Shape{f.y_shape[0], f.y_shape[1], f.y_shape[2], f.y_shape[3]}, ddy, s++)
              : nullptr;
    if (array && f.kind == "linear") dy = random_bits({batch, 10}, 1.0, s++);
    if (it->weighted) {
      Op wg = f;
      wg.phase = Phase::wg;
      wg.w_nz = nullptr;
      wg.dy_nz = dy;
      if (!array) wg.x_nz = nullptr;
      step.push_back(wg);
      params += array ? f.w_shape[0] * f.w_shape[1] * f.w_shape[2] * f.w_shape[3] : 2 * f.x_shape[1];
    }
    if (f.layer_name == "stem.conv") continue;  // nothing upstream needs the image's gradient
    Op bp = f;
    bp.phase = Phase::bp;
    bp.x_nz = nullptr;
    bp.dy_nz = dy;
    step.push_back(bp);
  }
  Op upd;
  upd.layer = -1;
  upd.layer_name = "sgd";
  upd.kind = "sgd";
  upd.phase = Phase::update;
  upd.x_shape = upd.y_shape = {params, 1, 1, 1};
  step.push_back(upd);
  return step;
}

}  // namespace trainer::testing
