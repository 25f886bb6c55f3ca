// Dynamic Network Surgery (Guo, Yao, Chen 2016) with t solved per update to follow the cubic schedule
// (policy.hpp explains the choice of c).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "sparsity/policy_impl.hpp"

namespace trainer {

namespace {

constexpr double kPruneBelow = 0.9;  // a_k = 0.9 t
constexpr double kSpliceFrom = 1.1;  // b_k = 1.1 t

class DnsPolicy final : public PruningPolicy {
 public:
  explicit DnsPolicy(const PruningOptions& o)
      : PruningPolicy(o, std::llround(0.1 * static_cast<double>(o.total_steps))) {
    if (o.dns_c) TRAINER_CHECK(std::isfinite(*o.dns_c), "dns: c must be finite, got {}", *o.dns_c);
    TRAINER_CHECK(o.dns_dense_every >= 1,
                  "dns: the dense WG interval (dns_dense_every) must be >= 1 step, got {}",
                  o.dns_dense_every);
    TRAINER_CHECK(std::isfinite(o.dns_dense_scale) && o.dns_dense_scale > 0.0,
                  "dns: the dense WG's scale (dns_dense_scale) must be a finite number > 0, got {}",
                  o.dns_dense_scale);
  }

  const char* kind() const override { return "dns"; }
  // Surgery after the schedule's end (the paper's) needs the dense gradient at every step; stopped there,
  // the mask is fixed from end_ on and the pruned weights' values no longer matter.
  // dns_dense_every = K > 1: on steps 0, K, 2K, ... only (policy.hpp).
  bool needs_dense_wg(int64_t step) const override {
    return (options_.dns_surgery_after_end || step < end_) && step % options_.dns_dense_every == 0;
  }
  bool is_update_step(int64_t step) const override {
    if (step < begin_ || (!options_.dns_surgery_after_end && step > end_)) return false;
    return (step - begin_) % options_.update_every == 0 || step == end_;
  }

 protected:
  void init_masks() override { prune_to_initial_sparsity(); }
  bool keeps_dense_weights() const override { return true; }
  double pruned_gradient_scale() const override { return options_.dns_dense_scale; }

  void update_masks(int64_t step) override {
    const std::vector<double> targets = scheduled_targets(step);
    std::vector<size_t> group;  // global distribution: one threshold for all of these
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (!s.prunable) continue;
      if (distribution_ == Distribution::global && !s.override_target && !options_.dns_c) {
        group.push_back(i);
        continue;
      }
      const Surgery sg = prepare(s);
      double t;
      if (options_.dns_c) {
        t = sg.mu + *options_.dns_c * sg.sigma;
      } else {
        std::vector<double> sorted = sg.flip;
        t = kth_smallest(sorted, target_count(targets[i], s.mask.size()));
      }
      operate(s, sg, t);
    }
    if (!group.empty()) {
      std::vector<Surgery> sgs;
      std::vector<double> all;
      int64_t total = 0;
      for (size_t i : group) {
        sgs.push_back(prepare(slots_[i]));
        all.insert(all.end(), sgs.back().flip.begin(), sgs.back().flip.end());
        total += slots_[i].mask.size();
      }
      const double t = kth_smallest(all, target_count(targets[group.front()], total));
      for (size_t j = 0; j < group.size(); ++j) operate(slots_[group[j]], sgs[j], t);
    }
  }

 private:
  struct Surgery {
    double mu = 0.0, sigma = 0.0;  // of |w| over the tensor's dense weights
    std::vector<double> flip;      // each weight's flip point
  };

  // The weight's own threshold: its state flips once t passes it (|w| < 0.9t prunes a kept weight,
  // |w| >= 1.1t splices a pruned one back). Comparing these, rather than |w| against 0.9t and 1.1t, keeps
  // the solved t and the applied rule bit-consistent.
  static double flip_point(float w, bool kept) {
    const double a = std::fabs(static_cast<double>(w));
    if (std::isnan(a)) return std::numeric_limits<double>::infinity();
    return kept ? a / kPruneBelow : a / kSpliceFrom;
  }

  // Pruned after the update = #{flip < t}; the (k+1)-th smallest flip point prunes exactly k (k < n as
  // sparsity < 1).
  static int64_t target_count(double target, int64_t n) {
    return std::clamp<int64_t>(std::llround(target * static_cast<double>(n)), 0, n - 1);
  }
  static double kth_smallest(std::vector<double>& v, int64_t k) {
    std::nth_element(v.begin(), v.begin() + k, v.end());
    return v[static_cast<size_t>(k)];
  }

  static Surgery prepare(const Slot& s) {
    const float* w = s.dense.data();
    const int64_t n = s.mask.size();
    Surgery sg;
    double sum = 0.0, sum2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = std::fabs(static_cast<double>(w[i]));
      sum += a;
      sum2 += a * a;
    }
    sg.mu = sum / static_cast<double>(n);
    sg.sigma = std::sqrt(std::max(0.0, sum2 / static_cast<double>(n) - sg.mu * sg.mu));
    sg.flip.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) sg.flip[static_cast<size_t>(i)] = flip_point(w[i], s.mask.kept(i));
    return sg;
  }

  // DNS's rule with threshold t; c = (t - μ)/σ of this tensor is what it amounts to.
  void operate(Slot& s, const Surgery& sg, double t) {
    const Mask before = s.mask;
    s.last_c = options_.dns_c ? *options_.dns_c : (sg.sigma > 0.0 ? (t - sg.mu) / sg.sigma : 0.0);
    for (int64_t i = 0; i < s.mask.size(); ++i) s.mask.set(i, !(sg.flip[static_cast<size_t>(i)] < t));
    finish_update(s, before, /*zero_grown=*/false);
  }
};

}  // namespace

std::unique_ptr<PruningPolicy> make_dns_policy(const PruningOptions& options) {
  return std::make_unique<DnsPolicy>(options);
}

}  // namespace trainer
