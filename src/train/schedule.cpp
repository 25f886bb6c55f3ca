#include "train/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.hpp"

namespace trainer {

const char* schedule_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::constant:
      return "constant";
    case ScheduleKind::step:
      return "step";
    case ScheduleKind::cosine:
      return "cosine";
    case ScheduleKind::onecycle:
      return "onecycle";
  }
  return "?";
}

ScheduleKind parse_schedule(const std::string& name) {
  for (ScheduleKind k :
       {ScheduleKind::constant, ScheduleKind::step, ScheduleKind::cosine, ScheduleKind::onecycle})
    if (name == schedule_name(k)) return k;
  fail("unknown schedule '{}'; expected constant, step, cosine or onecycle", name);
}

LrSchedule::LrSchedule(ScheduleOptions options) : o_(options) {
  TRAINER_CHECK(o_.steps_per_epoch > 0 && o_.epochs > 0,
                "schedule: needs at least one step; got {} epochs of {} steps", o_.epochs,
                o_.steps_per_epoch);
  total_ = o_.steps_per_epoch * o_.epochs;
  TRAINER_CHECK(o_.lr > 0.0 && std::isfinite(o_.lr), "schedule: learning rate must be positive, got {}",
                o_.lr);
  TRAINER_CHECK(o_.warmup_steps >= 0 && o_.warmup_steps < total_,
                "schedule: warm-up of {} steps does not fit a run of {} steps", o_.warmup_steps, total_);
  TRAINER_CHECK(o_.kind != ScheduleKind::onecycle || o_.warmup_steps == 0,
                "schedule: onecycle has its own warm-up (the first 30% of the run); drop the linear warm-up");
  TRAINER_CHECK(o_.step_epochs > 0, "schedule: step decay every {} epochs; expected at least 1",
                o_.step_epochs);
  TRAINER_CHECK(o_.gamma > 0.0, "schedule: step decay factor must be positive, got {}", o_.gamma);
  TRAINER_CHECK(o_.pct_start > 0.0 && o_.pct_start < 1.0,
                "schedule: onecycle pct_start must be in (0, 1), got {}", o_.pct_start);
  // OneCycleLR divides by the length of each phase; like PyTorch, a phase that never holds a step
  // (phase 1 of a very short run) is skipped, and one of zero length that would be entered is refused.
  const double end1 = o_.pct_start * static_cast<double>(total_) - 1.0;
  TRAINER_CHECK(o_.kind != ScheduleKind::onecycle || (end1 != 0.0 && end1 < static_cast<double>(total_ - 1)),
                "schedule: onecycle cannot rise and fall over a run of {} steps", total_);
}

// PyTorch OneCycleLR (two phases, anneal_strategy 'cos'): phase 1 ends at step pct_start*T - 1 (a float),
// phase 2 at T - 1; within a phase, pct = (t - phase_start) / (phase_end - phase_start).
double LrSchedule::onecycle(int64_t step, double start, double peak, double end) const {
  const double t = static_cast<double>(std::min(step, total_ - 1));
  const double end1 = o_.pct_start * static_cast<double>(total_) - 1.0;
  const double end2 = static_cast<double>(total_ - 1);
  auto anneal_cos = [](double from, double to, double pct) {
    return to + (from - to) / 2.0 * (std::cos(std::numbers::pi * pct) + 1.0);
  };
  if (t <= end1) return anneal_cos(start, peak, t / end1);
  return anneal_cos(peak, end, (t - end1) / (end2 - end1));
}

double LrSchedule::lr(int64_t step) const {
  step = std::clamp<int64_t>(step, 0, total_ - 1);
  if (o_.kind == ScheduleKind::onecycle) {
    const double initial = o_.lr / o_.div_factor;
    return onecycle(step, initial, o_.lr, initial / o_.final_div_factor);
  }
  if (step < o_.warmup_steps)
    return o_.lr * static_cast<double>(step + 1) / static_cast<double>(o_.warmup_steps);
  switch (o_.kind) {
    case ScheduleKind::constant:
      return o_.lr;
    case ScheduleKind::step: {
      const int64_t epoch = step / o_.steps_per_epoch;
      return o_.lr * std::pow(o_.gamma, static_cast<double>(epoch / o_.step_epochs));
    }
    case ScheduleKind::cosine: {
      const double t = static_cast<double>(step - o_.warmup_steps);
      const double span = static_cast<double>(total_ - o_.warmup_steps);
      return o_.lr * (1.0 + std::cos(std::numbers::pi * t / span)) / 2.0;
    }
    case ScheduleKind::onecycle:
      break;
  }
  return o_.lr;
}

double LrSchedule::momentum(int64_t step) const {
  if (o_.kind != ScheduleKind::onecycle || !o_.cycle_momentum) return -1.0;
  return onecycle(std::clamp<int64_t>(step, 0, total_ - 1), o_.max_momentum, o_.base_momentum,
                  o_.max_momentum);
}

}  // namespace trainer
