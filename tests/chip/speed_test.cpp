// Costing a ResNet-18 step (CIFAR shapes, batch 32) must be cheap beside the engine's own step: exact
// mode well under a second, statistical mode a fraction of that. Timings are printed; the bounds are
// loose so a busy machine does not fail the suite.
#include <gtest/gtest.h>

#include "chip/model.hpp"
#include "chip_test_util.hpp"
#include "core/timer.hpp"
#include "report/chip_report.hpp"

namespace trainer {
namespace {

TEST(ChipSpeed, ResNet18Batch32Step) {
  const std::vector<Op> step = testing::synthetic_resnet18_step(32, 0.5, 0.1, 0.6, 1);
  double dense_gmacs = 0;
  for (const Op& op : step) dense_gmacs += static_cast<double>(op.dense_macs) * 1e-9;
  const ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  double secs[2] = {0, 0};
  ChipRun runs[2];
  for (CostMode mode : {CostMode::exact, CostMode::statistical}) {
    const ChipModel model(spec, mode);
    model.cost_step(step);  // warm-up (page faults, thread pool)
    const int reps = 3;
    const uint64_t t0 = now_ns();
    std::vector<OpCost> costs;
    for (int r = 0; r < reps; ++r) costs = model.cost_step(step);
    secs[static_cast<int>(mode)] = static_cast<double>(now_ns() - t0) * 1e-9 / reps;
    runs[static_cast<int>(mode)].add_step(costs);
  }
  std::printf(
      "ResNet-18 CIFAR step, batch 32: %zu Ops, %.1f dense GMAC; costing: exact %.3f s, statistical %.3f s\n",
      step.size(), dense_gmacs, secs[0], secs[1]);
  for (Phase p : {Phase::ff, Phase::bp, Phase::wg}) {
    const OpCost e = runs[0].phase_total(p), s = runs[1].phase_total(p);
    std::printf(
        "  %s: exact %.4g cycles (effectual util %.3f, %.1f TFLOPS/W); statistical %.4g cycles (%.3f, "
        "%.1f)\n",
        phase_name(p), e.cycles, e.effectual_utilization(), tflops_per_watt(e), s.cycles,
        s.effectual_utilization(), tflops_per_watt(s));
  }
  EXPECT_LT(secs[0], 5.0);
  EXPECT_LT(secs[1], 5.0);
  const OpCost te = runs[0].total(), ts = runs[1].total();
  EXPECT_NEAR(ts.cycles / te.cycles, 1.0, 0.05);
  EXPECT_NEAR(ts.energy.total() / te.energy.total(), 1.0, 0.05);
}

}  // namespace
}  // namespace trainer
