// SGD with momentum, Nesterov momentum and L2 weight decay, with PyTorch's torch.optim.SGD semantics
// (dampening 0), so that recipes and results carry over:
//   g   = grad + wd * w               (only for params with weight_decay = true)
//   buf = g                           on the first step, else buf = m * buf + g
//   g   = g + m * buf  (nesterov)     else g = buf
//   w  -= lr * g
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"
#include "nn/layer.hpp"
#include "ops/op_stream.hpp"

namespace trainer {

struct SgdOptions {
  float momentum = 0.9f;
  bool nesterov = false;
  float weight_decay = 5e-4f;
};

class Sgd {
 public:
  // params: the model's parameters, which must outlive the optimizer. Throws trainer::Error for a
  // momentum outside [0, 1), a negative weight decay, or Nesterov without momentum (as PyTorch does).
  Sgd(std::vector<Param*> params, SgdOptions options);

  // One update of every parameter from its grad. `momentum` < 0 uses options().momentum; a schedule
  // that cycles momentum (one-cycle) passes the step's value. Records one Op (phase update) if ops.
  void step(float lr, OpStream* ops = nullptr, float momentum = -1.0f);

  const SgdOptions& options() const { return options_; }
  const std::vector<Param*>& params() const { return params_; }
  // The momentum buffer of params()[i] (same shape, plain); empty when momentum is 0.
  std::vector<Tensor>& momentum_buffers() { return buffers_; }
  const std::vector<Tensor>& momentum_buffers() const { return buffers_; }
  // Updates done so far; 0 means the buffers have not been initialised (the first step copies g).
  int64_t steps() const { return steps_; }
  // Restores state from a checkpoint: buffers are expected to have been written through
  // momentum_buffers(); `steps` says whether they hold a live history.
  void set_steps(int64_t steps) { steps_ = steps; }

 private:
  std::vector<Param*> params_;
  SgdOptions options_;
  std::vector<Tensor> buffers_;
  int64_t steps_ = 0;
};

}  // namespace trainer
