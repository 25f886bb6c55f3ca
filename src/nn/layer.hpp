// Layer: one node of a model, with the three phases the project counts, skips and costs as separate
// entry points:
//   ff : y = f(x)                       (forward)
//   bp : dx = dL/dx given dy = dL/dy    (back-propagation of errors to the input)
//   wg : dW = dL/dW given dy            (weight gradients; only layers with parameters)
// The graph calls, per layer in reverse order, wg (if the layer has parameters) and then bp (if any
// input needs a gradient). bp may use what wg computed in the same step (batch norm does).
//
// Layout contract (docs/ARCHITECTURE.md): a 4-D activation may be plain NCHW or nChw16c. Every layer
// accepts both. Element-wise and per-channel layers write y in x's layout; conv2d chooses (nChw16c when
// its output channels are a multiple of 16); flatten writes plain [N, C*H*W]. dx always has x's shape
// and layout, and dy has y's.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "ops/op.hpp"

namespace trainer {

// A trainable tensor and its gradient (same shape, plain layout).
struct Param {
  std::string name;  // "<layer>.weight", "<layer>.bias", ...
  Tensor value;
  Tensor grad;
  bool weight_decay = true;  // biases and batch-norm affine parameters are exempt
};

// How parameters are initialised.
//  pytorch: PyTorch's defaults (kaiming_uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
//           conv and linear weights and biases), so runs compare one to one with PyTorch's.
//  kaiming: He et al. 2015 for ReLU networks, U(-sqrt(6/fan_in), sqrt(6/fan_in)) for weights; biases 0.
enum class InitScheme : uint8_t { pytorch = 0, kaiming = 1 };

// Initialises a weight (and optional bias) of a layer with this fan-in under `scheme` (see InitScheme):
// weights first, then the bias, drawn from rng in storage order; gradients are zeroed.
void init_fan_in(InitScheme scheme, double fan_in, Param& weight, Param* bias, Rng& rng);

// A named tensor that is state but not trained (batch-norm running statistics); saved in checkpoints.
struct Buffer {
  std::string name;
  Tensor* tensor;
};

// Per-channel sum and sum of squares of a layer's last ff output, when its kernel produced them on the
// way (the sparse convolutions' epilogue): what a following batch norm needs, without a pass of its own
// over the tensor (the first step of reformulated batch norm).
struct ChannelSums {
  const Tensor* of = nullptr;     // the output they describe; valid until that layer's next ff
  const double* sum = nullptr;    // [C]
  const double* sumsq = nullptr;  // [C]
  int64_t count = 0;              // values per channel (N * H * W)
};

// What a batch norm's backward must have of its output gradient dy before anything else: per channel
// Σ m·dy and Σ m·dy·(x - mean), x its input and m its fused ReLU's mask (the rest of its backward is one
// pass that needs them). The last layer to write dy can take them in its kernel's epilogue while dy is
// still in registers (the sparse convolutions' BP does), instead of the batch norm reading dy and x
// once more: the backward half of reformulated batch norm. The batch norm fills in everything but `of`
// at each training ff (Layer::grad_sums_wanted); the writer sets `of` to the gradient tensor it summed,
// and the batch norm takes the sums only for that tensor (else it computes them itself).
struct GradSums {
  const Tensor* x = nullptr;          // the batch norm's input
  const float* mean = nullptr;        // [C]: its batch mean
  const float* relu_scale = nullptr;  // [C]: its fused ReLU's mask is fma(scale, x, shift) > 0;
  const float* relu_shift = nullptr;  //      null without one
  double* sum_dy = nullptr;           // [C]: Σ m·dy, written by the writer
  double* sum_dy_xc = nullptr;        // [C]: Σ m·dy·(x - mean), written by the writer
  const Tensor* of = nullptr;         // the gradient tensor they were taken over (set by the writer)
};

// A per-channel affine map fma(scale[c], x, shift[c]), then max(0, ·) with relu, that a layer left to
// the reader of its output (see Layer::can_defer_affine).
struct AffineInput {
  int input = -1;  // which input of the reader it applies to (-1: none)
  const float* scale = nullptr;
  const float* shift = nullptr;
  bool relu = false;
};

class Layer {
 public:
  explicit Layer(std::string name) : name_(std::move(name)) {}
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  const std::string& name() const { return name_; }
  virtual const char* kind() const = 0;
  virtual int num_inputs() const { return 1; }

  // Logical output shape for these input shapes; throws trainer::Error naming the layer when the
  // shapes make no sense (wrong rank, channel mismatch, kernel larger than the padded input...).
  virtual Shape infer_shape(const std::vector<Shape>& in) const = 0;

  // Initialises parameters following init_scheme().
  virtual void init(Rng& /*rng*/) {}
  void set_init_scheme(InitScheme s) { init_scheme_ = s; }
  InitScheme init_scheme() const { return init_scheme_; }

