#include "chip/workload.hpp"

#include <algorithm>
#include <bit>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "core/error.hpp"

namespace trainer {

namespace {

// Below this much work a parallel region costs more than it saves (and on a busy machine much more).
constexpr int64_t kParallelMin = int64_t{1} << 16;

// Bits [pos, pos + 64) of a word array; bits past the end read as zero.
inline uint64_t load_bits(const uint64_t* w, int64_t nwords, int64_t pos) {
  const int64_t i = pos >> 6;
  const int sh = static_cast<int>(pos & 63);
  const uint64_t lo = i < nwords ? w[i] : 0;
  if (sh == 0) return lo;
  const uint64_t hi = i + 1 < nwords ? w[i + 1] : 0;
  return (lo >> sh) | (hi << (64 - sh));
}

// The words of an operand's nonzero map, or all ones when the Op carries none (a dense operand).
const std::vector<uint64_t>& operand_bits(const std::shared_ptr<const Bitmap>& b, int64_t n, const Op& op,
                                          const char* what, std::vector<uint64_t>& ones) {
  if (b) {
    TRAINER_CHECK(b->size() == n,
                  "chip model: layer '{}' ({} {}): the {} nonzero map has {} elements, the shapes say {}",
                  op.layer_name, op.kind, phase_name(op.phase), what, b->size(), n);
    return b->words();
  }
  ones.assign(static_cast<size_t>((n + 63) / 64), ~uint64_t{0});
  if (n % 64) ones.back() = (uint64_t{1} << (n % 64)) - 1;
  return ones;
}

double operand_nnz(const std::shared_ptr<const Bitmap>& b, int64_t n, const Op& op, const char* what) {
  if (!b) return static_cast<double>(n);
  TRAINER_CHECK(b->size() == n,
                "chip model: layer '{}' ({} {}): the {} nonzero map has {} elements, the shapes say {}",
                op.layer_name, op.kind, phase_name(op.phase), what, b->size(), n);
  return static_cast<double>(b->count());
}

// Number of kernel offsets r in [0, R) for which output row p reads an input row inside [0, H).
inline int64_t valid_taps(int64_t p, int64_t R, int64_t H, int32_t stride, int32_t pad) {
  int64_t n = 0;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t ih = p * stride + r - pad;
    n += ih >= 0 && ih < H;
  }
  return n;
}

// Number of (r, p) pairs with input row h = p*stride + r - pad inside [0, H): the structurally present
// products along one spatial axis.
int64_t valid_pairs_axis(int64_t P, int64_t R, int64_t H, int32_t stride, int32_t pad) {
  int64_t n = 0;
  for (int64_t p = 0; p < P; ++p) n += valid_taps(p, R, H, stride, pad);
  return n;
}

// Number of (r, p) with p in [0, P) and p*stride + r - pad == h: the taps reaching input row h in bp.
inline int64_t bp_taps(int64_t h, int64_t R, int64_t P, int32_t stride, int32_t pad) {
  int64_t n = 0;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = h + pad - r;
    if (t >= 0 && t % stride == 0 && t / stride < P) ++n;
  }
  return n;
}

