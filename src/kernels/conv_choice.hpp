// Kernel choice for a convolution phase at run time: the software form of Trainer's
// dynamic-sparsity-adaptive dataflow. Per layer and phase, from the densities of the operands, pick the
// kernel expected to run fastest on this machine:
//   dense : oneDNN (kernels/conv_dnnl.hpp) on nChw16c activations; every multiply is executed;
//   sparse: kernels/sparse_conv.hpp on NCHW16n activations; only the multiplies of kept weights on
//           nonzero input/error planes are executed.
// The expected times come from a cost model with a few coefficients per (phase, kernel), fitted by
// `trainer calibrate` on this machine (measured kernels at several shapes and densities) and stored as
// JSON; when no calibration file is given, the built-in set of the sparse-kernel backend the build runs
// (avx512, avx2 or portable, each fitted on a machine of its kind; docs/sparse-training.md) serves.
//
// Model (per call of one phase of one convolution of geometry g):
//   t(kernel) = ns_per_call + ns_per_mac * executed_macs + ns_per_elem * activation_elems
//             + (layout differs from the kernel's: reorder_ns_per_elem * reordered_elems)
// executed_macs = density * g.macs() (dense: density = 1); activation_elems = the elements of the
// activation operands the phase reads and writes (ff: x + y; bp: dy + dx; wg: x + dy);
// reordered_elems = the same elements, when the activations are held in the other kernel's layout.
// A model may also hold coefficients of its own for particular shapes (ShapeCosts, from `trainer
// calibrate --model`), which then serve every layer of exactly that shape.
//
// Fitting: each (phase, kernel) is fitted on its own measured calls by non-negative least squares on
// the relative error (each point weighted by 1 / its measured time, so a 0.1 ms call counts as much as
// a 10 ms one); reorder_ns_per_elem likewise, through the origin, on Tensor::to_layout between nChw16c
// and NCHW16n.
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/conv_ref.hpp"

namespace trainer {

enum class ConvPhase : uint8_t { ff = 0, bp = 1, wg = 2 };
enum class ConvKernel : uint8_t { dense = 0, sparse = 1 };
const char* conv_kernel_name(ConvKernel k);  // "dense", "sparse"
const char* conv_phase_name(ConvPhase p);    // "ff", "bp", "wg"

// The activation elements (logical, padding excluded) a phase reads and writes; the same count for all
// three phases: N * (C*H*W + K*P*Q).
double conv_activation_elems(ConvPhase phase, const ConvGeom& g);

struct KernelCoeffs {
  double ns_per_call = 0.0;
  double ns_per_mac = 0.0;
  double ns_per_elem = 0.0;
  bool operator==(const KernelCoeffs&) const = default;
};

// A convolution's geometry without the batch: what a per-shape entry of the model applies to.
struct ConvShape {
  int64_t C = 0, H = 0, W = 0, K = 0, R = 0, S = 0, stride = 1, pad = 0;
  bool operator==(const ConvShape&) const = default;
  static ConvShape of(const ConvGeom& g);
  ConvGeom geom(int64_t N) const;
  // e.g. "64->128 3x3 s2 @32x32" (the padding is named only where it is not (R-1)/2: "p0").
  std::string name() const;
};

// Coefficients measured on one shape (`trainer calibrate --model`). For a convolution of exactly this
// shape, at any batch, they replace the generic ones: the generic model's three terms leave errors of up
// to 20% on shapes unlike those it was fitted on (oneDNN runs 512->512 @4x4 at 6.4 ps a multiply here and
// 16->16 @28x28 at 8.9), which moves the choice where the two kernels are within that of each other.
// Dense: ns_per_mac only (the measured time over the measured multiplies, so that it scales with the
// batch); sparse: ns_per_call and ns_per_mac, fitted on the shape's own densities.
struct ShapeCosts {
  ConvShape shape;
  std::array<std::array<KernelCoeffs, 2>, 3> coeffs{};  // [phase][kernel]
  bool operator==(const ShapeCosts&) const = default;
};

struct ConvCostModel {
  // coeffs[phase][kernel]
  std::array<std::array<KernelCoeffs, 2>, 3> coeffs{};
  double reorder_ns_per_elem = 0.0;  // converting activations between nChw16c and NCHW16n
  int threads = 0;                   // the thread count it was calibrated with (0: unknown)
  std::string source;                // "built-in defaults (<backend>)" or the calibration file's path
  std::vector<ShapeCosts> shapes;    // per-shape coefficients (at most one entry per shape)
  // How much faster the other kernel's estimate must be for choose() to leave the one that needs no layout
  // conversion (the sparse kernel in a pruned run, whose activations are NCHW16n; oneDNN otherwise, and
  // where each kernel is timed on its own layout, as in the kernel bench): where the two are within the
  // model's error of each other, the choice stays, so that the dense fallback keeps the choice from being
  // slower than oneDNN on its own layout, and a pruned run does not pay reorders for an estimated gain.
  // 0.05: within the per-shape fits' errors on the 3x3 layers (1-9%, docs/sparse-training.md); in [0, 0.5).
  double sparse_margin = kDefaultSparseMargin;
  static constexpr double kDefaultSparseMargin = 0.05;

