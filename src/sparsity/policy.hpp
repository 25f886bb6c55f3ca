// Dynamic weight pruning (DWP): a mask per weight tensor, recomputed during training by a policy.
//
//  - magnitude: gradual cubic schedule (Zhu & Gupta) from an initial to a final sparsity, masks
//               recomputed every ΔT steps by |w|; pruned weights stay pruned (each new mask is a subset of
//               the previous one) and are set to zero.
//  - dns:       Dynamic Network Surgery (Guo et al. 2016). Per tensor t = μ + c·σ of |w| over all its
//               (dense) weights; a weight is pruned where |w| < 0.9·t, spliced back where |w| >= 1.1·t,
//               and keeps its previous state in between (the paper's a_k = 0.9t, b_k = 1.1t). The dense
//               weights keep training on the dense gradient of the masked network, so a spliced weight
//               comes back with its value; this needs a dense WG at every step.
//               Choice of c: the paper fixes c per layer and lets the sparsity fall where it may. To
//               follow a sparsity schedule we solve for t (hence c = (t − μ)/σ) at each update so that the
//               tensor's sparsity equals the scheduled target exactly (up to ties): with hysteresis each
//               weight changes state at one threshold of its own, t_w = |w|/0.9 if it is kept now and
//               |w|/1.1 if it is pruned now, and the sparsity for a given t is #{t_w < t}; so the t that
//               prunes k weights is the (k+1)-th smallest t_w (one nth_element, no bisection). The rule
//               applied is still DNS's rule with that t. PruningOptions::dns_c fixes c instead. Under
//               the global distribution one t is solved over all the group's flip points together, so
//               every tensor applies the same t and its c = (t − μ)/σ differs by tensor.
//               Updates every ΔT steps, following the cubic schedule until end_step and holding the
//               final target (still splicing) after it; with dns_surgery_after_end false the last update is
//               at end_step, and from then on the mask is fixed and no dense WG is needed.
//               dns_dense_every = K > 1 trades the dense gradient of every step for one every K steps
//               (steps 0, K, 2K, ...): on the steps between, the pruned weights get no gradient (weight
//               decay and momentum still move them); kept weights get theirs on every step either way.
//               On a dense step the pruned positions' gradient is multiplied by dns_dense_scale: 1 (the
//               default) lets a pruned weight move by one step's gradient in K, so the surgery splices
//               back fewer weights; K makes the sum over K steps an unbiased estimate of the paper's, at
//               K times one step's noise (measured: at K = 10 it destabilises training; docs/benchmarks.md).
//  - rigl:      RigL (Evci et al. 2020). Per-tensor sparsity fixed from the start (random initial mask of
//               that sparsity, from the distribution); every ΔT steps drop the fraction
//               α_t = α/2·(1 + cos(π t / T_end)) of the active weights with the smallest |w| and grow as
//               many inactive ones with the largest dense-gradient magnitude (a weight just dropped may be
//               grown back, keeping its value, as in RigL's code); newly grown weights start at zero (and
//               stay zero through the update step itself: as in RigL's Algorithm 1, an update step moves
//               the mask, not the new weights). No updates from T_end = 75% of training on. A dense WG is
//               needed on update steps only. Under the global distribution the per-tensor sparsities
//               come from one magnitude threshold over the initial weights (the initial mask keeps the
//               largest), and stay fixed from then on.
//
// Targets are over the prunable tensors (those not kept dense): "sparsity 0.9" means 90% of the weights
// of the pruned tensors are zero. Distribution across tensors: uniform, ERK, or global (one threshold);
// PruningOptions::layer_sparsity overrides the final target of named tensors. The first and the last
// tensor passed to attach (the first conv and the last linear, when the caller passes weights in model
// order) are kept dense by default; keep_dense names more, PrunableTensor::keep_dense flags more.
//
// How the training loop drives a policy (the invariant: outside before_update..after_update, every weight
// tensor holds exactly zero at pruned positions, so layers and kernels may read Param::value as the
// sparse weight under every policy, and the mask tells them where the zeros are):
//
//   policy = make_policy("rigl", options);              // options.total_steps = steps of the whole run
//   policy->attach(tensors);                            // fresh run: masks built, pruned weights zeroed
//   policy->attach(tensors, state);                     // or: resume from save_state() bytes
//   for each step:
//     bool dense_wg = policy->needs_dense_wg(step);     // WG at all positions, or at unpruned ones only
//     ff; bp; wg                                        // with the weights as they are (masked)
//     policy->before_update(step);                      // mask update when due (reads weights, grads);
//                                                       //   masks the gradients; dns: dense weights in
//     sgd.step(lr);
//     policy->after_update(step);                       // pruned weights back to exact zero
//   checkpoint: policy->save_state() alongside the model's tensors
//
// The masks (mask(i), find_mask(name)) change only inside before_update; generation() counts the changes
// so that a kernel can rebuild its compressed index structure only when the mask moved.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "sparsity/distribution.hpp"
#include "sparsity/mask.hpp"
#include "sparsity/schedule.hpp"