void fill_common(ConvWork& w, const Op& op) {
  const ConvGeometry& g = w.geo;
  w.phase = op.phase;
  w.dense_macs = static_cast<double>(g.N * g.K * g.P * g.Q) * static_cast<double>(g.C * g.R * g.S);
  w.valid_macs = static_cast<double>(g.N * g.K * g.C) *
                 static_cast<double>(valid_pairs_axis(g.P, g.R, g.H, g.stride_h, g.pad_h)) *
                 static_cast<double>(valid_pairs_axis(g.Q, g.S, g.W, g.stride_w, g.pad_w));
  const int64_t x_elems = g.N * g.C * g.H * g.W, w_elems = g.K * g.C * g.R * g.S,
                y_elems = g.N * g.K * g.P * g.Q;
  switch (op.phase) {
    case Phase::ff:
      w.a_name = "x", w.b_name = "w";
      w.rows = g.N * g.P * g.Q, w.cols = g.K, w.reduction = g.C * g.R * g.S;
      w.a_elems = x_elems, w.b_elems = w_elems, w.out_elems = y_elems;
      break;
    case Phase::bp:
      w.a_name = "dy", w.b_name = "w";
      w.rows = g.N * g.H * g.W, w.cols = g.C, w.reduction = g.K * g.R * g.S;
      w.a_elems = y_elems, w.b_elems = w_elems, w.out_elems = x_elems;
      break;
    case Phase::wg:
      w.a_name = "x", w.b_name = "dy";
      w.rows = g.C * g.R * g.S, w.cols = g.K, w.reduction = g.N * g.P * g.Q;
      w.a_elems = x_elems, w.b_elems = y_elems, w.out_elems = w_elems;
      break;
    default:
      fail("chip model: layer '{}': {} has no {} phase on the PE array", op.layer_name, op.kind,
           phase_name(op.phase));
  }
  // Structural length of each line of a; it depends only on the position within an image (ff, bp) or
  // on the tap (wg).
  w.a_line_len.resize(static_cast<size_t>(w.rows));
  w.a_len_period = op.phase == Phase::ff ? g.P * g.Q : op.phase == Phase::bp ? g.H * g.W : g.R * g.S;
  if (op.phase == Phase::ff) {
    std::vector<int32_t> per_pq(static_cast<size_t>(g.P * g.Q));
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t q = 0; q < g.Q; ++q)
        per_pq[p * g.Q + q] = static_cast<int32_t>(g.C * valid_taps(p, g.R, g.H, g.stride_h, g.pad_h) *
                                                   valid_taps(q, g.S, g.W, g.stride_w, g.pad_w));
    for (int64_t n = 0; n < g.N; ++n)
      std::copy(per_pq.begin(), per_pq.end(), w.a_line_len.begin() + n * g.P * g.Q);
  } else if (op.phase == Phase::bp) {
    std::vector<int32_t> per_hw(static_cast<size_t>(g.H * g.W));
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t x = 0; x < g.W; ++x)
        per_hw[h * g.W + x] = static_cast<int32_t>(g.K * bp_taps(h, g.R, g.P, g.stride_h, g.pad_h) *
                                                   bp_taps(x, g.S, g.Q, g.stride_w, g.pad_w));
    for (int64_t n = 0; n < g.N; ++n)
      std::copy(per_hw.begin(), per_hw.end(), w.a_line_len.begin() + n * g.H * g.W);
  } else {
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s) {
          int64_t np = 0, nq = 0;
          for (int64_t p = 0; p < g.P; ++p) {
            const int64_t ih = p * g.stride_h + r - g.pad_h;
            np += ih >= 0 && ih < g.H;
          }
          for (int64_t q = 0; q < g.Q; ++q) {
            const int64_t iw = q * g.stride_w + s - g.pad_w;
            nq += iw >= 0 && iw < g.W;
          }
          w.a_line_len[(c * g.R + r) * g.S + s] = static_cast<int32_t>(g.N * np * nq);
        }
  }
  for (int32_t L : w.a_line_len) w.a_len_total += L;
}

// plane[n][h][w] = sum over c of bits of t[n, c, h, w]   (t: [N, C, HW])
std::vector<int32_t> sum_over_dim1(const std::vector<uint64_t>& bits, int64_t N, int64_t C, int64_t HW) {
  std::vector<int32_t> out(static_cast<size_t>(N * HW), 0);
#pragma omp parallel for schedule(static) if (N * C * HW > kParallelMin)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) accumulate_bits(bits, (n * C + c) * HW, HW, out.data() + n * HW);
  return out;
}

// plane[c][h][w] = sum over n of bits of t[n, c, h, w]
std::vector<int32_t> sum_over_dim0(const std::vector<uint64_t>& bits, int64_t N, int64_t C, int64_t HW) {
  std::vector<int32_t> out(static_cast<size_t>(C * HW), 0);
#pragma omp parallel for schedule(static) if (N * C * HW > kParallelMin)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t n = 0; n < N; ++n) accumulate_bits(bits, (n * C + c) * HW, HW, out.data() + c * HW);
  return out;
}

