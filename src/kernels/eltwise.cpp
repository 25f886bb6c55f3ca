#include "kernels/eltwise.hpp"

#include "core/error.hpp"

namespace trainer {

void add_inplace(Tensor& y, const Tensor& x) {
  TRAINER_CHECK(y.shape() == x.shape() && y.layout() == x.layout(), "add: operands {} ({}) and {} ({}) differ",
                shape_str(y.shape()), layout_name(y.layout()), shape_str(x.shape()), layout_name(x.layout()));
  float* __restrict py = y.data();
  const float* __restrict px = x.data();
  const int64_t n = y.storage_size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) py[i] += px[i];
}

void add(const Tensor& a, const Tensor& b, Tensor& y) {
  TRAINER_CHECK(a.shape() == b.shape() && a.layout() == b.layout(), "add: operands {} ({}) and {} ({}) differ",
                shape_str(a.shape()), layout_name(a.layout()), shape_str(b.shape()), layout_name(b.layout()));
  y.resize(a.shape(), a.layout());
  float* __restrict py = y.data();
  const float* __restrict pa = a.data();
  const float* __restrict pb = b.data();
  const int64_t n = y.storage_size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) py[i] = pa[i] + pb[i];
}

}  // namespace trainer
