#include "core/bitmap.hpp"

#include <algorithm>
#include <bit>
#if defined(__AVX512F__) || defined(__AVX512BW__)
#include <immintrin.h>
#endif

namespace trainer {

Bitmap::Bitmap(Shape shape) : shape_(std::move(shape)) {
  size_ = 1;
  for (int64_t d : shape_) size_ *= d;
  if (shape_.empty()) size_ = 0;
  words_.assign(static_cast<size_t>((size_ + 63) / 64), 0);
}

Bitmap Bitmap::nonzeros_of(const Tensor& t) {
  Bitmap b;
  b.assign_nonzeros(t);
  return b;
}

void Bitmap::assign_nonzeros(const Tensor& t) {
  Bitmap& b = *this;
  shape_ = t.shape();
  size_ = shape_.empty() ? 0 : 1;
  for (int64_t d : shape_) size_ *= d;
  words_.assign(static_cast<size_t>((size_ + 63) / 64), 0);  // keeps the storage it has
  if (t.layout() == Layout::plain || t.rank() != 4) {
    const float* p = t.data();
    const int64_t n = b.size_;
    // Word by word so that threads never share a word.
#pragma omp parallel for schedule(static)
    for (int64_t w = 0; w < static_cast<int64_t>(b.words_.size()); ++w) {
      uint64_t bits = 0;
      const int64_t end = std::min<int64_t>(64, n - w * 64);
#ifdef __AVX512F__
      if (end == 64) {
        const __m512 zero = _mm512_setzero_ps();
        for (int q = 0; q < 4; ++q)
          bits |= static_cast<uint64_t>(_mm512_cmp_ps_mask(_mm512_loadu_ps(p + w * 64 + 16 * q), zero, _CMP_NEQ_UQ))
                  << (16 * q);
        b.words_[w] = bits;
        continue;
      }
#endif
      for (int64_t i = 0; i < end; ++i) bits |= static_cast<uint64_t>(p[w * 64 + i] != 0.0f) << i;
      b.words_[w] = bits;
    }
    return;
  }
  // Blocked layouts: a block holds, at each position hw, one 16-float vector of 16 lanes (channels for
  // nChw16c, images for NCHW16n), and each lane's bits run along hw in the logical order. So per chunk of
  // up to 64 positions: one 16-bit nonzero mask per position (a vector compare), transposed into one
  // 64-bit run per lane, OR-ed into the map at the lane's bit offset.
  const int64_t N = t.dim(0), C = t.dim(1), HW = t.dim(2) * t.dim(3);
  const float* p = t.data();
  std::vector<uint64_t>& words = b.words_;
  // lane_bit(l): the logical bit index of lane l at hw = 0.
  auto block_to_bits = [&](const float* blk, int lanes, auto lane_bit) {
    alignas(64) uint16_t m[64];
    for (int64_t h0 = 0; h0 < HW; h0 += 64) {
      const int len = static_cast<int>(std::min<int64_t>(64, HW - h0));
#ifdef __AVX512BW__
      const __m512 zero = _mm512_setzero_ps();
      for (int i = 0; i < len; ++i)  // NEQ_UQ: the same as `!= 0.0f` (-0 is zero, NaN is nonzero)
        m[i] = _mm512_cmp_ps_mask(_mm512_loadu_ps(blk + (h0 + i) * 16), zero, _CMP_NEQ_UQ);
      for (int i = len; i < 64; ++i) m[i] = 0;
      // Lane l's run: bit l of each of the 64 masks, 32 at a time (vptestmw).
      const __m512i m_lo = _mm512_load_si512(m), m_hi = _mm512_load_si512(m + 32);
#else
      for (int i = 0; i < len; ++i) {
        const float* v = blk + (h0 + i) * 16;
        uint16_t bits = 0;
        for (int l = 0; l < 16; ++l) bits |= static_cast<uint16_t>(v[l] != 0.0f) << l;
        m[i] = bits;
      }
#endif
      for (int l = 0; l < lanes; ++l) {
#ifdef __AVX512BW__
        const __m512i bit = _mm512_set1_epi16(static_cast<int16_t>(1u << l));
        const uint64_t run = static_cast<uint64_t>(_mm512_test_epi16_mask(m_lo, bit)) |
                             static_cast<uint64_t>(_mm512_test_epi16_mask(m_hi, bit)) << 32;
#else
        uint64_t run = 0;
        for (int i = 0; i < len; ++i) run |= static_cast<uint64_t>((m[i] >> l) & 1u) << i;
#endif
        if (!run) continue;
        const int64_t pos = lane_bit(l) + h0;
        const int64_t w = pos >> 6;
        const int sh = static_cast<int>(pos & 63);
        words[w] |= run << sh;
        if (sh && sh + len > 64) words[w + 1] |= run >> (64 - sh);
      }
    }
  };
  if (t.layout() == Layout::nChw16c) {
    const int64_t CB = (C + 15) / 16;
    auto image = [&](int64_t n) {
      for (int64_t cb = 0; cb < CB; ++cb)
        block_to_bits(p + (n * CB + cb) * HW * 16, static_cast<int>(std::min<int64_t>(16, C - cb * 16)),
                      [&](int l) { return (n * C + cb * 16 + l) * HW; });
    };
    // Threads take whole images, whose bits share no word with another image's when C*HW is a multiple
    // of 64.
    if ((C * HW) % 64 == 0) {
#pragma omp parallel for schedule(static)
      for (int64_t n = 0; n < N; ++n) image(n);
    } else {
      for (int64_t n = 0; n < N; ++n) image(n);
    }
    return;
  }
  // NCHW16n: lane l of block nb is image nb*16 + l; threads take whole blocks (16 images), whose bits
  // share no word with another block's when 16*C*HW is a multiple of 64.
  const int64_t NB = (N + 15) / 16;
  auto block = [&](int64_t nb) {
    const int lanes = static_cast<int>(std::min<int64_t>(16, N - nb * 16));
    for (int64_t c = 0; c < C; ++c)
      block_to_bits(p + (nb * C + c) * HW * 16, lanes, [&](int l) { return ((nb * 16 + l) * C + c) * HW; });
  };
  if ((16 * C * HW) % 64 == 0) {
#pragma omp parallel for schedule(static)
    for (int64_t nb = 0; nb < NB; ++nb) block(nb);
  } else {
    for (int64_t nb = 0; nb < NB; ++nb) block(nb);
  }
  return;
}

uint64_t Bitmap::content_hash() const {
  uint64_t h = 1469598103934665603ull ^ static_cast<uint64_t>(size_);
  for (uint64_t w : words_) h = (h ^ w) * 1099511628211ull;
  return h;
}

int64_t Bitmap::count() const {
  int64_t c = 0;
  for (uint64_t w : words_) c += std::popcount(w);
  return c;
}

}  // namespace trainer
