// BatchNorm2d (Ioffe & Szegedy 2015) as PyTorch defines it: per-channel batch statistics in training
// (biased variance to normalise, unbiased to update the running variance), running statistics in
// evaluation, learnable scale (gamma, "weight") and shift (beta, "bias") exempt from weight decay.
#pragma once

#include <vector>

#include "kernels/batchnorm.hpp"
#include "nn/layer.hpp"

namespace trainer {

class BatchNorm2d : public Layer {
 public:
  BatchNorm2d(std::string name, int64_t channels, double momentum = 0.1, double eps = 1e-5);

  const char* kind() const override { return "batchnorm2d"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  void init(Rng& rng) override;

  // x, y: [N, C, H, W] (y in x's layout).
  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  // dy: [N, C, H, W] in x's layout; writes gamma/beta grads and keeps the channel sums for bp.
  void wg(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy) override;
  // dx: [N, C, H, W] in x's layout. Uses wg's sums when they belong to this dy, else computes them.
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;

  bool can_defer_affine() const override { return true; }
  // With a fused ReLU, the copies its backward keeps (bp overwrites coef_a_, coef_b_; a convolution
  // reading this batch norm applies them again in its wg, before this layer's bp).
  AffineInput affine_output() const override {
    if (fused_relu_) return {0, relu_scale_.data(), relu_shift_.data(), true};
    return {0, coef_a_.data(), coef_b_.data(), false};
  }
  std::vector<Param*> params() override { return {&gamma_, &beta_}; }
  std::vector<Buffer> buffers() override;
  void set_input_sums(const ChannelSums* sums) override { input_sums_ = sums; }
  bool can_fuse_relu() const override { return true; }
  GradSums* grad_sums_wanted() override { return training_ ? &grad_request_ : nullptr; }

  int64_t channels() const { return channels_; }
  // Statistics the last ff normalised with (batch ones in training, running ones in evaluation): [C].
  const std::vector<float>& saved_mean() const { return mean_; }
  const std::vector<float>& saved_invstd() const { return invstd_; }

 private:
  void check_input(const Tensor& x) const;
  // Σdy and Σdy·x̂ per channel (through a fused ReLU's mask, recomputed from x).
  void grad_sums(const Tensor& x, const Tensor& dy);
  // The fused ReLU's mask for the backward kernels (null without one).
  const FusedRelu* fused_relu_mask();
  FusedRelu relu_mask_;

  int64_t channels_;
  double momentum_, eps_;
  Param gamma_, beta_;
  Tensor running_mean_, running_var_;  // [C]

  // Saved by ff for wg and bp.
  bool training_ = false;
  int64_t count_ = 0;  // M = N*H*W values per channel
  const ChannelSums* input_sums_ = nullptr;  // the producer's sums of x, for the next ff only
  std::vector<float> mean_, invstd_;
  // Channel sums over dy: sum(dy) and sum(dy * xhat), in double; valid for sums_of_ (a dy's storage)
  // until bp consumes them or ff runs again.
  std::vector<double> sum_dy_, sum_dy_xhat_;
  const float* sums_of_ = nullptr;
  GradSums grad_request_;  // for the last writer of dy (see GradSums); set up by each training ff
  // Scratch: per-channel coefficients and the kernels' partial sums.
  std::vector<double> stat_a_, stat_b_, partial_;
  std::vector<float> coef_a_, coef_b_, coef_d_;
  std::vector<float> relu_scale_, relu_shift_;  // the last ff's scale and shift, for a fused ReLU's mask
};

}  // namespace trainer
