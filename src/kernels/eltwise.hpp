// Element-wise helpers over a tensor's whole storage (layout-agnostic: operands share a layout, and
// padding stays zero because zero + zero = zero).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

// y += x. x and y: same shape and layout.
void add_inplace(Tensor& y, const Tensor& x);
// y = (y + x) where relu_y > 0, else 0 (all three the same shape and layout): a gradient added into the
// output of a ReLU, then taken through the ReLU's backward, in one pass (the same bits as the two).
void add_inplace_relu_bp(Tensor& y, const Tensor& x, const Tensor& relu_y);
// y = a + b. a and b: same shape and layout; y is resized to match. With relu_after, y = max(0, a + b)
// in the same pass (a ReLU fused into the add).
void add(const Tensor& a, const Tensor& b, Tensor& y, bool relu_after = false);
// The backward of a ReLU whose output is y, written to dx0 and (when given) dx1 in one pass: each is dy
// where y > 0, else 0 (an add with a fused ReLU hands the same gradient to both its inputs).
void relu_bp_to_two(const Tensor& y, const Tensor& dy, Tensor& dx0, Tensor* dx1);
// Zeroes the positions (h, w) of an NCHW16n tensor whose phase (h mod stride) * stride + w mod stride is
// flagged in flags (stride * stride of them): what a strided BP left unwritten (see
// SparseConvOptions::leave_phases), when no later writer writes it.
void zero_phases(Tensor& t, const std::vector<uint8_t>& flags, int64_t stride);

}  // namespace trainer
