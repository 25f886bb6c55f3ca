#include "core/tensor.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"

namespace trainer {

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::plain: return "plain";
    case Layout::nChw16c: return "nChw16c";
    case Layout::NCHW16n: return "NCHW16n";
  }
  return "?";
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t storage_size_for(const Shape& shape, Layout layout) {
  int64_t n = 1;
  for (int64_t d : shape) {
    TRAINER_CHECK(d >= 0, "tensor shape {} has a negative dimension", shape_str(shape));
    n *= d;
  }
  if (layout == Layout::nChw16c) {
    TRAINER_CHECK(shape.size() == 4, "layout nChw16c needs a 4-D shape, got {}", shape_str(shape));
    return shape[0] * ((shape[1] + 15) / 16) * 16 * shape[2] * shape[3];
  }
  if (layout == Layout::NCHW16n) {
    TRAINER_CHECK(shape.size() == 4, "layout NCHW16n needs a 4-D shape, got {}", shape_str(shape));
    return ((shape[0] + 15) / 16) * 16 * shape[1] * shape[2] * shape[3];
  }
  return n;
}

void Tensor::FreeDeleter::operator()(float* p) const { std::free(p); }

Tensor::Tensor(Shape shape, Layout layout) {
  resize(shape, layout);
  zero();
}

Tensor::Tensor(const Tensor& other) { *this = other; }

Tensor& Tensor::operator=(const Tensor& other) {
  if (this == &other) return *this;
  resize(other.shape_, other.layout_);
  if (storage_size_) std::memcpy(data(), other.data(), sizeof(float) * storage_size_);
  return *this;
}

int64_t Tensor::dim(int i) const {
  TRAINER_CHECK(i >= 0 && i < rank(), "dimension {} asked of a tensor of shape {}", i, shape_str(shape_));
  return shape_[i];
}

int64_t Tensor::numel() const {
  if (shape_.empty()) return 0;
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

void Tensor::resize(const Shape& shape, Layout layout) {
  const int64_t need = storage_size_for(shape, layout);
  const bool was_padded = layout_ != Layout::plain;
  if (need > capacity_) {
    // Round the byte count up to the 64-byte alignment, as aligned_alloc requires.
    const size_t bytes = (static_cast<size_t>(need) * sizeof(float) + 63) / 64 * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) fail("out of memory allocating a tensor of shape {} ({} bytes)", shape_str(shape), bytes);
    data_.reset(p);
    capacity_ = need;
    shape_ = shape;
    layout_ = layout;
    storage_size_ = need;
    if (layout != Layout::plain) zero();
    return;
  }
  const bool shape_changed = shape != shape_ || layout != layout_;
  shape_ = shape;
  layout_ = layout;
  storage_size_ = need;
  // Padding channels must read as zero; clear when the geometry of a blocked tensor changed.
  const int64_t blocked_dim = layout == Layout::nChw16c ? 1 : 0;
  if (layout != Layout::plain && (shape_changed || !was_padded) && shape[blocked_dim] % 16 != 0) zero();
}

void Tensor::zero() {
  if (storage_size_) std::memset(data(), 0, sizeof(float) * storage_size_);
}

void Tensor::fill(float v) {
  if (layout_ == Layout::plain || rank() != 4) {
    std::fill(data(), data() + storage_size_, v);
    return;
  }
  zero();
  for (int64_t n = 0; n < shape_[0]; ++n)
    for (int64_t c = 0; c < shape_[1]; ++c)
      for (int64_t h = 0; h < shape_[2]; ++h)
        for (int64_t w = 0; w < shape_[3]; ++w) at(n, c, h, w) = v;
}

int64_t Tensor::offset(int64_t n, int64_t c, int64_t h, int64_t w) const {
  if (rank() == 2) return n * shape_[1] + c;
  const int64_t C = shape_[1], H = shape_[2], W = shape_[3];
  if (layout_ == Layout::plain) return ((n * C + c) * H + h) * W + w;
  if (layout_ == Layout::NCHW16n) return ((((n / 16) * C + c) * H + h) * W + w) * 16 + (n % 16);
  const int64_t CB = (C + 15) / 16;
  return (((n * CB + c / 16) * H + h) * W + w) * 16 + (c % 16);
}

Tensor Tensor::to_layout(Layout layout) const {
  if (layout == layout_) return *this;
  Tensor out;
  convert_to(layout, out);
  return out;
}

