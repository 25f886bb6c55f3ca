// How a network-wide sparsity target is shared among the prunable tensors.
//  - uniform: every tensor gets the target.
//  - erk:     Erdős–Rényi-kernel (Evci et al. 2020, RigL): density of a conv [K, C, R, S] proportional to
//             (C + K + R + S) / (C·K·R·S), of a linear [out, in] to (in + out) / (in·out), scaled so that
//             the kept weights add up to the global budget. A tensor whose scaled density would exceed 1
//             is kept dense and the others are rescaled to the budget that is left, as in RigL. Small
//             tensors (few weights per connection) therefore stay denser than large ones. With a power
//             p (`--prune-erk-power`, the `erk_power_scale` of Liu et al.'s sparselearning code), density
//             is proportional to score^p instead: p = 1 is ERK, p = 0 uniform, between the two a
//             milder tilt toward the small tensors.
//  - global:  one magnitude threshold across all tensors; the share of each tensor follows from its
//             weights. magnitude: the threshold of the kept weights at each update; dns: one t for all
//             tensors at each update (each tensor's c follows from it); rigl: the initial weights' threshold
//             fixes each tensor's sparsity for the run.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "sparsity/mask.hpp"

namespace trainer {

enum class Distribution : uint8_t { uniform = 0, erk = 1, global = 2 };

// "uniform" | "erk" | "global"; throws trainer::Error naming the value and the choices.
Distribution parse_distribution(const std::string& name);
const char* distribution_name(Distribution d);

// (sum of dims) / (product of dims): ERK for 4-D, ER for 2-D (any rank: the same formula).
double erk_score(const Shape& shape);

// Densities (kept fraction) per tensor such that Σ d_l·N_l = density · Σ N_l, with
// d_l = min(1, ε·score_l^power). density in [0, 1], power finite and >= 0. Tensors clamped to 1 are chosen
// as RigL does: repeatedly the one with the largest score while its scaled density exceeds 1.
std::vector<double> erk_densities(const std::vector<Shape>& shapes, double density, double power = 1.0);

// Global magnitude pruning: how many more weights of each tensor to prune so that the `extra` kept weights
// with the smallest |w| over all tensors go (ties: earlier tensor, then lower index, the same order
// pick_by_magnitude uses inside a tensor). weights[l] has masks[l]->size() elements.
std::vector<int64_t> global_prune_counts(const std::vector<const float*>& weights,
                                         const std::vector<const Mask*>& masks, int64_t extra);

}  // namespace trainer
