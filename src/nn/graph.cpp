#include "nn/graph.hpp"

#include <fmt/format.h>

#include <functional>

#include "core/error.hpp"
#include "core/timer.hpp"
#include "kernels/eltwise.hpp"

namespace trainer {

namespace {

// Operand nonzero maps for an Op (see Op::x_nz): ff reads x and w, bp reads dy and w, wg reads x and dy.
// The weight operand is the layer's first parameter (conv and linear weights). x and w do not change
// between a layer's ff and its wg/bp in one step, so their maps are built once (in ff) and shared; so is
// the map of a tensor several layers read (Graph keeps one per node output) and of a node's dy (its wg
// and bp read the same).
void attach_nonzeros(Op& op, Layer& layer, const std::shared_ptr<const Bitmap>& x_map,
                     const std::shared_ptr<const Bitmap>& dy_map, std::shared_ptr<const Bitmap>& x_cache,
                     std::shared_ptr<const Bitmap>& w_cache,
                     const std::function<std::shared_ptr<const Bitmap>(const Tensor&)>& map_of) {
  auto params = layer.params();
  const Tensor* w = params.empty() ? nullptr : &params.front()->value;
  const bool weighted = w && (op.kind == "conv2d" || op.kind == "linear");
  if (op.phase == Phase::ff) {
    x_cache = x_map;
    w_cache = weighted ? map_of(*w) : nullptr;
  }
  if (op.phase != Phase::bp) op.x_nz = x_cache;
  if (op.phase != Phase::wg) op.w_nz = w_cache;
  if (op.phase != Phase::ff) op.dy_nz = dy_map;
}

}  // namespace

Op Graph::fused_relu_op(int i, Phase phase) const {
  const Node& n = nodes_[i];
  // The ReLU's output (its input has the same shape), or what stands for it when the producer deferred.
  const Tensor& y = visible_output(n.fused_into);
  Op op = n.layer->describe(phase, {&y}, y);
  op.layer = i;
  op.layer_name = n.layer->name();
  op.kernel = "fused";
  op.executed_macs = op.dense_macs;
  return op;
}

std::shared_ptr<const Bitmap> Graph::map_of(const Tensor& t) {
  // A free pooled map (held by the pool alone), preferring one of the same size.
  const size_t words = static_cast<size_t>((t.numel() + 63) / 64);
  std::shared_ptr<Bitmap>* free = nullptr;
  for (auto& b : map_pool_) {
    if (b.use_count() != 1) continue;
    if (!free || b->words().capacity() == words) free = &b;
    if (b->words().capacity() == words) break;
  }
  if (!free) free = &map_pool_.emplace_back(std::make_shared<Bitmap>());
  (*free)->assign_nonzeros(t);
  return *free;
}

int Graph::add(std::unique_ptr<Layer> layer, std::vector<int> inputs) {
  TRAINER_CHECK(layer != nullptr, "graph: null layer");
  TRAINER_CHECK(static_cast<int>(inputs.size()) == layer->num_inputs(),
                "layer '{}' ({}) takes {} inputs, given {}", layer->name(), layer->kind(),
                layer->num_inputs(), inputs.size());
  for (int i : inputs)
    TRAINER_CHECK(i >= kInput && i < static_cast<int>(nodes_.size()),
                  "layer '{}' reads node {}, which does not exist yet", layer->name(), i);
  Node n;
  n.layer = std::move(layer);
  n.inputs = std::move(inputs);
  nodes_.push_back(std::move(n));
  return last();
}

int Graph::add(std::unique_ptr<Layer> layer) {
  return add(std::move(layer), {nodes_.empty() ? kInput : last()});
}

Shape Graph::check(const Shape& input_shape) const {
  TRAINER_CHECK(!nodes_.empty(), "graph: the model has no layers");
  std::vector<Shape> shapes(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    std::vector<Shape> in;
    for (int j : nodes_[i].inputs) in.push_back(j == kInput ? input_shape : shapes[j]);
    shapes[i] = nodes_[i].layer->infer_shape(in);
  }
  return shapes.back();
}

void Graph::init(Rng& rng, InitScheme scheme) {
  for (auto& n : nodes_) {
    n.layer->set_init_scheme(scheme);
    n.layer->init(rng);
  }
}

int Graph::fuse_relus() {
  std::vector<int> readers(nodes_.size(), 0);
  for (const Node& n : nodes_)
    for (int j : n.inputs)
      if (j != kInput) ++readers[j];
  int fused = 0;
  for (int i = 0; i < last(); ++i) {
    Node& n = nodes_[i];
    if (std::string(n.layer->kind()) != "relu" || n.fused_into >= 0 || n.inputs.size() != 1) continue;
    const int j = n.inputs[0];
    if (j == kInput || readers[j] != 1 || !nodes_[j].layer->can_fuse_relu() || nodes_[j].layer->fused_relu())
      continue;
    nodes_[j].layer->set_fused_relu(true);
    n.fused_into = j;
    for (int k = i + 1; k <= last(); ++k)
      for (int& in : nodes_[k].inputs)
        if (in == i) in = j, ++readers[j];
    ++fused;
  }
  return fused;
}

int Graph::fuse_affine_inputs() {
  std::vector<int> readers(nodes_.size(), 0);  // a fused ReLU's readers read its producer
  for (const Node& n : nodes_)
    if (n.fused_into < 0)
      for (int j : n.inputs)
        if (j != kInput) ++readers[j];
  int fused = 0;
  for (int i = 0; i <= last(); ++i) {
    Node& n = nodes_[i];
    if (n.fused_into >= 0 || n.affine_input >= 0) continue;
    const int ni = static_cast<int>(n.inputs.size());
    for (int k = 0; k < ni; ++k) {
      const int j = n.inputs[k];
      if (j == kInput || readers[j] != 1 || nodes_[j].affine_reader >= 0 ||
          !nodes_[j].layer->can_defer_affine() || nodes_[j].inputs.size() != 1 ||
          !n.layer->can_take_affine_input(nodes_[j].layer->fused_relu()))
        continue;
      nodes_[j].affine_reader = i;
      n.affine_input = k;
      ++fused;
      break;
    }
  }
  return fused;
}

std::vector<const Tensor*> Graph::inputs_ptrs(const Node& n) const {
  std::vector<const Tensor*> xs;
  xs.reserve(n.inputs.size());
  for (int j : n.inputs) xs.push_back(j == kInput ? input_ : &visible_output(j));
  return xs;
}

const Tensor& Graph::forward(const Tensor& x, bool training, OpStream* ops) {
  TRAINER_CHECK(!nodes_.empty(), "graph: the model has no layers");
  input_ = &x;
  if (input_layout_ != Layout::plain && x.rank() == 4 && x.layout() != input_layout_) {
    x.convert_to(input_layout_, input_converted_);
    input_ = &input_converted_;
  }
  input_nz_.reset();
  for (auto& n : nodes_) n.y_nz.reset(), n.x_nz.reset(), n.w_nz.reset();
  // The map of node j's output (kInput: the model input), built the first time a layer asks for it.
  auto output_map = [&](int j) -> std::shared_ptr<const Bitmap> {
    std::shared_ptr<const Bitmap>& m = j == kInput ? input_nz_ : nodes_[j].y_nz;
    if (!m) m = map_of(j == kInput ? *input_ : nodes_[j].y);
    return m;
  };
  // Deferred batch norms write their output anyway where maps are captured (see fuse_affine_inputs).
  const bool defer = !ops || ops->nonzero_capture() == NonzeroCapture::none;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    Node& n = nodes_[i];
    n.deferred = defer && n.affine_reader >= 0;
    n.layer->set_defer_affine(n.deferred);
    if (n.affine_input >= 0) {
      const Node& bn = nodes_[n.inputs[n.affine_input]];
      AffineInput a;
      if (bn.deferred) a = bn.layer->affine_output(), a.input = n.affine_input;
      n.layer->set_affine_input(a);
    }
    auto xs = inputs_ptrs(n);
    if (n.fused_into >= 0) {  // its producer applied it
      if (ops) ops->record(fused_relu_op(static_cast<int>(i), Phase::ff));
      continue;
    }
    if (n.inputs.size() == 1 && n.inputs[0] != kInput)
      n.layer->set_input_sums(nodes_[n.inputs[0]].layer->output_sums());
    const uint64_t t0 = now_ns();
    n.layer->ff(xs, n.y, training);
    if (ops) {
      Op op = n.layer->describe(Phase::ff, xs, visible_output(static_cast<int>(i)));
      op.time_ns = now_ns() - t0;
      if (op.executed_macs + op.skipped() == 0) op.executed_macs = op.dense_macs;
      op.layer = static_cast<int32_t>(i);
      op.layer_name = n.layer->name();
      if (ops->captures_nonzeros_of(op.kind))
        attach_nonzeros(op, *n.layer, n.inputs.empty() ? nullptr : output_map(n.inputs[0]), nullptr, n.x_nz,
                        n.w_nz, [this](const Tensor& t) { return map_of(t); });
      ops->record(std::move(op));
    }
  }
  return nodes_.back().y;
}

