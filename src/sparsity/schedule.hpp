// Sparsity schedules for dynamic weight pruning. Steps are optimizer steps counted from 0 over the whole
// run (a resumed run continues the count).
#pragma once

#include <cstdint>

namespace trainer {

// s(p) = s_f + (s_i - s_f)(1 - p)^3, p in [0, 1]: the cubic of Zhu & Gupta (2017), which prunes fast
// while the network has many redundant weights and slowly as it approaches the target.
double cubic_sparsity(double initial, double final_, double progress);

// Gradual pruning (Zhu & Gupta): s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔT))^3 with t0 = begin_step and
// t0 + nΔT = end_step; masks are recomputed at t0, t0 + ΔT, ... and at end_step itself (so the target is
// reached exactly at end_step even when end_step - begin_step is not a multiple of ΔT).
struct CubicSchedule {
  double initial_sparsity = 0.0;
  double final_sparsity = 0.0;
  int64_t begin_step = 0;
  int64_t end_step = 1;
  int64_t update_every = 1;  // ΔT

  // Throws trainer::Error naming the field: sparsities in [0, 1) with initial <= final, begin >= 0,
  // end > begin, ΔT >= 1.
  void validate() const;
  // (t - t0) / (end - t0), clamped to [0, 1].
  double progress(int64_t step) const;
  // s_i before begin_step, s_f from end_step on.
  double sparsity_at(int64_t step) const;
  bool is_update_step(int64_t step) const;
};

// RigL's drop fraction (Evci et al. 2020): α_t = α/2 (1 + cos(π t / T_end)), with mask updates at
// begin + ΔT, begin + 2ΔT, ... strictly before end_step (T_end); none from T_end on.
struct CosineDropSchedule {
  double alpha = 0.3;
  int64_t begin_step = 0;
  int64_t end_step = 1;
  int64_t update_every = 1;

  void validate() const;
  double fraction_at(int64_t step) const;  // 0 from end_step on
  bool is_update_step(int64_t step) const;
};

}  // namespace trainer
