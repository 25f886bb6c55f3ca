#include "train/optimizer.hpp"

#include <cmath>

#include "core/error.hpp"
#include "core/timer.hpp"

namespace trainer {

namespace {

// Below this many elements a parameter is updated by one thread: waking the team costs more than the
// update (biases, batch-norm affine parameters).
constexpr int64_t kParallelThreshold = 1 << 15;

// w, grad, buf: [n] (any shape, plain). One fused pass per parameter; the branches on the options are
// outside the loop so that each variant vectorises.
void sgd_update(float* w, const float* grad, float* buf, int64_t n, float lr, float m, float wd,
                bool nesterov, bool first) {
  if (!buf) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
    for (int64_t i = 0; i < n; ++i) w[i] -= lr * (grad[i] + wd * w[i]);
    return;
  }
  if (first) {
    // PyTorch starts the buffer as a copy of the first gradient (not m * 0 + g, which is the same
    // value, but no decay is applied to a history that does not exist yet).
    if (nesterov) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
      for (int64_t i = 0; i < n; ++i) {
        const float g = grad[i] + wd * w[i];
        buf[i] = g;
        w[i] -= lr * (g + m * g);
      }
    } else {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
      for (int64_t i = 0; i < n; ++i) {
        const float g = grad[i] + wd * w[i];
        buf[i] = g;
        w[i] -= lr * g;
      }
    }
    return;
  }
  if (nesterov) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
    for (int64_t i = 0; i < n; ++i) {
      const float g = grad[i] + wd * w[i];
      const float b = m * buf[i] + g;
      buf[i] = b;
      w[i] -= lr * (g + m * b);
    }
  } else {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
    for (int64_t i = 0; i < n; ++i) {
      const float g = grad[i] + wd * w[i];
      const float b = m * buf[i] + g;
      buf[i] = b;
      w[i] -= lr * b;
    }
  }
}

}  // namespace

Sgd::Sgd(std::vector<Param*> params, SgdOptions options) : params_(std::move(params)), options_(options) {
  TRAINER_CHECK(options_.momentum >= 0.0f && options_.momentum < 1.0f,
                "sgd: momentum must be in [0, 1), got {}", options_.momentum);
  TRAINER_CHECK(options_.weight_decay >= 0.0f, "sgd: weight decay must be >= 0, got {}",
                options_.weight_decay);
  TRAINER_CHECK(!options_.nesterov || options_.momentum > 0.0f,
                "sgd: Nesterov momentum needs a momentum > 0");
  for (const Param* p : params_) TRAINER_CHECK(p != nullptr, "sgd: null parameter");
  if (options_.momentum > 0.0f) {
    buffers_.reserve(params_.size());
    for (const Param* p : params_) buffers_.emplace_back(p->value.shape());
  }
}

void Sgd::step(float lr, OpStream* ops, float momentum) {
  const uint64_t t0 = now_ns();
  const float m = momentum >= 0.0f ? momentum : options_.momentum;
  TRAINER_CHECK(std::isfinite(lr), "sgd: learning rate is {}", lr);
  int64_t elements = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = *params_[i];
    const int64_t n = p.value.numel();
    TRAINER_CHECK(p.grad.shape() == p.value.shape() && p.value.layout() == Layout::plain &&
                      p.grad.layout() == Layout::plain,
                  "sgd: parameter '{}' has value {} ({}) but gradient {} ({}); both must be plain and equal",
                  p.name, shape_str(p.value.shape()), layout_name(p.value.layout()),
                  shape_str(p.grad.shape()), layout_name(p.grad.layout()));
    float* buf = buffers_.empty() ? nullptr : buffers_[i].data();
    sgd_update(p.value.data(), p.grad.data(), buf, n, lr, m, p.weight_decay ? options_.weight_decay : 0.0f,
               options_.nesterov, steps_ == 0);
    elements += n;
  }
  ++steps_;
  if (ops) {
    Op op;
    op.layer = -1;
    op.layer_name = "sgd";
    op.kind = "sgd";
    op.phase = Phase::update;
    // The update reads and writes the parameter vector [P].
    op.x_shape = {elements, 1, 1, 1};
    op.y_shape = {elements, 1, 1, 1};
    op.time_ns = now_ns() - t0;
    ops->record(std::move(op));
  }
}

}  // namespace trainer
