#include "chip/baselines.hpp"

#include <algorithm>
#include <cmath>

#include "chip/workload.hpp"

namespace trainer {

ChipSpec dense_baseline_of(const ChipSpec& spec) {
  ChipSpec s = spec;
  s.name = spec.name + "-dense";
  s.features = Features{};
  return s;
}

ChipSpec zero_skip_baseline_of(const ChipSpec& spec) {
  ChipSpec s = spec;
  s.name = spec.name + "-zero-skip";
  s.features = Features{};
  s.features.zero_skipping = true;
  return s;
}

DenseReference dense_reference(const Op& op, const ChipSpec& spec) {
  const ConvGeometry g = conv_geometry(op);
  // GEMM view: rows x cols outputs, each a dot product of `red` terms.
  const double x = static_cast<double>(g.N * g.C * g.H * g.W), w = static_cast<double>(g.K * g.C * g.R * g.S),
               y = static_cast<double>(g.N * g.K * g.P * g.Q);
  double rows, cols, red, a, b, out;
  int ab, bb, ob;  // buffers of a, b, output
  if (op.phase == Phase::ff) {
    rows = static_cast<double>(g.N * g.P * g.Q), cols = static_cast<double>(g.K),
    red = static_cast<double>(g.C * g.R * g.S);
    a = x, b = w, out = y, ab = kActivationBuffer, bb = kWeightBuffer, ob = kActivationBuffer;
  } else if (op.phase == Phase::bp) {
    rows = static_cast<double>(g.N * g.H * g.W), cols = static_cast<double>(g.C),
    red = static_cast<double>(g.K * g.R * g.S);
    a = y, b = w, out = x, ab = kGradientBuffer, bb = kWeightBuffer, ob = kGradientBuffer;
  } else {
    rows = static_cast<double>(g.C * g.R * g.S), cols = static_cast<double>(g.K),
    red = static_cast<double>(g.N * g.P * g.Q);
    a = x, b = y, out = w, ab = kActivationBuffer, bb = kGradientBuffer, ob = kWeightBuffer;
  }
  const RegroupShape& sh = spec.regroupings.front();
  const double rt = std::ceil(rows / sh.rows), ct = std::ceil(cols / sh.cols);
  const double v = spec.macs_per_pe[static_cast<int>(spec.precision)];
  DenseReference r;
  // The busiest group gets ceil(tiles / groups) tiles, each ceil(red / v) cycles plus fill/drain.
  r.compute_cycles = std::ceil(rt * ct / sh.groups) * (std::ceil(red / v) + spec.fill_drain_cycles);

  const double vb = precision_bits(spec.precision);
  a *= vb, b *= vb, out *= vb;
  double sram[kNumBuffers] = {0, 0, 0};
  sram[ab] += a * ct;  // a re-read per column tile, b per row tile
  sram[bb] += b * rt;
  const double cap_a = spec.buffers[ab].size_bits() / 2, cap_b = spec.buffers[bb].size_bits() / 2;
  // DRAM: read each operand once if either fits; else the cheapest of blocking a, blocking b, or
  // chunking the reduction with partial sums (accumulator width) parked in the output buffer.
  const double psums = out / vb * spec.accumulator_bits;
  double dram_a = a, dram_b = b, spills = 0;
  if (a > cap_a && b > cap_b) {
    const double a_outer = a + b * std::ceil(a / cap_a), b_outer = b + a * std::ceil(b / cap_b);
    if (psums <= spec.buffers[ob].size_bits() / 2 && ob != ab && ob != bb &&
        a + b < std::min(a_outer, b_outer))
      spills = std::max(std::ceil(a / cap_a), std::ceil(b / cap_b)) - 1;
    else if (a_outer <= b_outer)
      dram_b = b * std::ceil(a / cap_a);
    else
      dram_a = a * std::ceil(b / cap_b);
  }
  sram[ab] += dram_a;
  sram[bb] += dram_b;
  sram[ob] += 2 * out + 2 * spills * psums;
  double mem = std::ceil((dram_a + dram_b + out) / (spec.dram_gb_per_s * 8e9 / (spec.clock_mhz * 1e6)));
  for (int i = 0; i < kNumBuffers; ++i)
    mem = std::max(mem, std::ceil(sram[i] / spec.buffers[i].bits_per_cycle()));
  r.cycles = std::max(r.compute_cycles, mem);
  return r;
}

}  // namespace trainer
