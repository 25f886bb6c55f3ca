// Graph: a model as a list of layers in execution order, each reading the outputs of earlier nodes
// (or the model input). Runs FF forward, then WG and BP in reverse, recording one Op per phase.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/layer.hpp"
#include "ops/op_stream.hpp"

namespace trainer {

class Graph {
 public:
  static constexpr int kInput = -1;

  // Appends a layer reading the given nodes (kInput = the model input); returns its node id.
  int add(std::unique_ptr<Layer> layer, std::vector<int> inputs);
  // Appends a layer reading the previous node (or the model input when it is the first).
  int add(std::unique_ptr<Layer> layer);
  int last() const { return static_cast<int>(nodes_.size()) - 1; }

  // Checks every layer's shapes for this input shape (throws trainer::Error naming the layer) and
  // returns the output shape.
  Shape check(const Shape& input_shape) const;
  void init(Rng& rng, InitScheme scheme = InitScheme::pytorch);

  // The layout the model's 4-D input is converted to before the first layer (plain: as given). NCHW16n
  // runs the whole network in the sparse kernels' layout: convolutions then keep it end to end.
  void set_input_layout(Layout layout) { input_layout_ = layout; }
  Layout input_layout() const { return input_layout_; }

  // Fuses each ReLU into the layer producing its input where it can: the producer can_fuse_relu() and
  // the ReLU is its output's only reader (and not the model's output). The producer then applies the
  // ReLU in its own passes, the ReLU's readers read the producer's output, and the ReLU node only
  // records its Ops (kernel "fused", no time of its own, no maps: its input is never materialised).
  // The numbers are those of the unfused graph. Returns the number of ReLUs fused.
  int fuse_relus();

  // Lets the only reader of a batch norm apply it (Layer::can_defer_affine): a residual add (batch norm
  // without a fused ReLU) in its own pass, a convolution (with or without) in its kernels' prologue. The
  // normalised tensor is then never written; the reader reads the batch norm's input instead. Forward
  // passes that capture nonzero maps (ops with a capture setting) still write it, so that every map is
  // exact. The numbers are those of the unfused graph. Call after fuse_relus; returns the batch norms
  // affected.
  int fuse_affine_inputs();

  // x: [N, C, H, W]. Returns the last node's output (valid until the next forward).
  const Tensor& forward(const Tensor& x, bool training, OpStream* ops = nullptr);
  // dy: gradient of the loss w.r.t. forward()'s output. Leaves gradients in every Param::grad.
  void backward(const Tensor& dy, OpStream* ops = nullptr);
  // How many nodes read another node's gradient tensor in the last backward instead of a copy of their
  // own (an add's inputs; see backward).
  int shared_gradients() const { return shared_gradients_; }
  // How many ReLU'd adds had their ReLU's backward done by the last writer of their output gradient in
  // the last backward, their own bp skipped (see backward).
  int fused_relu_backwards() const { return fused_relu_backwards_; }
  // How many batch norms took their gradient sums (GradSums) from the last writer of their output
  // gradient in the last backward, instead of a pass of their own (see backward).
  int fused_grad_sums() const { return fused_grad_sums_; }
  // Whether backward asks those writers for the sums (default off: every batch norm sums for itself;
  // in the epilogue the sums cost the BP kernels more than the pass they save, docs/benchmarks.md).
  void set_fuse_grad_sums(bool on) { fuse_grad_sums_ = on; }
  // Gradient buffers the last backward used (see grad_pool_). With reuse off (for tests: the reference)
  // every node's gradient has a buffer of its own.
  int gradient_buffers() const { return static_cast<int>(grad_pool_.size()); }
  void set_gradient_reuse(bool on) { reuse_gradients_ = on; }

  std::vector<Param*> params();
  std::vector<Buffer> buffers();
  size_t size() const { return nodes_.size(); }
  Layer& layer(int i) { return *nodes_.at(i).layer; }
  const Layer& layer(int i) const { return *nodes_.at(i).layer; }
  const std::vector<int>& inputs_of(int i) const { return nodes_.at(i).inputs; }
  int64_t num_parameters();
  // One line per layer: name, kind, output shape, parameters.
  std::string describe(const Shape& input_shape) const;

 private:
  struct Node {
    std::unique_ptr<Layer> layer;
    std::vector<int> inputs;
    Tensor y;              // output of the last forward
    Tensor* dy = nullptr;  // gradient w.r.t. y, during backward: a pooled buffer (see grad_pool_)
    int dy_users = 0;      // nodes still to run in this backward that read this node's dy buffer
    bool dy_set = false;
    int fused_into = -1;     // a ReLU fused into this node (see fuse_relus)
    int dy_shared = -1;      // during backward: this node's dy is node dy_shared's (see backward)
    int affine_reader = -1;  // the layer that applies this batch norm (see fuse_affine_inputs)
    int affine_input = -1;   // which input's batch norm this layer applies
    bool deferred = false;   // this forward: y was not written, its reader applied the map
    std::shared_ptr<const Bitmap> dy_nz;  // map of dy in this backward, when a fused ReLU built it first
    // During backward: the phases of dy its first writer left unwritten, for its second to write
    // (Layer::set_dx_phases); empty when none are pending.
    std::vector<uint8_t> dy_phases;
    int64_t dy_phase_stride = 0;
    std::shared_ptr<const Bitmap> x_nz, w_nz;  // operand maps of the last ff, when captured
    std::shared_ptr<const Bitmap> y_nz;        // map of y in this forward, shared by the layers reading it
  };
  // What the readers of node j read: its output, or, when j deferred it (a batch norm applied by its
  // reader), j's own input. Also what j's Op records as its output: the shape is the same.
  const Tensor& visible_output(int j) const {
    const Node& n = nodes_[j];
    if (!n.deferred) return n.y;
    return n.inputs[0] == kInput ? *input_ : nodes_[n.inputs[0]].y;
  }
  // The tensors node n reads (visible_output of each input; the model input for kInput).
  std::vector<const Tensor*> inputs_ptrs(const Node& n) const;
  std::vector<Node> nodes_;
  const Tensor* input_ = nullptr;
  Layout input_layout_ = Layout::plain;
  Tensor input_converted_;
  std::shared_ptr<const Bitmap> input_nz_;
  // The nonzero map of t, in a pooled Bitmap: maps nobody holds any more (the step's Ops are gone) are
  // refilled in place rather than allocated anew, which saved the page faults of fresh allocations.
  std::shared_ptr<const Bitmap> map_of(const Tensor& t);
  // The Op record of fused ReLU node i (see fuse_relus).
  Op fused_relu_op(int i, Phase phase) const;
  std::vector<std::shared_ptr<Bitmap>> map_pool_;
  // Gradient buffers, lent to a node when its gradient is first written and returned when the last node
  // reading it has run: a backward reuses a few buffers per shape instead of one per node, so what it
  // touches stays in the last-level cache (on the AVX-512 development machine a pass over 6.4 MB tensors
  // was 1.3x faster when the tensors it cycles through fit in about 100 MB than when they did not; on a
  // Zen 3 with 32 MiB of L3 the pool measured +6 to +17% images/s, docs/benchmarks.md).
  Tensor* lend_gradient(int64_t floats);
  std::vector<std::unique_ptr<Tensor>> grad_pool_;
  std::vector<Tensor*> grad_free_;
  Tensor loss_dy_;
  bool reuse_gradients_ = true;
  Tensor scratch_;
  int shared_gradients_ = 0;
  int fused_relu_backwards_ = 0;
  int fused_grad_sums_ = 0;
  bool fuse_grad_sums_ = false;
};

}  // namespace trainer
