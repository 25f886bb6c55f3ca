// Statistical mode (densities only) against exact mode (real bitmaps) on uniformly random maps, where
// the statistical assumption holds; and its order-statistics formula against Monte Carlo.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>

#include "chip/model.hpp"
#include "chip_test_util.hpp"

namespace trainer {
namespace {

using testing::conv_op;
using testing::ConvShape;

TEST(Statistical, ExpectedMaxMatchesMonteCarlo) {
  Rng rng(1);
  struct Case {
    std::vector<std::pair<int64_t, int>> lines;
    double d;
    int v;
    double q;
  };
  const std::vector<Case> cases = {{{{100, 16}}, 0.3, 1, 1.0},
                                   {{{100, 16}}, 0.3, 2, 1.0},
                                   {{{40, 3}, {90, 5}}, 0.6, 1, 1.0},
                                   {{{576, 16}}, 0.1, 2, 0.7},
                                   {{{0, 2}, {7, 1}}, 0.5, 1, 1.0}};
  for (const Case& c : cases) {
    const double e = expected_ceil_max(c.lines, c.d, c.v, c.q);
    double mc = 0;
    const int trials = 20000;
    for (int t = 0; t < trials; ++t) {
      int64_t mx = 0;
      for (const auto& [L, n] : c.lines)
        for (int i = 0; i < n; ++i) {
          if (rng.uniform() >= c.q) continue;
          int64_t x = 0;
          for (int64_t j = 0; j < L; ++j) x += rng.uniform() < c.d;
          mx = std::max(mx, x);
        }
      mc += static_cast<double>((mx + c.v - 1) / c.v);
    }
    mc /= trials;
    EXPECT_NEAR(e, mc, 0.01 * mc + 0.02) << "d=" << c.d << " v=" << c.v << " q=" << c.q;
  }
}

// Relative difference.
double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

TEST(Statistical, CloseToExactOnRandomMaps) {
  ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  const ChipModel exact(spec, CostMode::exact), stat(spec, CostMode::statistical);
  struct Case {
    ConvShape s;
    double dx, dw, ddy;
  };
  std::vector<Case> cases;
  ConvShape a;
  a.N = 8, a.C = 32, a.H = a.W = 16, a.K = 64;
  cases.push_back({a, 0.5, 0.1, 0.3});
  cases.push_back({a, 0.2, 0.5, 0.6});
  ConvShape b = a;
  b.stride = 2;
  cases.push_back({b, 0.4, 0.2, 0.5});
  double worst_cycles = 0, worst_energy = 0;
  for (size_t ci = 0; ci < cases.size(); ++ci) {
    const Case& c = cases[ci];
    for (Phase p : {Phase::ff, Phase::bp, Phase::wg}) {
      const Op op = conv_op(c.s, p, c.dx, c.dw, c.ddy, 40 + ci);
      const ConvWork we = analyse_exact(op), ws = analyse_statistical(op);
      EXPECT_LT(rel(ws.effectual_macs, we.effectual_macs), 0.02) << phase_name(p);
      for (int shape = 0; shape < static_cast<int>(spec.regroupings.size()); ++shape)
        for (Compressed cmp : {Compressed::a, Compressed::b}) {
          const Mapping m{true, cmp, shape};
          const OpCost e = exact.cost_mapping(op, we, m, true), s = stat.cost_mapping(op, ws, m, false);
          SCOPED_TRACE(fmt::format("case {} {} {} {}", ci, phase_name(p), e.compressed, e.regroup));
          EXPECT_LT(rel(s.compute_cycles, e.compute_cycles), 0.05)
              << "statistical " << s.compute_cycles << " exact " << e.compute_cycles;
          EXPECT_LT(rel(s.cycles, e.cycles), 0.05);
          EXPECT_LT(rel(s.events.mac_slots, e.events.mac_slots), 0.02);
          EXPECT_LT(rel(s.energy.total(), e.energy.total()), 0.03);
          worst_cycles = std::max(worst_cycles, rel(s.cycles, e.cycles));
          worst_energy = std::max(worst_energy, rel(s.energy.total(), e.energy.total()));
        }
      // The whole model: the same choice of mapping (it is made from densities in both modes).
      const OpCost e = exact.cost_op(op), s = stat.cost_op(op);
      EXPECT_EQ(e.compressed, s.compressed);
      EXPECT_EQ(e.regroup, s.regroup);
    }
  }
  std::printf(
      "statistical vs exact, worst over %zu cases x 3 phases x 8 mappings: cycles %.2f%%, energy %.2f%%\n",
      cases.size(), 100 * worst_cycles, 100 * worst_energy);
}

}  // namespace
}  // namespace trainer
