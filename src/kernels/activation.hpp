// Fast element-wise and layout-moving kernels: ReLU, flatten (any 4-D layout to plain 2-D) and a
// parallel copy. Element-wise kernels run over a tensor's whole storage, so they serve every layout:
// padding (channels of nChw16c, images of NCHW16n) holds zero and ReLU keeps it zero. Reference: kernels/norm_pool_ref.hpp.
#pragma once

#include "core/tensor.hpp"

namespace trainer {

// x, y: any shape (y takes x's shape and layout).  y = max(x, 0).
void relu_ff(const Tensor& x, Tensor& y);
// y, dy, dx: same shape and layout (dx is resized to it).  dx = dy where y > 0, else 0.
void relu_bp(const Tensor& y, const Tensor& dy, Tensor& dx);

// x: [N, C, H, W] (any layout) or [N, ...] plain; y: [N, C*H*W] plain, NCHW order.
void flatten_ff(const Tensor& x, Tensor& y);
// dy: [N, C*H*W] plain; dx: x_shape in x_layout (resized), the inverse of flatten_ff.
void flatten_bp(const Tensor& dy, const Shape& x_shape, Layout x_layout, Tensor& dx);

// dst = src (shape, layout and contents), copying with all threads.
void parallel_copy(const Tensor& src, Tensor& dst);

}  // namespace trainer
