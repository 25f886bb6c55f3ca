// Dense fully connected layer on oneDNN (inner product): the fast path for linear's ff, bp and wg
// (tested against conv_ref.hpp's linear_*_ref).
//
// Everything stays plain: x [N, I], w [O, I], y [N, O]. For these formats oneDNN runs its jit GEMM,
// which needs no weight reorders; the blocked-weight kernels it would otherwise pick gain nothing at
// the sizes a classifier head has. Primitives are kept per batch size, so a step creates nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

class LinearDnnl {
 public:
  // w: [O, I]
  LinearDnnl(int64_t I, int64_t O, bool bias);
  ~LinearDnnl();
  LinearDnnl(const LinearDnnl&) = delete;
  LinearDnnl& operator=(const LinearDnnl&) = delete;

  // x: [N, I] plain, w: [O, I], b: [O] or nullptr; y: resized to [N, O] plain.
  void ff(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y);
  // dy: [N, O], w: [O, I]; dx: resized to [N, I].
  void bp(const Tensor& dy, const Tensor& w, Tensor& dx);
  // x: [N, I], dy: [N, O]; dw: [O, I], db: [O] or nullptr (resized, written, not accumulated).
  void wg(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db);

  // "ff=... bp=... wg=..." for batch size N.
  std::string implementations(int64_t N);

 private:
  struct Entry;
  Entry& entry(int64_t N);
  void ensure_bp(Entry& e);
  void ensure_wg(Entry& e);

  int64_t I_, O_;
  bool bias_;
  std::vector<std::unique_ptr<Entry>> cache_;
};

}  // namespace trainer
