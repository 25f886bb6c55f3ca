#include "chip/vector_unit.hpp"

#include <cmath>

#include "chip/memory.hpp"

namespace trainer {

namespace {

double elems_of(const std::array<int64_t, 4>& s) {
  return static_cast<double>(s[0]) * static_cast<double>(s[1]) * static_cast<double>(s[2]) *
         static_cast<double>(s[3]);
}

double nnz_of(const std::shared_ptr<const Bitmap>& b, double elems) {
  return b && static_cast<double>(b->size()) == elems ? static_cast<double>(b->count()) : elems;
}

}  // namespace

VectorCost cost_vector_op(const Op& op, const ChipSpec& spec) {
  VectorCost out;
  Events& ev = out.events;
  const double ex = elems_of(op.x_shape), ey = elems_of(op.y_shape);
  const double x_nnz = nnz_of(op.x_nz, ex), dy_nnz = nnz_of(op.dy_nz, ey);
  const bool fused_bn = spec.features.reformulated_bn;
  const BufferId act = kActivationBuffer, grad = kGradientBuffer;
  double ops = 0;

  if (op.phase == Phase::update) {
    // SGD with momentum over P parameters: read w, dw, momentum; write w, momentum.
    add_tensor_reads(ex, ex, 3, kWeightBuffer, spec, ev);
    add_tensor_writes(ex, ex, kWeightBuffer, spec, ev);
    add_tensor_writes(ex, ex, kWeightBuffer, spec, ev);
    ops = 4 * ex;
  } else if (op.phase == Phase::loss) {
    // Softmax cross-entropy over logits [N, classes] and its gradient.
    add_tensor_reads(ex, ex, 1, act, spec, ev);
    add_tensor_writes(ex, ex, grad, spec, ev);
    ops = 4 * ex;
  } else if (op.kind == "flatten") {
    out.unit = "none";  // a view: no data moves
  } else if (op.kind == "batchnorm2d") {
    if (op.phase == Phase::ff) {
      // Conventional: mean pass, variance pass (x - mean, square, add), normalise pass (subtract, scale,
      // scale-shift) = 1 + 2 + 2 ops per element. Reformulated: Σx, Σx² in the producer's epilogue, the
      // normalise-scale-shift as the consumer reads = 2 + 2.
      if (fused_bn) {
        ops = 4 * ex;
      } else {
        add_tensor_reads(ex, x_nnz, 3, act, spec, ev);
        add_tensor_writes(ey, ey, act, spec, ev);
        ops = 5 * ex;
      }
    } else if (op.phase == Phase::wg) {
      // dγ = Σ dy·x̂, dβ = Σ dy: reads dy and x (x̂ = (x - μ)·inv_std: 2 ops, product-accumulate, add).
      if (fused_bn) {
        ops = 2 * ey;
      } else {
        add_tensor_reads(ey, dy_nnz, 1, grad, spec, ev);
        add_tensor_reads(ex, x_nnz, 1, act, spec, ev);
        ops = 3 * ey;
      }
    } else {
      // dx = a·dy + b + c·x per channel: reads dy and x again, writes dx.
      if (fused_bn) {
        ops = 3 * ey;
      } else {
        add_tensor_reads(ey, dy_nnz, 1, grad, spec, ev);
        add_tensor_reads(ex, x_nnz, 1, act, spec, ev);
        add_tensor_writes(ex, ex, grad, spec, ev);
        ops = 4 * ey;
      }
    }
    if (fused_bn) out.unit = "fused";
  } else if (op.kind == "relu") {
    if (fused_bn) {
      out.unit = "fused";
    } else if (op.phase == Phase::ff) {
      add_tensor_reads(ex, x_nnz, 1, act, spec, ev);
      add_tensor_writes(ey, ey, act, spec, ev);
    } else {
      // dx = dy where the forward output was positive: reads dy and the 1-bit mask.
      add_tensor_reads(ey, dy_nnz, 1, grad, spec, ev);
      const double mask_bits = ex;
      ev.dram_read_bits += mask_bits;
      ev.sram_write_bits[act] += mask_bits;
      ev.sram_read_bits[act] += mask_bits;
      add_tensor_writes(ex, ex, grad, spec, ev);
    }
    ops = ex;
  } else if (op.kind == "add") {
    if (op.phase == Phase::ff) {
      add_tensor_reads(ex, x_nnz, 1, act, spec, ev);
      add_tensor_reads(ex, ex, 1, act, spec, ev);  // the second input (its map is not recorded)
      add_tensor_writes(ey, ey, act, spec, ev);
    } else {
      add_tensor_reads(ey, dy_nnz, 1, grad, spec, ev);
      add_tensor_writes(ex, ex, grad, spec, ev);  // the gradient of each input is dy
      add_tensor_writes(ex, ex, grad, spec, ev);
    }
    ops = ey;
  } else {
    // maxpool2d, global_avg_pool and any other element-wise or pooling kind: one pass in, one out; one
    // operation per input element (compare or add).
    if (op.phase == Phase::ff) {
      add_tensor_reads(ex, x_nnz, 1, act, spec, ev);
      add_tensor_writes(ey, ey, act, spec, ev);
    } else {
      add_tensor_reads(ey, dy_nnz, 1, grad, spec, ev);
      add_tensor_writes(ex, ex, grad, spec, ev);
    }
    ops = ex;
  }
  ev.vector_ops = ops;
  out.compute_cycles = std::string(out.unit) == "vector" ? std::ceil(ops / spec.vector_lanes) : 0.0;
  return out;
}

}  // namespace trainer
