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
    TRAINER_CHECK(
        distribution_ != Distribution::global,
        "dns: the threshold is per layer, so the 'global' distribution does not apply (use uniform or erk)");
  }

  const char* kind() const override { return "dns"; }
  bool needs_dense_wg(int64_t) const override { return true; }
  bool is_update_step(int64_t step) const override {
    if (step < begin_) return false;
    return (step - begin_) % options_.update_every == 0 || step == end_;
  }

 protected:
  void init_masks() override { prune_to_initial_sparsity(); }
  bool keeps_dense_weights() const override { return true; }

  void update_masks(int64_t step) override {
    const std::vector<double> targets = scheduled_targets(step);
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (!s.prunable) continue;
      const Mask before = s.mask;
      surgery(s, targets[i]);
      finish_update(s, before, /*zero_grown=*/false);
    }
  }

 private:
  // The weight's own threshold: its state flips once t passes it (|w| < 0.9t prunes a kept weight,
  // |w| >= 1.1t splices a pruned one back). Comparing these, rather than |w| against 0.9t and 1.1t, keeps
  // the solved t and the applied rule bit-consistent.
  static double flip_point(float w, bool kept) {
    const double a = std::fabs(static_cast<double>(w));
    if (std::isnan(a)) return std::numeric_limits<double>::infinity();
    return kept ? a / kPruneBelow : a / kSpliceFrom;
  }

  void surgery(Slot& s, double target) {
    const float* w = s.dense.data();
    const int64_t n = s.mask.size();
    double sum = 0.0, sum2 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double a = std::fabs(static_cast<double>(w[i]));
      sum += a;
      sum2 += a * a;
    }
    const double mu = sum / static_cast<double>(n);
    const double sigma = std::sqrt(std::max(0.0, sum2 / static_cast<double>(n) - mu * mu));
    std::vector<double> flip(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) flip[static_cast<size_t>(i)] = flip_point(w[i], s.mask.kept(i));
    double t;
    if (options_.dns_c) {
      t = mu + *options_.dns_c * sigma;
      s.last_c = *options_.dns_c;
    } else {
      // Pruned after the update = #{flip < t}; the (k+1)-th smallest flip point prunes exactly k
      // (k < n as sparsity < 1).
      const int64_t k = std::clamp<int64_t>(std::llround(target * static_cast<double>(n)), 0, n - 1);
      std::vector<double> sorted = flip;
      std::nth_element(sorted.begin(), sorted.begin() + k, sorted.end());
      t = sorted[static_cast<size_t>(k)];
      s.last_c = sigma > 0.0 ? (t - mu) / sigma : 0.0;
    }
    for (int64_t i = 0; i < n; ++i) s.mask.set(i, !(flip[static_cast<size_t>(i)] < t));
  }
};

}  // namespace

std::unique_ptr<PruningPolicy> make_dns_policy(const PruningOptions& options) {
  return std::make_unique<DnsPolicy>(options);
}

}  // namespace trainer