void Tensor::convert_to(Layout layout, Tensor& out) const {
  TRAINER_CHECK(&out != this, "layout conversion into the tensor itself");
  if (layout == layout_) {
    out = *this;
    return;
  }
  TRAINER_CHECK(rank() == 4, "layout conversion needs a 4-D tensor, got {}", shape_str(shape_));
  out.resize(shape_, layout);  // padding (channels or images) comes back zero
  const int64_t N = shape_[0], C = shape_[1], HW = shape_[2] * shape_[3];
  // Every layout stores a (n, c) plane as HW elements at a fixed step (1 plain, 16 blocked) from a base;
  // copy plane by plane, the threads taking blocks of 16 planes that share cache lines on both sides.
  const int64_t CB = (C + 15) / 16;
  auto base = [&](Layout l, int64_t n, int64_t c) -> int64_t {
    switch (l) {
      case Layout::plain: return (n * C + c) * HW;
      case Layout::nChw16c: return (n * CB + c / 16) * HW * 16 + c % 16;
      case Layout::NCHW16n: return ((n / 16) * C + c) * HW * 16 + n % 16;
    }
    return 0;
  };
  const int64_t si = layout_ == Layout::plain ? 1 : 16, so = layout == Layout::plain ? 1 : 16;
  const float* src = data();
  float* dst = out.data();
  const int64_t NB = (N + 15) / 16;
  if (layout_ != Layout::plain && layout != Layout::plain) {
    // Between the two blocked layouts: per (image block, channel block, position) a 16x16 transpose
    // through a tile, reading and writing whole 64-byte vectors (padding lanes written as zero).
    const bool from_n = layout_ == Layout::NCHW16n;
#pragma omp parallel for collapse(2) schedule(static) if (N * C * HW > 65536)
    for (int64_t nb = 0; nb < NB; ++nb)
      for (int64_t cb = 0; cb < CB; ++cb) {
        const int64_t nmax = std::min<int64_t>(16, N - nb * 16), cmax = std::min<int64_t>(16, C - cb * 16);
        alignas(64) float tile[16][16];
        for (int64_t i = 0; i < HW; ++i) {
          // tile[a][b]: a = the source's outer index of the block (c for NCHW16n, n for nChw16c), b its lane.
          const int64_t amax = from_n ? cmax : nmax;
          for (int64_t a = 0; a < 16; ++a) {
            if (a < amax) {
              const float* v = from_n ? src + ((nb * C + cb * 16 + a) * HW + i) * 16
                                      : src + (((nb * 16 + a) * CB + cb) * HW + i) * 16;
              for (int b = 0; b < 16; ++b) tile[a][b] = v[b];
            } else {
              for (int b = 0; b < 16; ++b) tile[a][b] = 0.0f;
            }
          }
          const int64_t outer = from_n ? nmax : cmax;  // the destination's outer index range
          for (int64_t o = 0; o < outer; ++o) {
            float* v = from_n ? dst + (((nb * 16 + o) * CB + cb) * HW + i) * 16
                              : dst + ((nb * C + cb * 16 + o) * HW + i) * 16;
            for (int a = 0; a < 16; ++a) v[a] = tile[a][o];
          }
        }
      }
    return;
  }
#pragma omp parallel for collapse(2) schedule(static) if (N * C * HW > 65536)
  for (int64_t nb = 0; nb < NB; ++nb)
    for (int64_t cb = 0; cb < CB; ++cb)
      for (int64_t n = nb * 16; n < std::min(N, nb * 16 + 16); ++n)
        for (int64_t c = cb * 16; c < std::min(C, cb * 16 + 16); ++c) {
          const float* s = src + base(layout_, n, c);
          float* d = dst + base(layout, n, c);
          for (int64_t i = 0; i < HW; ++i) d[i * so] = s[i * si];
        }
}

Tensor Tensor::reshaped(const Shape& shape) const {
  TRAINER_CHECK(layout_ == Layout::plain, "reshape needs a plain tensor, this one is {}", layout_name(layout_));
  Tensor out(shape, Layout::plain);
  TRAINER_CHECK(out.numel() == numel(), "cannot reshape {} to {}: element counts differ", shape_str(shape_),
                shape_str(shape));
  if (storage_size_) std::memcpy(out.data(), data(), sizeof(float) * storage_size_);
  return out;
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  TRAINER_CHECK(t.shape() == expected, "{}: expected shape {}, got {}", what, shape_str(expected),
                shape_str(t.shape()));
}

}  // namespace trainer
