// The PE array: cycles of one Op's GEMM view under a mapping.
//
// Dataflow (docs/chip-model.md, "PE array"): output stationary. A group of rows x cols PEs takes a tile
// of rows lines of a and cols lines of b; PE (i, j) accumulates output (i, j) over the whole reduction.
//  - dense (no zero skipping): every PE spends ceil(reduction / v) cycles (v = MACs per PE per cycle);
//  - b compressed: PE (i, j) walks the nonzeros of b's line j: ceil(nnz_b[j] / v) cycles; a's zeros
//    only gate the multiplier;
//  - a compressed: symmetric, ceil(nnz_a[i] / v).
// A tile ends when its slowest PE ends (the imbalance the bitmaps cause is exact, not averaged), plus
// fill/drain (and index decode latency when compressed). Tiles are dealt to groups round-robin; groups
// run independently; the Op's compute cycles are those of the busiest group.
// Statistical mode replaces each line's nonzeros by a binomial variable at the operand's density and
// takes the expectation of each tile's maximum exactly (independent lines).
#pragma once

#include <cstdint>
#include <vector>

#include "chip/cost.hpp"
#include "chip/spec.hpp"
#include "chip/workload.hpp"

namespace trainer {

// Which outputs of an Op training needs (speculation). bits: one bit per output in the output tensor's
// logical order (ff: y, bp: dx, wg: dw); null: all needed.
struct OutputLiveness {
  const std::vector<uint64_t>* bits = nullptr;
  double live_fraction = 1.0;
};

struct ComputeResult {
  double cycles = 0;     // busiest group, fill/drain included
  double mac_slots = 0;  // PE slots spent on products of needed outputs
  double all_slots = 0;  // the same had every output been needed (for the share of effectual work kept)
};

ComputeResult array_compute(const ConvWork& w, const Mapping& m, const ChipSpec& spec, bool exact,
                            const OutputLiveness& live = {});

// E[ceil(max_i X_i / v)] for independent X_i ~ Binomial(L_i, d), each present with probability q (an
// absent line counts as 0). lines: (L, how many lines of that length). Exposed for tests.
double expected_ceil_max(const std::vector<std::pair<int64_t, int>>& lines, double d, int v, double q = 1.0);

}  // namespace trainer
