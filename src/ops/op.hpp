// The Op record: one phase of one layer, as the engine executed it. The engine appends one per phase
// to the step's OpStream; counters, the trace file and the chip model read the same records.
// Later capabilities add operand nonzero maps and skip counters here (see docs/ARCHITECTURE.md).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "core/bitmap.hpp"

namespace trainer {

// The phases the project counts, skips and costs.
//  ff: forward; bp: gradient w.r.t. the layer's input (errors); wg: gradient w.r.t. its weights;
//  loss: softmax cross-entropy and its gradient; update: the optimizer step over all parameters.
enum class Phase : uint8_t { ff = 0, bp = 1, wg = 2, loss = 3, update = 4 };
constexpr int kNumPhases = 5;
const char* phase_name(Phase p);

struct Op {
  int32_t layer = -1;        // index of the layer in the model (-1: not a layer, e.g. update)
  std::string layer_name;    // e.g. "stage1.block0.conv1"
  std::string kind;          // "conv2d", "linear", "batchnorm2d", "relu", ...
  Phase phase = Phase::ff;
  // Logical shapes; unused trailing dims are 1. x: [N, C, H, W]; w: [K, C, R, S]; y: [N, K, P, Q].
  std::array<int64_t, 4> x_shape{1, 1, 1, 1};
  std::array<int64_t, 4> w_shape{0, 0, 0, 0};
  std::array<int64_t, 4> y_shape{1, 1, 1, 1};
  std::array<int32_t, 2> stride{1, 1};
  std::array<int32_t, 2> pad{0, 0};
  // Number format the engine computed this phase in (operands and accumulation); the chip model costs the
  // Op at its own spec's precision, and the trace keeps this for the record.
  std::string number_format = "fp32";
  uint64_t dense_macs = 0;  // multiply-accumulates of the dense computation of this phase
  uint64_t time_ns = 0;     // wall time the engine spent on it

  // What the engine executed of dense_macs, and why it skipped the rest (conv and linear phases; for
  // the other kinds executed_macs = dense_macs). executed_macs + skipped() == dense_macs.
  //   pruned: the weight is pruned; zero_activation: the input (x) operand is zero; zero_error: the error
  //   (dy) operand is zero; masked_output: the output was not computed (masked / predicted dead).
  std::string kernel;  // the kernel that ran: "dense" (oneDNN), "sparse" (kernels/sparse_conv), ...
  uint64_t executed_macs = 0;
  uint64_t skipped_pruned = 0;
  uint64_t skipped_zero_activation = 0;
  uint64_t skipped_zero_error = 0;
  uint64_t skipped_masked_output = 0;
  uint64_t skipped() const {
    return skipped_pruned + skipped_zero_activation + skipped_zero_error + skipped_masked_output;
  }

  // Operand nonzero maps, filled only when the stream asks for them (OpStream::capture_nonzeros),
  // since building them costs a pass over each operand. Which operands a phase has:
  //   ff: x, w          bp: dy, w          wg: x, dy
  // Null when not captured or when the phase has no such operand (w for a layer without weights).
  std::shared_ptr<const Bitmap> x_nz, w_nz, dy_nz;
};

}  // namespace trainer
