// Schedules at known steps; the onecycle and cosine values are torch.optim.lr_scheduler's (PyTorch
// 1.13) for the same settings: max_lr 0.1, 10 epochs of 10 steps.
#include "train/schedule.hpp"

#include <gtest/gtest.h>

#include "core/error.hpp"

namespace trainer {
namespace {

ScheduleOptions opts(ScheduleKind kind, int64_t warmup = 0) {
  ScheduleOptions o;
  o.kind = kind;
  o.lr = 0.1;
  o.steps_per_epoch = 10;
  o.epochs = 10;
  o.warmup_steps = warmup;
  return o;
}

TEST(Schedule, OneCycleMatchesPyTorch) {
  const LrSchedule s(opts(ScheduleKind::onecycle));
  EXPECT_EQ(s.total_steps(), 100);
  EXPECT_NEAR(s.lr(0), 0.004, 1e-12);  // max_lr / div_factor
  EXPECT_NEAR(s.lr(1), 0.004281378056590748, 1e-12);
  EXPECT_NEAR(s.lr(10), 0.029516394846410082, 1e-12);
  EXPECT_NEAR(s.lr(29), 0.1, 1e-12);  // the peak, at pct_start * T - 1
  EXPECT_NEAR(s.lr(30), 0.09994965352845243, 1e-12);
  EXPECT_NEAR(s.lr(50), 0.0793893450575732, 1e-12);
  EXPECT_NEAR(s.lr(98), 5.07464715475788e-05, 1e-12);
  EXPECT_NEAR(s.lr(99), 4e-07, 1e-15);  // initial / final_div_factor
  EXPECT_NEAR(s.lr(1000), 4e-07, 1e-15);
  EXPECT_EQ(s.momentum(50), -1.0);  // no cycling unless asked
}

TEST(Schedule, OneCycleMomentumCyclingMatchesPyTorch) {
  ScheduleOptions o = opts(ScheduleKind::onecycle);
  o.cycle_momentum = true;
  const LrSchedule s(o);
  EXPECT_NEAR(s.momentum(0), 0.95, 1e-12);
  EXPECT_NEAR(s.momentum(1), 0.9497068978577179, 1e-12);
  EXPECT_NEAR(s.momentum(29), 0.85, 1e-12);
  EXPECT_NEAR(s.momentum(50), 0.8706107373853763, 1e-12);
  EXPECT_NEAR(s.momentum(99), 0.95, 1e-12);
}

TEST(Schedule, OneCycleOnAVeryShortRunMatchesPyTorch) {
  ScheduleOptions o = opts(ScheduleKind::onecycle);
  o.steps_per_epoch = 3;
  o.epochs = 1;
  const LrSchedule s(o);
  EXPECT_NEAR(s.lr(0), 0.09944154354509119, 1e-12);
  EXPECT_NEAR(s.lr(1), 0.046263710266697504, 1e-12);
  EXPECT_NEAR(s.lr(2), 4e-07, 1e-15);
}

TEST(Schedule, CosineMatchesPyTorch) {
  const LrSchedule s(opts(ScheduleKind::cosine));
  EXPECT_NEAR(s.lr(0), 0.1, 1e-12);
  EXPECT_NEAR(s.lr(25), 0.0853553390593274, 1e-12);
  EXPECT_NEAR(s.lr(50), 0.05, 1e-12);
  EXPECT_NEAR(s.lr(99), 2.4671981713420017e-05, 1e-12);
}

TEST(Schedule, StepDecaysEveryKEpochs) {
  ScheduleOptions o = opts(ScheduleKind::step);
  o.step_epochs = 3;
  o.gamma = 0.5;
  const LrSchedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(0), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(29), 0.1);   // epoch 2
  EXPECT_DOUBLE_EQ(s.lr(30), 0.05);  // epoch 3
  EXPECT_DOUBLE_EQ(s.lr(59), 0.05);
  EXPECT_DOUBLE_EQ(s.lr(60), 0.025);
  EXPECT_DOUBLE_EQ(s.lr(99), 0.0125);  // epoch 9
}

TEST(Schedule, ConstantIsConstant) {
  const LrSchedule s(opts(ScheduleKind::constant));
  EXPECT_DOUBLE_EQ(s.lr(0), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(99), 0.1);
}

TEST(Schedule, LinearWarmupInFrontOfCosine) {
  const LrSchedule s(opts(ScheduleKind::cosine, /*warmup=*/20));
  EXPECT_DOUBLE_EQ(s.lr(0), 0.1 / 20);
  EXPECT_DOUBLE_EQ(s.lr(9), 0.1 * 10 / 20);
  EXPECT_DOUBLE_EQ(s.lr(19), 0.1);
  EXPECT_DOUBLE_EQ(s.lr(20), 0.1);     // cosine starts at its top after the warm-up
  EXPECT_NEAR(s.lr(60), 0.05, 1e-12);  // half way through the 80 cosine steps
}

TEST(Schedule, LinearWarmupInFrontOfStep) {
  ScheduleOptions o = opts(ScheduleKind::step, /*warmup=*/10);
  o.step_epochs = 5;
  const LrSchedule s(o);
  EXPECT_DOUBLE_EQ(s.lr(4), 0.05);
  EXPECT_DOUBLE_EQ(s.lr(10), 0.1);
  EXPECT_NEAR(s.lr(50), 0.01, 1e-15);  // epochs count from the start of the run
}

TEST(Schedule, ParsesNamesAndRejectsBadOptions) {
  EXPECT_EQ(parse_schedule("cosine"), ScheduleKind::cosine);
  EXPECT_EQ(parse_schedule("onecycle"), ScheduleKind::onecycle);
  EXPECT_THROW(parse_schedule("linear"), Error);
  EXPECT_THROW(LrSchedule(opts(ScheduleKind::cosine, /*warmup=*/100)), Error);  // warm-up as long as the run
  EXPECT_THROW(LrSchedule(opts(ScheduleKind::onecycle, /*warmup=*/5)), Error);
  ScheduleOptions o = opts(ScheduleKind::constant);
  o.epochs = 0;
  EXPECT_THROW(LrSchedule{o}, Error);
}

}  // namespace
}  // namespace trainer
