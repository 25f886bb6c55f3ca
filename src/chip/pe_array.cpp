#include "chip/pe_array.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <map>
#include <numeric>
#include <unordered_map>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "core/error.hpp"

namespace trainer {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// CDF of Binomial(L, d), stored only where it is neither ~0 nor ~1.
struct BinomialCdf {
  int64_t lo = 0;
  std::vector<double> c;  // c[i] = P(X <= lo + i)
  double at(int64_t x) const {
    if (x < lo) return 0.0;
    const int64_t i = x - lo;
    return i >= static_cast<int64_t>(c.size()) ? 1.0 : c[static_cast<size_t>(i)];
  }
};

BinomialCdf binomial_cdf(int64_t L, double d) {
  BinomialCdf out;
  if (L <= 0 || d <= 0.0) {
    out.lo = 0, out.c = {1.0};
    return out;
  }
  if (d >= 1.0) {
    out.lo = L, out.c = {1.0};
    return out;
  }
  const double mean = static_cast<double>(L) * d, sd = std::sqrt(static_cast<double>(L) * d * (1.0 - d));
  const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(mean - 14.0 * sd)) - 2);
  const int64_t hi = std::min<int64_t>(L, static_cast<int64_t>(std::ceil(mean + 14.0 * sd)) + 2);
  const int64_t mode = std::clamp<int64_t>(static_cast<int64_t>(std::floor((L + 1) * d)), lo, hi);
  std::vector<double> pmf(static_cast<size_t>(hi - lo + 1), 0.0);
  const double log_mode =
      std::lgamma(static_cast<double>(L) + 1) - std::lgamma(static_cast<double>(mode) + 1) -
      std::lgamma(static_cast<double>(L - mode) + 1) + static_cast<double>(mode) * std::log(d) +
      static_cast<double>(L - mode) * std::log1p(-d);
  const double odds = d / (1.0 - d);
  pmf[mode - lo] = std::exp(log_mode);
  for (int64_t x = mode; x < hi; ++x)
    pmf[x + 1 - lo] = pmf[x - lo] * static_cast<double>(L - x) / static_cast<double>(x + 1) * odds;
  for (int64_t x = mode; x > lo; --x)
    pmf[x - 1 - lo] = pmf[x - lo] * static_cast<double>(x) / static_cast<double>(L - x + 1) / odds;
  double total = 0;
  for (double p : pmf) total += p;
  out.lo = lo;
  out.c.resize(pmf.size());
  double acc = 0;
  for (size_t i = 0; i < pmf.size(); ++i) {
    acc += pmf[i] / total;
    out.c[i] = std::min(acc, 1.0);
  }
  out.c.back() = 1.0;
  return out;
}

class CdfCache {
 public:
  explicit CdfCache(double d) : d_(d) {}
  const BinomialCdf& get(int64_t L) {
    auto it = cache_.find(L);
    if (it == cache_.end()) it = cache_.emplace(L, binomial_cdf(L, d_)).first;
    return it->second;
  }

 private:
  double d_;
  std::map<int64_t, BinomialCdf> cache_;
};

// x^n for a small positive integer n, by squaring.
inline double ipow(double x, int n) {
  double r = 1.0;
  while (n) {
    if (n & 1) r *= x;
    x *= x;
    n >>= 1;
  }
  return r;
}

double expected_ceil_max_cached(const std::vector<std::pair<int64_t, int>>& lines, int v, double q,
                                CdfCache& cdfs) {
  int64_t lmax = 0;
  std::vector<const BinomialCdf*> f;
  for (const auto& [L, n] : lines) {
    lmax = std::max(lmax, L);
    f.push_back(&cdfs.get(L));
  }
  if (lmax == 0 || q <= 0.0) return 0.0;
  // E[ceil(M / v)] = sum over k >= 0 of P(M > k v), M = max of the lines. Below every line's support
  // (only when all lines are present) P = 1; above every line's support P = 0.
  int64_t lo_max = 0, lo_min = lmax, hi = 0, count = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    lo_max = std::max(lo_max, f[i]->lo);
    lo_min = std::min(lo_min, f[i]->lo);
    hi = std::max(hi, f[i]->lo + static_cast<int64_t>(f[i]->c.size()) - 1);
    count += lines[i].second;
  }
  hi = std::min(hi, lmax);
  // Below every line's support each line is 0 when present: P(M > x) = 1 - (1 - q)^count; with q = 1
  // that holds up to the highest support's start.
  const int64_t k0 = (q >= 1.0 ? lo_max : lo_min) / v;
  double e = static_cast<double>(k0) * (q >= 1.0 ? 1.0 : 1.0 - std::pow(1.0 - q, static_cast<double>(count)));
  for (int64_t k = k0; k * v < hi; ++k) {
    const int64_t x = k * v;
    double g = 1.0;
    for (size_t i = 0; i < lines.size() && g > 0.0; ++i) {
      const double fx = (1.0 - q) + q * f[i]->at(x);
      g *= ipow(fx, lines[i].second);
    }
    e += 1.0 - g;
  }
  return e;
}

