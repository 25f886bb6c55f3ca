#include "nn/layer.hpp"

namespace trainer {

namespace {
std::array<int64_t, 4> pad4(const Shape& s) {
  std::array<int64_t, 4> out{1, 1, 1, 1};
  for (size_t i = 0; i < s.size() && i < 4; ++i) out[i] = s[i];
  return out;
}
}  // namespace

Op Layer::describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const {
  Op op;
  op.kind = kind();
  op.phase = phase;
  if (!x.empty() && x[0]) op.x_shape = pad4(x[0]->shape());
  op.y_shape = pad4(y.shape());
  return op;
}

}  // namespace trainer
