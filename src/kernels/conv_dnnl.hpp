// Dense convolution on oneDNN: the fast path for conv2d's ff, bp and wg (tested against conv_ref.hpp).
//
// One ConvDnnl per layer. It keeps the oneDNN primitives of each input geometry it has seen (batch
// size, height, width and x's layout: the last batch of an epoch and evaluation batches differ), so a
// training step creates nothing once the shapes are known.
//
// Layouts: x is read in its own layout (plain NCHW or nChw16c) and y is written nChw16c when K is a
// multiple of 16, else plain. The primitives are asked for exactly those layouts so no activation is
// reordered; only where oneDNN has no optimised kernel for them (it would pick its reference one) are
// the activations reordered to the layouts oneDNN prefers and back. Weights and their gradients are
// plain OIHW in the caller's tensors and reordered to and from oneDNN's blocked weight formats.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "kernels/conv_ref.hpp"

namespace trainer {

class ConvDnnl {
 public:
  // w: [K, C, R, S]; one stride and one padding for both spatial dimensions.
  ConvDnnl(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride, int64_t pad, bool bias);
  ~ConvDnnl();
  ConvDnnl(const ConvDnnl&) = delete;
  ConvDnnl& operator=(const ConvDnnl&) = delete;

  // The layout y is written in: nChw16c when K is a multiple of 16 (what the next conv reads fastest).
  Layout y_layout() const { return K_ % 16 == 0 ? Layout::nChw16c : Layout::plain; }
  ConvGeom geom(const Shape& x_shape) const;

  // x: [N, C, H, W] (plain or nChw16c), w: [K, C, R, S] plain, b: [K] or nullptr;
  // y: resized to [N, K, P, Q] in y_layout().
  void ff(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y);
  // x: the ff input (only its shape and layout are read), dy: [N, K, P, Q] in y_layout(),
  // w: [K, C, R, S], unchanged since the last ff on x's geometry (its reordered copy is reused when
  // the formats agree); dx: resized to x's shape and layout.
  void bp(const Tensor& x, const Tensor& dy, const Tensor& w, Tensor& dx);
  // x: [N, C, H, W], dy: [N, K, P, Q] in y_layout(); dw: [K, C, R, S] plain, db: [K] or nullptr
  // (both resized and written, not accumulated).
  void wg(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db);

  // The oneDNN implementations chosen for x's geometry, e.g. "ff=jit:avx512_core bp=... wg=...";
  // a phase that has not run yet for that geometry is created to answer.
  std::string implementations(const Tensor& x);

 private:
  struct Entry;
  Entry& entry(const Tensor& x);
  void ensure_bp(Entry& e);
  void ensure_wg(Entry& e);

  int64_t C_, K_, R_, S_, stride_, pad_;
  bool bias_;
  uint64_t ff_count_ = 0;  // stamps the ff that last reordered the weights, for bp to reuse them
  std::vector<std::unique_ptr<Entry>> cache_;
};

}  // namespace trainer