// Bit index of output (row, col) in the output tensor's logical order: (row / D) * cols * D + col * D +
// row % D, with D = P*Q (ff: rows (n, p, q), y [N, K, P, Q]), H*W (bp: rows (n, h, w), dx [N, C, H, W]),
// rows (wg: rows (c, r, s), dw [K, C, R, S]).
struct OutputIndex {
  int64_t D = 1, cols = 1;
  int64_t operator()(int64_t row, int64_t col) const { return (row / D) * cols * D + col * D + row % D; }
};

OutputIndex output_index(const ConvWork& w) {
  OutputIndex ix;
  ix.cols = w.cols;
  switch (w.phase) {
    case Phase::ff:
      ix.D = w.geo.P * w.geo.Q;
      break;
    case Phase::bp:
      ix.D = w.geo.H * w.geo.W;
      break;
    default:
      ix.D = w.rows;
      break;
  }
  return ix;
}

// Bits [pos, pos + 64) of a word array; bits past the end read as zero.
inline uint64_t bits_at(const std::vector<uint64_t>& b, int64_t pos) {
  const int64_t i = pos >> 6, nw = static_cast<int64_t>(b.size());
  const int sh = static_cast<int>(pos & 63);
  const uint64_t lo = i < nw ? b[i] : 0;
  if (sh == 0) return lo;
  const uint64_t hi = i + 1 < nw ? b[i + 1] : 0;
  return (lo >> sh) | (hi << (64 - sh));
}

// Column j's bits over every row, in runs of up to 64 rows: f(first row, bits, number of rows). The rows
// of one block of D are contiguous in the bitmap (OutputIndex).
template <class F>
void for_column_runs(const std::vector<uint64_t>& b, const OutputIndex& ix, int64_t j, int64_t rows, F&& f) {
  for (int64_t r0 = 0; r0 < rows; r0 += ix.D) {
    const int64_t len = std::min(ix.D, rows - r0), at = ix(r0, j);
    for (int64_t k = 0; k < len; k += 64) {
      const int n = static_cast<int>(std::min<int64_t>(64, len - k));
      uint64_t bits = bits_at(b, at + k);
      if (n < 64) bits &= (uint64_t{1} << n) - 1;
      if (bits) f(r0 + k, bits, n);
    }
  }
}

enum class MaskedOp { add, max };

// For each set bit i of bits (i < n): p[i] += v (add) or p[i] = max(p[i], v) (max); 16 lanes per masked
// vector operation when the run is a whole 64.
template <MaskedOp kOp>
inline void masked_update(int32_t* p, uint64_t bits, int n, int32_t v) {
#ifdef __AVX512F__
  if (n == 64) {
    const __m512i y = _mm512_set1_epi32(v);
    for (int q = 0; q < 4; ++q) {
      const __mmask16 m = static_cast<__mmask16>(bits >> (16 * q));
      const __m512i x = _mm512_loadu_si512(p + 16 * q);
      _mm512_storeu_si512(p + 16 * q, kOp == MaskedOp::add ? _mm512_mask_add_epi32(x, m, x, y)
                                                           : _mm512_mask_max_epi32(x, m, x, y));
    }
    return;
  }
#endif
  for (; bits; bits &= bits - 1) {
    int32_t& x = p[std::countr_zero(bits)];
    x = kOp == MaskedOp::add ? x + v : std::max(x, v);
  }
  (void)n;
}

}  // namespace

