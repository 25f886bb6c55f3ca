#include "nn/layers/conv2d.hpp"

#include <cmath>

#include "core/error.hpp"

namespace trainer {

namespace {

// Checks the constructor's arguments before the kernel object sees them, so the error names the
// layer; returns in_channels.
int64_t checked_in_channels(const std::string& layer, int64_t C, int64_t K, int64_t kernel, int64_t stride,
                            int64_t padding) {
  TRAINER_CHECK(C > 0 && K > 0, "conv2d '{}': channels must be positive, got {} -> {}", layer, C, K);
  TRAINER_CHECK(kernel > 0, "conv2d '{}': kernel must be positive, got {}", layer, kernel);
  TRAINER_CHECK(stride > 0, "conv2d '{}': stride must be positive, got {}", layer, stride);
  TRAINER_CHECK(padding >= 0, "conv2d '{}': padding must not be negative, got {}", layer, padding);
  return C;
}

}  // namespace

Conv2d::Conv2d(std::string name, int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride,
               int64_t padding, bool bias)
    : Layer(std::move(name)),
      C_(checked_in_channels(this->name(), in_channels, out_channels, kernel, stride, padding)),
      K_(out_channels),
      R_(kernel),
      stride_(stride),
      pad_(padding),
      has_bias_(bias),
      dnnl_(C_, K_, R_, R_, stride_, pad_, has_bias_) {
  weight_.name = this->name() + ".weight";
  weight_.value = Tensor({K_, C_, R_, R_});
  weight_.grad = Tensor({K_, C_, R_, R_});
  if (has_bias_) {
    bias_.name = this->name() + ".bias";
    bias_.weight_decay = false;
    bias_.value = Tensor({K_});
    bias_.grad = Tensor({K_});
  }
}

void Conv2d::init(Rng& rng) {
  init_fan_in(init_scheme(), static_cast<double>(C_ * R_ * R_), weight_, has_bias_ ? &bias_ : nullptr, rng);
}

void Conv2d::check_input(const Shape& s) const {
  TRAINER_CHECK(s.size() == 4, "conv2d '{}': expected input [N, {}, H, W], got {}", name(), C_, shape_str(s));
  TRAINER_CHECK(s[1] == C_, "conv2d '{}': expected {} input channels, input {} has {}", name(), C_,
                shape_str(s), s[1]);
  TRAINER_CHECK(s[2] + 2 * pad_ >= R_ && s[3] + 2 * pad_ >= R_,
                "conv2d '{}': the {}x{} kernel is larger than the input {} padded by {}", name(), R_, R_,
                shape_str(s), pad_);
}

Shape Conv2d::infer_shape(const std::vector<Shape>& in) const {
  TRAINER_CHECK(in.size() == 1, "conv2d '{}': takes 1 input, given {}", name(), in.size());
  check_input(in[0]);
  const Shape& s = in[0];
  return {s[0], K_, (s[2] + 2 * pad_ - R_) / stride_ + 1, (s[3] + 2 * pad_ - R_) / stride_ + 1};
}

void Conv2d::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  TRAINER_CHECK(x.size() == 1 && x[0], "conv2d '{}': needs one input", name());
  check_input(x[0]->shape());
  dnnl_.ff(*x[0], weight_.value, has_bias_ ? &bias_.value : nullptr, y);
}

void Conv2d::bp(const std::vector<const Tensor*>& x, const Tensor& /*y*/, const Tensor& dy,
                const std::vector<Tensor*>& dx) {
  TRAINER_CHECK(x.size() == 1 && x[0] && dx.size() == 1, "conv2d '{}': needs one input", name());
  if (!dx[0]) return;
  check_input(x[0]->shape());
  dnnl_.bp(*x[0], dy, weight_.value, *dx[0]);
}

void Conv2d::wg(const std::vector<const Tensor*>& x, const Tensor& /*y*/, const Tensor& dy) {
  TRAINER_CHECK(x.size() == 1 && x[0], "conv2d '{}': needs one input", name());
  check_input(x[0]->shape());
  dnnl_.wg(*x[0], dy, weight_.grad, has_bias_ ? &bias_.grad : nullptr);
}

std::vector<Param*> Conv2d::params() {
  if (has_bias_) return {&weight_, &bias_};
  return {&weight_};
}

Op Conv2d::describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const {
  Op op = Layer::describe(phase, x, y);
  op.w_shape = {K_, C_, R_, R_};
  op.stride = {static_cast<int32_t>(stride_), static_cast<int32_t>(stride_)};
  op.pad = {static_cast<int32_t>(pad_), static_cast<int32_t>(pad_)};
  if (!x.empty() && x[0] && x[0]->rank() == 4) {
    const Shape& s = x[0]->shape();
    const ConvGeom g{s[0], s[1], s[2], s[3], K_, R_, R_, stride_, pad_};
    // ff, bp and wg each visit every (n, k, p, q, c, r, s) once.
    if (phase == Phase::ff || phase == Phase::bp || phase == Phase::wg)
      op.dense_macs = static_cast<uint64_t>(g.macs());
  }
  return op;
}

}  // namespace trainer
