// RigL (Evci, Gale, Menick, Castro, Elsen 2020): fixed per-tensor sparsity, drop by magnitude, grow by
// dense-gradient magnitude every ΔT steps with a cosine-decayed fraction, until T_end.
#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "sparsity/policy_impl.hpp"

namespace trainer {

namespace {

class RiglPolicy final : public PruningPolicy {
 public:
  explicit RiglPolicy(const PruningOptions& o) : PruningPolicy(o, 0) {
    drop_ = CosineDropSchedule{o.rigl_alpha, begin_, end_, o.update_every};
    drop_.validate();
  }

  const char* kind() const override { return "rigl"; }
  bool needs_dense_wg(int64_t step) const override { return is_update_step(step); }
  bool is_update_step(int64_t step) const override { return drop_.is_update_step(step); }

 protected:
  // Fixed per tensor. Under the global distribution each tensor's share was set by the initial mask, and
  // drop and grow keep it, so the mask itself is the target (fresh or resumed alike).
  std::vector<double> targets_at(int64_t) const override {
    std::vector<double> out;
    for (const auto& s : slots_) {
      if (!s.prunable)
        out.push_back(0.0);
      else if (in_global_group(s))
        out.push_back(s.mask.sparsity());
      else
        out.push_back(s.final_target);
    }
    return out;
  }

  // uniform, erk: a random mask of exactly the target sparsity per tensor (partial Fisher-Yates from a
  // stream of its own, so one tensor's mask does not depend on the others'). global: one magnitude
  // threshold over the initial weights of all the group's tensors decides how many each keeps, and which
  // (with 1/sqrt(fan-in) initial scales, the narrow layers keep more).
  void init_masks() override {
    std::vector<size_t> group;
    for (size_t l = 0; l < slots_.size(); ++l)
      if (in_global_group(slots_[l])) group.push_back(l);
    if (!group.empty()) {
      int64_t total = 0;
      std::vector<const float*> weights;
      std::vector<const Mask*> masks;
      for (size_t l : group) {
        total += slots_[l].mask.size();
        weights.push_back(slots_[l].t.weight->data());
        masks.push_back(&slots_[l].mask);
      }
      const int64_t want = std::llround(slots_[group.front()].final_target * static_cast<double>(total));
      const std::vector<int64_t> counts = global_prune_counts(weights, masks, want);
      for (size_t j = 0; j < group.size(); ++j)
        prune_smallest_kept(slots_[group[j]].mask, weights[j], counts[j]);
    }
    for (size_t l = 0; l < slots_.size(); ++l) {
      Slot& s = slots_[l];
      if (!s.prunable || in_global_group(s)) continue;
      const int64_t n = s.mask.size();
      const int64_t k = std::llround(s.final_target * static_cast<double>(n));
      std::vector<int64_t> idx(static_cast<size_t>(n));
      std::iota(idx.begin(), idx.end(), int64_t{0});
      Rng rng = Rng::derive(options_.seed, 0x5249474cULL /* "RIGL" */, l);
      for (int64_t j = 0; j < k; ++j) {
        const int64_t r = j + static_cast<int64_t>(rng.below(static_cast<uint64_t>(n - j)));
        std::swap(idx[static_cast<size_t>(j)], idx[static_cast<size_t>(r)]);
        s.mask.set(idx[static_cast<size_t>(j)], false);
      }
    }
  }

  void update_masks(int64_t step) override {
    const double fraction = drop_.fraction_at(step);
    for (auto& s : slots_) {
      if (!s.prunable) continue;
      TRAINER_CHECK(s.t.grad->numel() == s.mask.size(), "rigl: gradient of '{}' has {} values, expected {}",
                    s.t.name, s.t.grad->numel(), s.mask.size());
      const int64_t active = s.mask.count_kept();
      const int64_t n_drop = std::llround(fraction * static_cast<double>(active));
      if (n_drop <= 0) continue;
      const Mask before = s.mask;
      prune_smallest_kept(s.mask, s.t.weight->data(), n_drop);
      // Grow among all inactive positions, the ones just dropped included.
      std::vector<int64_t> inactive;
      inactive.reserve(static_cast<size_t>(s.mask.count_pruned()));
      for (int64_t i = 0; i < s.mask.size(); ++i)
        if (!s.mask.kept(i)) inactive.push_back(i);
      pick_by_magnitude(inactive, s.t.grad->data(), n_drop, /*largest=*/true);
      for (int64_t j = 0; j < n_drop; ++j) s.mask.set(inactive[static_cast<size_t>(j)], true);
      finish_update(s, before, /*zero_grown=*/true);
    }
  }

 private:
  bool in_global_group(const Slot& s) const {
    return s.prunable && !s.override_target && distribution_ == Distribution::global;
  }

  CosineDropSchedule drop_;
};

}  // namespace

std::unique_ptr<PruningPolicy> make_rigl_policy(const PruningOptions& options) {
  return std::make_unique<RiglPolicy>(options);
}

}  // namespace trainer
