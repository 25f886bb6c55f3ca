// Baselines beside Trainer, on the same hardware and technology, so that differences come from the
// features alone: a dense training processor (every feature off) and an earlier-style sparse training
// processor (zero skipping with one fixed dataflow and array split, conventional BN, no speculation).
// configs/chips/{dense,zero-skip}-baseline.yaml hold the same as files.
//
// dense_reference() is the dense model written out in closed form, independently of the tiled model,
// so that tests can check that switching every sparsity feature off gives exactly the dense cycles.
#pragma once

#include "chip/spec.hpp"
#include "ops/op.hpp"

namespace trainer {

ChipSpec dense_baseline_of(const ChipSpec& spec);
ChipSpec zero_skip_baseline_of(const ChipSpec& spec);

struct DenseReference {
  double compute_cycles = 0;
  double cycles = 0;  // with bandwidth stalls
};

// An array Op (conv2d/linear ff/bp/wg) on the dense version of `spec` with the first array split.
DenseReference dense_reference(const Op& op, const ChipSpec& spec);

}  // namespace trainer