// Floor and ceiling of a / b for b > 0, for negative a too.
inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceil_div_signed(int64_t a, int64_t b) { return -floor_div(-a, b); }

// [lo, hi): the output positions p in [0, P) whose input row p*stride + r - pad lies in [0, H).
inline std::pair<int64_t, int64_t> outputs_reading_inside(int64_t r, int64_t P, int64_t H, int32_t stride,
                                                          int32_t pad) {
  const int64_t lo = std::max<int64_t>(0, ceil_div_signed(pad - r, stride));
  const int64_t hi = std::min<int64_t>(P, floor_div(H - 1 + pad - r, stride) + 1);
  return {lo, std::max(lo, hi)};
}

// Summed-area tables of M planes [M][H][W]: entry [m][h][w] (of [M][H+1][W+1]) is the sum of plane m
// over rows < h and columns < w, so that any box sum takes four reads.
std::vector<int64_t> summed_areas(const std::vector<int32_t>& planes, int64_t M, int64_t H, int64_t W) {
  const int64_t s = W + 1;
  std::vector<int64_t> out(static_cast<size_t>(M * (H + 1) * s), 0);
  for (int64_t m = 0; m < M; ++m) {
    const int32_t* p = planes.data() + m * H * W;
    int64_t* I = out.data() + m * (H + 1) * s;
    for (int64_t h = 0; h < H; ++h) {
      int64_t row = 0;
      for (int64_t w = 0; w < W; ++w) {
        row += p[h * W + w];
        I[(h + 1) * s + w + 1] = I[h * s + w + 1] + row;
      }
    }
  }
  return out;
}

// The sum over rows [h0, h1) and columns [w0, w1) of the plane whose table starts at I (W columns).
inline int64_t box_sum(const int64_t* I, int64_t W, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
  if (h0 >= h1 || w0 >= w1) return 0;
  const int64_t s = W + 1;
  return I[h1 * s + w1] - I[h0 * s + w1] - I[h1 * s + w0] + I[h0 * s + w0];
}

// For each (c, r, s): sum over output positions (p, q) of plane[c][p*stride + r - pad][q*stride + s - pad]
// over positions inside the plane. plane: [C, H, W]; returns [C, R, S]. With stride 1 the positions
// form a box (a summed-area lookup); otherwise a strided grid, summed directly.
std::vector<int64_t> shifted_window_sums(const std::vector<int32_t>& plane, const ConvGeometry& g, int64_t C,
                                         int64_t H, int64_t W, int64_t P, int64_t Q) {
  std::vector<int64_t> out(static_cast<size_t>(C * g.R * g.S), 0);
  const bool unit = g.stride_h == 1 && g.stride_w == 1;
  const std::vector<int64_t> areas = unit ? summed_areas(plane, C, H, W) : std::vector<int64_t>{};
  for (int64_t r = 0; r < g.R; ++r) {
    const auto [p0, p1] = outputs_reading_inside(r, P, H, g.stride_h, g.pad_h);
    for (int64_t s = 0; s < g.S; ++s) {
      const auto [q0, q1] = outputs_reading_inside(s, Q, W, g.stride_w, g.pad_w);
      for (int64_t c = 0; c < C; ++c) {
        int64_t sum = 0;
        if (unit) {
          sum = box_sum(areas.data() + c * (H + 1) * (W + 1), W, p0 + r - g.pad_h, p1 + r - g.pad_h,
                        q0 + s - g.pad_w, q1 + s - g.pad_w);
        } else {
          for (int64_t p = p0; p < p1; ++p) {
            const int32_t* row = plane.data() + (c * H + p * g.stride_h + r - g.pad_h) * W + s - g.pad_w;
            for (int64_t q = q0; q < q1; ++q) sum += row[q * g.stride_w];
          }
        }
        out[(c * g.R + r) * g.S + s] = sum;
      }
    }
  }
  return out;
}

