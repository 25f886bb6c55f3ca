// Element-wise helpers over a tensor's whole storage (layout-agnostic: operands share a layout, and
// padding stays zero because zero + zero = zero).
#pragma once

#include "core/tensor.hpp"

namespace trainer {

// y += x. x and y: same shape and layout.
void add_inplace(Tensor& y, const Tensor& x);
// y = a + b. a and b: same shape and layout; y is resized to match.
void add(const Tensor& a, const Tensor& b, Tensor& y);

}  // namespace trainer
