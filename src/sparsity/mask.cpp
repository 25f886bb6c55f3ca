#include "sparsity/mask.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "sparsity/bytes.hpp"

namespace trainer {

namespace {

// Below this many weights one thread does the pass: waking the team costs more than the work.
constexpr int64_t kParallelThreshold = 1 << 15;

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return s.empty() ? 0 : n;
}

// x: [n]; zero where keep is 0. A select, not a multiply, so that a NaN or Inf at a pruned position
// still becomes zero.
void zero_pruned(const uint8_t* keep, float* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) x[i] = keep[i] ? x[i] : 0.0f;
}

void check_tensor(const Mask& m, const Tensor& t, const char* what) {
  TRAINER_CHECK(t.numel() == m.size(), "{}: tensor of shape {} does not fit a mask of shape {}", what,
                shape_str(t.shape()), shape_str(m.shape()));
  TRAINER_CHECK(t.layout() == Layout::plain || t.rank() != 4, "{}: expected a plain tensor, got layout {}",
                what, layout_name(t.layout()));
}

}  // namespace

Mask::Mask(Shape shape) : shape_(std::move(shape)) {
  for (int64_t d : shape_) TRAINER_CHECK(d >= 0, "mask shape {} has a negative dimension", shape_str(shape_));
  keep_.assign(static_cast<size_t>(numel_of(shape_)), 1);
}

void Mask::fill(bool keep) { std::fill(keep_.begin(), keep_.end(), keep ? 1 : 0); }

int64_t Mask::count_kept() const {
  const int64_t n = size();
  const uint8_t* k = keep_.data();
  int64_t c = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : c) if (n >= kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) c += k[i];
  return c;
}

double Mask::density() const {
  return keep_.empty() ? 1.0 : static_cast<double>(count_kept()) / static_cast<double>(size());
}

bool Mask::is_subset_of(const Mask& other) const {
  if (other.size() != size()) return false;
  for (size_t i = 0; i < keep_.size(); ++i)
    if (keep_[i] && !other.keep_[i]) return false;
  return true;
}

void Mask::apply(Tensor& w) const {
  check_tensor(*this, w, "mask apply");
  zero_pruned(keep_.data(), w.data(), size());
}

void Mask::apply(float* w, int64_t n) const {
  TRAINER_CHECK(n == size(), "mask apply: {} weights given to a mask of shape {}", n, shape_str(shape_));
  zero_pruned(keep_.data(), w, n);
}

Bitmap Mask::to_bitmap() const {
  Bitmap b(shape_);
  for (int64_t i = 0; i < size(); ++i)
    if (keep_[static_cast<size_t>(i)]) b.set(i);
  return b;
}

std::vector<uint8_t> Mask::to_bytes() const {
  std::vector<uint8_t> out;
  bytes::Writer w(out);
  w.put<uint32_t>(static_cast<uint32_t>(shape_.size()));
  for (int64_t d : shape_) w.put<int64_t>(d);
  std::vector<uint8_t> bits(static_cast<size_t>((size() + 7) / 8), 0);
  for (int64_t i = 0; i < size(); ++i)
    if (keep_[static_cast<size_t>(i)])
      bits[static_cast<size_t>(i >> 3)] |= static_cast<uint8_t>(1u << (i & 7));
  w.put_raw(bits.data(), bits.size());
  return out;
}

Mask Mask::from_bytes(const std::vector<uint8_t>& bytes, const std::string& what) {
  bytes::Reader r(bytes.data(), bytes.size(), what);
  const uint32_t rank = r.get<uint32_t>();
  TRAINER_CHECK(rank <= 8, "{}: rank {} is not a weight's rank (expected at most 8)", what, rank);
  Shape shape(rank);
  for (auto& d : shape) {
    d = r.get<int64_t>();
    TRAINER_CHECK(d >= 0 && d <= (int64_t{1} << 40), "{}: dimension {} out of range", what, d);
  }
  Mask m(shape);
  std::vector<uint8_t> bits(static_cast<size_t>((m.size() + 7) / 8));
  r.get_raw(bits.data(), bits.size());
  TRAINER_CHECK(r.at_end(), "{}: {} trailing bytes after a mask of shape {}", what,
                bytes.size() - 4 - 8 * rank - bits.size(), shape_str(shape));
  for (int64_t i = 0; i < m.size(); ++i)
    m.keep_[static_cast<size_t>(i)] = (bits[static_cast<size_t>(i >> 3)] >> (i & 7)) & 1u;
  return m;
}

void mask_gradient(const Mask& mask, Tensor& grad) {
  check_tensor(mask, grad, "mask_gradient");
  zero_pruned(mask.data(), grad.data(), mask.size());
}

void pick_by_magnitude(std::vector<int64_t>& candidates, const float* values, int64_t count, bool largest) {
  count = std::clamp<int64_t>(count, 0, static_cast<int64_t>(candidates.size()));
  if (count == 0 || count == static_cast<int64_t>(candidates.size())) return;
  auto mag = [values](int64_t i) {
    const float a = std::fabs(values[i]);
    return std::isnan(a) ? std::numeric_limits<float>::infinity() : a;
  };
  auto nth = candidates.begin() + count;
  if (largest) {
    std::nth_element(candidates.begin(), nth - 1, candidates.end(), [&](int64_t a, int64_t b) {
      const float ma = mag(a), mb = mag(b);
      return ma > mb || (ma == mb && a < b);
    });
  } else {
    std::nth_element(candidates.begin(), nth - 1, candidates.end(), [&](int64_t a, int64_t b) {
      const float ma = mag(a), mb = mag(b);
      return ma < mb || (ma == mb && a < b);
    });
  }
}

}  // namespace trainer
