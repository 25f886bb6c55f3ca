#include "sparsity/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.hpp"

namespace trainer {

double cubic_sparsity(double initial, double final_, double progress) {
  const double p = std::clamp(progress, 0.0, 1.0);
  const double r = 1.0 - p;
  return final_ + (initial - final_) * r * r * r;
}

void CubicSchedule::validate() const {
  TRAINER_CHECK(final_sparsity >= 0.0 && final_sparsity < 1.0,
                "pruning schedule: final sparsity must be in [0, 1), got {}", final_sparsity);
  TRAINER_CHECK(initial_sparsity >= 0.0 && initial_sparsity <= final_sparsity,
                "pruning schedule: initial sparsity must be in [0, final sparsity {}], got {}",
                final_sparsity, initial_sparsity);
  TRAINER_CHECK(begin_step >= 0, "pruning schedule: begin step must be >= 0, got {}", begin_step);
  TRAINER_CHECK(end_step > begin_step, "pruning schedule: end step ({}) must come after the begin step ({})",
                end_step, begin_step);
  TRAINER_CHECK(update_every >= 1, "pruning schedule: update interval (ΔT) must be >= 1 step, got {}",
                update_every);
}

double CubicSchedule::progress(int64_t step) const {
  return std::clamp(static_cast<double>(step - begin_step) / static_cast<double>(end_step - begin_step), 0.0,
                    1.0);
}

double CubicSchedule::sparsity_at(int64_t step) const {
  return cubic_sparsity(initial_sparsity, final_sparsity, progress(step));
}

bool CubicSchedule::is_update_step(int64_t step) const {
  if (step < begin_step || step > end_step) return false;
  return (step - begin_step) % update_every == 0 || step == end_step;
}

void CosineDropSchedule::validate() const {
  TRAINER_CHECK(alpha > 0.0 && alpha <= 1.0, "rigl: drop fraction alpha must be in (0, 1], got {}", alpha);
  TRAINER_CHECK(begin_step >= 0, "rigl: begin step must be >= 0, got {}", begin_step);
  TRAINER_CHECK(end_step > begin_step, "rigl: end step ({}) must come after the begin step ({})", end_step,
                begin_step);
  TRAINER_CHECK(update_every >= 1, "rigl: update interval (ΔT) must be >= 1 step, got {}", update_every);
}

double CosineDropSchedule::fraction_at(int64_t step) const {
  if (step >= end_step) return 0.0;
  const double t = static_cast<double>(std::max<int64_t>(step, 0)) / static_cast<double>(end_step);
  return 0.5 * alpha * (1.0 + std::cos(std::numbers::pi * t));
}

bool CosineDropSchedule::is_update_step(int64_t step) const {
  return step > begin_step && step < end_step && (step - begin_step) % update_every == 0;
}

}  // namespace trainer
