// Learning-rate schedules, evaluated per optimizer step (0-based over the whole run), so a run resumed
// at any step sees the same values as an uninterrupted one.
//
//  constant : lr
//  step     : lr * gamma^floor(epoch / step_epochs)            (StepLR stepped once per epoch)
//  cosine   : lr * (1 + cos(pi * t / T)) / 2 over the steps after warm-up (CosineAnnealingLR, eta_min 0)
//  onecycle : PyTorch OneCycleLR with its defaults: max_lr = lr, start lr/25, peak at 30% of the run,
//             cosine annealing both ways, final lr/25/1e4. Momentum cycling (0.95 -> 0.85 -> 0.95) is
//             available but off by default (cycle_momentum), as in bench/pytorch_train.py.
// Linear warm-up (constant, step, cosine): lr * (t + 1) / W for the first W steps, then the schedule.
// The step schedule keeps counting epochs from the start of the run (warm-up included); cosine anneals
// over the steps after the warm-up.
#pragma once

#include <cstdint>
#include <string>

namespace trainer {

enum class ScheduleKind { constant, step, cosine, onecycle };
const char* schedule_name(ScheduleKind k);
// Throws trainer::Error for an unknown name.
ScheduleKind parse_schedule(const std::string& name);

struct ScheduleOptions {
  ScheduleKind kind = ScheduleKind::constant;
  double lr = 0.1;  // base lr; the peak (max_lr) for onecycle
  int64_t steps_per_epoch = 1;
  int64_t epochs = 1;
  int64_t warmup_steps = 0;  // linear warm-up length in steps (not for onecycle)
  int64_t step_epochs = 1;   // step: decay every this many epochs
  double gamma = 0.1;        // step: decay factor
  // onecycle (PyTorch defaults)
  double pct_start = 0.3;
  double div_factor = 25.0;
  double final_div_factor = 1e4;
  bool cycle_momentum = false;
  double base_momentum = 0.85, max_momentum = 0.95;
};

class LrSchedule {
 public:
  // Throws trainer::Error naming the offending value (no steps, warm-up longer than the run, ...).
  explicit LrSchedule(ScheduleOptions options);
  int64_t total_steps() const { return total_; }
  // Learning rate of optimizer step t (0-based). Steps past the end keep the last value.
  double lr(int64_t step) const;
  // Momentum of step t when the schedule cycles it (onecycle with cycle_momentum); otherwise -1,
  // meaning "the optimizer's own".
  double momentum(int64_t step) const;
  const ScheduleOptions& options() const { return o_; }

 private:
  double onecycle(int64_t step, double start, double peak, double end) const;
  ScheduleOptions o_;
  int64_t total_ = 0;
};

}  // namespace trainer