double expected_ceil_max(const std::vector<std::pair<int64_t, int>>& lines, double d, int v, double q) {
  CdfCache cdfs(d);
  return expected_ceil_max_cached(lines, v, q, cdfs);
}

ComputeResult array_compute(const ConvWork& w, const Mapping& m, const ChipSpec& spec, bool exact,
                            const OutputLiveness& live) {
  TRAINER_CHECK(m.shape >= 0 && m.shape < static_cast<int>(spec.regroupings.size()),
                "chip model: mapping names regrouping {} of {}", m.shape, spec.regroupings.size());
  const RegroupShape& shape = spec.regroupings[m.shape];
  const int64_t Ra = shape.rows, Ca = shape.cols, G = shape.groups;
  const int64_t RT = ceil_div(w.rows, Ra), CT = ceil_div(w.cols, Ca);
  const int64_t v = spec.macs_per_pe_now();
  const double overhead = spec.fill_drain_cycles + (m.skipping ? spec.decode_latency_cycles : 0);
  const bool use_lines = exact && w.exact;
  const bool has_live = live.bits != nullptr && live.live_fraction < 1.0;
  const double rho = live.bits ? live.live_fraction : 1.0;
  const double dense_tile = static_cast<double>(ceil_div(w.reduction, v));
  const bool comp_a = m.skipping && m.compressed == Compressed::a;
  const bool comp_b = m.skipping && m.compressed == Compressed::b;

  ComputeResult out;
  std::vector<double> group(static_cast<size_t>(G), 0.0);
  auto rows_in = [&](int64_t rt) { return std::min(Ra, w.rows - rt * Ra); };
  auto cols_in = [&](int64_t ct) { return std::min(Ca, w.cols - ct * Ca); };

  // Slots if every output were needed.
  double sum_a = 0, sum_b = 0;
  if (use_lines) {
    for (int32_t x : w.a_line_nnz) sum_a += x;
    for (int32_t x : w.b_line_nnz) sum_b += x;
  } else {
    sum_a = w.a_len_total * w.a_density();
    sum_b = static_cast<double>(w.cols) * static_cast<double>(w.reduction) * w.b_density();
  }
  out.all_slots =
      comp_b   ? static_cast<double>(w.rows) * sum_b
      : comp_a ? static_cast<double>(w.cols) * sum_a
               : static_cast<double>(w.rows) * static_cast<double>(w.cols) * static_cast<double>(w.reduction);

  if (use_lines) {
    // Exact: per-tile maxima of the lines' work.
    std::vector<double> colmax(static_cast<size_t>(CT), 0.0), rowmax(static_cast<size_t>(RT), 0.0);
    if (comp_b)
      for (int64_t j = 0; j < w.cols; ++j)
        colmax[j / Ca] = std::max(colmax[j / Ca], static_cast<double>(ceil_div(w.b_line_nnz[j], v)));
    if (comp_a)
      for (int64_t i = 0; i < w.rows; ++i)
        rowmax[i / Ra] = std::max(rowmax[i / Ra], static_cast<double>(ceil_div(w.a_line_nnz[i], v)));
    if (!has_live) {
      int64_t g = 0;  // (ct * RT + rt) % G
      for (int64_t ct = 0; ct < CT; ++ct)
        for (int64_t rt = 0; rt < RT; ++rt, g = g + 1 == G ? 0 : g + 1) {
          const double t = comp_b ? colmax[ct] : comp_a ? rowmax[rt] : dense_tile;
          group[g] += t + overhead;
        }
      out.mac_slots = out.all_slots;
    } else {
      const OutputIndex ix = output_index(w);
      const auto& bits = *live.bits;
      std::vector<double> tile_cycles(static_cast<size_t>(RT * CT), 0.0),
          tile_slots(static_cast<size_t>(RT * CT), 0.0);
      // Per column tile, sweep its columns' live bits over all rows (vector masked updates), then read
      // each row tile off the per-row sums.
      //  a compressed: cnt[i] = live outputs of row i in the tile's columns; PE row i works
      //    ceil(nnz_a[i] / v) when any of its outputs is live;
      //  otherwise: best[i] = 1 + the largest ceil(work_j / v) over row i's live columns (0: none live),
      //    wsum[i] = the sum of work_j over them, work_j = nnz_b[j] (b compressed) or the reduction.
      std::vector<int32_t> cnt, best, wsum, a_cycles;
      if (comp_a) {
        cnt.resize(static_cast<size_t>(w.rows));
        a_cycles.resize(static_cast<size_t>(w.rows));
        for (int64_t i = 0; i < w.rows; ++i) a_cycles[i] = static_cast<int32_t>(ceil_div(w.a_line_nnz[i], v));
      }
      if (!comp_a) best.resize(static_cast<size_t>(w.rows)), wsum.resize(static_cast<size_t>(w.rows));
      for (int64_t ct = 0; ct < CT; ++ct) {
        const int64_t c0 = ct * Ca, c1 = c0 + cols_in(ct);
        if (comp_a) {
          std::fill(cnt.begin(), cnt.end(), 0);
          for (int64_t j = c0; j < c1; ++j)
            for_column_runs(bits, ix, j, w.rows,
                            [&](int64_t r, uint64_t b, int n) { masked_update<MaskedOp::add>(cnt.data() + r, b, n, 1); });
        } else {
          std::fill(best.begin(), best.end(), 0);
          std::fill(wsum.begin(), wsum.end(), 0);
          for (int64_t j = c0; j < c1; ++j) {
            const int64_t work = comp_b ? w.b_line_nnz[j] : w.reduction;
            const int32_t tag = static_cast<int32_t>(ceil_div(work, v) + 1);
            for_column_runs(bits, ix, j, w.rows, [&](int64_t r, uint64_t b, int n) {
              masked_update<MaskedOp::max>(best.data() + r, b, n, tag);
              masked_update<MaskedOp::add>(wsum.data() + r, b, n, static_cast<int32_t>(work));
            });
          }
        }
        // Branch-free reductions over each tile's rows (they vectorise).
        for (int64_t rt = 0; rt < RT; ++rt) {
          const int64_t r0 = rt * Ra, r1 = r0 + rows_in(rt);
          int32_t mx = 0, any = 0;
          int64_t slots = 0;
          if (comp_a) {
            for (int64_t i = r0; i < r1; ++i) {
              const int32_t c = cnt[i];
              mx = std::max(mx, c ? a_cycles[i] : 0);
              slots += static_cast<int64_t>(c) * w.a_line_nnz[i];
              any |= c;
            }
          } else {
            for (int64_t i = r0; i < r1; ++i) {
              mx = std::max(mx, best[i]);
              slots += wsum[i];
            }
            any = mx;
            mx = std::max(mx - 1, 0);
          }
          const int64_t t = ct * RT + rt;
          tile_cycles[t] = any ? static_cast<double>(mx) + overhead : 0.0;
          tile_slots[t] = static_cast<double>(slots);
        }
      }
      for (int64_t t = 0, g = 0; t < RT * CT; ++t, g = g + 1 == G ? 0 : g + 1) {
        group[g] += tile_cycles[t];
        out.mac_slots += tile_slots[t];
      }
    }
  } else {
    // Statistical: expectations of each tile's maximum under independent binomial lines. A tile's
    // expectation depends only on how many rows and columns it has and, for a, on the structural
    // lengths of its lines, which repeat with period w.a_len_period; so each distinct tile is
    // evaluated once.
    CdfCache cdf_a(w.a_density()), cdf_b(w.b_density());
    // P(at least one of n outputs is needed).
    auto any_live = [&](int64_t n) {
      return has_live ? 1.0 - std::pow(1.0 - rho, static_cast<double>(n)) : 1.0;
    };
    std::vector<std::pair<int64_t, int>> sig;
    std::map<std::vector<std::pair<int64_t, int>>, double> sig_memo[2];  // per column size (full, last)
    auto eval_a = [&](int64_t r0, int64_t nr, int64_t nc) {
      sig.clear();
      for (int64_t i = r0; i < r0 + nr; ++i) sig.emplace_back(w.a_line_len[i], 1);
      std::sort(sig.begin(), sig.end());
      size_t k = 0;
      for (size_t i = 0; i < sig.size(); ++i) {
        if (k && sig[k - 1].first == sig[i].first)
          sig[k - 1].second += 1;
        else
          sig[k++] = sig[i];
      }
      sig.resize(k);
      auto& seen = sig_memo[nc == Ca ? 0 : 1];
      auto it = seen.find(sig);
      if (it != seen.end()) return it->second;
      const double e = expected_ceil_max_cached(sig, static_cast<int>(v), any_live(nc), cdf_a);
      seen.emplace(sig, e);
      return e;
    };
    auto eval_b = [&](int64_t nr, int64_t nc) {
      return expected_ceil_max_cached({{w.reduction, static_cast<int>(nc)}}, static_cast<int>(v),
                                      any_live(nr), cdf_b);
    };
    // Tiles come in at most 2 x 2 sizes (full or last, in rows and in columns).
    const int64_t last_nr = rows_in(RT - 1), last_nc = cols_in(CT - 1);
    double live_tile[2][2], b_tile[2][2];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) {
        const int64_t nr = i ? last_nr : Ra, nc = j ? last_nc : Ca;
        live_tile[i][j] = any_live(nr * nc);
        b_tile[i][j] = comp_b ? eval_b(nr, nc) : 0.0;
      }
    // For a: full-height tiles by offset within the period of line lengths, per column size.
    const int64_t period = std::max<int64_t>(w.a_len_period, 1);
    std::vector<double> a_tile[2];
    if (comp_a)
      for (auto& t : a_tile) t.assign(static_cast<size_t>(period), -1.0);
    // Tile (ct, rt) goes to group (ct * RT + rt) % G. Within a column of tiles the full-height tiles'
    // values repeat with period pr in rt (a: the offset of the tile's first row within the period of line
    // lengths; otherwise they are all equal), so each column size's per-residue sums (residue rt % G)
    // take O(lcm(pr, G)) evaluations, and each column of tiles adds them at its offset.
    const bool last_row_partial = last_nr != Ra;
    const int64_t full_rows = last_row_partial ? RT - 1 : RT;  // tiles of Ra rows in a column
    const int64_t pr = comp_a ? period / std::gcd(period, Ra) : 1;
    auto column_sums = [&](int j) {
      const int64_t nc = j ? last_nc : Ca;
      auto value = [&](int64_t rt) {
        double t;
        if (comp_b) {
          t = b_tile[0][j];
        } else if (comp_a) {
          double& slot = a_tile[j][static_cast<size_t>((rt * Ra) % period)];
          if (slot < 0) slot = eval_a(rt * Ra, Ra, nc);
          t = slot;
        } else {
          t = dense_tile * live_tile[0][j];
        }
        return t + overhead * live_tile[0][j];
      };
      std::vector<double> sums(static_cast<size_t>(G), 0.0);
      const int64_t L = std::lcm(pr, G), blocks = full_rows / L;
      if (blocks > 0) {
        std::vector<double> one(static_cast<size_t>(G), 0.0);
        for (int64_t rt = 0; rt < L; ++rt) one[rt % G] += value(rt);
        for (int64_t r = 0; r < G; ++r) sums[r] = one[r] * static_cast<double>(blocks);
      }
      for (int64_t rt = blocks * L; rt < full_rows; ++rt) sums[rt % G] += value(rt);
      if (last_row_partial) {
        const double t = comp_b   ? b_tile[1][j]
                         : comp_a ? eval_a((RT - 1) * Ra, last_nr, nc)
                                  : dense_tile * live_tile[1][j];
        sums[(RT - 1) % G] += t + overhead * live_tile[1][j];
      }
      return sums;
    };
    const bool last_col_partial = last_nc != Ca;
    const std::vector<double> full_col = column_sums(0);
    const std::vector<double> last_col = last_col_partial ? column_sums(1) : full_col;
    for (int64_t ct = 0; ct < CT; ++ct) {
      const std::vector<double>& sums = ct == CT - 1 ? last_col : full_col;
      const int64_t o = (ct * RT) % G;
      for (int64_t r = 0; r < G; ++r) group[(o + r) % G] += sums[r];
    }
    out.mac_slots = out.all_slots * rho;
  }
  out.cycles = *std::max_element(group.begin(), group.end());
  return out;
}

}  // namespace trainer
