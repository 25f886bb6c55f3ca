// Fast batch-norm kernels over plain NCHW, nChw16c or NCHW16n activations. A training step costs four passes
// over memory: statistics (read x), apply (read x, write y), gradient sums (read x, dy) and the input
// gradient (read x, dy, write dx). Reference: kernels/norm_pool_ref.hpp. The passes that write (apply,
// input gradient) use non-temporal stores when the output is larger than a core's L2 (plain and NCHW16n
// layouts): its reader takes it from memory anyway, and the lines are not read for ownership first.
//
// Channel totals are summed from per-(sample, channel) partials in a fixed order, so results do not
// depend on the thread count; partials are float within a short run of values and double across runs.
#pragma once

#include <vector>

#include "core/tensor.hpp"

namespace trainer {

// x: [N, C, H, W] (any layout); mean, var: [C]. Batch mean and biased variance, accumulated
// about a per-channel shift (the channel's first value) so that a large mean does not swamp the variance.
// partial: scratch, resized as needed (it only grows).
void batchnorm_stats(const Tensor& x, double* mean, double* var, std::vector<double>& partial);

// x, y: [N, C, H, W] (y takes x's layout and shape); scale, shift: [C].  y = fma(scale[c], x, shift[c]), and
// with relu_after, max(0, that) in the same pass (a ReLU fused into the batch norm: one pass less).
void batchnorm_apply(const Tensor& x, const float* scale, const float* shift, Tensor& y,
                     bool relu_after = false);

// The same, plus a residual r (x's shape and layout) in the same pass: y = fma(scale[c], x, shift[c]) + r,
// then max(0, y) with relu_after. A batch norm whose only reader is a residual add (and the ReLU fused
// into the add): the normalised tensor is never written, and the numbers are those of the two passes.
void batchnorm_apply_add(const Tensor& x, const float* scale, const float* shift, const Tensor& r, Tensor& y,
                         bool relu_after = false);

// A ReLU fused into the batch norm, for the backward passes: the scale and shift [C] its forward
// applied. dy then counts only where scale[c]*x + shift[c] was positive, as the ReLU's backward would
// have it. The mask is recomputed from x with the apply pass's own arithmetic (one fused multiply-add,
// so the same bits), instead of reading the ReLU's output back: one tensor read less per pass.
struct FusedRelu {
  const float* scale = nullptr;
  const float* shift = nullptr;
};

// x, dy: [N, C, H, W], same layout; mean: [C]. Writes sum_dy[c] = sum(dy) and
// sum_dy_xc[c] = sum(dy * (x - mean[c])) over each channel: [C] each. relu: see FusedRelu.
void batchnorm_grad_sums(const Tensor& x, const Tensor& dy, const float* mean, double* sum_dy,
                         double* sum_dy_xc, std::vector<double>& partial, const FusedRelu* relu = nullptr);

// x, dy, dx: [N, C, H, W] (dx takes x's layout); a, b, d: [C].  dx = a[c]*dy + b[c]*x + d[c], the form
// the batch-norm input gradient takes once its per-channel sums are known. relu: see FusedRelu.
// dx is written with non-temporal stores when it is larger than stream_min_bytes (negative: this
// machine's batchnorm_gradient_stream_bytes()); the values do not depend on it.
void batchnorm_bp_apply(const Tensor& x, const Tensor& dy, const float* a, const float* b, const float* d,
                        Tensor& dx, const FusedRelu* relu = nullptr, int64_t stream_min_bytes = -1);

// Above how many bytes the input gradient is streamed by default, by CPU vendor, as measured in 90%
// sparse ResNet-20 training (6.4 MB first-stage gradients, read next by a convolution's BP and WG):
// Intel (AVX-512, 2 MiB L2 per core): streaming above 2 MiB, +3-8% images/s; AMD Zen 4: streaming
// them cost 2-19% images/s (the readers wait on memory), so 8 MiB there, the forward passes' threshold.
int64_t batchnorm_gradient_stream_bytes();

}  // namespace trainer