// For each output position (n, p, q): the nonzeros of its receptive field, from plane[n][h][w] = sum
// over channels. Returns [N, P, Q]. The field is a box of the plane, clipped to it.
std::vector<int32_t> receptive_field_sums(const std::vector<int32_t>& plane, const ConvGeometry& g) {
  std::vector<int32_t> out(static_cast<size_t>(g.N * g.P * g.Q), 0);
  const std::vector<int64_t> areas = summed_areas(plane, g.N, g.H, g.W);
  for (int64_t n = 0; n < g.N; ++n) {
    const int64_t* I = areas.data() + n * (g.H + 1) * (g.W + 1);
    for (int64_t p = 0; p < g.P; ++p) {
      const int64_t h0 = std::clamp<int64_t>(p * g.stride_h - g.pad_h, 0, g.H),
                    h1 = std::clamp<int64_t>(p * g.stride_h - g.pad_h + g.R, 0, g.H);
      for (int64_t q = 0; q < g.Q; ++q) {
        const int64_t w0 = std::clamp<int64_t>(q * g.stride_w - g.pad_w, 0, g.W),
                      w1 = std::clamp<int64_t>(q * g.stride_w - g.pad_w + g.S, 0, g.W);
        out[(n * g.P + p) * g.Q + q] = static_cast<int32_t>(box_sum(I, g.W, h0, h1, w0, w1));
      }
    }
  }
  return out;
}

// The geometry part of a cache key.
std::array<int64_t, 13> geometry_key(const ConvGeometry& g) {
  return {g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w};
}

enum CacheTag { kReceptiveX = 0, kShiftedX = 1, kPerPositionDy = 2 };

template <class T, class F>
std::shared_ptr<const T> cached(AnalysisCache* cache, const Bitmap* map, CacheTag tag, const ConvGeometry& g,
                                F&& make) {
  // No map (a dense operand): its all-ones stand-in is the Op's own, so it is not shared.
  if (!cache || !map) return std::make_shared<const T>(make());
  return cache->get<T>(AnalysisCache::Key{map, tag, geometry_key(g)}, std::forward<F>(make));
}

// x's reductions that ff and wg share: per output position (n, p, q) the nonzeros of its receptive
// field ([N, P, Q]), and per (c, r, s) the nonzeros the tap meets over all output positions ([C, R, S]).
std::shared_ptr<const std::vector<int32_t>> x_receptive(AnalysisCache* cache, const Bitmap* map,
                                                        const std::vector<uint64_t>& xb, const ConvGeometry& g) {
  return cached<std::vector<int32_t>>(cache, map, kReceptiveX, g, [&] {
    return receptive_field_sums(sum_over_dim1(xb, g.N, g.C, g.H * g.W), g);
  });
}
std::shared_ptr<const std::vector<int64_t>> x_shifted(AnalysisCache* cache, const Bitmap* map,
                                                      const std::vector<uint64_t>& xb, const ConvGeometry& g) {
  return cached<std::vector<int64_t>>(cache, map, kShiftedX, g, [&] {
    return shifted_window_sums(sum_over_dim0(xb, g.N, g.C, g.H * g.W), g, g.C, g.H, g.W, g.P, g.Q);
  });
}
// dy summed over k per output position (n, p, q) ([N, P, Q]): bp and wg share it.
std::shared_ptr<const std::vector<int32_t>> dy_per_position(AnalysisCache* cache, const Bitmap* map,
                                                            const std::vector<uint64_t>& db,
                                                            const ConvGeometry& g) {
  return cached<std::vector<int32_t>>(cache, map, kPerPositionDy, g,
                                      [&] { return sum_over_dim1(db, g.N, g.K, g.P * g.Q); });
}

// The weight lines of an Op's w map: from the memo when the same map was seen before, else made.
std::shared_ptr<const WeightLines> weight_lines(WeightMemo* memo, const Op& op, const ConvGeometry& g,
                                                const std::function<WeightLines()>& make) {
  if (!memo || !op.w_nz) return std::make_shared<const WeightLines>(make());
  return memo->get(op.phase, g, *op.w_nz, make);
}

