// Conv2d: 2-D convolution, y = x * w (+ b), square kernel, one stride and one padding for both sides.
// x: [N, C, H, W] plain, nChw16c or NCHW16n; w: [K, C, R, S] (R = S = kernel).
//  - x plain or nChw16c: oneDNN; y: [N, K, P, Q] written nChw16c when K is a multiple of 16 (what the
//    next convolution reads without a reorder), else plain.
//  - x NCHW16n (sparse training): y is NCHW16n, and each phase runs the kernel the cost model expects to
//    be faster for the weight density (ConvSparsity): the sparse kernels (kernels/sparse_conv.hpp), which
//    execute only the multiplies of kept weights on nonzero planes, or oneDNN through reorders.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "kernels/conv_choice.hpp"
#include "kernels/conv_dnnl.hpp"
#include "kernels/sparse_conv.hpp"
#include "kernels/sparse_weights.hpp"
#include "nn/layer.hpp"

namespace trainer {

// Which kernels a convolution on NCHW16n activations may use.
//  auto_:  per phase, the one the cost model expects to be faster (the default);
//  dense:  oneDNN always (through reorders); sparse: the sparse kernels always.
enum class KernelMode : uint8_t { auto_ = 0, dense = 1, sparse = 2 };
KernelMode parse_kernel_mode(const std::string& name);  // "auto" | "dense" | "sparse"

// What the training loop tells every convolution about the current step; one object per model, owned by
// the loop, read by the layers.
struct SparsityContext {
  uint64_t mask_generation = 0;  // changes whenever any mask may have changed (the layers rebuild)
  bool dense_wg = false;         // this step's WG must cover pruned positions too (dns; rigl updates)
  KernelMode mode = KernelMode::auto_;
  const ConvCostModel* cost = nullptr;  // nullptr: ConvCostModel::defaults()
};

class Conv2d : public Layer {
 public:
  Conv2d(std::string name, int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride = 1,
         int64_t padding = 0, bool bias = false);

  const char* kind() const override { return "conv2d"; }
  Shape infer_shape(const std::vector<Shape>& in) const override;
  // PyTorch's default: kaiming_uniform(a = sqrt(5)), i.e. w and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  void init(Rng& rng) override;

  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool training) override;
  void bp(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy,
          const std::vector<Tensor*>& dx) override;
  void wg(const std::vector<const Tensor*>& x, const Tensor& y, const Tensor& dy) override;

  std::vector<Param*> params() override;
  bool can_accumulate_dx() const override { return true; }
  bool can_relu_bp_accumulated_dx() const override { return true; }
  std::vector<uint8_t> tapless_dx_phases() const override;
  int64_t dx_phase_stride() const override { return stride_; }
  // A deferred batch norm (+ ReLU) on the input: the sparse kernels apply it in their prologue as they
  // read x (ff and wg; bp does not read x); the dense paths write the normalised input out first.
  bool can_take_affine_input(bool /*relu*/) const override { return true; }
  // Set after an ff on the sparse kernels (their epilogue sums y per channel); null otherwise.
  const ChannelSums* output_sums() const override { return sums_valid_ ? &sums_ : nullptr; }
  Op describe(Phase phase, const std::vector<const Tensor*>& x, const Tensor& y) const override;

  int64_t in_channels() const { return C_; }
  int64_t out_channels() const { return K_; }
  int64_t kernel() const { return R_; }
  int64_t stride() const { return stride_; }
  int64_t padding() const { return pad_; }
  bool has_bias() const { return has_bias_; }
  Param& weight() { return weight_; }
  Param& bias() { return bias_; }  // empty tensors when !has_bias()
  // Weight sparsity: keep = one byte per weight (OIHW, nonzero = kept), owned by the pruner and valid
  // while ctx->mask_generation is unchanged; nullptr = all kept. ctx: the run's context (nullptr = off:
  // auto choice with the default cost model). The weight must hold zero at pruned positions.
  void set_sparsity(const uint8_t* keep, const SparsityContext* ctx);
  // The kernel the last call of each phase ran, and its multiply counters.
  ConvKernel last_kernel(ConvPhase p) const { return last_[static_cast<int>(p)].kernel; }
  const SparseCounters& last_counters(ConvPhase p) const { return last_[static_cast<int>(p)].counters; }

  // The oneDNN implementations chosen for this input (for logs and benchmarks).
  std::string implementations(const Tensor& x) { return dnnl_.implementations(x); }

 private:
  // Throws trainer::Error naming this layer unless x is [N, C, H, W] with the kernel fitting.
  void check_input(const Shape& x) const;

  // The compressed weights, rebuilt when the mask moved and repacked with the step's values otherwise.
  void refresh_sparse_weights();
  ConvKernel pick(ConvPhase phase, const ConvGeom& g, double density) const;
  void record(ConvPhase phase, ConvKernel k, const SparseCounters& c);
  // The deferred batch norm on the input (see can_take_affine_input): as a kernel prologue, or applied.
  ConvPrologue prologue() const;
  const Tensor& applied(const Tensor& in);

  int64_t C_, K_, R_, stride_, pad_;
  bool has_bias_;
  Param weight_, bias_;
  ConvDnnl dnnl_;

  const uint8_t* keep_ = nullptr;
  const SparsityContext* ctx_ = nullptr;
  SparseWeights sw_;  // the weight's kept taps
  bool sw_built_ = false;
  uint64_t sw_generation_ = 0;
  SparseWeights sw_full_;  // every tap: a dense WG on the sparse kernels
  SparseConvScratch scratch_ff_, scratch_bp_, scratch_wg_;
  Tensor xr_, yr_, dyr_, dxr_;           // activations reordered for oneDNN (dense kernel on NCHW16n)
  Tensor dx_sum_;                        // oneDNN's input gradient when it is to be added (accumulate_dx_)
  Tensor x_applied_;                     // the input with the deferred batch norm applied, for dense paths
  const float* x_applied_of_ = nullptr;  // the input it was computed from, this step (null: none)
  struct Last {
    ConvKernel kernel = ConvKernel::dense;
    SparseCounters counters;
  };
  std::array<Last, 3> last_{};
  std::vector<double> out_sum_, out_sumsq_;
  ChannelSums sums_;
  bool sums_valid_ = false;
};

}  // namespace trainer
