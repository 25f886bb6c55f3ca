#include "nn/layers/basic.hpp"

#include "core/error.hpp"
#include "kernels/activation.hpp"
#include "kernels/batchnorm.hpp"
#include "kernels/eltwise.hpp"
#include "kernels/norm_pool_ref.hpp"
#include "kernels/pool.hpp"

namespace trainer {

namespace {

const Tensor& single_input(const Layer& l, const std::vector<const Tensor*>& x) {
  TRAINER_CHECK(x.size() == 1 && x[0], "{} '{}': takes 1 input, given {}", l.kind(), l.name(), x.size());
  return *x[0];
}

// The contract says dy has y's shape and layout; anything else is a wiring bug worth a clear message.
void check_dy(const Layer& l, const Tensor& y, const Tensor& dy) {
  TRAINER_CHECK(dy.shape() == y.shape() && dy.layout() == y.layout(),
                "{} '{}': gradient {} ({}) does not match the output {} ({})", l.kind(), l.name(),
                shape_str(dy.shape()), layout_name(dy.layout()), shape_str(y.shape()),
                layout_name(y.layout()));
}

void check_one_shape(const Layer& l, const std::vector<Shape>& in) {
  TRAINER_CHECK(in.size() == 1, "{} '{}': takes 1 input, given {}", l.kind(), l.name(), in.size());
}

}  // namespace

// ---- ReLU ----

Shape ReLU::infer_shape(const std::vector<Shape>& in) const {
  check_one_shape(*this, in);
  TRAINER_CHECK(!in[0].empty(), "relu '{}': input has no dimensions", name());
  return in[0];
}

void ReLU::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  relu_ff(single_input(*this, x), y);
}

void ReLU::bp(const std::vector<const Tensor*>& /*x*/, const Tensor& y, const Tensor& dy,
              const std::vector<Tensor*>& dx) {
  check_dy(*this, y, dy);
  if (!dx.empty() && dx[0]) relu_bp(y, dy, *dx[0]);
}

// ---- MaxPool2d ----

MaxPool2d::MaxPool2d(std::string name, int64_t kernel, int64_t stride, int64_t padding)
    : Layer(std::move(name)), kernel_(kernel), stride_(stride == 0 ? kernel : stride), padding_(padding) {
  TRAINER_CHECK(kernel_ > 0, "maxpool2d '{}': kernel must be positive, got {}", this->name(), kernel);
  TRAINER_CHECK(stride_ > 0, "maxpool2d '{}': stride must be positive (or 0 for the kernel size), got {}",
                this->name(), stride);
  // As PyTorch: more padding than half the window would let a window hold only padding.
  TRAINER_CHECK(padding_ >= 0 && 2 * padding_ <= kernel_,
                "maxpool2d '{}': padding must be in [0, kernel/2] = [0, {}], got {}", this->name(),
                kernel_ / 2, padding);
}

Shape MaxPool2d::infer_shape(const std::vector<Shape>& in) const {
  check_one_shape(*this, in);
  const Shape& s = in[0];
  TRAINER_CHECK(s.size() == 4, "maxpool2d '{}': expected input [N, C, H, W], got {}", name(), shape_str(s));
  TRAINER_CHECK(s[2] + 2 * padding_ >= kernel_ && s[3] + 2 * padding_ >= kernel_,
                "maxpool2d '{}': kernel {} is larger than the input {} padded by {}", name(), kernel_,
                shape_str(s), padding_);
  return {s[0], s[1], ref::pool_out_size(s[2], kernel_, stride_, padding_),
          ref::pool_out_size(s[3], kernel_, stride_, padding_)};
}

void MaxPool2d::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  const Tensor& in = single_input(*this, x);
  infer_shape({in.shape()});
  maxpool_ff(in, kernel_, stride_, padding_, y, argmax_);
}

void MaxPool2d::bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
                   const std::vector<Tensor*>& dx) {
  const Tensor& in = single_input(*this, x);
  check_dy(*this, y, dy);
  TRAINER_CHECK(y.layout() == in.layout(), "maxpool2d '{}': output layout {} differs from the input's {}",
                name(), layout_name(y.layout()), layout_name(in.layout()));
  if (!dx.empty() && dx[0]) maxpool_bp(dy, argmax_, in.shape(), *dx[0]);
}

