// Conv2d: 2-D convolution, y = x * w (+ b), square kernel, one stride and one padding for both sides.
// x: [N, C, H, W] plain or nChw16c; w: [K, C, R, S] (R = S = kernel); y: [N, K, P, Q], written nChw16c
// when K is a multiple of 16 (what the next convolution reads without a reorder), else plain.
#pragma once

#include <string>
#include <vector>

#include "kernels/conv_dnnl.hpp"
#include "nn/layer.hpp"

namespace trainer {

class Conv2d : public Layer {
 public:
  Conv2d(std::string name, int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride = 1,
         int64_t padding = 0, bool bias = false);

  const char* kind() const override { return "conv2d"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  // PyTorch's default: kaiming_uniform(a = sqrt(5)), i.e. w and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  void init(Rng& rng) override;

  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
  void wg(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy) override;

  std::vector<Param*> params() override;
  Op describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const override;

  int64_t in_channels() const { return C_; }
  int64_t out_channels() const { return K_; }
  int64_t kernel() const { return R_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return pad_; }
  bool has_bias() const { return has_bias_; }
  Param& weight() { return weight_; }
  Param& bias() { return bias_; }  // empty tensors when !has_bias()
  // The oneDNN implementations chosen for this input (for logs and benchmarks).
  std::string implementations(const Tensor& x) { return dnnl_.implementations(x); }

 private:
  // Throws trainer::Error naming this layer unless x is [N, C, H, W] with the kernel fitting.
  void check_input(const Shape& x) const;

  int64_t C_, K_, R_, stride_, pad_;
  bool has_bias_;
  Param weight_, bias_;
  ConvDnnl dnnl_;
};

}  // namespace trainer
