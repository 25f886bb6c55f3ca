// A whole ResNet-18 step (CIFAR shapes, batch 32): statistical mode stays close to exact mode, and
// sharing one map between Ops (as the engine does: a layer's ff and wg read the same x, its bp and wg the
// same dy) costs exactly what separate copies cost. How long costing takes is measured in
// bench/chip_cost_bench, not here.
#include <gtest/gtest.h>

#include "chip/model.hpp"
#include "chip_test_util.hpp"

namespace trainer {
namespace {

TEST(ChipResNet18Step, StatisticalIsCloseToExact) {
  const std::vector<Op> step = testing::synthetic_resnet18_step(32, 0.5, 0.1, 0.6, 1);
  const ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  ChipRun runs[2];
  for (CostMode mode : {CostMode::exact, CostMode::statistical})
    runs[static_cast<int>(mode)].add_step(ChipModel(spec, mode).cost_step(step));
  for (Phase p : {Phase::ff, Phase::bp, Phase::wg}) {
    const OpCost e = runs[0].phase_total(p), s = runs[1].phase_total(p);
    EXPECT_NEAR(s.cycles / e.cycles, 1.0, 0.08) << phase_name(p);
    EXPECT_NEAR(s.energy.total() / e.energy.total(), 1.0, 0.08) << phase_name(p);
  }
  const OpCost te = runs[0].total(), ts = runs[1].total();
  EXPECT_NEAR(ts.cycles / te.cycles, 1.0, 0.05);
  EXPECT_NEAR(ts.energy.total() / te.energy.total(), 1.0, 0.05);
}

TEST(ChipResNet18Step, SharedMapsCostLikeSeparateCopies) {
  const std::vector<Op> shared = testing::synthetic_resnet18_step(4, 0.5, 0.1, 0.6, 2);
  std::vector<Op> copies = shared;
  size_t shared_pointers = 0;
  for (size_t i = 0; i < copies.size(); ++i)
    for (std::shared_ptr<const Bitmap>* m : {&copies[i].x_nz, &copies[i].w_nz, &copies[i].dy_nz}) {
      if (!*m) continue;
      for (size_t j = 0; j < i; ++j)
        shared_pointers += shared[j].x_nz == *m || shared[j].w_nz == *m || shared[j].dy_nz == *m;
      *m = std::make_shared<const Bitmap>(**m);
    }
  ASSERT_GT(shared_pointers, 20u);  // the synthetic step does share maps
  for (const char* chip : {"trainer-28nm.yaml", "zero-skip-baseline.yaml"}) {
    const ChipModel model(load_chip_spec(testing::config_path(chip)), CostMode::exact);
    const auto a = model.cost_step(shared), b = model.cost_step(copies);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      SCOPED_TRACE(std::string(chip) + " " + a[i].layer_name + " " + phase_name(a[i].phase));
      EXPECT_EQ(a[i].cycles, b[i].cycles);
      EXPECT_EQ(a[i].effectual_macs, b[i].effectual_macs);
      EXPECT_EQ(a[i].energy.total(), b[i].energy.total());
    }
  }
}

}  // namespace
}  // namespace trainer