void Graph::backward(const Tensor& dy, OpStream* ops) {
  TRAINER_CHECK(input_ != nullptr, "graph: backward called before forward");
  Node& out = nodes_.back();
  TRAINER_CHECK(dy.shape() == out.y.shape(), "graph: output gradient has shape {}, the output has {}",
                shape_str(dy.shape()), shape_str(out.y.shape()));
  grad_free_.clear();
  if (!reuse_gradients_) grad_pool_.clear();
  for (auto& b : grad_pool_) grad_free_.push_back(b.get());
  for (auto& n : nodes_) {
    n.dy_set = false, n.dy_nz.reset(), n.dy_shared = -1, n.dy_phases.clear();
    n.dy = nullptr, n.dy_users = 0;
  }
  shared_gradients_ = 0;
  fused_relu_backwards_ = 0;
  fused_grad_sums_ = 0;
  loss_dy_ = dy;
  out.dy = &loss_dy_;
  out.dy_users = 1;
  out.dy_set = true;
  // The node whose buffer holds node j's gradient, and that gradient as it stands.
  auto root_of = [this](int j) { return nodes_[j].dy_shared >= 0 ? nodes_[j].dy_shared : j; };
  auto dy_of = [this, &root_of](int j) -> Tensor& { return *nodes_[root_of(j)].dy; };
  // Node i has run: its gradient buffer goes back to the pool once no node still to run reads it.
  auto done_with = [this, &root_of](int i) {
    Node& r = nodes_[root_of(i)];
    if (--r.dy_users == 0 && r.dy != &loss_dy_ && reuse_gradients_) grad_free_.push_back(r.dy);
  };
  // Readers of each node, in order (a fused ReLU's readers read its producer; it writes no gradient).
  std::vector<std::vector<int>> readers(nodes_.size());
  for (int i = 0; i <= last(); ++i)
    if (nodes_[i].fused_into < 0)
      for (int j : nodes_[i].inputs)
        if (j != kInput) readers[j].push_back(i);
  // An add with a fused ReLU has its ReLU's backward done by the last gradient written into its output
  // (its first reader in forward order, the last in this backward), as that writer adds its share:
  // dy = (dy + share) where y > 0, else 0. The add's own bp then has nothing left to do, and its two
  // inputs read its gradient tensor itself (when the sharing rule below allows: else its bp runs and
  // masks again, which changes nothing). A residual stream's gradient then stays in one tensor, added
  // into in place, instead of being masked and copied at every block. Not on steps that capture
  // nonzero maps: there the ReLU's Op must see its output gradient before the mask.
  const bool fuse_relu_bp = !ops || ops->nonzero_capture() == NonzeroCapture::none;
  std::vector<char> relu_done(nodes_.size(), 0);
  auto relu_bp_by = [&](int j, int i) {
    const Node& nj = nodes_[j];
    return fuse_relu_bp && nj.layer->fused_relu() && nj.layer->same_dx_for_inputs() && !nj.deferred &&
           !readers[j].empty() && readers[j].front() == i;
  };
  // A strided layer whose BP reaches only some phases of dx (a ResNet shortcut's 1x1 at stride 2), the
  // first of two writers of that gradient, may leave the other phases unwritten when the second writer
  // (a later-in-backward reader that adds its share) reaches every phase of the same stride: that one
  // writes them instead of adding to zeros (Layer::set_dx_phases). Three in four of the shortcut's
  // writes, and of the second writer's reads, are saved; the values are the same.
  auto leaves_phases_for = [&](int i, int j) {
    const Node& a = nodes_[i];
    if (readers[j].size() != 2 || readers[j][1] != i || a.inputs.size() != 1) return false;
    const Node& b = nodes_[readers[j][0]];
    const int64_t st = a.layer->dx_phase_stride();
    return st > 1 && !a.layer->tapless_dx_phases().empty() && b.inputs.size() == 1 &&
           b.layer->can_accumulate_dx() && b.layer->dx_phase_stride() == st &&
           b.layer->tapless_dx_phases().empty();
  };
  // Batch-norm gradient sums (GradSums) taken by the last writer of the batch norm's output gradient,
  // node i (a single-input layer, its input's first reader in forward order, so the last writer in this
  // backward): the batch norm is i's input j itself, or, when i takes j's ReLU backward (relu_j: j is a
  // ReLU'd add), an input of that add read by the add alone, whose gradient is then the add's own
  // (shared, see below; when it is not shared after all, that batch norm's dy is another tensor and it
  // sums for itself). Nothing writes that tensor between i's bp and the batch norm's turn: i is its last
  // writer, and the sharing rule has the batch norm read it before the residual stream adds to it.
  auto grad_sums_for = [&](int i, int relu_j) -> GradSums* {
    const Node& n = nodes_[i];
    if (!fuse_grad_sums_ || n.inputs.size() != 1 || n.inputs[0] == kInput) return nullptr;
    const int j = n.inputs[0];
    if (readers[j].empty() || readers[j].front() != i) return nullptr;
    if (GradSums* gs = nodes_[j].layer->grad_sums_wanted()) return gs;
    if (relu_j != j) return nullptr;
    for (int b : nodes_[j].inputs)
      if (b != kInput && readers[b].size() == 1)
        if (GradSums* gs = nodes_[b].layer->grad_sums_wanted()) return gs;
    return nullptr;
  };
  for (int i = last(); i >= 0; --i) {
    Node& n = nodes_[i];
    if (!n.dy_phases.empty()) {
      // Its second writer did not run (nothing downstream of it reaches the loss): the phases its
      // first writer left are zero.
      zero_phases(dy_of(i), n.dy_phases, n.dy_phase_stride);
      n.dy_phases.clear();
    }
    if (n.fused_into >= 0) {
      // Its producer takes the gradient through it; the producer's dy (the gradient of this ReLU's
      // output) is final here, since every reader of the ReLU comes after it.
      if (ops && nodes_[n.fused_into].dy_set) {
        Op op = fused_relu_op(i, Phase::bp);
        if (ops->captures_nonzeros_of(op.kind)) {
          Node& p = nodes_[n.fused_into];
          if (!p.dy_nz) p.dy_nz = map_of(dy_of(n.fused_into));  // the producer's own Ops share it
          op.dy_nz = p.dy_nz;
        }
        ops->record(std::move(op));
      }
      continue;
    }
    if (!n.dy_set) continue;  // nothing downstream of this node reaches the loss
    struct Done {             // however this node's turn ends
      std::function<void()> f;
      ~Done() { f(); }
    } done{[&done_with, i] { done_with(i); }};
    auto xs = inputs_ptrs(n);
    const Tensor& dy_n = dy_of(i);
    std::shared_ptr<const Bitmap> dy_map;  // this node's dy is final now; its wg and bp share one map
    auto record = [&](Phase phase, uint64_t t0) {
      if (!ops) return;
      Op op = n.layer->describe(phase, xs, visible_output(i));
      op.time_ns = now_ns() - t0;
      if (op.executed_macs + op.skipped() == 0) op.executed_macs = op.dense_macs;
      op.layer = i;
      op.layer_name = n.layer->name();
      if (ops->captures_nonzeros_of(op.kind)) {
        if (!dy_map) dy_map = n.dy_nz ? n.dy_nz : map_of(dy_n);
        attach_nonzeros(op, *n.layer, nullptr, dy_map, n.x_nz, n.w_nz,
                        [this](const Tensor& t) { return map_of(t); });
      }
      ops->record(std::move(op));
    };
    if (const GradSums* gs = n.layer->grad_sums_wanted(); gs && gs->of == &dy_n) ++fused_grad_sums_;
    if (!n.layer->params().empty()) {
      const uint64_t t0 = now_ns();
      n.layer->wg(xs, n.y, dy_n);
      record(Phase::wg, t0);
    }
    // Inputs that need a gradient: every node output (the model input needs none). The first writer
    // of a node's gradient writes it in place; later ones (a node read by several layers, as the
    // residual shortcut is) go through scratch and are added.
    std::vector<Tensor*> dxs(n.inputs.size(), nullptr);
    std::vector<int> accumulate;
    std::vector<int> fresh;   // inputs whose gradient this layer writes first
    int phases_written = -1;  // the input whose left phases this layer's bp writes
    int relu_by_this = -1;    // the ReLU'd add whose ReLU's backward this layer's bp does
    bool any = false;
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      const int j = n.inputs[k];
      if (j == kInput) continue;
      any = true;
      if (!nodes_[j].dy_set) {
        dxs[k] = &loss_dy_;  // a placeholder: the buffer is lent below, once it is known to be written
        fresh.push_back(static_cast<int>(k));
        if (leaves_phases_for(i, j)) {
          n.layer->set_dx_phases(&nodes_[j].dy_phases, true);
          nodes_[j].dy_phase_stride = n.layer->dx_phase_stride();
        }
      } else if (n.inputs.size() == 1 && n.layer->can_accumulate_dx()) {
        dxs[k] = &dy_of(j);  // the layer adds its gradient to the one already there
        n.layer->set_accumulate_dx(true);
        if (!nodes_[j].dy_phases.empty()) {
          n.layer->set_dx_phases(&nodes_[j].dy_phases, false);
          phases_written = j;
        }
        if (relu_bp_by(j, i) && n.layer->can_relu_bp_accumulated_dx()) {
          n.layer->set_accumulate_relu(&nodes_[j].y);
          relu_done[j] = 1;
          relu_by_this = j;
        }
      } else {
        TRAINER_CHECK(accumulate.empty(), "graph: layer '{}' reads two nodes that both need accumulation",
                      n.layer->name());
        dxs[k] = &scratch_;
        accumulate.push_back(static_cast<int>(k));
      }
    }
    if (!any) continue;
    // A layer that gives both inputs the same gradient (an add) writes it once, to input `own`, when
    // input `other` can read that copy instead: both are written here first; `other` has no reader but
    // this one (nothing else adds to its gradient); and every other reader of `own`, whose bp may add
    // to own's gradient, runs after `other` in this backward (has a smaller index), so `other` reads
    // the gradient before it changes. A residual block's add: the branch's batch norm shares the
    // shortcut's gradient. One pass writing a gradient tensor less per residual block.
    int shared_from = -1, shared_to = -1;
    if (n.layer->same_dx_for_inputs() && n.inputs.size() == 2 && accumulate.empty() && dxs[0] && dxs[1]) {
      for (int t = 0; t < 2 && shared_to < 0; ++t) {
        const int own = n.inputs[t], other = n.inputs[1 - t];
        if (own == kInput || other == kInput || own == other) continue;
        if (nodes_[own].dy_set || nodes_[other].dy_set || readers[other].size() != 1) continue;
        bool before = true;
        for (int m : readers[own])
          if (m != i && m >= other) before = false;
        if (before) shared_from = own, shared_to = other, dxs[1 - t] = nullptr;
      }
    }
    // Its ReLU's backward is done (see relu_bp_by): both inputs read this node's gradient as it is.
    const bool read_own = shared_to >= 0 && relu_done[i];
    if (!read_own)
      for (int k : fresh) {
        if (!dxs[k]) continue;  // shared: see above
        Node& nj = nodes_[n.inputs[k]];
        if (nj.dy) {  // the same node twice among the inputs
          dxs[k] = nj.dy;
          continue;
        }
        nj.dy = lend_gradient(visible_output(n.inputs[k]).storage_size());
        nj.dy_users = 1;
        dxs[k] = nj.dy;
      }
    const uint64_t t0 = now_ns();
    if (read_own) {
      const int root = root_of(i);
      for (int j : {shared_from, shared_to}) {
        nodes_[j].dy_shared = root;
        nodes_[j].dy_set = true;
        ++nodes_[root].dy_users;
      }
      shared_gradients_ += 2;
      ++fused_relu_backwards_;
      record(Phase::bp, t0);
      continue;
    }
    n.layer->set_dx_grad_sums(grad_sums_for(i, relu_by_this));
    n.layer->bp(xs, n.y, dy_n, dxs);
    n.layer->set_dx_grad_sums(nullptr);
    n.layer->set_accumulate_dx(false);
    n.layer->set_accumulate_relu(nullptr);
    n.layer->set_dx_phases(nullptr, false);
    if (phases_written >= 0) nodes_[phases_written].dy_phases.clear();  // the second writer wrote them
    for (int k : accumulate) {
      const int j = n.inputs[k];
      if (relu_bp_by(j, i)) {
        add_inplace_relu_bp(dy_of(j), scratch_, nodes_[j].y);
        relu_done[j] = 1;
      } else {
        add_inplace(dy_of(j), scratch_);
      }
    }
    record(Phase::bp, t0);
    for (size_t k = 0; k < n.inputs.size(); ++k)
      if (dxs[k]) nodes_[n.inputs[k]].dy_set = true;
    if (shared_to >= 0) {
      nodes_[shared_to].dy_shared = shared_from;
      nodes_[shared_to].dy_set = true;
      ++nodes_[shared_from].dy_users;
      ++shared_gradients_;
    }
  }
}

