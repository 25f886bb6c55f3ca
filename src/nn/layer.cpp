#include "nn/layer.hpp"

#include <cmath>

namespace trainer {

namespace {
std::array<int64_t, 4> pad4(const Shape& s) {
  std::array<int64_t, 4> out{1, 1, 1, 1};
  for (size_t i = 0; i < s.size() && i < 4; ++i) out[i] = s[i];
  return out;
}
}  // namespace

void init_fan_in(InitScheme scheme, double fan_in, Param& weight, Param* bias, Rng& rng) {
  // pytorch: kaiming_uniform(a = sqrt(5)), i.e. gain sqrt(2 / (1 + 5)) and bound gain * sqrt(3 / fan_in)
  // = 1 / sqrt(fan_in); PyTorch draws the bias from the same bound.
  // kaiming: gain sqrt(2) for ReLU, bound sqrt(6 / fan_in); biases start at zero.
  const bool kaiming = scheme == InitScheme::kaiming;
  const double bound = (kaiming ? std::sqrt(6.0) : 1.0) / std::sqrt(fan_in);
  float* w = weight.value.data();
  for (int64_t i = 0; i < weight.value.numel(); ++i) w[i] = static_cast<float>((2 * rng.uniform() - 1) * bound);
  weight.grad.zero();
  if (!bias) return;
  float* b = bias->value.data();
  for (int64_t i = 0; i < bias->value.numel(); ++i)
    b[i] = kaiming ? 0.0f : static_cast<float>((2 * rng.uniform() - 1) * bound);
  bias->grad.zero();
}

Op Layer::describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const {
  Op op;
  op.kind = kind();
  op.phase = phase;
  if (!x.empty() && x[0]) op.x_shape = pad4(x[0]->shape());
  op.y_shape = pad4(y.shape());
  return op;
}

}  // namespace trainer
