// Invariants of the chip model, as property tests over random convolutions and chips.
#include "chip/model.hpp"

#include <gtest/gtest.h>

#include "chip/baselines.hpp"
#include "chip_test_util.hpp"

namespace trainer {
namespace {

using testing::conv_op;
using testing::ConvShape;

// A random small convolution.
ConvShape random_shape(Rng& rng) {
  ConvShape s;
  s.N = 1 + static_cast<int64_t>(rng.below(3));
  s.C = 1 + static_cast<int64_t>(rng.below(12));
  s.K = 1 + static_cast<int64_t>(rng.below(20));
  s.R = s.S = 1 + 2 * static_cast<int64_t>(rng.below(2));  // 1 or 3
  s.stride = 1 + static_cast<int32_t>(rng.below(2));
  s.pad = static_cast<int32_t>(s.R / 2);
  s.H = s.W = 3 + static_cast<int64_t>(rng.below(8));
  return s;
}

ChipSpec random_chip(Rng& rng) {
  const int shapes[3][2] = {{2, 2}, {4, 2}, {3, 5}};
  const auto& sh = shapes[rng.below(3)];
  ChipSpec s = testing::tiny_chip(sh[0], sh[1]);
  s.regroupings.push_back({s.pes, 1, 1});
  s.regroupings.push_back({1, 1, s.pes});
  s.precision = rng.below(2) ? Precision::fp8 : Precision::fp16;
  s.fill_drain_cycles = static_cast<int>(rng.below(4));
  s.buffers[kActivationBuffer].size_kib =
      0.0625 * static_cast<double>(1 + rng.below(8));  // sometimes too small
  s.features.zero_skipping = rng.below(4) != 0;
  s.features.adaptive_dataflow = s.features.zero_skipping && rng.below(2);
  s.features.pe_regrouping = rng.below(2);
  s.features.speculation = rng.below(2);
  s.features.reformulated_bn = rng.below(2);
  s.fixed_dataflow = rng.below(2) ? Compressed::a : Compressed::b;
  return s;
}

void expect_invariants(const OpCost& c, const ChipSpec& spec) {
  SCOPED_TRACE(c.layer_name + " " + phase_name(c.phase));
  EXPECT_LE(c.pe_utilization(), 1.0 + 1e-12);
  EXPECT_LE(c.effectual_utilization(), 1.0 + 1e-12);
  EXPECT_GE(c.cycles * spec.peak_macs_per_cycle(), c.effectual_macs - 1e-9);
  EXPECT_GE(c.cycles, c.compute_cycles);
  EXPECT_EQ(c.stall_cycles, c.cycles - c.compute_cycles);
  // The breakdown sums to the total, and each component is its events times its per-event energy.
  const EnergyBreakdown& e = c.energy;
  EXPECT_DOUBLE_EQ(e.total(), e.mac + e.register_file + e.sram[0] + e.sram[1] + e.sram[2] + e.dram +
                                  e.metadata + e.vector + e.leakage);
  EXPECT_DOUBLE_EQ(e.leakage, c.cycles * spec.leakage_pj_per_cycle);
  EXPECT_DOUBLE_EQ(e.dram, (c.events.dram_read_bits + c.events.dram_write_bits) * spec.dram_pj_per_bit);
  EXPECT_DOUBLE_EQ(e.mac, c.events.mac_fired * spec.mac_pj_now());
  EXPECT_LE(c.events.mac_fired, c.events.mac_slots + 1e-9);
}

TEST(ChipModel, InvariantsOnRandomConvsAndChips) {
  Rng rng(2024);
  for (int trial = 0; trial < 60; ++trial) {
    const ConvShape s = random_shape(rng);
    const ChipSpec spec = random_chip(rng);
    std::vector<Op> step;
    for (Phase p : {Phase::ff, Phase::wg, Phase::bp})
      step.push_back(conv_op(s, p, rng.uniform(), rng.uniform(), rng.uniform(), 100 + trial));
    for (CostMode mode : {CostMode::exact, CostMode::statistical}) {
      const ChipModel model(spec, mode);
      for (const OpCost& c : model.cost_step(step)) expect_invariants(c, spec);
    }
  }
}

TEST(ChipModel, SparsityFeaturesOffEqualsTheDenseModel) {
  Rng rng(7);
  ChipSpec trainer_spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  for (int trial = 0; trial < 40; ++trial) {
    const ConvShape s = random_shape(rng);
    ChipSpec spec = trial % 2 ? dense_baseline_of(trainer_spec) : dense_baseline_of(random_chip(rng));
    if (trial % 3 == 0) spec.regroupings.front() = {2, spec.pes / 2 > 0 ? 1 : 1, spec.pes / 2};
    if (spec.regroupings.front().groups * spec.regroupings.front().rows * spec.regroupings.front().cols !=
        spec.pes)
      spec.regroupings.front() = {1, 1, spec.pes};
    for (Phase p : {Phase::ff, Phase::bp, Phase::wg}) {
      const Op op = conv_op(s, p, rng.uniform(), rng.uniform(), rng.uniform(), trial);
      const DenseReference ref = dense_reference(op, spec);
      for (CostMode mode : {CostMode::exact, CostMode::statistical}) {
        const OpCost c = ChipModel(spec, mode).cost_op(op);
        EXPECT_EQ(c.compute_cycles, ref.compute_cycles) << phase_name(p) << " trial " << trial;
        EXPECT_EQ(c.cycles, ref.cycles) << phase_name(p) << " trial " << trial;
        EXPECT_EQ(c.events.mac_fired, c.events.mac_slots);
      }
    }
  }
}

// Clears a random subset of a map's nonzeros.
std::shared_ptr<const Bitmap> sparser(const std::shared_ptr<const Bitmap>& m, double keep, Rng& rng) {
  auto b = std::make_shared<Bitmap>(*m);
  for (int64_t i = 0; i < b->size(); ++i)
    if (b->test(i) && rng.uniform() >= keep) b->words()[i >> 6] &= ~(uint64_t{1} << (i & 63));
  return b;
}

TEST(ChipModel, MoreZerosNeverCostMoreCyclesUnderZeroSkipping) {
  Rng rng(99);
  for (int trial = 0; trial < 40; ++trial) {
    const ConvShape s = random_shape(rng);
    ChipSpec spec = random_chip(rng);
    spec.features.zero_skipping = true;
    spec.features.speculation = false;
    for (Phase p : {Phase::ff, Phase::bp, Phase::wg}) {
      const Op op = conv_op(s, p, 0.3 + 0.7 * rng.uniform(), 0.3 + 0.7 * rng.uniform(),
                            0.3 + 0.7 * rng.uniform(), trial);
      Op fewer = op;
      if (fewer.x_nz) fewer.x_nz = sparser(fewer.x_nz, rng.uniform(), rng);
      if (fewer.w_nz) fewer.w_nz = sparser(fewer.w_nz, rng.uniform(), rng);
      if (fewer.dy_nz) fewer.dy_nz = sparser(fewer.dy_nz, rng.uniform(), rng);
      const ChipModel model(spec, CostMode::exact);
      const ConvWork w0 = analyse_exact(op), w1 = analyse_exact(fewer);
      // Under every mapping the chip could choose...
      for (int shape = 0; shape < static_cast<int>(spec.regroupings.size()); ++shape)
        for (Compressed cmp : {Compressed::a, Compressed::b}) {
          const Mapping m{true, cmp, shape};
          const OpCost a = model.cost_mapping(op, w0, m, true), b = model.cost_mapping(fewer, w1, m, true);
          EXPECT_LE(b.compute_cycles, a.compute_cycles);
          EXPECT_LE(b.cycles, a.cycles);
          EXPECT_LE(b.energy.total(), a.energy.total() + 1e-9);
        }
      // ...and with a fixed dataflow, as chosen by the model.
      ChipSpec fixed = spec;
      fixed.features.adaptive_dataflow = fixed.features.pe_regrouping = false;
      const ChipModel fm(fixed, CostMode::exact);
      EXPECT_LE(fm.cost_op(fewer).cycles, fm.cost_op(op).cycles);
    }
  }
}

bool same(const OpCost& a, const OpCost& b) {
  return a.cycles == b.cycles && a.compute_cycles == b.compute_cycles &&
         a.effectual_macs == b.effectual_macs && a.events.mac_slots == b.events.mac_slots &&
         a.events.dram_read_bits == b.events.dram_read_bits && a.energy.total() == b.energy.total() &&
         a.compressed == b.compressed && a.regroup == b.regroup;
}

TEST(ChipModel, CostingTwiceIsIdentical) {
  Rng rng(5);
  ConvShape s;
  s.N = 4, s.C = 16, s.H = s.W = 12, s.K = 32;
  std::vector<Op> step;
  for (Phase p : {Phase::ff, Phase::wg, Phase::bp}) step.push_back(conv_op(s, p, 0.5, 0.2, 0.4, 3));
  for (CostMode mode : {CostMode::exact, CostMode::statistical}) {
    const ChipModel model(load_chip_spec(testing::config_path("trainer-28nm.yaml")), mode);
    const auto a = model.cost_step(step), b = model.cost_step(step);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same(a[i], b[i])) << i;
  }
}

// The model keeps weight lines from step to step while a layer's weight map is unchanged; a changed map
// (one bit) must be analysed afresh, giving what a new model gives.
TEST(ChipModel, KeptWeightLinesFollowTheWeightMap) {
  ConvShape s;
  s.N = 2, s.C = 8, s.H = s.W = 6, s.K = 12;
  std::vector<Op> step;
  for (Phase p : {Phase::ff, Phase::wg, Phase::bp}) step.push_back(conv_op(s, p, 0.6, 0.3, 0.5, 11));
  step[2].w_nz = step[0].w_nz;  // bp reads the weights ff read
  std::vector<Op> changed = step;
  auto w = std::make_shared<Bitmap>(*step[0].w_nz);
  w->words()[0] ^= 1;  // weight (0, 0, 0, 0) flips
  changed[0].w_nz = changed[2].w_nz = w;
  const ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  const ChipModel kept(spec, CostMode::exact);
  const auto first = kept.cost_step(step);
  const auto second = kept.cost_step(changed);
  const auto fresh = ChipModel(spec, CostMode::exact).cost_step(changed);
  for (size_t i = 0; i < fresh.size(); ++i) {
    EXPECT_TRUE(same(second[i], fresh[i])) << i;
    if (fresh[i].phase != Phase::wg) {
      EXPECT_NE(first[i].effectual_macs, second[i].effectual_macs) << i;
    }
  }
  const auto again = kept.cost_step(step);  // back to the first map
  for (size_t i = 0; i < first.size(); ++i) EXPECT_TRUE(same(again[i], first[i])) << i;
}

TEST(ChipModel, AdaptiveDataflowCompressesTheSparserOperand) {
  ConvShape s;
  s.N = 4, s.C = 32, s.H = s.W = 8, s.K = 32;
  ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  spec.features.pe_regrouping = false;
  const ChipModel model(spec, CostMode::exact);
  // Sparse weights, dense activations: walk the weights.
  EXPECT_EQ(model.cost_op(conv_op(s, Phase::ff, 1.0, 0.1, 1.0, 1)).compressed, "w");
  // Sparse activations, dense weights: walk the activations.
  EXPECT_EQ(model.cost_op(conv_op(s, Phase::ff, 0.1, 1.0, 1.0, 2)).compressed, "x");
  // wg: whichever of x and dy is sparser.
  EXPECT_EQ(model.cost_op(conv_op(s, Phase::wg, 0.1, 1.0, 0.9, 3)).compressed, "x");
  EXPECT_EQ(model.cost_op(conv_op(s, Phase::wg, 0.9, 1.0, 0.1, 4)).compressed, "dy");
  // The adaptive choice is never slower than the fixed one by the model's own estimate, and on these
  // lopsided operands it is faster in exact cycles too.
  ChipSpec fixed = spec;
  fixed.features.adaptive_dataflow = false;
  const Op op = conv_op(s, Phase::ff, 0.1, 1.0, 1.0, 2);
  EXPECT_LT(model.cost_op(op).cycles, ChipModel(fixed, CostMode::exact).cost_op(op).cycles);
}

TEST(ChipModel, RegroupingBalancesImbalancedLines) {
  // Output channels whose weight lines differ widely in length: a tall split keeps the long lines from
  // holding up a whole 16-wide tile.
  ConvShape s;
  s.N = 8, s.C = 16, s.H = s.W = 8, s.K = 64;
  Op op = conv_op(s, Phase::ff, 1.0, 1.0, 1.0, 1);
  auto w = std::make_shared<Bitmap>(Shape{s.K, s.C, s.R, s.S});
  Rng rng(3);
  for (int64_t k = 0; k < s.K; ++k)
    for (int64_t i = 0; i < s.C * s.R * s.S; ++i)
      if (rng.uniform() < (k % 16 == 0 ? 0.9 : 0.05)) w->set(k * s.C * s.R * s.S + i);
  op.w_nz = w;
  ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  spec.features.adaptive_dataflow = false;
  spec.fixed_dataflow = Compressed::b;
  spec.features.pe_regrouping = false;
  const double fixed = ChipModel(spec, CostMode::exact).cost_op(op).compute_cycles;
  spec.features.pe_regrouping = true;
  const OpCost regrouped = ChipModel(spec, CostMode::exact).cost_op(op);
  EXPECT_NE(regrouped.regroup, "16x16");
  EXPECT_LT(regrouped.compute_cycles, 0.8 * fixed) << regrouped.regroup;
}

TEST(ChipModel, SpeculationSkipsDeadGradients) {
  ConvShape s;
  s.N = 4, s.C = 16, s.H = s.W = 10, s.K = 16;
  std::vector<Op> step;
  for (Phase p : {Phase::ff, Phase::wg, Phase::bp}) step.push_back(conv_op(s, p, 0.4, 0.3, 0.6, 9));
  ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  const auto with = ChipModel(spec, CostMode::exact).cost_step(step);
  spec.features.speculation = false;
  const auto without = ChipModel(spec, CostMode::exact).cost_step(step);
  for (size_t i = 1; i < 3; ++i) {
    SCOPED_TRACE(phase_name(with[i].phase));
    EXPECT_LT(with[i].events.mac_slots, without[i].events.mac_slots);
    EXPECT_LE(with[i].compute_cycles, without[i].compute_cycles);
    EXPECT_GT(with[i].skipped_dead_output_macs, 0);
    EXPECT_NEAR(with[i].effectual_macs + with[i].skipped_dead_output_macs, without[i].effectual_macs, 1e-6);
  }
  EXPECT_EQ(with[0].cycles, without[0].cycles);  // ff: nothing known to be dead
  // A bp costed on its own has no ff maps to go by.
  EXPECT_EQ(ChipModel(load_chip_spec(testing::config_path("trainer-28nm.yaml")), CostMode::exact)
                .cost_op(step[2])
                .skipped_dead_output_macs,
            0);
}

TEST(ChipModel, ReformulatedBnSavesEnergyAndTime) {
  Op bn;
  bn.layer = 2;
  bn.layer_name = "bn";
  bn.kind = "batchnorm2d";
  bn.x_shape = bn.y_shape = {32, 64, 32, 32};  // 2M elements: far larger than any buffer
  ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  for (Phase p : {Phase::ff, Phase::wg, Phase::bp}) {
    bn.phase = p;
    spec.features.reformulated_bn = false;
    const OpCost conv = ChipModel(spec, CostMode::exact).cost_op(bn);
    spec.features.reformulated_bn = true;
    const OpCost ref = ChipModel(spec, CostMode::exact).cost_op(bn);
    EXPECT_GT(conv.events.dram_read_bits, 0);
    EXPECT_EQ(ref.events.dram_read_bits + ref.events.dram_write_bits, 0);
    EXPECT_LT(ref.energy.total(), conv.energy.total());
    EXPECT_EQ(ref.cycles, 0);
  }
  // Conventional ff reads x three times from DRAM when it does not fit.
  bn.phase = Phase::ff;
  spec.features.reformulated_bn = false;
  spec.features.zero_skipping = false;
  spec.features.adaptive_dataflow = false;
  const OpCost conv = ChipModel(spec, CostMode::exact).cost_op(bn);
  EXPECT_DOUBLE_EQ(conv.events.dram_read_bits, 3.0 * 32 * 64 * 32 * 32 * 8);
}

TEST(ChipModel, RunTotalsAddUp) {
  ConvShape s;
  std::vector<Op> step;
  for (Phase p : {Phase::ff, Phase::wg, Phase::bp}) step.push_back(conv_op(s, p, 0.5, 0.5, 0.5, 1));
  const ChipModel model(load_chip_spec(testing::config_path("trainer-28nm.yaml")), CostMode::exact);
  ChipRun run;
  const auto costs = model.cost_step(step);
  run.add_step(costs);
  run.add_step(costs);
  EXPECT_EQ(run.steps(), 2u);
  ASSERT_EQ(run.rows().size(), 3u);
  EXPECT_EQ(run.rows()[0].calls, 2u);
  EXPECT_DOUBLE_EQ(run.rows()[0].cycles, 2 * costs[0].cycles);
  double cycles = 0, energy = 0;
  for (const OpCost& c : costs) cycles += 2 * c.cycles, energy += 2 * c.energy.total();
  EXPECT_DOUBLE_EQ(run.total().cycles, cycles);
  EXPECT_NEAR(run.total().energy.total(), energy, 1e-9 * energy);
  EXPECT_DOUBLE_EQ(run.phase_total(Phase::wg).cycles, 2 * costs[1].cycles);
}

}  // namespace
}  // namespace trainer
