#include "kernels/eltwise.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace trainer {

void add_inplace(Tensor& y, const Tensor& x) {
  TRAINER_CHECK(y.shape() == x.shape() && y.layout() == x.layout(),
                "add: operands {} ({}) and {} ({}) differ", shape_str(y.shape()), layout_name(y.layout()),
                shape_str(x.shape()), layout_name(x.layout()));
  float* __restrict py = y.data();
  const float* __restrict px = x.data();
  const int64_t n = y.storage_size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) py[i] += px[i];
}

void add_inplace_relu_bp(Tensor& y, const Tensor& x, const Tensor& relu_y) {
  TRAINER_CHECK(y.shape() == x.shape() && y.layout() == x.layout() && y.shape() == relu_y.shape() &&
                    y.layout() == relu_y.layout(),
                "add (relu bp): operands {} ({}), {} ({}) and mask {} ({}) differ", shape_str(y.shape()),
                layout_name(y.layout()), shape_str(x.shape()), layout_name(x.layout()),
                shape_str(relu_y.shape()), layout_name(relu_y.layout()));
  float* __restrict py = y.data();
  const float* __restrict px = x.data();
  const float* __restrict pm = relu_y.data();
  const int64_t n = y.storage_size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float v = py[i] + px[i];
    py[i] = pm[i] > 0.0f ? v : 0.0f;
  }
}

void add(const Tensor& a, const Tensor& b, Tensor& y, bool relu_after) {
  TRAINER_CHECK(a.shape() == b.shape() && a.layout() == b.layout(),
                "add: operands {} ({}) and {} ({}) differ", shape_str(a.shape()), layout_name(a.layout()),
                shape_str(b.shape()), layout_name(b.layout()));
  y.resize(a.shape(), a.layout());
  float* __restrict py = y.data();
  const float* __restrict pa = a.data();
  const float* __restrict pb = b.data();
  const int64_t n = y.storage_size();
  if (relu_after) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float v = pa[i] + pb[i];
      py[i] = v > 0.0f ? v : 0.0f;
    }
  } else {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) py[i] = pa[i] + pb[i];
  }
}

void relu_bp_to_two(const Tensor& y, const Tensor& dy, Tensor& dx0, Tensor* dx1) {
  TRAINER_CHECK(y.shape() == dy.shape() && y.layout() == dy.layout(),
                "relu bp: y is {} ({}) but dy is {} ({})", shape_str(y.shape()), layout_name(y.layout()),
                shape_str(dy.shape()), layout_name(dy.layout()));
  dx0.resize(y.shape(), y.layout());
  if (dx1) dx1->resize(y.shape(), y.layout());
  const float* __restrict py = y.data();
  const float* __restrict pd = dy.data();
  float* __restrict p0 = dx0.data();
  float* __restrict p1 = dx1 ? dx1->data() : nullptr;
  const int64_t n = y.storage_size();
  if (p1) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) p0[i] = p1[i] = py[i] > 0.0f ? pd[i] : 0.0f;
  } else {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) p0[i] = py[i] > 0.0f ? pd[i] : 0.0f;
  }
}

void zero_phases(Tensor& t, const std::vector<uint8_t>& flags, int64_t stride) {
  constexpr int64_t kLanes = 16;  // images per NCHW16n block
  TRAINER_CHECK(t.rank() == 4 && t.layout() == Layout::NCHW16n,
                "zero_phases: expected a 4-D NCHW16n tensor, got {} ({})", shape_str(t.shape()),
                layout_name(t.layout()));
  TRAINER_CHECK(stride >= 1 && static_cast<int64_t>(flags.size()) == stride * stride,
                "zero_phases: {} flags for stride {}, expected {}", flags.size(), stride, stride * stride);
  const int64_t NB = (t.dim(0) + kLanes - 1) / kLanes, C = t.dim(1), H = t.dim(2), W = t.dim(3);
  float* p = t.data();
#pragma omp parallel for schedule(static)
  for (int64_t u = 0; u < NB * C; ++u)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        if (flags[static_cast<size_t>((h % stride) * stride + w % stride)])
          std::fill_n(p + ((u * H + h) * W + w) * kLanes, kLanes, 0.0f);
}

}  // namespace trainer
