// The training loop: data, model, loss, SGD and schedule, evaluation, metrics, checkpoints.
//
// One step:  ops.begin_step(); batch -> graph.forward(training) -> loss ff/bp -> graph.backward
//            -> sgd.step(schedule.lr(step)).
// One epoch: the steps over the shuffled training set (order and augmentation a function of
//            (seed, epoch)), evaluation on the test set in order, one metrics line, one checkpoint.
// Metrics file (--metrics): one JSON object per epoch with epoch (1-based), step (optimizer steps so
// far), train_loss and train_acc (means over the epoch's steps, accuracy as a fraction), test_loss and
// test_acc (null in epochs without evaluation), lr (of the epoch's last step), images_per_s (training
// steps only, data loading included, evaluation excluded) and seconds (the epoch with its evaluation).
// A run resumed from the checkpoint of epoch E repeats epochs E+1.. exactly as an uninterrupted run
// with the same thread count does, bit for bit.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#include "ops/op.hpp"
#include "ops/op_stream.hpp"

#include "train/config.hpp"

namespace trainer {

struct RunResult {
  int64_t epochs_completed = 0;  // the run's last completed epoch (counting those before a resume)
  int64_t steps = 0;             // optimizer steps completed, ditto
  double train_loss = 0.0, train_acc = 0.0;  // last epoch trained by this process
  double test_loss = 0.0, test_acc = 0.0;    // last evaluation
  int64_t images = 0;                        // training images processed by this process
  double train_seconds = 0.0;                // time in training steps (evaluation excluded)
  double images_per_s = 0.0;
};

// What a caller may attach to a run without the training loop knowing it (the chip model and the trace
// writer live outside src/train and plug in here). Every member is optional.
struct TrainHooks {
  // Before each training step (global step index, 0-based): which of that step's Op records should carry
  // operand nonzero maps (Op::x_nz, w_nz, dy_nz), which cost a pass over each operand (NonzeroCapture).
  std::function<NonzeroCapture(int64_t step)> wants_nonzeros;
  // After each training step, once the optimizer has run: that step's Op records, in execution order.
  std::function<void(int64_t step, const std::vector<Op>& ops)> on_step;
  // After the last epoch, before the run's summary is printed: lets the hook print its own summary.
  std::function<void(std::FILE* out)> on_finish;
};

// Runs the training cfg describes. Epoch lines and the final summary go to `out`, progress to stderr.
// Throws trainer::Error for bad configuration or data, a checkpoint that does not fit, and a diverging
// run (NaN/Inf loss), in which case the last epoch's checkpoint is left intact.
RunResult train(const RunConfig& cfg, std::FILE* out = stdout, const TrainHooks& hooks = {});

}  // namespace trainer
