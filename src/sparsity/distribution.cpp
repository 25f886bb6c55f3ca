#include "sparsity/distribution.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace trainer {

Distribution parse_distribution(const std::string& name) {
  if (name == "uniform") return Distribution::uniform;
  if (name == "erk") return Distribution::erk;
  if (name == "global") return Distribution::global;
  fail("sparsity distribution '{}' is unknown (expected uniform, erk or global)", name);
}

const char* distribution_name(Distribution d) {
  switch (d) {
    case Distribution::uniform:
      return "uniform";
    case Distribution::erk:
      return "erk";
    case Distribution::global:
      return "global";
  }
  return "?";
}

double erk_score(const Shape& shape) {
  TRAINER_CHECK(!shape.empty(), "erk: a weight tensor needs at least one dimension");
  double sum = 0.0, prod = 1.0;
  for (int64_t d : shape) {
    TRAINER_CHECK(d > 0, "erk: weight shape {} has an empty dimension", shape_str(shape));
    sum += static_cast<double>(d);
    prod *= static_cast<double>(d);
  }
  return sum / prod;
}

std::vector<double> erk_densities(const std::vector<Shape>& shapes, double density, double power) {
  TRAINER_CHECK(density >= 0.0 && density <= 1.0, "erk: target density must be in [0, 1], got {}", density);
  TRAINER_CHECK(std::isfinite(power) && power >= 0.0, "erk: power must be a finite number >= 0, got {}",
                power);
  const size_t n = shapes.size();
  std::vector<double> numel(n), score(n), out(n, 1.0);
  double total = 0.0;
  for (size_t l = 0; l < n; ++l) {
    score[l] = std::pow(erk_score(shapes[l]), power);
    numel[l] = 1.0;
    for (int64_t d : shapes[l]) numel[l] *= static_cast<double>(d);
    total += numel[l];
  }
  std::vector<bool> dense(n, false);
  // Each pass either finds a valid ε or clamps one more tensor, so at most n + 1 passes.
  for (size_t pass = 0; pass <= n; ++pass) {
    double budget = density * total, weighted = 0.0;
    for (size_t l = 0; l < n; ++l) {
      if (dense[l])
        budget -= numel[l];
      else
        weighted += score[l] * numel[l];
    }
    if (weighted <= 0.0) break;  // every tensor dense
    const double eps = std::max(budget, 0.0) / weighted;
    double max_score = -1.0;
    size_t arg = n;
    for (size_t l = 0; l < n; ++l)
      if (!dense[l] && score[l] > max_score) max_score = score[l], arg = l;
    if (eps * max_score > 1.0) {
      dense[arg] = true;
      continue;
    }
    for (size_t l = 0; l < n; ++l) out[l] = dense[l] ? 1.0 : eps * score[l];
    return out;
  }
  return out;
}

std::vector<int64_t> global_prune_counts(const std::vector<const float*>& weights,
                                         const std::vector<const Mask*>& masks, int64_t extra) {
  TRAINER_CHECK(weights.size() == masks.size(), "global pruning: {} weight tensors for {} masks",
                weights.size(), masks.size());
  const size_t n = masks.size();
  std::vector<int64_t> counts(n, 0);
  if (extra <= 0) return counts;
  auto mag = [](float x) {
    const float a = std::fabs(x);
    return std::isnan(a) ? std::numeric_limits<float>::infinity() : a;
  };
  std::vector<float> kept;
  for (size_t l = 0; l < n; ++l)
    for (int64_t i = 0; i < masks[l]->size(); ++i)
      if (masks[l]->kept(i)) kept.push_back(mag(weights[l][i]));
  if (extra >= static_cast<int64_t>(kept.size())) {
    for (size_t l = 0; l < n; ++l) counts[l] = masks[l]->count_kept();
    return counts;
  }
  // The extra-th smallest kept magnitude is the threshold: everything below it goes, and of the ties at
  // it, as many as are still needed, in tensor order.
  std::nth_element(kept.begin(), kept.begin() + (extra - 1), kept.end());
  const float threshold = kept[static_cast<size_t>(extra - 1)];
  std::vector<int64_t> ties(n, 0);
  int64_t below = 0;
  for (size_t l = 0; l < n; ++l)
    for (int64_t i = 0; i < masks[l]->size(); ++i) {
      if (!masks[l]->kept(i)) continue;
      const float a = mag(weights[l][i]);
      if (a < threshold)
        ++counts[l], ++below;
      else if (a == threshold)
        ++ties[l];
    }
  int64_t left = extra - below;
  for (size_t l = 0; l < n && left > 0; ++l) {
    const int64_t take = std::min(left, ties[l]);
    counts[l] += take;
    left -= take;
  }
  return counts;
}

}  // namespace trainer
