#include "nn/layers/batchnorm2d.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "kernels/batchnorm.hpp"

namespace trainer {

BatchNorm2d::BatchNorm2d(std::string name, int64_t channels, double momentum, double eps)
    : Layer(std::move(name)), channels_(channels), momentum_(momentum), eps_(eps) {
  TRAINER_CHECK(channels > 0, "batchnorm2d '{}': channels must be positive, got {}", this->name(), channels);
  TRAINER_CHECK(momentum >= 0 && momentum <= 1, "batchnorm2d '{}': momentum must be in [0, 1], got {}",
                this->name(), momentum);
  TRAINER_CHECK(eps > 0, "batchnorm2d '{}': eps must be positive, got {}", this->name(), eps);
  gamma_.name = this->name() + ".weight";
  beta_.name = this->name() + ".bias";
  gamma_.weight_decay = beta_.weight_decay = false;
  for (Param* p : {&gamma_, &beta_}) {
    p->value = Tensor({channels});
    p->grad = Tensor({channels});
  }
  running_mean_ = Tensor({channels});
  running_var_ = Tensor({channels});
  const size_t C = static_cast<size_t>(channels);
  mean_.assign(C, 0.0f);
  invstd_.assign(C, 0.0f);
  sum_dy_.assign(C, 0.0);
  sum_dy_xhat_.assign(C, 0.0);
  stat_a_.assign(C, 0.0);
  stat_b_.assign(C, 0.0);
  coef_a_.assign(C, 0.0f);
  coef_b_.assign(C, 0.0f);
  coef_d_.assign(C, 0.0f);
  Rng unused;
  init(unused);
}

void BatchNorm2d::init(Rng& /*rng*/) {
  gamma_.value.fill(1.0f);
  beta_.value.zero();
  gamma_.grad.zero();
  beta_.grad.zero();
  running_mean_.zero();
  running_var_.fill(1.0f);
}

std::vector<Buffer> BatchNorm2d::buffers() {
  return {{name() + ".running_mean", &running_mean_}, {name() + ".running_var", &running_var_}};
}

Shape BatchNorm2d::infer_shape(const std::vector<Shape>& in) const {
  TRAINER_CHECK(in.size() == 1, "batchnorm2d '{}': takes 1 input, given {}", name(), in.size());
  const Shape& s = in[0];
  TRAINER_CHECK(s.size() == 4, "batchnorm2d '{}': expected input [N, {}, H, W], got {}", name(), channels_,
                shape_str(s));
  TRAINER_CHECK(s[1] == channels_, "batchnorm2d '{}': expected {} channels, input {} has {}", name(),
                channels_, shape_str(s), s[1]);
  return s;
}

void BatchNorm2d::check_input(const Tensor& x) const { infer_shape({x.shape()}); }

void BatchNorm2d::ff(const std::vector<const Tensor*>& xs, Tensor& y, bool training) {
  TRAINER_CHECK(xs.size() == 1 && xs[0], "batchnorm2d '{}': needs one input", name());
  const Tensor& x = *xs[0];
  check_input(x);
  const int64_t C = channels_;
  count_ = x.dim(0) * x.dim(2) * x.dim(3);
  training_ = training;
  sums_of_ = nullptr;
  const float* gamma = gamma_.value.data();
  const float* beta = beta_.value.data();
  float* rmean = running_mean_.data();
  float* rvar = running_var_.data();
  if (training) {
    // As PyTorch: the unbiased variance for the running estimate needs two values per channel.
    TRAINER_CHECK(count_ > 1, "batchnorm2d '{}': training needs more than one value per channel, input is {}",
                  name(), shape_str(x.shape()));
    if (input_sums_ && input_sums_->of == &x && input_sums_->count == count_) {
      // The producing convolution summed x per channel on its way out: no pass over x here.
      const double n = static_cast<double>(count_);
      for (int64_t c = 0; c < C; ++c) {
        const double mean = input_sums_->sum[c] / n;
        stat_a_[c] = mean;
        stat_b_[c] = std::max(0.0, input_sums_->sumsq[c] / n - mean * mean);
      }
    } else {
      batchnorm_stats(x, stat_a_.data(), stat_b_.data(), partial_);
    }
    const double unbias = static_cast<double>(count_) / static_cast<double>(count_ - 1);
    for (int64_t c = 0; c < C; ++c) {
      const double mean = stat_a_[c], var = stat_b_[c];
      const double invstd = 1.0 / std::sqrt(var + eps_);
      rmean[c] = static_cast<float>((1 - momentum_) * rmean[c] + momentum_ * mean);
      rvar[c] = static_cast<float>((1 - momentum_) * rvar[c] + momentum_ * var * unbias);
      mean_[c] = static_cast<float>(mean);
      invstd_[c] = static_cast<float>(invstd);
      const double scale = gamma[c] * invstd;
      coef_a_[c] = static_cast<float>(scale);
      coef_b_[c] = static_cast<float>(beta[c] - mean * scale);
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const double invstd = 1.0 / std::sqrt(static_cast<double>(rvar[c]) + eps_);
      mean_[c] = rmean[c];
      invstd_[c] = static_cast<float>(invstd);
      const double scale = gamma[c] * invstd;
      coef_a_[c] = static_cast<float>(scale);
      coef_b_[c] = static_cast<float>(beta[c] - rmean[c] * scale);
    }
  }
  input_sums_ = nullptr;
  if (fused_relu_) relu_scale_ = coef_a_, relu_shift_ = coef_b_;  // bp overwrites the coefficients
  grad_request_ = {};
  if (training) {
    grad_request_.x = &x;
    grad_request_.mean = mean_.data();
    if (fused_relu_)
      grad_request_.relu_scale = relu_scale_.data(), grad_request_.relu_shift = relu_shift_.data();
    grad_request_.sum_dy = sum_dy_.data();
    grad_request_.sum_dy_xc = sum_dy_xhat_.data();
  }
  if (defer_affine_) return;  // the reader applies them (affine_output; see Layer::can_defer_affine)
  batchnorm_apply(x, coef_a_.data(), coef_b_.data(), y, fused_relu_);
}

const FusedRelu* BatchNorm2d::fused_relu_mask() {
  if (!fused_relu_) return nullptr;
  TRAINER_CHECK(relu_scale_.size() == static_cast<size_t>(channels_),
                "batchnorm2d '{}': backward through its fused ReLU without its ff", name());
  relu_mask_ = {relu_scale_.data(), relu_shift_.data()};
  return &relu_mask_;
}

void BatchNorm2d::grad_sums(const Tensor& x, const Tensor& dy) {
  TRAINER_CHECK(dy.shape() == x.shape() && dy.layout() == x.layout(),
                "batchnorm2d '{}': gradient {} ({}) does not match input {} ({})", name(),
                shape_str(dy.shape()), layout_name(dy.layout()), shape_str(x.shape()),
                layout_name(x.layout()));
  TRAINER_CHECK(count_ == x.dim(0) * x.dim(2) * x.dim(3),
                "batchnorm2d '{}': backward for input {} without its ff", name(), shape_str(x.shape()));
  // The last writer of dy took them on its way out (GradSums), into sum_dy_ and sum_dy_xhat_.
  const bool taken = grad_request_.of == &dy && grad_request_.x == &x;
  if (!taken)
    batchnorm_grad_sums(x, dy, mean_.data(), sum_dy_.data(), sum_dy_xhat_.data(), partial_,
                        fused_relu_mask());
  grad_request_.of = nullptr;  // used once: a later backward's dy may be the same tensor
  for (int64_t c = 0; c < channels_; ++c) sum_dy_xhat_[c] *= invstd_[c];
  sums_of_ = dy.data();
}

void BatchNorm2d::wg(const std::vector<const Tensor*>& xs, const Tensor& /*y*/, const Tensor& dy) {
  TRAINER_CHECK(xs.size() == 1 && xs[0], "batchnorm2d '{}': needs one input", name());
  check_input(*xs[0]);
  grad_sums(*xs[0], dy);
  float* dgamma = gamma_.grad.data();
  float* dbeta = beta_.grad.data();
  for (int64_t c = 0; c < channels_; ++c) {
    dgamma[c] = static_cast<float>(sum_dy_xhat_[c]);
    dbeta[c] = static_cast<float>(sum_dy_[c]);
  }
}

void BatchNorm2d::bp(const std::vector<const Tensor*>& xs, const Tensor& /*y*/, const Tensor& dy,
                     const std::vector<Tensor*>& dx) {
  TRAINER_CHECK(xs.size() == 1 && xs[0] && dx.size() == 1, "batchnorm2d '{}': needs one input", name());
  if (!dx[0]) return;
  const Tensor& x = *xs[0];
  check_input(x);
  // wg's sums are reused only for the very dy they were taken over; a later bp recomputes them.
  if (training_ && sums_of_ != dy.data()) grad_sums(x, dy);
  sums_of_ = nullptr;
  const float* gamma = gamma_.value.data();
  const double M = static_cast<double>(count_);
  for (int64_t c = 0; c < channels_; ++c) {
    // dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)) with xhat = (x - mean)*invstd,
    // rearranged as a*dy + b*x + d so that one pass computes it.
    const double invstd = invstd_[c];
    const double k = gamma[c] * invstd;
    if (training_) {
      const double b = -k * invstd * sum_dy_xhat_[c] / M;
      coef_a_[c] = static_cast<float>(k);
      coef_b_[c] = static_cast<float>(b);
      coef_d_[c] = static_cast<float>(-b * mean_[c] - k * sum_dy_[c] / M);
    } else {
      // Evaluation statistics are constants: only the direct path remains.
      coef_a_[c] = static_cast<float>(k);
      coef_b_[c] = 0.0f;
      coef_d_[c] = 0.0f;
    }
  }
  batchnorm_bp_apply(x, dy, coef_a_.data(), coef_b_.data(), coef_d_.data(), *dx[0], fused_relu_mask());
}

}  // namespace trainer
