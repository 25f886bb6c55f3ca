// Mask: which weights of one tensor are kept (1) or pruned (0), in the weight's logical order (plain
// OIHW for a conv [K, C, R, S], [out, in] for a linear). One byte per weight rather than one bit: the
// per-step uses (zeroing pruned weights, masking WG) are then one vectorised select per element with no
// shifts, and the pruning policies flip single entries. Checkpoints pack it to one bit per weight.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/bitmap.hpp"
#include "core/tensor.hpp"

namespace trainer {

class Mask {
 public:
  Mask() = default;
  explicit Mask(Shape shape);  // all kept

  const Shape& shape() const { return shape_; }
  int64_t size() const { return static_cast<int64_t>(keep_.size()); }
  const uint8_t* data() const { return keep_.data(); }
  uint8_t* data() { return keep_.data(); }
  bool kept(int64_t i) const { return keep_[static_cast<size_t>(i)] != 0; }
  void set(int64_t i, bool keep) { keep_[static_cast<size_t>(i)] = keep ? 1 : 0; }
  void fill(bool keep);

  int64_t count_kept() const;
  int64_t count_pruned() const { return size() - count_kept(); }
  double density() const;  // kept / size; 1 for an empty mask
  double sparsity() const { return 1.0 - density(); }
  // Every weight kept here is kept in `other` (same size): "pruned stay pruned" from other to this.
  bool is_subset_of(const Mask& other) const;

  // w: numel == size(), plain. Sets pruned weights to exactly zero.
  void apply(Tensor& w) const;
  void apply(float* w, int64_t n) const;

  // The kept positions as a Bitmap (the Op record's and the kernels' nonzero-map type).
  Bitmap to_bitmap() const;

  // u32 rank, i64 dims[rank], then one bit per weight (LSB first, padded to a byte).
  std::vector<uint8_t> to_bytes() const;
  // Throws trainer::Error naming `what` for truncated, oversized or inconsistent bytes.
  static Mask from_bytes(const std::vector<uint8_t>& bytes, const std::string& what = "mask");

  bool operator==(const Mask& o) const { return shape_ == o.shape_ && keep_ == o.keep_; }

 private:
  Shape shape_;
  std::vector<uint8_t> keep_;  // 0 or 1
};

// The WG masking helper: grad (numel == mask.size(), plain) is zeroed at pruned positions, so that an
// SGD step (momentum and weight decay included, provided the momentum is zero there too) leaves a pruned
// weight at exactly zero.
void mask_gradient(const Mask& mask, Tensor& grad);

// Reorders `candidates` (positions into `values`) so that its first `count` entries are those with the
// smallest |values[i]| (largest when `largest`), ties to the lower position, so the choice is the same on
// every run and thread count. A NaN counts as the largest magnitude. count is clamped to the candidates.
void pick_by_magnitude(std::vector<int64_t>& candidates, const float* values, int64_t count, bool largest);

}  // namespace trainer
