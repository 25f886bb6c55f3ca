// The element-wise unit and the BN unit: every Op that is not a convolution or linear layer (batch norm,
// ReLU, pooling, residual add, loss, the optimizer update).
//
// Conventional BN unit (docs/chip-model.md, "BN unit"): training BN reads its input once for the mean,
// again for the variance and again to normalise (ff), and twice more in backward (dγ/dβ, then dx);
// ReLU is its own pass. Each pass is traffic: from DRAM unless the tensor fits in (half) its buffer.
// Reformulated BN unit: Σx and Σx² accumulate in the epilogue of the convolution that writes x
// (var = E[x²] − μ²); normalise, scale, shift and ReLU are applied as the next layer reads x; in BP,
// Σδ and Σδ·x̂ accumulate as δ is produced and the BN input gradient is applied as the next BP/WG reads
// it. Such Ops keep their arithmetic (energy) but have no traffic and no cycles of their own ("fused").
#pragma once

#include "chip/cost.hpp"
#include "chip/spec.hpp"
#include "ops/op.hpp"

namespace trainer {

struct VectorCost {
  Events events;                // traffic and element operations (cycles not yet set)
  double compute_cycles = 0;    // element operations / lanes; 0 when fused
  const char* unit = "vector";  // "vector", "fused" or "none"
};

VectorCost cost_vector_op(const Op& op, const ChipSpec& spec);

}  // namespace trainer
