#include "kernels/activation.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"

namespace trainer {

namespace {
constexpr int64_t kLanes = 16;

// Blocked layouts keep the H*W values of one (image, channel) plane 16 floats apart; where the plane
// starts: nChw16c [N][C/16][HW][16 channels], NCHW16n [N/16][C][HW][16 images].
inline int64_t blocked_plane_start(int64_t n, int64_t c, int64_t C, int64_t HW, Layout layout) {
  if (layout == Layout::NCHW16n) return (((n / kLanes) * C + c) * HW) * kLanes + n % kLanes;
  const int64_t CB = (C + kLanes - 1) / kLanes;
  return ((n * CB + c / kLanes) * HW) * kLanes + c % kLanes;
}
}  // namespace

void relu_ff(const Tensor& x, Tensor& y) {
  y.resize(x.shape(), x.layout());
  const float* __restrict px = x.data();
  float* __restrict py = y.data();
  const int64_t n = x.storage_size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) py[i] = px[i] > 0.0f ? px[i] : 0.0f;
}

void relu_bp(const Tensor& y, const Tensor& dy, Tensor& dx) {
  TRAINER_CHECK(y.shape() == dy.shape() && y.layout() == dy.layout(),
                "relu bp: y is {} ({}) but dy is {} ({})", shape_str(y.shape()), layout_name(y.layout()),
                shape_str(dy.shape()), layout_name(dy.layout()));
  dx.resize(y.shape(), y.layout());
  const float* __restrict py = y.data();
  const float* __restrict pd = dy.data();
  float* __restrict po = dx.data();
  const int64_t n = y.storage_size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) po[i] = py[i] > 0.0f ? pd[i] : 0.0f;
}

void parallel_copy(const Tensor& src, Tensor& dst) {
  dst.resize(src.shape(), src.layout());
  const float* __restrict ps = src.data();
  float* __restrict pd = dst.data();
  const int64_t n = src.storage_size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) pd[i] = ps[i];
}

void flatten_ff(const Tensor& x, Tensor& y) {
  TRAINER_CHECK(x.rank() >= 2, "flatten: expected at least [N, C], got {}", shape_str(x.shape()));
  const int64_t N = x.dim(0);
  const int64_t F = N ? x.numel() / N : 0;
  if (x.layout() == Layout::plain) {
    y.resize({N, F}, Layout::plain);
    const float* __restrict ps = x.data();
    float* __restrict pd = y.data();
    const int64_t n = N * F;
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) pd[i] = ps[i];
    return;
  }
  const int64_t C = x.dim(1), HW = x.dim(2) * x.dim(3);
  const Layout layout = x.layout();
  y.resize({N, F}, Layout::plain);
  const float* px = x.data();
  float* py = y.data();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const float* s = px + blocked_plane_start(n, c, C, HW, layout);
      float* d = py + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) d[i] = s[i * kLanes];
    }
}

void flatten_bp(const Tensor& dy, const Shape& x_shape, Layout x_layout, Tensor& dx) {
  TRAINER_CHECK(dy.rank() == 2 && dy.layout() == Layout::plain,
                "flatten bp: expected a plain [N, F] gradient, got {} ({})", shape_str(dy.shape()),
                layout_name(dy.layout()));
  dx.resize(x_shape, x_layout);
  TRAINER_CHECK(dx.numel() == dy.numel(), "flatten bp: gradient {} does not match input {}",
                shape_str(dy.shape()), shape_str(x_shape));
  if (x_layout == Layout::plain) {
    const float* __restrict ps = dy.data();
    float* __restrict pd = dx.data();
    const int64_t n = dy.numel();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) pd[i] = ps[i];
    return;
  }
  const int64_t N = x_shape[0], C = x_shape[1], HW = x_shape[2] * x_shape[3];
  const float* py = dy.data();
  float* px = dx.data();
  // Padding lanes of dx: resize() zeroes them when the geometry changes, and nothing here writes them.
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      float* d = px + blocked_plane_start(n, c, C, HW, x_layout);
      const float* s = py + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) d[i * kLanes] = s[i];
    }
}

}  // namespace trainer
