// Bitmap: which elements of a tensor are nonzero, one bit each, in logical order (NCHW / row-major),
// whatever the tensor's physical layout. The Op record carries these so that counters and the chip
// model see the real nonzero patterns of every operand.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

class Bitmap {
 public:
  Bitmap() = default;
  explicit Bitmap(Shape shape);  // all zero
  static Bitmap nonzeros_of(const Tensor& t);
  // Makes this the nonzero map of t, reusing the storage it already has (no allocation when it is
  // large enough).
  void assign_nonzeros(const Tensor& t);

  const Shape& shape() const { return shape_; }
  int64_t size() const { return size_; }
  bool test(int64_t i) const { return (words_[i >> 6] >> (i & 63)) & 1u; }
  void set(int64_t i) { words_[i >> 6] |= uint64_t{1} << (i & 63); }
  int64_t count() const;  // number of nonzeros
  // A hash of the size and the bits (FNV-1a over the words), for finding equal maps; equal maps hash
  // equal, and callers compare with == before trusting a match.
  uint64_t content_hash() const;
  double density() const { return size_ ? static_cast<double>(count()) / static_cast<double>(size_) : 0.0; }
  const std::vector<uint64_t>& words() const { return words_; }
  std::vector<uint64_t>& words() { return words_; }
  bool operator==(const Bitmap& o) const { return shape_ == o.shape_ && words_ == o.words_; }

 private:
  Shape shape_;
  int64_t size_ = 0;
  std::vector<uint64_t> words_;
};

}  // namespace trainer