  // x: inputs (num_inputs() of them); y: resized by the layer. `training` selects batch statistics.
  virtual void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) = 0;
  // dx[i] may be nullptr when input i needs no gradient; the others are resized by the layer.
  virtual void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
                  const std::vector<Tensor*>& dx) = 0;
  // Writes (not accumulates) the gradients of params().
  virtual void wg(const std::vector<const Tensor*>& /*x*/, const Tensor& /*y*/, const Tensor& /*dy*/) {}

  // See ChannelSums. The graph hands a layer the sums of its (single) input's producer before its ff.
  virtual const ChannelSums* output_sums() const { return nullptr; }
  virtual void set_input_sums(const ChannelSums* /*sums*/) {}

  virtual std::vector<Param*> params() { return {}; }
  virtual std::vector<Buffer> buffers() { return {}; }

  // A ReLU that alone reads this layer's output can be fused into it (Graph::fuse_relus decides): ff
  // then writes max(0, y) in its own pass, and bp/wg take the gradient through the ReLU themselves,
  // from y (the fused output) and the gradient of the ReLU's output. One pass over memory less in each
  // direction, the same numbers.
  virtual bool can_fuse_relu() const { return false; }
  void set_fused_relu(bool on) { fused_relu_ = on; }
  bool fused_relu() const { return fused_relu_; }

  // Whether bp can add its input's gradient into dx[0] (dx += ...) instead of writing it. The graph asks
  // (set_accumulate_dx(true) for one bp call) when another reader of that input already wrote its
  // gradient, instead of a scratch tensor and a separate add.
  virtual bool can_accumulate_dx() const { return false; }
  void set_accumulate_dx(bool on) { accumulate_dx_ = on; }
  // Whether, while accumulating, bp can also take the sum through the backward of the ReLU whose output
  // is relu_y (dx = (dx + its gradient) where relu_y > 0, else 0): the graph asks (set_accumulate_relu
  // for one bp call) when this is the last gradient written into a ReLU'd add's output (Graph::backward).
  virtual bool can_relu_bp_accumulated_dx() const { return false; }
  void set_accumulate_relu(const Tensor* relu_y) { accumulate_relu_ = relu_y; }

  // Strided BP (see SparseConvOptions::leave_phases): per phase of dx (a * stride + b), 1 where no tap
  // reaches, so that every dx there is 0; empty when there are none (stride 1, or this layer cannot
  // leave them). A gradient with two writers: when the first writer has such phases and the second
  // reaches every phase of the same stride, the graph lets the first leave them unwritten
  // (set_dx_phases(&flags, true): bp sets flags to the phases it left, or clears them) and the second
  // write them instead of adding to zeros (set_dx_phases(&flags, false)), for one bp call each.
  virtual std::vector<uint8_t> tapless_dx_phases() const { return {}; }
  virtual int64_t dx_phase_stride() const { return 0; }
  void set_dx_phases(std::vector<uint8_t>* flags, bool first) {
    dx_phases_ = flags;
    dx_phases_first_ = first;
  }

  // Whether bp gives every input the same gradient (an add). The graph may then have bp write it once
  // and let a second input read the first one's copy (see Graph::backward); bp leaves a null dx alone.
  virtual bool same_dx_for_inputs() const { return false; }

  // Deferred affine outputs (Graph::fuse_affine_inputs). A layer whose output is a per-channel
  // fma(scale[c], x, shift[c]) of its input, ReLU'd if one is fused (a batch norm), can_defer_affine:
  // with set_defer_affine(true) its ff computes scale and shift (affine_output, valid until its next
  // ff) but writes no output, and its wg and bp do not read it. Its only reader, a layer that
  // can_take_affine_input (an add without the ReLU; a convolution, in its kernels' prologue), is then
  // given the producer's input and set_affine_input, and applies the map as it reads. One tensor
  // written and read back less, the same numbers.
  virtual bool can_defer_affine() const { return false; }
  void set_defer_affine(bool on) { defer_affine_ = on; }
  virtual AffineInput affine_output() const { return {}; }
  virtual bool can_take_affine_input(bool /*relu*/) const { return false; }
  void set_affine_input(AffineInput a) { affine_input_ = a; }

  // See GradSums. A batch norm in training returns its request (valid until its next ff); others null.
  virtual GradSums* grad_sums_wanted() { return nullptr; }
  // For one bp call (Graph::backward): this bp is the last writer of input 0's gradient, which is then
  // final, and a batch norm wants these sums of it. A layer that can (the sparse convolutions' BP)
  // fills them in and sets sums->of = dx[0]; any other leaves them, and the batch norm computes them.
  void set_dx_grad_sums(GradSums* sums) { dx_grad_sums_ = sums; }

  // The Op record of a phase, for the shapes of the last ff: shapes, stride/pad, dense MACs.
  // The graph fills in layer index, name and time.
  virtual Op describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const;

 protected:
  bool fused_relu_ = false;
  bool accumulate_dx_ = false;
  const Tensor* accumulate_relu_ = nullptr;
  std::vector<uint8_t>* dx_phases_ = nullptr;
  bool dx_phases_first_ = false;
  bool defer_affine_ = false;
  AffineInput affine_input_;
  GradSums* dx_grad_sums_ = nullptr;

 private:
  std::string name_;
  InitScheme init_scheme_ = InitScheme::pytorch;
};

}  // namespace trainer
