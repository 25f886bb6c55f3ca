#include "nn/layers/conv2d.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "kernels/batchnorm.hpp"
#include "kernels/eltwise.hpp"

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

KernelMode parse_kernel_mode(const std::string& name) {
  if (name == "auto") return KernelMode::auto_;
  if (name == "dense") return KernelMode::dense;
  if (name == "sparse") return KernelMode::sparse;
  fail("unknown kernel mode '{}'; expected auto, dense or sparse", name);
}

void Conv2d::set_sparsity(const uint8_t* keep, const SparsityContext* ctx) {
  keep_ = keep;
  ctx_ = ctx;
  sw_built_ = false;
}

void Conv2d::refresh_sparse_weights() {
  const uint64_t gen = ctx_ ? ctx_->mask_generation : 0;
  if (!sw_built_ || gen != sw_generation_) {
    sw_.build(weight_.value, keep_, stride_, pad_);
    sw_built_ = true;
    sw_generation_ = gen;
  } else {
    sw_.repack(weight_.value);
  }
}

ConvKernel Conv2d::pick(ConvPhase phase, const ConvGeom& g, double density) const {
  const KernelMode mode = ctx_ ? ctx_->mode : KernelMode::auto_;
  if (mode == KernelMode::dense) return ConvKernel::dense;
  if (mode == KernelMode::sparse) return ConvKernel::sparse;
  static const ConvCostModel fallback = ConvCostModel::defaults();
  const ConvCostModel& cost = ctx_ && ctx_->cost ? *ctx_->cost : fallback;
  return cost.choose(phase, g, density, /*activations_nchw16n=*/true);
}

void Conv2d::record(ConvPhase phase, ConvKernel k, const SparseCounters& c) {
  last_[static_cast<int>(phase)] = {k, c};
}

ConvPrologue Conv2d::prologue() const {
  ConvPrologue p;
  if (affine_input_.input == 0) {
    p.scale = affine_input_.scale;
    p.shift = affine_input_.shift;
    p.relu = affine_input_.relu;
  }
  return p;
}

const Tensor& Conv2d::applied(const Tensor& in) {
  if (affine_input_.input != 0) return in;
  if (x_applied_of_ != in.data()) {  // once per step: wg reuses what ff wrote
    batchnorm_apply(in, affine_input_.scale, affine_input_.shift, x_applied_, affine_input_.relu);
    x_applied_of_ = in.data();
  }
  return x_applied_;
}

namespace {

// What a dense kernel did: every multiply executed.
SparseCounters dense_counters(const ConvGeom& g) {
  SparseCounters c;
  c.dense_macs = g.macs();
  c.executed_macs = c.dense_macs;
  return c;
}

}  // namespace

void Conv2d::ff(const std::vector<const Tensor*>& x, Tensor& y, bool /*training*/) {
  TRAINER_CHECK(x.size() == 1 && x[0], "conv2d '{}': needs one input", name());
  const Tensor& in = *x[0];
  check_input(in.shape());
  const ConvGeom g = dnnl_.geom(in.shape());
  const Tensor* b = has_bias_ ? &bias_.value : nullptr;
  sums_valid_ = false;
  x_applied_of_ = nullptr;  // a new step's input
  if (in.layout() != Layout::NCHW16n) {
    dnnl_.ff(applied(in), weight_.value, b, y);
    record(ConvPhase::ff, ConvKernel::dense, dense_counters(g));
    return;
  }
  refresh_sparse_weights();
  const ConvKernel k = pick(ConvPhase::ff, g, sw_.density());
  if (k == ConvKernel::sparse) {
    ConvEpilogue epi;
    epi.bias = b ? b->data() : nullptr;
    out_sum_.resize(static_cast<size_t>(K_));
    out_sumsq_.resize(static_cast<size_t>(K_));
    epi.sum = out_sum_.data();
    epi.sumsq = out_sumsq_.data();
    record(ConvPhase::ff, k, sparse_conv_ff(in, sw_, y, scratch_ff_, prologue(), epi));
    sums_ = {&y, out_sum_.data(), out_sumsq_.data(), g.N * g.P() * g.Q()};
    sums_valid_ = true;
  } else {
    applied(in).convert_to(Layout::nChw16c, xr_);
    dnnl_.ff(xr_, weight_.value, b, yr_);
    yr_.convert_to(Layout::NCHW16n, y);
    record(ConvPhase::ff, k, dense_counters(g));
  }
}

std::vector<uint8_t> Conv2d::tapless_dx_phases() const {
  std::vector<uint8_t> v = sparse_conv_bp_tapless_phases(R_, R_, stride_, pad_);
  return std::find(v.begin(), v.end(), uint8_t{1}) != v.end() ? v : std::vector<uint8_t>{};
}