void analyse_ff(ConvWork& w, const Op& op, AnalysisCache* cache, WeightMemo* memo) {
  const ConvGeometry& g = w.geo;
  std::vector<uint64_t> ones_x, ones_w;
  const auto& xb = operand_bits(op.x_nz, w.a_elems, op, "x", ones_x);
  const auto& wb = operand_bits(op.w_nz, w.b_elems, op, "w", ones_w);
  const int64_t CRS = g.C * g.R * g.S;
  w.a_line_nnz = *x_receptive(cache, op.x_nz.get(), xb, g);
  const auto wl = weight_lines(memo, op, g, [&] {
    WeightLines l;
    l.lines.resize(static_cast<size_t>(g.K));
    for (int64_t k = 0; k < g.K; ++k)
      l.lines[k] = static_cast<int32_t>(popcount_range(wb, k * CRS, (k + 1) * CRS));
    // Per reduction index (c, r, s): the nonzero w at it over all k.
    l.cols.assign(static_cast<size_t>(CRS), 0);
    for (int64_t k = 0; k < g.K; ++k) accumulate_bits(wb, k * CRS, CRS, l.cols.data());
    l.nnz = static_cast<double>(popcount_range(wb, 0, g.K * CRS));
    return l;
  });
  w.b_line_nnz = wl->lines;
  const std::vector<int32_t>& col_w = wl->cols;
  // Effectual products: for each reduction index (c, r, s), (nonzero x it meets over all output
  // positions) x (nonzero w at it over all k).
  const auto col_x = x_shifted(cache, op.x_nz.get(), xb, g);
  double eff = 0;
  for (int64_t i = 0; i < CRS; ++i) eff += static_cast<double>((*col_x)[i]) * col_w[i];
  w.effectual_macs = eff;
  w.a_nnz = static_cast<double>(popcount_range(xb, 0, w.a_elems));
  w.b_nnz = wl->nnz;
}

