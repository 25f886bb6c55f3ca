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
    TRAINER_CHECK(distribution_ != Distribution::global,
                  "rigl: per-tensor sparsity is fixed from the start, so the 'global' distribution does not "
                  "apply (use uniform or erk)");
    drop_ = CosineDropSchedule{o.rigl_alpha, begin_, end_, o.update_every};
    drop_.validate();
  }

  const char* kind() const override { return "rigl"; }
  bool needs_dense_wg(int64_t step) const override { return is_update_step(step); }
  bool is_update_step(int64_t step) const override { return drop_.is_update_step(step); }

 protected:
  std::vector<double> targets_at(int64_t) const override {
    std::vector<double> out;
    for (const auto& s : slots_) out.push_back(s.prunable ? s.final_target : 0.0);
    return out;
  }

  // A random mask of exactly the target sparsity per tensor (partial Fisher-Yates from a stream of its own,
  // so one tensor's mask does not depend on the others').
  void init_masks() override {
    for (size_t l = 0; l < slots_.size(); ++l) {
      Slot& s = slots_[l];
      if (!s.prunable) continue;
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
  CosineDropSchedule drop_;
};

}  // namespace

std::unique_ptr<PruningPolicy> make_rigl_policy(const PruningOptions& options) {
  return std::make_unique<RiglPolicy>(options);
}

}  // namespace trainer