namespace trainer {

// One weight tensor as the pruner sees it; the caller builds these from the model's parameters (conv and
// linear weights; biases and batch-norm parameters are not pruned). The pointed-to tensors must outlive
// the policy and keep their shapes.
struct PrunableTensor {
  std::string name;            // "<layer>.weight"
  Tensor* weight = nullptr;    // plain: conv [K, C, R, S], linear [out, in]
  Tensor* grad = nullptr;      // same shape, plain; dense whenever needs_dense_wg(step) was true
  Tensor* momentum = nullptr;  // optimizer momentum of this weight (may be null or empty): cleared where
                               // a weight is pruned or grown, so that SGD cannot move it off zero
  bool keep_dense = false;     // never pruned
};

struct PruningOptions {
  double sparsity = 0.9;             // final target over the prunable tensors, in [0, 1)
  double initial_sparsity = 0.0;     // magnitude, dns: s_i of the cubic schedule
  std::string distribution = "erk";  // uniform | erk | global
  double erk_power = 1.0;            // erk: density proportional to score^erk_power (erk_densities)
  int64_t total_steps = 0;           // optimizer steps of the whole run (required)
  int64_t update_every = 100;        // ΔT
  int64_t begin_step = -1;           // -1: magnitude, dns 10% of total_steps; rigl 0
  int64_t end_step = -1;             // -1: 75% of total_steps (rigl: T_end)
  double rigl_alpha = 0.3;           // initial drop fraction α
  std::optional<double> dns_c;       // fixed c of t = μ + c·σ; unset: solved to follow the schedule
  bool dns_surgery_after_end = true;  // dns: keep pruning and splicing after end_step (the paper's), or
                                      //   fix the mask there (no dense WG from then on)
  int64_t dns_dense_every = 1;        // dns: the dense WG on every K-th step only (1: every step, the
                                      //   paper's)
  double dns_dense_scale = 1.0;       // dns: on a dense-WG step, the pruned positions' gradient times this
  bool keep_first_last_dense = true;
  std::vector<std::string> keep_dense;           // more tensors kept dense, by name
  std::map<std::string, double> layer_sparsity;  // final target per tensor name, overriding the distribution
  uint64_t seed = 0;                             // rigl's random initial masks
};

struct PruningStats {
  int64_t steps = 0;           // before_update calls
  int64_t dense_wg_steps = 0;  // of those, steps on which the policy needed a dense WG
  int64_t mask_updates = 0;    // steps on which the masks were recomputed
  int64_t last_update_step = -1;
  int64_t last_pruned = 0;  // kept -> pruned at the last update, all tensors together
  int64_t last_grown = 0;   // pruned -> kept (rigl grow, dns splice) at the last update
  int64_t total_pruned = 0;
  int64_t total_grown = 0;
};

class PruningPolicy {
 public:
  virtual ~PruningPolicy() = default;
  PruningPolicy(const PruningPolicy&) = delete;
  PruningPolicy& operator=(const PruningPolicy&) = delete;

  virtual const char* kind() const = 0;
  // Whether the layers must compute WG at every position at this step (counted in stats() by
  // before_update). magnitude: never; dns: always (until end_step under dns_surgery_after_end false; every
  // dns_dense_every-th step); rigl: on its update steps.
  virtual bool needs_dense_wg(int64_t step) const = 0;
  virtual bool is_update_step(int64_t step) const = 0;

  // Fresh run: validates the tensors (throws trainer::Error naming the tensor or the option), builds the
  // masks (rigl: at the target sparsity, random, or by magnitude under global; magnitude, dns: all kept)
  // and zeroes pruned weights.
  void attach(std::vector<PrunableTensor> tensors);
  // Resume: the same tensors (names, shapes, order) and the bytes of save_state(); masks, counters and
  // (dns) dense weights come from the state; weights are re-zeroed at pruned positions.
  void attach(std::vector<PrunableTensor> tensors, const std::vector<uint8_t>& state);