void analyse_bp(ConvWork& w, const Op& op, AnalysisCache* cache, WeightMemo* memo) {
  const ConvGeometry& g = w.geo;
  std::vector<uint64_t> ones_d, ones_w;
  const auto& db = operand_bits(op.dy_nz, w.a_elems, op, "dy", ones_d);
  const auto& wb = operand_bits(op.w_nz, w.b_elems, op, "w", ones_w);
  const int64_t PQ = g.P * g.Q, RS = g.R * g.S;
  const auto dk_shared = dy_per_position(cache, op.dy_nz.get(), db, g);  // [N, P, Q]
  const std::vector<int32_t>& dk = *dk_shared;
  const auto dn = sum_over_dim0(db, g.N, g.K, PQ);  // [K, P, Q]
  // Lines of a: the dy window feeding input position (n, h, w) through every tap (r, s).
  // Input row h receives the output rows p = (h + pad - r) / stride over the taps r that divide evenly:
  // consecutive p, clipped to [0, P); the same for columns. So each line is a box of dk[n].
  auto received = [](int64_t h, int64_t R, int64_t P, int32_t stride, int32_t pad) {
    const int64_t lo = std::max<int64_t>(0, ceil_div_signed(h + pad - R + 1, stride));
    const int64_t hi = std::min<int64_t>(P, floor_div(h + pad, stride) + 1);
    return std::pair<int64_t, int64_t>{lo, std::max(lo, hi)};
  };
  w.a_line_nnz.assign(static_cast<size_t>(g.N * g.H * g.W), 0);
  {
    const std::vector<int64_t> areas = summed_areas(dk, g.N, g.P, g.Q);
    for (int64_t n = 0; n < g.N; ++n) {
      const int64_t* I = areas.data() + n * (g.P + 1) * (g.Q + 1);
      for (int64_t h = 0; h < g.H; ++h) {
        const auto [p0, p1] = received(h, g.R, g.P, g.stride_h, g.pad_h);
        for (int64_t x = 0; x < g.W; ++x) {
          const auto [q0, q1] = received(x, g.S, g.Q, g.stride_w, g.pad_w);
          w.a_line_nnz[(n * g.H + h) * g.W + x] = static_cast<int32_t>(box_sum(I, g.Q, p0, p1, q0, q1));
        }
      }
    }
  }
  // Lines of b: w[:, c, :, :] over (k, r, s); and per (k, r, s) the nonzeros over c.
  const auto wl = weight_lines(memo, op, g, [&] {
    WeightLines l;
    l.lines.assign(static_cast<size_t>(g.C), 0);
    l.cols.assign(static_cast<size_t>(g.K * RS), 0);
    if (RS <= 64) {
      // One kernel's RS bits at a time; only its set bits are visited (pruned weights are mostly zero).
      const uint64_t keep = RS == 64 ? ~uint64_t{0} : (uint64_t{1} << RS) - 1;
      const int64_t nw = static_cast<int64_t>(wb.size());
      for (int64_t k = 0; k < g.K; ++k)
        for (int64_t c = 0; c < g.C; ++c) {
          const int64_t at = (k * g.C + c) * RS, i = at >> 6;
          const int sh = static_cast<int>(at & 63);
          uint64_t bits = wb[i] >> sh;
          if (sh && i + 1 < nw) bits |= wb[i + 1] << (64 - sh);
          bits &= keep;
          l.lines[c] += std::popcount(bits);
          for (; bits; bits &= bits - 1) ++l.cols[k * RS + std::countr_zero(bits)];
        }
    } else {
      for (int64_t k = 0; k < g.K; ++k)
        for (int64_t c = 0; c < g.C; ++c) {
          const int64_t at = (k * g.C + c) * RS;
          l.lines[c] += static_cast<int32_t>(popcount_range(wb, at, at + RS));
          accumulate_bits(wb, at, RS, l.cols.data() + k * RS);
        }
    }
    l.nnz = static_cast<double>(popcount_range(wb, 0, g.K * g.C * RS));
    return l;
  });
  w.b_line_nnz = wl->lines;
  const std::vector<int32_t>& col_w = wl->cols;
  // Per (k, r, s): nonzero dy[., k, p, q] whose tap (r, s) lands inside the input map (input row
  // h = p*stride + r - pad, the same pairs as ff's), over (n, p, q).
  std::vector<int64_t> col_d(static_cast<size_t>(g.K * RS), 0);
  {
    const std::vector<int64_t> areas = summed_areas(dn, g.K, g.P, g.Q);
    for (int64_t r = 0; r < g.R; ++r) {
      const auto [p0, p1] = outputs_reading_inside(r, g.P, g.H, g.stride_h, g.pad_h);
      for (int64_t s = 0; s < g.S; ++s) {
        const auto [q0, q1] = outputs_reading_inside(s, g.Q, g.W, g.stride_w, g.pad_w);
        for (int64_t k = 0; k < g.K; ++k)
          col_d[k * RS + r * g.S + s] = box_sum(areas.data() + k * (g.P + 1) * (g.Q + 1), g.Q, p0, p1, q0, q1);
      }
    }
  }
  double eff = 0;
  for (int64_t i = 0; i < g.K * RS; ++i) eff += static_cast<double>(col_d[i]) * col_w[i];
  w.effectual_macs = eff;
  w.a_nnz = static_cast<double>(popcount_range(db, 0, w.a_elems));
  w.b_nnz = wl->nnz;
}

void analyse_wg(ConvWork& w, const Op& op, AnalysisCache* cache) {
  const ConvGeometry& g = w.geo;
  std::vector<uint64_t> ones_x, ones_d;
  const auto& xb = operand_bits(op.x_nz, w.a_elems, op, "x", ones_x);
  const auto& db = operand_bits(op.dy_nz, w.b_elems, op, "dy", ones_d);
  const int64_t PQ = g.P * g.Q;
  const auto lines_a = x_shifted(cache, op.x_nz.get(), xb, g);
  w.a_line_nnz.resize(lines_a->size());
  for (size_t i = 0; i < lines_a->size(); ++i) w.a_line_nnz[i] = static_cast<int32_t>((*lines_a)[i]);
  w.b_line_nnz.assign(static_cast<size_t>(g.K), 0);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t k = 0; k < g.K; ++k)
      w.b_line_nnz[k] += static_cast<int32_t>(popcount_range(db, (n * g.K + k) * PQ, (n * g.K + k + 1) * PQ));
  // Effectual products: per output position (n, p, q), (nonzero x of its receptive field) x (nonzero dy
  // over k there).
  const auto rf = x_receptive(cache, op.x_nz.get(), xb, g);
  const auto dk = dy_per_position(cache, op.dy_nz.get(), db, g);
  double eff = 0;
  for (size_t i = 0; i < rf->size(); ++i) eff += static_cast<double>((*rf)[i]) * (*dk)[i];
  w.effectual_macs = eff;
  w.a_nnz = static_cast<double>(popcount_range(xb, 0, w.a_elems));
  w.b_nnz = static_cast<double>(popcount_range(db, 0, w.b_elems));
}

}  // namespace