  // The per-shape entry for g's shape, or nullptr.
  const ShapeCosts* entry_for(const ConvGeom& g) const;
  // The coefficients an estimate for g uses: its shape's entry where there is one, else the generic ones.
  const KernelCoeffs& coeffs_for(ConvPhase phase, ConvKernel kernel, const ConvGeom& g) const;

  const KernelCoeffs& at(ConvPhase phase, ConvKernel kernel) const {
    return coeffs[static_cast<int>(phase)][static_cast<int>(kernel)];
  }
  KernelCoeffs& at(ConvPhase phase, ConvKernel kernel) {
    return coeffs[static_cast<int>(phase)][static_cast<int>(kernel)];
  }

  // Expected time of one call. density: executed multiplies / g.macs(), clamped to [0, 1] (NaN counts
  // as 1); ignored for dense, which executes all of them. reorder: the activations are held in the
  // other kernel's layout.
  double estimate_ns(ConvPhase phase, ConvKernel kernel, const ConvGeom& g, double density,
                     bool reorder) const;

  // The kernel with the lower estimate, where the kernel on the activations' own layout keeps the call
  // unless the other is estimated faster by sparse_margin (a fraction of the incumbent's estimate).
  // activations_nchw16n: the layout the activations are held in (NCHW16n: the sparse kernel holds the
  // call, and oneDNN would pay a reorder each way; nChw16c: oneDNN holds it, and sparse would pay).
  ConvKernel choose(ConvPhase phase, const ConvGeom& g, double density, bool activations_nchw16n) const;

  // The density below which choose() picks sparse (where sparse's estimate meets dense's scaled by the
  // margin, as choose() has it), clamped to [0, 1]:
  // 0 = never sparse, 1 = sparse even with all weights kept.
  double break_even_density(ConvPhase phase, const ConvGeom& g, bool activations_nchw16n) const;
  // The same with each kernel on its own layout (neither pays a reorder; oneDNN holds the call): what a
  // benchmark timing the two kernels side by side measures.
  double kernel_break_even_density(ConvPhase phase, const ConvGeom& g) const;

  // The built-in model of this machine (builtin_set()): 2 threads, fitted on a machine of that kind;
  // see docs/sparse-training.md. Its source names the set, e.g. "built-in defaults (avx2)".
  static ConvCostModel defaults();
  // The built-in set this machine uses: the sparse-kernel backend this build runs (sparse_conv_backend()),
  // except that AVX-512 on an AMD CPU takes "avx512-amd" (fitted on a Zen 4, where oneDNN took 1.4-1.7x
  // the Intel machine's time per multiply and the sparse kernels about the same).
  static std::string builtin_set();
  // A built-in set by name ("avx512", "avx512-amd", "avx2", "portable"); throws trainer::Error naming
  // the value otherwise.
  static ConvCostModel defaults_for(const std::string& backend);
  // Reads a file written by save(); throws trainer::Error naming the file and the key that is missing
  // or out of range (e.g. "calibration 'c.json': key 'ff.sparse.ns_per_mac' must be a non-negative
  // number").
  static ConvCostModel load(const std::string& path);
  // Writes atomically (PATH.tmp, then rename); throws trainer::Error naming the file on failure.
  void save(const std::string& path) const;

