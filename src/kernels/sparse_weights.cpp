#include "kernels/sparse_weights.hpp"

#include <atomic>
#include <limits>

#include "core/bitmap.hpp"
#include "core/error.hpp"

namespace trainer {

double SparseWeights::density() const {
  const int64_t d = dense_size();
  return d ? static_cast<double>(nnz()) / static_cast<double>(d) : 0.0;
}

namespace {
std::atomic<uint64_t> next_structure_version{1};
}  // namespace

template <typename Keep>
void SparseWeights::build_impl(const Tensor& w, Keep keep, int64_t stride, int64_t pad) {
  TRAINER_CHECK(w.rank() == 4 && w.layout() == Layout::plain,
                "sparse weights: expected plain conv weights [K, C, R, S], got {} ({})", shape_str(w.shape()),
                layout_name(w.layout()));
  TRAINER_CHECK(stride >= 1 && pad >= 0, "sparse weights: stride {} and pad {} must be >= 1 and >= 0", stride,
                pad);
  const int64_t K = w.dim(0), C = w.dim(1), R = w.dim(2), S = w.dim(3);
  TRAINER_CHECK(K * C * R * S < std::numeric_limits<int32_t>::max(),
                "sparse weights: {} has too many elements for 32-bit indices", shape_str(w.shape()));
  K_ = K, C_ = C, R_ = R, S_ = S, stride_ = stride, pad_ = pad;
  // Unique across all weights and every build overload (one counter outside this template: a static
  // local would be one counter per instantiation, and two overloads would hand out the same numbers),
  // so that a cache keyed on it never mistakes one structure for another.
  version_ = next_structure_version++;
  const int64_t RS = R * S, NPH = stride * stride;

  // FF form: OIHW order is already (k, c, r, s) order.
  ff_ptr_.assign(static_cast<size_t>(K * C + 1), 0);
  ff_rs_.clear();
  ff_src_.clear();
  nnz_k_.assign(static_cast<size_t>(K), 0);
  nnz_c_.assign(static_cast<size_t>(C), 0);
  for (int64_t kc = 0; kc < K * C; ++kc) {
    for (int64_t rs = 0; rs < RS; ++rs) {
      const int64_t i = kc * RS + rs;
      if (!keep(i)) continue;
      ff_rs_.push_back(static_cast<int32_t>(rs));
      ff_src_.push_back(static_cast<int32_t>(i));
      ++nnz_k_[kc / C];
      ++nnz_c_[kc % C];
    }
    ff_ptr_[kc + 1] = static_cast<int32_t>(ff_rs_.size());
  }
  const int64_t nnz = static_cast<int64_t>(ff_rs_.size());

  // BP form: a counting sort of the FF entries by (c, phase, k); the sort is stable, so within a key
  // the taps stay in (r, s) order.
  auto phase_of = [&](int64_t rs) {
    const int64_t r = rs / S, s = rs % S;
    const int64_t a = ((r - pad) % stride + stride) % stride, b = ((s - pad) % stride + stride) % stride;
    return a * stride + b;
  };
  bp_ptr_.assign(static_cast<size_t>(C * NPH * K + 1), 0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int32_t e = ff_ptr_[k * C + c]; e < ff_ptr_[k * C + c + 1]; ++e)
        ++bp_ptr_[(c * NPH + phase_of(ff_rs_[e])) * K + k + 1];
  for (size_t i = 1; i < bp_ptr_.size(); ++i) bp_ptr_[i] += bp_ptr_[i - 1];
  std::vector<int32_t> fill(bp_ptr_.begin(), bp_ptr_.end() - 1);
  bp_rs_.assign(static_cast<size_t>(nnz), 0);
  bp_src_.assign(static_cast<size_t>(nnz), 0);
  bp_from_ff_.assign(static_cast<size_t>(nnz), 0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c)
      for (int32_t e = ff_ptr_[k * C + c]; e < ff_ptr_[k * C + c + 1]; ++e) {
        const int32_t at = fill[(c * NPH + phase_of(ff_rs_[e])) * K + k]++;
        bp_rs_[at] = ff_rs_[e];
        bp_src_[at] = ff_src_[e];
        bp_from_ff_[at] = e;
      }
  ff_val_.assign(static_cast<size_t>(nnz), 0.0f);
  bp_val_.assign(static_cast<size_t>(nnz), 0.0f);
  repack(w);
}

void SparseWeights::build(const Tensor& w, const Tensor& keep, int64_t stride, int64_t pad) {
  TRAINER_CHECK(keep.shape() == w.shape() && keep.layout() == Layout::plain,
                "sparse weights: mask of shape {} does not match weights {}", shape_str(keep.shape()),
                shape_str(w.shape()));
  const float* m = keep.data();
  build_impl(
      w, [m](int64_t i) { return m[i] != 0.0f; }, stride, pad);
}

void SparseWeights::build(const Tensor& w, const Bitmap& keep, int64_t stride, int64_t pad) {
  TRAINER_CHECK(keep.size() == w.numel(), "sparse weights: mask of {} bits does not match weights {}",
                keep.size(), shape_str(w.shape()));
  build_impl(
      w, [&keep](int64_t i) { return keep.test(i); }, stride, pad);
}

void SparseWeights::build(const Tensor& w, const uint8_t* keep, int64_t stride, int64_t pad) {
  if (!keep) {
    build_impl(
        w, [](int64_t) { return true; }, stride, pad);
    return;
  }
  build_impl(
      w, [keep](int64_t i) { return keep[i] != 0; }, stride, pad);
}

void SparseWeights::build_from_nonzeros(const Tensor& w, int64_t stride, int64_t pad) {
  const float* v = w.data();
  build_impl(
      w, [v](int64_t i) { return v[i] != 0.0f; }, stride, pad);
}

void SparseWeights::repack(const Tensor& w) {
  TRAINER_CHECK(w.shape() == Shape({K_, C_, R_, S_}) && w.layout() == Layout::plain,
                "sparse weights: repack expected plain weights {}, got {}", shape_str({K_, C_, R_, S_}),
                shape_str(w.shape()));
  const float* src = w.data();
  const int64_t n = nnz();
  // The FF gather walks w in order; the BP one then permutes the FF values (small, cached) rather than
  // gathering from all over w again.
#pragma omp parallel if (n > 65536)
  {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) ff_val_[i] = src[ff_src_[i]];
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) bp_val_[i] = ff_val_[bp_from_ff_[i]];
  }
}

}  // namespace trainer