int64_t popcount_range(const std::vector<uint64_t>& words, int64_t begin, int64_t end) {
  if (end <= begin) return 0;
  const int64_t first = begin >> 6, last = (end - 1) >> 6;
  const uint64_t head = ~uint64_t{0} << (begin & 63);
  const uint64_t tail = (end & 63) ? (uint64_t{1} << (end & 63)) - 1 : ~uint64_t{0};
  if (first == last) return std::popcount(words[first] & head & tail);
  int64_t n = std::popcount(words[first] & head) + std::popcount(words[last] & tail);
  for (int64_t i = first + 1; i < last; ++i) n += std::popcount(words[i]);
  return n;
}

void accumulate_bits(const std::vector<uint64_t>& words, int64_t begin, int64_t len, int32_t* counters) {
  const uint64_t* w = words.data();
  const int64_t nw = static_cast<int64_t>(words.size());
  int64_t i = 0;
  for (; i + 64 <= len; i += 64) {
    const uint64_t b = load_bits(w, nw, begin + i);
    if (!b) continue;
    int32_t* c = counters + i;
#ifdef __AVX512F__
    // 16 counters per masked add: the bits are the mask (11x the scalar loop).
    const __m512i one = _mm512_set1_epi32(1);
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = static_cast<__mmask16>(b >> (16 * q));
      const __m512i v = _mm512_loadu_si512(c + 16 * q);
      _mm512_storeu_si512(c + 16 * q, _mm512_mask_add_epi32(v, m, v, one));
    }
#else
    for (int j = 0; j < 64; ++j) c[j] += static_cast<int32_t>((b >> j) & 1);
#endif
  }
  if (i < len) {
    const uint64_t b = load_bits(w, nw, begin + i);
    const int rem = static_cast<int>(len - i);
    for (int j = 0; j < rem; ++j) counters[i + j] += static_cast<int32_t>((b >> j) & 1);
  }
}

bool is_array_op(const Op& op) {
  return (op.kind == "conv2d" || op.kind == "linear") &&
         (op.phase == Phase::ff || op.phase == Phase::bp || op.phase == Phase::wg);
}