  // Where the estimates meet, scaled by the margin, when the dense / the sparse kernel pays the reorder
  // (the sparse kernel holds the call when only dense pays; oneDNN otherwise), clamped to [0, 1].
  double break_even(ConvPhase phase, const ConvGeom& g, bool dense_reorders, bool sparse_reorders) const;

  // Coefficients, per-shape entries and thread count (not the source) are equal.
  bool same_coefficients(const ConvCostModel& o) const {
    return coeffs == o.coeffs && reorder_ns_per_elem == o.reorder_ns_per_elem && threads == o.threads &&
           shapes == o.shapes && sparse_margin == o.sparse_margin;
  }
};

struct CalibrationOptions {
  int threads = 2;
  int batch = 64;
  // Timed passes over all the points (the fastest run of each point counts), after a warm-up pass.
  int repeats = 10;
  bool quick = false;  // fewer shapes and densities (for tests)
  // Measured as well, each given its own coefficients (ShapeCosts), e.g. a model's convolutions; the
  // generic coefficients are fitted on the built-in shapes only, whatever is listed here.
  std::vector<ConvShape> own_shapes;
};

// One timed kernel call.
struct CalibrationSample {
  std::string shape;  // e.g. "16->32 3x3 s2 @28x28"
  ConvGeom geom;
  ConvPhase phase = ConvPhase::ff;
  ConvKernel kernel = ConvKernel::dense;
  double weight_density = 1.0;  // the mask's target density (1 for dense)
  double executed_macs = 0.0;   // as counted by the kernel (dense: g.macs())
  double activation_elems = 0.0;
  double ns = 0.0;         // the fastest of the timed runs
  bool generic = true;     // one of the built-in shapes: the generic fit uses it
  bool own_entry = false;  // a shape of CalibrationOptions::own_shapes: fitted into its own entry
};

// One timed activation reorder (Tensor::to_layout, nChw16c <-> NCHW16n).
struct ReorderSample {
  double elems = 0.0;
  double ns = 0.0;
};

struct CalibrationData {
  int threads = 0;
  int batch = 0;
  std::vector<double> densities;  // the weight densities measured, in order
  std::vector<CalibrationSample> samples;
  std::vector<ReorderSample> reorders;
};

// A point for the fitter: t = c0 + c1 * macs + c2 * elems.
struct FitPoint {
  double macs = 0.0;
  double elems = 0.0;
  double ns = 0.0;  // > 0
};

struct FitResult {
  KernelCoeffs coeffs;
  double max_rel_error = 0.0;  // max over the points of |model - measured| / measured
  int points = 0;
};

// Non-negative least squares on the relative error (rows weighted by 1 / ns), exact for three
// unknowns: the best non-negative solution among the unconstrained fits on every subset of them.
// No points: zero coefficients.
FitResult fit_kernel_coeffs(const std::vector<FitPoint>& points);

// Times oneDNN (ConvDnnl on nChw16c) and the sparse kernels (NCHW16n; WG as sparse_conv_wg_values) for
// each phase on ResNet-20-style shapes and options.own_shapes (a shape in both is measured once) at
// densities 1, .5, .3, .2, .1, .05 (quick: 2 shapes, densities 1, .3, .05), and the reorders. Runs with
// options.threads OpenMP threads (restored afterwards). Progress lines go to `log` (nullptr: silent).
CalibrationData measure_conv_kernels(const CalibrationOptions& options, std::FILE* log);

// Fits the model on measured data: the generic coefficients on the samples marked generic, an entry per
// shape on those marked own_entry (in the order they first appear); the fit of each (phase, kernel) and
// its max relative error go to `log` (nullptr: silent). source = "calibration".
ConvCostModel fit_cost_model(const CalibrationData& data, std::FILE* log);

// Measures oneDNN and the sparse kernels for each phase on a set of ResNet-style 3x3 and 1x1 shapes
// at several weight densities, plus the cost of reordering, and fits the model by least squares
// (non-negative coefficients). Progress lines go to `log` (nullptr: silent). data: if given, receives
// the measurements.
ConvCostModel calibrate(const CalibrationOptions& options, std::FILE* log, CalibrationData* data = nullptr);

}  // namespace trainer