  // See the header comment for where these sit in a step.
  void before_update(int64_t step);
  void after_update(int64_t step);
  // Zeroes every weight at its pruned positions (dns: the dense copy is untouched).
  void apply_masks();

  std::vector<uint8_t> save_state() const;

  size_t size() const { return slots_.size(); }
  const PrunableTensor& tensor(size_t i) const { return slots_.at(i).t; }
  const Mask& mask(size_t i) const { return slots_.at(i).mask; }
  const Mask* find_mask(const std::string& name) const;
  bool is_prunable(size_t i) const { return slots_.at(i).prunable; }
  // Final target sparsity of tensor i (0 for dense ones; for global distribution, the global target).
  double final_sparsity(size_t i) const { return slots_.at(i).final_target; }
  // Scheduled target of tensor i at `step` (what the mask update at that step aims for); the global
  // target for tensors under the global distribution (rigl: the tensor's own, fixed by its initial mask).
  double target_sparsity(size_t i, int64_t step) const;
  // Scheduled sparsity over the prunable tensors at `step`.
  double scheduled_sparsity(int64_t step) const;
  // Measured sparsity over the prunable tensors, and over all attached tensors.
  double sparsity() const;
  double overall_sparsity() const;
  // dns: the c of the last update of tensor i (NaN before any update or for a dense tensor).
  double dns_c(size_t i) const { return slots_.at(i).last_c; }
  // dns: the dense weights of tensor i (empty under the other policies).
  const Tensor& dense_weight(size_t i) const { return slots_.at(i).dense; }

  uint64_t generation() const { return generation_; }
  const PruningStats& stats() const { return stats_; }
  const PruningOptions& options() const { return options_; }
  Distribution distribution() const { return distribution_; }
  int64_t begin_step() const { return begin_; }
  int64_t end_step() const { return end_; }

 protected:
  struct Slot {
    PrunableTensor t;
    Mask mask;
    bool prunable = true;
    bool override_target = false;  // layer_sparsity names it
    double final_target = 0.0;     // per tensor; NaN-free (global: the global target)
    double last_c = 0.0;
    Tensor dense;  // dns only
  };

  PruningPolicy(PruningOptions options, int64_t default_begin);

  // Policy hooks. init_masks: fresh run, after the slots are built (masks all kept). update_masks: at an
  // update step, before the gradients are masked; must call finish_update per tensor it changed.
  virtual void init_masks() {}
  // For the gradual schedules (magnitude, dns): a schedule that begins at step 0 above zero sparsity
  // starts the run at its initial sparsity, so that step 0's passes are already sparse, instead of
  // running step 0 dense and pruning after it. The pruned weights count in total_pruned, not as an update.
  void prune_to_initial_sparsity();
  virtual void update_masks(int64_t step) = 0;
  virtual bool keeps_dense_weights() const { return false; }
  // On a dense-WG step, the factor before_update applies to the gradient at the positions pruned during
  // the step (dns: dns_dense_scale).
  virtual double pruned_gradient_scale() const { return 1.0; }

  // Counts the transitions from `before` to slot.mask; zeroes weights (unless dense weights are kept) and
  // momentum where a weight was pruned; where one was grown and zero_grown, zeroes weight, momentum and
  // gradient (rigl's zero start).
  void finish_update(Slot& slot, const Mask& before, bool zero_grown);
  // Per-tensor targets at `step` on the cubic schedule (uniform/erk; global slots get the global target).
  std::vector<double> scheduled_targets(int64_t step) const;
  // What target_sparsity reports: scheduled_targets, or (rigl) the fixed final targets.
  virtual std::vector<double> targets_at(int64_t step) const;

  PruningOptions options_;
  Distribution distribution_;
  int64_t begin_ = 0, end_ = 0;
  std::vector<Slot> slots_;
  PruningStats stats_;
  uint64_t generation_ = 0;

 private:
  void build_slots(std::vector<PrunableTensor> tensors);
};

// kind: "magnitude" | "dns" | "rigl". Throws trainer::Error naming the kind or the option that is out of
// range (sparsity outside [0, 1), total_steps < 1, end before begin, an unknown distribution...).
std::unique_ptr<PruningPolicy> make_policy(const std::string& kind, const PruningOptions& options);

}  // namespace trainer
