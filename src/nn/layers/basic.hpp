// Parameter-free layers: ReLU, MaxPool2d, GlobalAvgPool, Add (the residual join) and Flatten.
// All accept plain NCHW, nChw16c and NCHW16n activations (layer.hpp's layout contract, plus the
// sparse kernels' NCHW16n).
#pragma once

#include <cstdint>
#include <vector>

#include "nn/layer.hpp"

namespace trainer {

// y = max(x, 0), any shape. bp passes dy where y > 0.
class ReLU : public Layer {
 public:
  explicit ReLU(std::string name) : Layer(std::move(name)) {}
  const char* kind() const override { return "relu"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
};

// x: [N, C, H, W] -> y: [N, C, P, Q], P = floor((H + 2*padding - kernel)/stride) + 1, square windows.
// ff remembers each output's source (argmax) for bp; ties go to the first maximum, as PyTorch.
class MaxPool2d : public Layer {
 public:
  // stride 0 means stride = kernel.
  MaxPool2d(std::string name, int64_t kernel, int64_t stride = 0, int64_t padding = 0);
  const char* kind() const override { return "maxpool2d"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
  // The window goes in w_shape as [0, 0, kernel, kernel] (no weights), with stride and padding.
  Op describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const override;

  int64_t kernel() const { return kernel_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return padding_; }

 private:
  int64_t kernel_, stride_, padding_;
  std::vector<int32_t> argmax_;  // one per float of y's storage: h*W + w within the input plane
};

// x: [N, C, H, W] -> y: [N, C] plain, the mean of each plane.
class GlobalAvgPool : public Layer {
 public:
  explicit GlobalAvgPool(std::string name) : Layer(std::move(name)) {}
  const char* kind() const override { return "global_avg_pool"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
};

// y = x0 + x1 (same shape and layout). bp: dx0 = dx1 = dy.
class Add : public Layer {
 public:
  explicit Add(std::string name) : Layer(std::move(name)) {}
  const char* kind() const override { return "add"; }
  int num_inputs() const override { return 2; }
  bool can_fuse_relu() const override { return true; }
  bool same_dx_for_inputs() const override { return true; }
  bool can_take_affine_input(bool relu) const override { return !relu; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
};

// x: [N, C, H, W] (or any [N, ...]) -> y: [N, C*H*W] plain in NCHW order. bp restores x's shape and layout.
class Flatten : public Layer {
 public:
  explicit Flatten(std::string name) : Layer(std::move(name)) {}
  const char* kind() const override { return "flatten"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
};

}  // namespace trainer