Op MaxPool2d::describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const {
  Op op = Layer::describe(phase, x, y);
  op.w_shape = {0, 0, kernel_, kernel_};
  op.stride = {static_cast<int32_t>(stride_), static_cast<int32_t>(stride_)};
  op.pad = {static_cast<int32_t>(padding_), static_cast<int32_t>(padding_)};
  return op;
}

// ---- GlobalAvgPool ----

Shape GlobalAvgPool::infer_shape(const std::vector<Shape>& in) const {
  check_one_shape(*this, in);
  const Shape& s = in[0];
  TRAINER_CHECK(s.size() == 4, "global_avg_pool '{}': expected input [N, C, H, W], got {}", name(),
                shape_str(s));
  TRAINER_CHECK(s[2] > 0 && s[3] > 0, "global_avg_pool '{}': input {} has an empty plane", name(),
                shape_str(s));
  return {s[0], s[1]};
}

void GlobalAvgPool::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  const Tensor& in = single_input(*this, x);
  infer_shape({in.shape()});
  gap_ff(in, y);
}

void GlobalAvgPool::bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
                       const std::vector<Tensor*>& dx) {
  const Tensor& in = single_input(*this, x);
  check_dy(*this, y, dy);
  if (!dx.empty() && dx[0]) gap_bp(dy, in.shape(), in.layout(), *dx[0]);
}

// ---- Add ----

Shape Add::infer_shape(const std::vector<Shape>& in) const {
  TRAINER_CHECK(in.size() == 2, "add '{}': takes 2 inputs, given {}", name(), in.size());
  TRAINER_CHECK(in[0] == in[1], "add '{}': inputs have different shapes {} and {}", name(), shape_str(in[0]),
                shape_str(in[1]));
  return in[0];
}

void Add::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  TRAINER_CHECK(x.size() == 2 && x[0] && x[1], "add '{}': takes 2 inputs, given {}", name(), x.size());
  infer_shape({x[0]->shape(), x[1]->shape()});
  TRAINER_CHECK(x[0]->layout() == x[1]->layout(), "add '{}': inputs have different layouts {} and {}", name(),
                layout_name(x[0]->layout()), layout_name(x[1]->layout()));
  const AffineInput& a = affine_input_;
  if (a.input >= 0) {  // input a.input is a batch norm's input: normalise, add and (ReLU) in one pass
    TRAINER_CHECK(a.input < 2 && a.scale && a.shift && !a.relu, "add '{}': bad affine input {}", name(), a.input);
    batchnorm_apply_add(*x[a.input], a.scale, a.shift, *x[1 - a.input], y, fused_relu_);
    return;
  }
  add(*x[0], *x[1], y, fused_relu_);
}

void Add::bp(const std::vector<const Tensor*>& /*x*/, const Tensor& y, const Tensor& dy,
             const std::vector<Tensor*>& dx) {
  check_dy(*this, y, dy);
  if (fused_relu_) {
    // The fused ReLU's backward, written to both inputs' gradients in one pass.
    Tensor* first = dx.size() > 0 && dx[0] ? dx[0] : dx.size() > 1 ? dx[1] : nullptr;
    Tensor* second = first == dx[0] && dx.size() > 1 ? dx[1] : nullptr;
    if (first) relu_bp_to_two(y, dy, *first, second);
    return;
  }
  for (Tensor* d : dx)
    if (d) parallel_copy(dy, *d);
}

// ---- Flatten ----

Shape Flatten::infer_shape(const std::vector<Shape>& in) const {
  check_one_shape(*this, in);
  const Shape& s = in[0];
  TRAINER_CHECK(s.size() >= 2, "flatten '{}': expected input [N, ...] of rank 2 or more, got {}", name(),
                shape_str(s));
  int64_t features = 1;
  for (size_t i = 1; i < s.size(); ++i) features *= s[i];
  return {s[0], features};
}

void Flatten::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  const Tensor& in = single_input(*this, x);
  infer_shape({in.shape()});
  flatten_ff(in, y);
}

void Flatten::bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
                 const std::vector<Tensor*>& dx) {
  const Tensor& in = single_input(*this, x);
  check_dy(*this, y, dy);
  if (!dx.empty() && dx[0]) flatten_bp(dy, in.shape(), in.layout(), *dx[0]);
}

}  // namespace trainer
