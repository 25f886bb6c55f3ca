// Gradual magnitude pruning (Zhu & Gupta 2017): no regrowth, so each mask is a subset of the last.
#include <cmath>

#include "core/error.hpp"
#include "sparsity/policy_impl.hpp"

namespace trainer {

namespace {

class MagnitudePolicy final : public PruningPolicy {
 public:
  explicit MagnitudePolicy(const PruningOptions& o)
      : PruningPolicy(o, std::llround(0.1 * static_cast<double>(o.total_steps))) {}

  const char* kind() const override { return "magnitude"; }
  bool needs_dense_wg(int64_t) const override { return false; }
  bool is_update_step(int64_t step) const override {
    const CubicSchedule cs{options_.initial_sparsity, options_.sparsity, begin_, end_, options_.update_every};
    return cs.is_update_step(step);
  }

 protected:
  void init_masks() override { prune_to_initial_sparsity(); }
  void update_masks(int64_t step) override {
    const std::vector<double> targets = scheduled_targets(step);
    std::vector<Mask> before;
    before.reserve(slots_.size());
    for (const auto& s : slots_) before.push_back(s.mask);

    // A target below the current sparsity prunes nothing: weights once pruned stay pruned.
    std::vector<size_t> global_slots;
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (!s.prunable) continue;
      if (distribution_ == Distribution::global && !s.override_target) {
        global_slots.push_back(i);
        continue;
      }
      const int64_t want = std::llround(targets[i] * static_cast<double>(s.mask.size()));
      prune_smallest_kept(s.mask, s.t.weight->data(), want - s.mask.count_pruned());
    }
    if (!global_slots.empty()) {
      int64_t total = 0, pruned = 0;
      std::vector<const float*> weights;
      std::vector<const Mask*> masks;
      for (size_t i : global_slots) {
        total += slots_[i].mask.size();
        pruned += slots_[i].mask.count_pruned();
        weights.push_back(slots_[i].t.weight->data());
        masks.push_back(&slots_[i].mask);
      }
      const double target = targets[global_slots.front()];
      const int64_t want = std::llround(target * static_cast<double>(total));
      const std::vector<int64_t> counts = global_prune_counts(weights, masks, want - pruned);
      for (size_t j = 0; j < global_slots.size(); ++j)
        prune_smallest_kept(slots_[global_slots[j]].mask, weights[j], counts[j]);
    }
    for (size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].prunable) finish_update(slots_[i], before[i], /*zero_grown=*/false);
  }
};

}  // namespace

std::unique_ptr<PruningPolicy> make_magnitude_policy(const PruningOptions& options) {
  return std::make_unique<MagnitudePolicy>(options);
}

}  // namespace trainer
