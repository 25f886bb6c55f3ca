// The three policies behind make_policy (private to src/sparsity; policy.hpp documents their rules).
#pragma once

#include <memory>

#include "sparsity/policy.hpp"

namespace trainer {

std::unique_ptr<PruningPolicy> make_magnitude_policy(const PruningOptions& options);
std::unique_ptr<PruningPolicy> make_dns_policy(const PruningOptions& options);
std::unique_ptr<PruningPolicy> make_rigl_policy(const PruningOptions& options);

// Prunes the `count` kept positions of `mask` with the smallest |values[i]| (ties: lower index).
void prune_smallest_kept(Mask& mask, const float* values, int64_t count);

}  // namespace trainer
