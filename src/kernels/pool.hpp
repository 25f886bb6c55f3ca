// Fast pooling kernels over plain NCHW, nChw16c or NCHW16n activations: max pooling (floor mode, padding acts as
// -inf, ties go to the first maximum in row-major window order, as PyTorch) and global average
// pooling. Reference: kernels/norm_pool_ref.hpp.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

// x: [N, C, H, W]; y: [N, C, P, Q] in x's layout (resized), P = floor((H + 2*pad - kernel)/stride) + 1.
// argmax: one entry per float of y's storage (resized): h*W + w of the chosen input within its plane.
// Needs pad <= kernel/2, so that every window holds at least one real input.
void maxpool_ff(const Tensor& x, int64_t kernel, int64_t stride, int64_t pad, Tensor& y,
                std::vector<int32_t>& argmax);
// dy: [N, C, P, Q] (layout of the ff's y); argmax from that ff; dx: x_shape in dy's layout (resized).
void maxpool_bp(const Tensor& dy, const std::vector<int32_t>& argmax, const Shape& x_shape, Tensor& dx);

// x: [N, C, H, W] (any layout); y: [N, C] plain (resized), the mean over H and W.
void gap_ff(const Tensor& x, Tensor& y);
// dy: [N, C] plain; dx: x_shape in x_layout (resized), dy[n, c] / (H*W) everywhere in the plane.
void gap_bp(const Tensor& dy, const Shape& x_shape, Layout x_layout, Tensor& dx);

}  // namespace trainer