ConvGeometry conv_geometry(const Op& op) {
  ConvGeometry g;
  const auto &x = op.x_shape, &w = op.w_shape, &y = op.y_shape;
  const std::string where = fmt::format("layer '{}' ({} {})", op.layer_name, op.kind, phase_name(op.phase));
  for (int i = 0; i < 4; ++i)
    TRAINER_CHECK(x[i] > 0 && y[i] > 0,
                  "chip model: {}: x shape [{}, {}, {}, {}] and y shape [{}, {}, {}, {}] must be positive",
                  where, x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3]);
  g.N = x[0];
  TRAINER_CHECK(y[0] == g.N, "chip model: {}: x has batch {}, y has {}", where, g.N, y[0]);
  if (op.kind == "linear") {
    g.C = x[1] * x[2] * x[3];
    g.K = y[1] * y[2] * y[3];
    if (w[0] > 0)
      TRAINER_CHECK(w[0] == g.K && w[1] * std::max<int64_t>(w[2], 1) * std::max<int64_t>(w[3], 1) == g.C,
                    "chip model: {}: weight shape [{}, {}, {}, {}] does not map {} inputs to {} outputs",
                    where, w[0], w[1], w[2], w[3], g.C, g.K);
    return g;
  }
  g.C = x[1], g.H = x[2], g.W = x[3];
  g.K = y[1], g.P = y[2], g.Q = y[3];
  TRAINER_CHECK(w[0] > 0 && w[1] > 0 && w[2] > 0 && w[3] > 0,
                "chip model: {}: the Op carries no weight shape (w_shape [{}, {}, {}, {}])", where, w[0],
                w[1], w[2], w[3]);
  TRAINER_CHECK(
      w[0] == g.K && w[1] == g.C,
      "chip model: {}: weight shape [{}, {}, {}, {}] expected [{}, {}, R, S] (grouped convolutions are not "
      "modelled)",
      where, w[0], w[1], w[2], w[3], g.K, g.C);
  g.R = w[2], g.S = w[3];
  g.stride_h = op.stride[0], g.stride_w = op.stride[1];
  g.pad_h = op.pad[0], g.pad_w = op.pad[1];
  TRAINER_CHECK(g.stride_h > 0 && g.stride_w > 0 && g.pad_h >= 0 && g.pad_w >= 0,
                "chip model: {}: stride ({}, {}) must be positive and padding ({}, {}) nonnegative", where,
                g.stride_h, g.stride_w, g.pad_h, g.pad_w);
  const int64_t P = (g.H + 2 * g.pad_h - g.R) / g.stride_h + 1,
                Q = (g.W + 2 * g.pad_w - g.S) / g.stride_w + 1;
  TRAINER_CHECK(
      P == g.P && Q == g.Q,
      "chip model: {}: x {}x{} with kernel {}x{}, stride ({}, {}), pad ({}, {}) gives {}x{}, but y is {}x{}",
      where, g.H, g.W, g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w, P, Q, g.P, g.Q);
  return g;
}

std::shared_ptr<const WeightLines> WeightMemo::get(Phase phase, const ConvGeometry& g, const Bitmap& map,
                                                   const std::function<WeightLines()>& make) {
  const std::vector<uint64_t>& words = map.words();
  const Key key{static_cast<int>(phase), geometry_key(g), map.content_hash()};
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key);
    if (it != entries_.end() && it->second.words == words) {
      it->second.used = step_;
      return it->second.value;
    }
  }
  auto value = std::make_shared<const WeightLines>(make());
  std::lock_guard<std::mutex> lock(mu_);
  Entry& e = entries_[key];
  e.words = words;
  e.value = value;
  e.used = step_;
  return value;
}

void WeightMemo::end_step() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = entries_.begin(); it != entries_.end();)
    it = step_ - it->second.used >= 2 ? entries_.erase(it) : std::next(it);
  ++step_;
}

ConvWork analyse_exact(const Op& op, AnalysisCache* cache, WeightMemo* memo) {
  ConvWork w;
  w.geo = conv_geometry(op);
  fill_common(w, op);
  w.exact = true;
  switch (op.phase) {
    case Phase::ff:
      analyse_ff(w, op, cache, memo);
      break;
    case Phase::bp:
      analyse_bp(w, op, cache, memo);
      break;
    default:
      analyse_wg(w, op, cache);
      break;
  }
  return w;
}

ConvWork analyse_statistical(const Op& op) {
  ConvWork w;
  w.geo = conv_geometry(op);
  fill_common(w, op);
  w.exact = false;
  switch (op.phase) {
    case Phase::ff:
      w.a_nnz = operand_nnz(op.x_nz, w.a_elems, op, "x");
      w.b_nnz = operand_nnz(op.w_nz, w.b_elems, op, "w");
      break;
    case Phase::bp:
      w.a_nnz = operand_nnz(op.dy_nz, w.a_elems, op, "dy");
      w.b_nnz = operand_nnz(op.w_nz, w.b_elems, op, "w");
      break;
    default:
      w.a_nnz = operand_nnz(op.x_nz, w.a_elems, op, "x");
      w.b_nnz = operand_nnz(op.dy_nz, w.b_elems, op, "dy");
      break;
  }
  w.effectual_macs = w.valid_macs * w.a_density() * w.b_density();
  return w;
}

}  // namespace trainer
