#include "core/bitmap.hpp"

#include <algorithm>
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
  // Blocked layouts: walk the storage in order and scatter each nonzero's bit to its logical index.
  // Threads split the logical outer dimension (images for nChw16c, channels for NCHW16n) into ranges
  // whose bits never share a word with another thread's (each range starts on a word boundary).
  const int64_t N = t.dim(0), C = t.dim(1), H = t.dim(2), W = t.dim(3), HW = H * W;
  const float* p = t.data();
  if (t.layout() == Layout::nChw16c) {
    const int64_t CB = (C + 15) / 16;
    // One image's bits span C*HW bits; split images so that no two threads touch the same word.
    auto set_image = [&](int64_t n) {
      for (int64_t cb = 0; cb < CB; ++cb) {
        const float* blk = p + (n * CB + cb) * HW * 16;
        const int64_t cmax = std::min<int64_t>(16, C - cb * 16);
        for (int64_t i = 0; i < HW; ++i)
          for (int64_t c = 0; c < cmax; ++c)
            if (blk[i * 16 + c] != 0.0f) b.set((n * C + cb * 16 + c) * HW + i);
      }
    };
    if ((C * HW) % 64 == 0) {
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n) set_image(n);
    } else {
      for (int64_t n = 0; n < N; ++n) set_image(n);
    }
    return b;
  }
  // NCHW16n: image n is lane n % 16 of its block; the same split by images.
  auto set_image = [&](int64_t n) {
    const float* blk = p + (n / 16) * C * HW * 16 + n % 16;
    for (int64_t c = 0; c < C; ++c) {
      const float* plane = blk + c * HW * 16;
      const int64_t bit0 = (n * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i)
        if (plane[i * 16] != 0.0f) b.set(bit0 + i);
    }
  };
  if ((C * HW) % 64 == 0) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) set_image(n);
  } else {
    for (int64_t n = 0; n < N; ++n) set_image(n);
  }
  return b;
}

int64_t Bitmap::count() const {
  int64_t c = 0;
  for (uint64_t w : words_) c += std::popcount(w);
  return c;
}

}  // namespace trainer
