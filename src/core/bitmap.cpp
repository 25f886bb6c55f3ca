#include "core/bitmap.hpp"

#include <bit>

namespace trainer {

Bitmap::Bitmap(Shape shape) : shape_(std::move(shape)) {
  size_ = 1;
  for (int64_t d : shape_) size_ *= d;
  if (shape_.empty()) size_ = 0;
  words_.assign(static_cast<size_t>((size_ + 63) / 64), 0);
}

Bitmap Bitmap::nonzeros_of(const Tensor& t) {
  Bitmap b(t.shape());
  if (t.layout() == Layout::plain || t.rank() != 4) {
    const float* p = t.data();
    const int64_t n = b.size_;
    // Word by word so that threads never share a word.
#pragma omp parallel for schedule(static)
    for (int64_t w = 0; w < static_cast<int64_t>(b.words_.size()); ++w) {
      uint64_t bits = 0;
      const int64_t end = std::min<int64_t>(64, n - w * 64);
      for (int64_t i = 0; i < end; ++i) bits |= static_cast<uint64_t>(p[w * 64 + i] != 0.0f) << i;
      b.words_[w] = bits;
    }
    return b;
  }
  const int64_t N = t.dim(0), C = t.dim(1), H = t.dim(2), W = t.dim(3);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w)
          if (t.at(n, c, h, w) != 0.0f) b.set(((n * C + c) * H + h) * W + w);
  return b;
}

int64_t Bitmap::count() const {
  int64_t c = 0;
  for (uint64_t w : words_) c += std::popcount(w);
  return c;
}

}  // namespace trainer
