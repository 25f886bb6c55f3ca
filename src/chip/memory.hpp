// The memory hierarchy: DRAM -> three on-chip buffers (weights, activations, gradients) -> PE registers.
// Traffic is counted in bits per level; bandwidth turns it into the cycles each level needs, and an Op
// takes the longest of its compute and its memory cycles (double-buffered, so they overlap; the excess
// is the Op's stall). See docs/chip-model.md, "Memory".
#pragma once

#include "chip/cost.hpp"
#include "chip/spec.hpp"
#include "chip/workload.hpp"

namespace trainer {

// Bits an operand of `elems` elements with `nnz` nonzeros occupies: dense, or, with zero skipping,
// a bitmap (one bit per element) plus the nonzero values.
double stored_bits(double elems, double nnz, const ChipSpec& spec);

// The buffer each operand of a PE-array phase lives in: {a, b, output}.
std::array<BufferId, 3> array_buffers(Phase phase);

// DRAM, SRAM and register traffic of a PE-array Op under a mapping. slots/fired: the PE array's MAC slots
// and fired MACs (register traffic follows them).
void add_array_traffic(const ConvWork& w, const Mapping& m, const ChipSpec& spec, double slots, double fired,
                       Events& ev);

// Traffic of one element-wise pass over a tensor of `elems` elements (`nnz` nonzeros) held in `buffer`:
// reads (the first from DRAM, later ones from DRAM again unless the tensor fits in its buffer) and
// writes (through the buffer to DRAM).
void add_tensor_reads(double elems, double nnz, int passes, BufferId buffer, const ChipSpec& spec,
                      Events& ev);
void add_tensor_writes(double elems, double nnz, BufferId buffer, const ChipSpec& spec, Events& ev);

// Cycles the memory system needs for the traffic in ev: the busiest of DRAM and the three buffers.
double memory_cycles(const Events& ev, const ChipSpec& spec);

}  // namespace trainer
