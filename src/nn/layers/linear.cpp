#include "nn/layers/linear.hpp"

#include <cmath>

#include "core/error.hpp"

namespace trainer {

namespace {

// Checks the sizes before the kernel object sees them, so the error names the layer; returns in.
int64_t checked_in_features(const std::string& layer, int64_t in, int64_t out) {
  TRAINER_CHECK(in > 0 && out > 0, "linear '{}': features must be positive, got {} -> {}", layer, in, out);
  return in;
}

}  // namespace

Linear::Linear(std::string name, int64_t in_features, int64_t out_features, bool bias)
    : Layer(std::move(name)),
      in_(checked_in_features(this->name(), in_features, out_features)),
      out_(out_features),
      has_bias_(bias),
      dnnl_(in_, out_, has_bias_) {
  weight_.name = this->name() + ".weight";
  weight_.value = Tensor({out_, in_});
  weight_.grad = Tensor({out_, in_});
  if (has_bias_) {
    bias_.name = this->name() + ".bias";
    bias_.weight_decay = false;
    bias_.value = Tensor({out_});
    bias_.grad = Tensor({out_});
  }
}

void Linear::init(Rng& rng) {
  init_fan_in(init_scheme(), static_cast<double>(in_), weight_, has_bias_ ? &bias_ : nullptr, rng);
}

Shape Linear::infer_shape(const std::vector<Shape>& in) const {
  TRAINER_CHECK(in.size() == 1, "linear '{}': takes 1 input, given {}", name(), in.size());
  const Shape& s = in[0];
  TRAINER_CHECK(s.size() == 2, "linear '{}': expected input [N, {}], got {} (flatten a 4-D activation first)",
                name(), in_, shape_str(s));
  TRAINER_CHECK(s[1] == in_, "linear '{}': expected {} input features, input {} has {}", name(), in_,
                shape_str(s), s[1]);
  return {s[0], out_};
}

void Linear::check_input(const Tensor& x) const {
  infer_shape({x.shape()});
  TRAINER_CHECK(x.layout() == Layout::plain, "linear '{}': input must be plain, got {}", name(),
                layout_name(x.layout()));
}

void Linear::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  TRAINER_CHECK(x.size() == 1 && x[0], "linear '{}': needs one input", name());
  check_input(*x[0]);
  dnnl_.ff(*x[0], weight_.value, has_bias_ ? &bias_.value : nullptr, y);
}

void Linear::bp(const std::vector<const Tensor*>& x, const Tensor& /*y*/, const Tensor& dy,
                const std::vector<Tensor*>& dx) {
  TRAINER_CHECK(x.size() == 1 && x[0] && dx.size() == 1, "linear '{}': needs one input", name());
  if (!dx[0]) return;
  check_input(*x[0]);
  check_shape(dy, {x[0]->dim(0), out_}, "linear: dy");
  dnnl_.bp(dy, weight_.value, *dx[0]);
}

void Linear::wg(const std::vector<const Tensor*>& x, const Tensor& /*y*/, const Tensor& dy) {
  TRAINER_CHECK(x.size() == 1 && x[0], "linear '{}': needs one input", name());
  check_input(*x[0]);
  dnnl_.wg(*x[0], dy, weight_.grad, has_bias_ ? &bias_.grad : nullptr);
}

std::vector<Param*> Linear::params() {
  if (has_bias_) return {&weight_, &bias_};
  return {&weight_};
}

Op Linear::describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const {
  Op op = Layer::describe(phase, x, y);
  op.w_shape = {out_, in_, 1, 1};
  if (!x.empty() && x[0] && x[0]->rank() >= 1 &&
      (phase == Phase::ff || phase == Phase::bp || phase == Phase::wg))
    op.dense_macs = static_cast<uint64_t>(x[0]->dim(0) * out_ * in_);
  return op;
}

}  // namespace trainer
