// Compressed convolution weights for the sparse kernels (kernels/sparse_conv.hpp).
//
// A conv weight w: [K, C, R, S] with a pruning mask keeps only its unpruned taps, twice:
//  - the FF/WG form, per output channel k, taps sorted by (c, r, s): CSR over (k, c) — FF reads it as
//    "y[k] += value * x[c] shifted by (r, s)", WG writes one gradient per entry;
//  - the BP form, per input channel c, taps sorted by (phase, k, r, s): dx[c] gathers dy[k] through the
//    transposed kernel. With stride st, the dx rows h with h % st == a receive only the taps r with
//    (a + pad - r) % st == 0, so each tap belongs to one phase (a, b) and BP runs as st*st stride-1
//    correlations, one per phase.
// The structure changes only when the mask does (every ΔT steps: build), the values every step
// (repack: two gathers over the nonzeros, nothing else).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

class Bitmap;

class SparseWeights {
 public:
  SparseWeights() = default;

  // w: [K, C, R, S] plain. keep: same shape, nonzero = kept (unpruned). Pruned positions are skipped
  // whatever w holds there. stride and pad are the convolution's (they decide the BP phases).
  void build(const Tensor& w, const Tensor& keep, int64_t stride, int64_t pad);
  // keep: a bitmap over [K, C, R, S] in OIHW order, bit set = kept.
  void build(const Tensor& w, const Bitmap& keep, int64_t stride, int64_t pad);
  // keep: one byte per weight in OIHW order, nonzero = kept; nullptr keeps every position (a dense
  // structure: the sparse kernels then run every multiply).
  void build(const Tensor& w, const uint8_t* keep, int64_t stride, int64_t pad);
  // Keeps exactly the nonzeros of w (a mask already applied to the weights).
  void build_from_nonzeros(const Tensor& w, int64_t stride, int64_t pad);
  // New values of the same kept positions (after an optimizer step). w: [K, C, R, S] plain.
  void repack(const Tensor& w);

  bool empty() const { return K_ == 0; }
  int64_t K() const { return K_; }
  int64_t C() const { return C_; }
  int64_t R() const { return R_; }
  int64_t S() const { return S_; }
  int64_t stride() const { return stride_; }
  int64_t pad() const { return pad_; }
  int64_t nnz() const { return static_cast<int64_t>(ff_val_.size()); }
  int64_t dense_size() const { return K_ * C_ * R_ * S_; }
  double density() const;
  // A new value, unique in the process, at every build (not at repack), so that a cache of anything
  // derived from the structure knows when to rebuild.
  uint64_t structure_version() const { return version_; }

  // FF/WG form. Entries of (k, c): [ff_ptr[k*C + c], ff_ptr[k*C + c + 1]); ff_rs = r*S + s;
  // ff_src = the entry's index in OIHW (where its value and its gradient live in the dense tensors).
  const std::vector<int32_t>& ff_ptr() const { return ff_ptr_; }
  const std::vector<int32_t>& ff_rs() const { return ff_rs_; }
  const std::vector<float>& ff_val() const { return ff_val_; }
  const std::vector<int32_t>& ff_src() const { return ff_src_; }
  // BP form. phases() = stride*stride; the phase of tap (r, s) is a*stride + b with
  // a = (r - pad) mod stride, b = (s - pad) mod stride. Entries of (c, phase, k):
  // [bp_ptr[(c*phases + phase)*K + k], ... + 1).
  int64_t phases() const { return stride_ * stride_; }
  const std::vector<int32_t>& bp_ptr() const { return bp_ptr_; }
  const std::vector<int32_t>& bp_rs() const { return bp_rs_; }
  const std::vector<float>& bp_val() const { return bp_val_; }
  const std::vector<int32_t>& bp_src() const { return bp_src_; }
  // Kept taps per output channel k / per input channel c.
  const std::vector<int32_t>& nnz_per_k() const { return nnz_k_; }
  const std::vector<int32_t>& nnz_per_c() const { return nnz_c_; }

 private:
  template <typename Keep>
  void build_impl(const Tensor& w, Keep keep, int64_t stride, int64_t pad);

  int64_t K_ = 0, C_ = 0, R_ = 0, S_ = 0, stride_ = 1, pad_ = 0;
  uint64_t version_ = 0;
  std::vector<int32_t> ff_ptr_, ff_rs_, ff_src_;
  std::vector<float> ff_val_;
  std::vector<int32_t> bp_ptr_, bp_rs_, bp_src_, bp_from_ff_;
  std::vector<float> bp_val_;
  std::vector<int32_t> nnz_k_, nnz_c_;
};

}  // namespace trainer
