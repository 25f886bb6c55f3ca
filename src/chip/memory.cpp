#include "chip/memory.hpp"

#include <algorithm>
#include <cmath>

namespace trainer {

double stored_bits(double elems, double nnz, const ChipSpec& spec) {
  const double vb = spec.value_bits();
  return spec.features.zero_skipping ? nnz * vb + elems : elems * vb;
}

std::array<BufferId, 3> array_buffers(Phase phase) {
  switch (phase) {
    case Phase::ff:
      return {kActivationBuffer, kWeightBuffer, kActivationBuffer};
    case Phase::bp:
      return {kGradientBuffer, kWeightBuffer, kGradientBuffer};
    default:
      return {kActivationBuffer, kGradientBuffer, kWeightBuffer};  // wg: x, dy -> dw
  }
}

void add_array_traffic(const ConvWork& w, const Mapping& m, const ChipSpec& spec, double slots, double fired,
                       Events& ev) {
  const auto bufs = array_buffers(w.phase);
  const RegroupShape& shape = spec.regroupings[m.shape];
  const double row_tiles = std::ceil(static_cast<double>(w.rows) / shape.rows);
  const double col_tiles = std::ceil(static_cast<double>(w.cols) / shape.cols);
  const double a = stored_bits(static_cast<double>(w.a_elems), w.a_nnz, spec);
  const double b = stored_bits(static_cast<double>(w.b_elems), w.b_nnz, spec);

  // Buffer -> array: each operand is read once per tile pass over the other operand's lines (the sliding
  // window's reuse inside a tile is taken as perfect).
  ev.sram_read_bits[bufs[0]] += a * col_tiles;
  ev.sram_read_bits[bufs[1]] += b * row_tiles;

  // DRAM -> buffer. An operand that fits in (half of, for double buffering) its buffer is read once and
  // the other streams past it once. Otherwise the cheapest of three loop orders: a blocked to its buffer
  // with b re-read per block; the reverse; or the reduction split into chunks that both operands' slices
  // fit, each read once, with the partial sums of every output held in the output buffer between chunks
  // (possible only when they fit there at accumulator width).
  const double vb = spec.value_bits(), acc = spec.accumulator_bits;
  const double out = static_cast<double>(w.out_elems) * vb;
  const double psums = static_cast<double>(w.out_elems) * acc;
  const double cap_a = spec.buffers[bufs[0]].size_bits() / 2, cap_b = spec.buffers[bufs[1]].size_bits() / 2;
  const double cap_out = spec.buffers[bufs[2]].size_bits() / 2;
  double dram_a = a, dram_b = b, spills = 0;
  if (a > cap_a && b > cap_b) {
    const double a_outer = a + b * std::ceil(a / cap_a), b_outer = b + a * std::ceil(b / cap_b);
    const bool chunked = psums <= cap_out && bufs[2] != bufs[0] && bufs[2] != bufs[1];
    if (chunked && a + b < std::min(a_outer, b_outer))
      spills = std::max(std::ceil(a / cap_a), std::ceil(b / cap_b)) - 1;
    else if (a_outer <= b_outer)
      dram_b = b * std::ceil(a / cap_a);
    else
      dram_a = a * std::ceil(b / cap_b);
  }
  ev.dram_read_bits += dram_a + dram_b;
  ev.sram_write_bits[bufs[0]] += dram_a;
  ev.sram_write_bits[bufs[1]] += dram_b;
  // Partial sums leave the accumulators after every chunk but the last and come back for the next.
  ev.sram_write_bits[bufs[2]] += spills * psums;
  ev.sram_read_bits[bufs[2]] += spills * psums;
  ev.register_read_bits += spills * psums;
  ev.register_write_bits += spills * psums;

  // Outputs leave the accumulators once, through their buffer, to DRAM, dense.
  ev.sram_write_bits[bufs[2]] += out;
  ev.sram_read_bits[bufs[2]] += out;
  ev.dram_write_bits += out;

  // PE registers: both operands latched and read per slot; the accumulator read and written per fired
  // MAC and read once more when the output drains.
  ev.register_write_bits += slots * 2 * vb + fired * acc;
  ev.register_read_bits += slots * 2 * vb + fired * acc + static_cast<double>(w.out_elems) * acc;

  if (m.skipping) {
    // One index decode per compressed entry a PE walks, and one encode per element of the operand that
    // is compressed for this Op.
    const double compressed_elems =
        static_cast<double>(m.compressed == Compressed::a ? w.a_elems : w.b_elems);
    ev.metadata_events += slots + compressed_elems;
  }
}

void add_tensor_reads(double elems, double nnz, int passes, BufferId buffer, const ChipSpec& spec,
                      Events& ev) {
  const double bits = stored_bits(elems, nnz, spec);
  const bool fits = bits <= spec.buffers[buffer].size_bits() / 2;
  for (int p = 0; p < passes; ++p) {
    if (p == 0 || !fits) {
      ev.dram_read_bits += bits;
      ev.sram_write_bits[buffer] += bits;
    }
    ev.sram_read_bits[buffer] += bits;
  }
}

void add_tensor_writes(double elems, double nnz, BufferId buffer, const ChipSpec& spec, Events& ev) {
  const double bits = stored_bits(elems, nnz, spec);
  ev.sram_write_bits[buffer] += bits;
  ev.sram_read_bits[buffer] += bits;
  ev.dram_write_bits += bits;
}

double memory_cycles(const Events& ev, const ChipSpec& spec) {
  // Whole cycles: a transfer that needs part of a cycle occupies the port for that cycle.
  double c = std::ceil((ev.dram_read_bits + ev.dram_write_bits) / spec.dram_bits_per_cycle());
  for (int b = 0; b < kNumBuffers; ++b)
    c = std::max(
        c, std::ceil((ev.sram_read_bits[b] + ev.sram_write_bits[b]) / spec.buffers[b].bits_per_cycle()));
  return c;
}

}  // namespace trainer