void Conv2d::bp(const std::vector<const Tensor*>& x, const Tensor& /*y*/, const Tensor& dy,
                const std::vector<Tensor*>& dx) {
  TRAINER_CHECK(x.size() == 1 && x[0] && dx.size() == 1, "conv2d '{}': needs one input", name());
  if (!dx[0]) return;
  const Tensor& in = *x[0];
  check_input(in.shape());
  const ConvGeom g = dnnl_.geom(in.shape());
  // Accumulating (see Layer::can_accumulate_dx): the sparse kernel adds in its epilogue; oneDNN's
  // result goes through scratch and is added. Either takes the sum through a ReLU's backward when the
  // graph asks (set_accumulate_relu).
  const Tensor* relu = accumulate_dx_ ? accumulate_relu_ : nullptr;
  // The phase plan (Layer::set_dx_phases): as the first writer, the sparse kernel leaves the tap-less
  // phases (any other kernel leaves none); as the second, it writes the phases the first one left, and
  // a dense result is added to zeros there.
  std::vector<uint8_t>* phases = dx_phases_;
  if (phases && dx_phases_first_) phases->clear();
  const bool write_left = phases && !dx_phases_first_ && accumulate_dx_ && !phases->empty();
  auto add_to_dx = [&] {
    if (write_left) zero_phases(*dx[0], *phases, stride_);
    if (relu)
      add_inplace_relu_bp(*dx[0], dx_sum_, *relu);
    else
      add_inplace(*dx[0], dx_sum_);
  };
  if (in.layout() != Layout::NCHW16n) {
    dnnl_.bp(in, dy, weight_.value, accumulate_dx_ ? dx_sum_ : *dx[0]);
    if (accumulate_dx_) add_to_dx();
    record(ConvPhase::bp, ConvKernel::dense, dense_counters(g));
    return;
  }
  TRAINER_CHECK(dy.layout() == Layout::NCHW16n, "conv2d '{}': the output gradient is {}, expected NCHW16n",
                name(), layout_name(dy.layout()));
  const ConvKernel k = pick(ConvPhase::bp, g, sw_.density());
  if (k == ConvKernel::sparse) {
    SparseConvOptions opt;
    opt.accumulate_output = accumulate_dx_;
    opt.accumulate_relu = relu;
    if (phases && dx_phases_first_ && !accumulate_dx_) {
      *phases = tapless_dx_phases();
      opt.leave_phases = phases;
    }
    if (write_left) opt.write_phases = phases;
    // The final gradient of a batch norm's output (Layer::set_dx_grad_sums): its sums in the epilogue.
    ConvEpilogue epi;
    GradSums* gs = dx_grad_sums_;
    if (gs && gs->x && gs->x->shape() == in.shape() && gs->x->layout() == Layout::NCHW16n &&
        !opt.leave_phases) {
      epi.bn_x = gs->x;
      epi.bn_mean = gs->mean;
      epi.bn_relu_scale = gs->relu_scale;
      epi.bn_relu_shift = gs->relu_shift;
      epi.grad_sum = gs->sum_dy;
      epi.grad_sum_xc = gs->sum_dy_xc;
    }
    record(ConvPhase::bp, k, sparse_conv_bp(dy, sw_, in.shape(), *dx[0], scratch_bp_, opt, epi));
    if (epi.bn_x) gs->of = dx[0];
  } else {
    // oneDNN's bp reads only x's shape and layout; ff may not have reordered x (it ran sparse).
    if (xr_.shape() != in.shape() || xr_.layout() != Layout::nChw16c) xr_.resize(in.shape(), Layout::nChw16c);
    dy.convert_to(dnnl_.y_layout(), dyr_);
    dnnl_.bp(xr_, dyr_, weight_.value, dxr_);
    dxr_.convert_to(Layout::NCHW16n, accumulate_dx_ ? dx_sum_ : *dx[0]);
    if (accumulate_dx_) add_to_dx();
    record(ConvPhase::bp, k, dense_counters(g));
  }
}

void Conv2d::wg(const std::vector<const Tensor*>& x, const Tensor& /*y*/, const Tensor& dy) {
  TRAINER_CHECK(x.size() == 1 && x[0], "conv2d '{}': needs one input", name());
  const Tensor& in = *x[0];
  check_input(in.shape());
  const ConvGeom g = dnnl_.geom(in.shape());
  Tensor* db = has_bias_ ? &bias_.grad : nullptr;
  if (in.layout() != Layout::NCHW16n) {
    dnnl_.wg(applied(in), dy, weight_.grad, db);
    record(ConvPhase::wg, ConvKernel::dense, dense_counters(g));
    return;
  }
  TRAINER_CHECK(dy.layout() == Layout::NCHW16n, "conv2d '{}': the output gradient is {}, expected NCHW16n",
                name(), layout_name(dy.layout()));
  // A dense WG (every position, pruned ones included) when the pruner asks for it this step.
  const bool dense_wg = keep_ != nullptr && ctx_ && ctx_->dense_wg;
  const SparseWeights* structure = &sw_;
  if (dense_wg) {
    if (sw_full_.empty() || sw_full_.K() != K_) sw_full_.build(weight_.value, nullptr, stride_, pad_);
    structure = &sw_full_;
  }
  const ConvKernel k = pick(ConvPhase::wg, g, structure->density());
  if (k == ConvKernel::sparse) {
    record(ConvPhase::wg, k, sparse_conv_wg(in, dy, *structure, weight_.grad, db, scratch_wg_, prologue()));
  } else {
    applied(in).convert_to(Layout::nChw16c, xr_);
    dy.convert_to(dnnl_.y_layout(), dyr_);
    dnnl_.wg(xr_, dyr_, weight_.grad, db);
    record(ConvPhase::wg, k, dense_counters(g));
  }
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
    if (phase == Phase::ff || phase == Phase::bp || phase == Phase::wg) {
      op.dense_macs = static_cast<uint64_t>(g.macs());
      const Last& l = last_[static_cast<int>(phase)];
      if (static_cast<uint64_t>(l.counters.dense_macs) == op.dense_macs) {
        op.kernel = conv_kernel_name(l.kernel);
        op.executed_macs = static_cast<uint64_t>(l.counters.executed_macs);
        op.skipped_pruned = static_cast<uint64_t>(l.counters.skipped_pruned);
        op.skipped_zero_activation = static_cast<uint64_t>(l.counters.skipped_zero_activation);
        op.skipped_zero_error = static_cast<uint64_t>(l.counters.skipped_zero_error);
        op.skipped_masked_output = static_cast<uint64_t>(l.counters.skipped_masked_output);
      }
    }
  }
  return op;
}

}  // namespace trainer