Tensor* Graph::lend_gradient(int64_t floats) {
  // The smallest free buffer that holds it, else a new one (a smaller one stays for its own shape).
  auto best = grad_free_.end();
  for (auto it = grad_free_.begin(); it != grad_free_.end(); ++it)
    if ((*it)->capacity() >= floats && (best == grad_free_.end() || (*it)->capacity() < (*best)->capacity()))
      best = it;
  if (best == grad_free_.end()) return grad_pool_.emplace_back(std::make_unique<Tensor>()).get();
  Tensor* t = *best;
  grad_free_.erase(best);
  return t;
}

std::vector<Param*> Graph::params() {
  std::vector<Param*> out;
  for (auto& n : nodes_)
    for (Param* p : n.layer->params()) out.push_back(p);
  return out;
}

std::vector<Buffer> Graph::buffers() {
  std::vector<Buffer> out;
  for (auto& n : nodes_)
    for (const Buffer& b : n.layer->buffers()) out.push_back(b);
  return out;
}

int64_t Graph::num_parameters() {
  int64_t total = 0;
  for (Param* p : params()) total += p->value.numel();
  return total;
}

std::string Graph::describe(const Shape& input_shape) const {
  std::vector<Shape> shapes(nodes_.size());
  std::string out = fmt::format("{:<28} {:<12} {:<20} {}\n", "layer", "kind", "output", "inputs");
  for (size_t i = 0; i < nodes_.size(); ++i) {
    std::vector<Shape> in;
    std::string names;
    for (int j : nodes_[i].inputs) {
      in.push_back(j == kInput ? input_shape : shapes[j]);
      names += (names.empty() ? "" : ", ") + (j == kInput ? std::string("input") : nodes_[j].layer->name());
    }
    shapes[i] = nodes_[i].layer->infer_shape(in);
    out += fmt::format("{:<28} {:<12} {:<20} {}\n", nodes_[i].layer->name(), nodes_[i].layer->kind(),
                       shape_str(shapes[i]), names);
  }
  return out;
}

}  // namespace trainer
