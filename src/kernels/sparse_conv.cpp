#include "kernels/sparse_conv.hpp"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#ifdef __AVX512F__
// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_ps in max/reduce; GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "core/error.hpp"

namespace trainer {

SparseCounters& SparseCounters::operator+=(const SparseCounters& o) {
  dense_macs += o.dense_macs;
  executed_macs += o.executed_macs;
  skipped_pruned += o.skipped_pruned;
  skipped_zero_activation += o.skipped_zero_activation;
  skipped_zero_error += o.skipped_zero_error;
  skipped_masked_output += o.skipped_masked_output;
  return *this;
}

namespace {

constexpr int64_t kLanes = 16;  // floats per vector = images per block of NCHW16n

// ---------------------------------------------------------------------------------------------------
// Vector backends: the same algorithms run on 16-float arrays (portable), on __m512 or on two __m256.

struct VecScalar {
  static constexpr int kWgTaps = 8;       // weight taps per WG pass over a tile (accumulators held)
  static constexpr bool kNarrow = false;  // fewer than 16 whole 16-image vectors fit in registers
  struct R {
    float v[kLanes];
  };
  static R zero() {
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = 0.0f;
    return r;
  }
  static R load(const float* p) {
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = p[l];
    return r;
  }
  static void store(float* p, const R& a) {
    for (int l = 0; l < kLanes; ++l) p[l] = a.v[l];
  }
  static void stream(float* p, const R& a) { store(p, a); }
  static void fence() {}
  static void prefetch_l2(const float*, int64_t) {}
  static R bcast(float x) {
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = x;
    return r;
  }
  static R fma(const R& a, const R& b, const R& c) {  // a * b + c
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = a.v[l] * b.v[l] + c.v[l];
    return r;
  }
  static R add(const R& a, const R& b) {
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = a.v[l] + b.v[l];
    return r;
  }
  static R sub(const R& a, const R& b) {
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = a.v[l] - b.v[l];
    return r;
  }
  static R where_positive(const R& m, const R& a) {  // a where m > 0, else 0
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = m.v[l] > 0.0f ? a.v[l] : 0.0f;
    return r;
  }
  static R max0(const R& a) {
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = a.v[l] > 0.0f ? a.v[l] : 0.0f;
    return r;
  }
  static R first_lanes(const R& a, int64_t n) {  // lanes >= n set to zero
    R r;
    for (int l = 0; l < kLanes; ++l) r.v[l] = l < n ? a.v[l] : 0.0f;
    return r;
  }
  static bool any_nonzero(const R& a) {
    for (int l = 0; l < kLanes; ++l)
      if (!(a.v[l] == 0.0f)) return true;  // NaN counts as nonzero
    return false;
  }
  static float reduce(const R& a) {
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += a.v[l];
    return s;
  }
  template <int J>
  static void reduce_n(const R* a, float* out) {
    for (int j = 0; j < J; ++j) out[j] = reduce(a[j]);
  }
};

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
// Asks for the line holding base[offset] into L2. The address may lie past the tensor (the tile after
// the last): a prefetch never faults, and the address is formed as an integer, not a pointer.
inline void prefetch_l2_at(const float* base, int64_t offset) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(base) + static_cast<uintptr_t>(offset) * sizeof(float);
  _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T1);
}
#endif

#ifdef __AVX512F__
struct VecAvx512 {
  static constexpr int kWgTaps = 8;
  static constexpr bool kNarrow = false;
  using R = __m512;
  static R zero() { return _mm512_setzero_ps(); }
  static R load(const float* p) { return _mm512_load_ps(p); }
  static void store(float* p, R a) { _mm512_store_ps(p, a); }
  // Final outputs larger than the caches go to memory without first being read for ownership.
  static void stream(float* p, R a) { _mm512_stream_ps(p, a); }
  static void fence() { _mm_sfence(); }
  static void prefetch_l2(const float* base, int64_t offset) { prefetch_l2_at(base, offset); }
  static R bcast(float x) { return _mm512_set1_ps(x); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R max0(R a) { return _mm512_max_ps(a, _mm512_setzero_ps()); }
  static R where_positive(R m, R a) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_GT_OQ), a);
  }
  static R first_lanes(R a, int64_t n) {
    return _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << n) - 1), a);
  }
  static bool any_nonzero(R a) { return _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0; }
  static float reduce(R a) { return _mm512_reduce_add_ps(a); }
  // The 16-lane sums of J vectors; for 8, a transpose-and-add tree (24 instructions, not 8 reductions).
  template <int J>
  static void reduce_n(const R* a, float* out) {
    if constexpr (J == 8) {
      auto pair = [](R x, R y) { return _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y)); };
      const R t0 = pair(a[0], a[1]), t1 = pair(a[2], a[3]), t2 = pair(a[4], a[5]), t3 = pair(a[6], a[7]);
      // Each 128-bit lane of u0 holds partial sums of a0..a3, of u1 of a4..a7.
      const R u0 = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
      const R u1 = _mm512_add_ps(_mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(t2, t3, _MM_SHUFFLE(3, 2, 3, 2)));
      const R v = _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)));
      const R p = _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(3, 1, 2, 0));
      _mm256_storeu_ps(out, _mm256_add_ps(_mm512_castps512_ps256(p), _mm512_extractf32x8_ps(p, 1)));
    } else {
      for (int j = 0; j < J; ++j) out[j] = _mm512_reduce_add_ps(a[j]);
    }
  }
};
#endif

#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
// Machines without AVX-512 (AMD Zen 3, older Intel): one 16-image vector is two 256-bit halves. The
// tiles keep at most 7-8 vectors live (14-16 ymm registers); wider tiles spill, and the automatic tile
// choice below keeps to narrow ones on this backend.
struct VecAvx2 {
  // 4 taps a pass, not 8: the tile's dy and 8 accumulators would not fit the 16 registers (measured
  // on the ResNet-20 shapes at 90%: WG 1.20-1.25 -> 1.0 ms at 7x7; mixed, within noise, at 28x28).
  static constexpr int kWgTaps = 4;
  static constexpr bool kNarrow = true;
  struct R {
    __m256 lo, hi;
  };
  static R zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static R load(const float* p) { return {_mm256_load_ps(p), _mm256_load_ps(p + 8)}; }
  static void store(float* p, R a) { _mm256_store_ps(p, a.lo), _mm256_store_ps(p + 8, a.hi); }
  static void stream(float* p, R a) { _mm256_stream_ps(p, a.lo), _mm256_stream_ps(p + 8, a.hi); }
  static void fence() { _mm_sfence(); }
  static void prefetch_l2(const float* base, int64_t offset) { prefetch_l2_at(base, offset); }
  static R bcast(float x) {
    const __m256 v = _mm256_set1_ps(x);
    return {v, v};
  }
  static R fma(R a, R b, R c) {
    return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
  }
  static R add(R a, R b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  static R sub(R a, R b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
  static R max0(R a) {
    const __m256 z = _mm256_setzero_ps();
    return {_mm256_max_ps(a.lo, z), _mm256_max_ps(a.hi, z)};
  }
  static R where_positive(R m, R a) {
    const __m256 z = _mm256_setzero_ps();
    return {_mm256_and_ps(_mm256_cmp_ps(m.lo, z, _CMP_GT_OQ), a.lo),
            _mm256_and_ps(_mm256_cmp_ps(m.hi, z, _CMP_GT_OQ), a.hi)};
  }
  static R first_lanes(R a, int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i nn = _mm256_set1_epi32(static_cast<int>(n));
    const __m256 mlo = _mm256_castsi256_ps(_mm256_cmpgt_epi32(nn, lane));
    const __m256 mhi =
        _mm256_castsi256_ps(_mm256_cmpgt_epi32(nn, _mm256_add_epi32(lane, _mm256_set1_epi32(8))));
    return {_mm256_and_ps(mlo, a.lo), _mm256_and_ps(mhi, a.hi)};
  }
  static bool any_nonzero(R a) {
    const __m256 z = _mm256_setzero_ps();
    return (_mm256_movemask_ps(_mm256_cmp_ps(a.lo, z, _CMP_NEQ_UQ)) |
            _mm256_movemask_ps(_mm256_cmp_ps(a.hi, z, _CMP_NEQ_UQ))) != 0;
  }
  static float reduce(R a) {
    const __m256 s = _mm256_add_ps(a.lo, a.hi);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
  template <int J>
  static void reduce_n(const R* a, float* out) {
    for (int j = 0; j < J; ++j) out[j] = reduce(a[j]);
  }
};
#endif

// The prologue of one input channel, applied to one vector of 16 images.
struct ChannelPrologue {
  bool active = false;
  float scale = 1.0f, shift = 0.0f;
  bool relu = false;
  int64_t lanes = kLanes;  // real images in this block; padding images must stay zero

  ChannelPrologue(const ConvPrologue& p, int64_t c, int64_t lanes_) {
    active = p.active();
    if (p.scale) scale = p.scale[c];
    if (p.shift) shift = p.shift[c];
    relu = p.relu;
    lanes = lanes_;
  }
  template <class V>
  typename V::R apply(typename V::R v) const {
    v = V::fma(v, V::bcast(scale), V::bcast(shift));
    if (relu) v = V::max0(v);
    if (lanes < kLanes) v = V::first_lanes(v, lanes);
    return v;
  }
};

int64_t real_images(int64_t N, int64_t nb) { return std::min<int64_t>(kLanes, N - nb * kLanes); }

// Contiguous ranges of channels with about equal cost (kept taps, plus one so that empty channels,
// which still write their output, count), one per thread.
void split_by_cost(const std::vector<int32_t>& nnz, int nth, std::vector<int64_t>& bounds) {
  const int64_t n = static_cast<int64_t>(nnz.size());
  int64_t total = 0;
  for (int32_t v : nnz) total += v + 1;
  bounds.assign(static_cast<size_t>(nth + 1), n);
  bounds[0] = 0;
  int64_t o = 0, cum = 0;
  for (int t = 1; t < nth; ++t) {
    const int64_t target = total * t / nth;
    while (o < n && cum + (nnz[o] + 1) / 2 < target) cum += nnz[o++] + 1;
    bounds[t] = o;
  }
}

// Whether plane (nb, c) of an NCHW16n tensor is zero after the prologue; stops at the first nonzero.
template <class V>
bool plane_is_zero(const float* plane, int64_t n_vec, const ChannelPrologue& cp) {
  for (int64_t i = 0; i < n_vec; ++i) {
    typename V::R v = V::load(plane + i * kLanes);
    if (cp.active) v = cp.apply<V>(v);
    if (V::any_nonzero(v)) return false;
  }
  return true;
}

// Copies rows [row_org, row_org + rows) x cols [col_org, col_org + cols) of channels [c0, c0 + cga) of
// image block nb into a slab [cga][rows][cols][16] (channel stride chan_stride), zero outside the
// input, prologue applied. shared: the slab is shared by the team, whose threads each copy a share of
// its rows (call from all of them; ends with a barrier); else the calling thread copies it all.
// step > 1: slab row r, column q hold input row row_org + step * r, column col_org + step * q (a single-
// tap convolution at stride `step` reads no other input position: the rest is not copied).
template <class V>
void build_slab(const float* in, int64_t Cin, int64_t Hin, int64_t Win, int64_t N, int64_t nb, int64_t c0,
                int64_t cga, int64_t row_org, int64_t rows, int64_t col_org, int64_t cols,
                int64_t chan_stride, const ConvPrologue& pro, float* slab, bool shared, int64_t step = 1) {
  const int64_t lanes = real_images(N, nb);
  // Slab columns [w_lo, w_hi) lie inside the input: col_org + step * q in [0, Win).
  auto first_at_or_after = [&](int64_t x) {  // smallest q >= 0 with col_org + step * q >= x
    return x <= col_org ? 0 : (x - col_org + step - 1) / step;
  };
  const int64_t w_lo = std::min(first_at_or_after(0), cols),
                w_hi = std::clamp(first_at_or_after(Win), w_lo, cols);
  auto copy_row = [&](int64_t u) {
    const int64_t cl = u / rows, row = u % rows, c = c0 + cl, ih = row_org + row * step;
    float* dst = slab + cl * chan_stride + row * cols * kLanes;
    if (ih < 0 || ih >= Hin || w_hi <= w_lo) {
      std::memset(dst, 0, sizeof(float) * cols * kLanes);
      return;
    }
    const float* src = in + (((nb * Cin + c) * Hin + ih) * Win + col_org) * kLanes;
    if (w_lo > 0) std::memset(dst, 0, sizeof(float) * w_lo * kLanes);
    if (w_hi < cols) std::memset(dst + w_hi * kLanes, 0, sizeof(float) * (cols - w_hi) * kLanes);
    const ChannelPrologue cp(pro, c, lanes);
    if (step > 1) {
      for (int64_t col = w_lo; col < w_hi; ++col) {
        const typename V::R v = V::load(src + col * step * kLanes);
        V::store(dst + col * kLanes, cp.active ? cp.apply<V>(v) : v);
      }
    } else if (!cp.active) {
      std::memcpy(dst + w_lo * kLanes, src + w_lo * kLanes, sizeof(float) * (w_hi - w_lo) * kLanes);
    } else {
      for (int64_t col = w_lo; col < w_hi; ++col)
        V::store(dst + col * kLanes, cp.apply<V>(V::load(src + col * kLanes)));
    }
  };
  if (shared) {
#pragma omp for schedule(static)
    for (int64_t u = 0; u < cga * rows; ++u) copy_row(u);
  } else {
    for (int64_t u = 0; u < cga * rows; ++u) copy_row(u);
  }
}

// Fills zero[nb * C + c] for every plane of an NCHW16n tensor [N, C, HW] (or all 0 when not skipping).
template <class V>
void detect_zero_planes(const float* t, int64_t N, int64_t C, int64_t HW, const ConvPrologue& pro, bool skip,
                        uint8_t* zero) {
  const int64_t NB = (N + kLanes - 1) / kLanes;
#pragma omp for schedule(static)
  for (int64_t u = 0; u < NB * C; ++u) {
    const int64_t nb = u / C, c = u % C;
    zero[u] = skip && plane_is_zero<V>(t + u * HW * kLanes, HW, ChannelPrologue(pro, c, real_images(N, nb)));
  }
}

// ---------------------------------------------------------------------------------------------------
// Where each kept tap's input vector sits in a slab, for one weight structure and slab geometry. Built
// once and reused by every later call: the values are read from the weights themselves, so a training
// step that only changed values (SparseWeights::repack) rebuilds nothing here.

struct TapCache {
  uint64_t version = 0;        // SparseWeights::structure_version() it was built for (0: none)
  std::vector<int64_t> key;    // the geometry (and, for WG, the thread split) it was built for
  std::vector<int32_t> off;    // per entry, in the weights' order: offset in the slab from the tile base
  std::vector<int32_t> seg;    // [((cg * nph + ph) * Cout + o) * 2]: begin, end of the group's entries
  std::vector<int32_t> slot;   // WG: per entry, its place among its thread's entries of its group
  std::vector<int64_t> slots;  // WG: per (thread, group), how many
  bool valid(uint64_t v, const std::vector<int64_t>& k) const { return version == v && key == k; }
};

// Per-thread copies of the taps of one slab without those on zero planes (rare: only when a plane is).
struct FilteredTaps {
  std::vector<int32_t> off, slot, seg, idx;
  std::vector<float> val;
};

// What a call needs only while it runs: slabs, partial sums, statistics, per-block gradients. One set
// per calling thread, shared by every scratch (every layer), so that a call finds them in the caches
// where the previous layer's call left them; with a set per layer, each set was cold at its layer's
// first call of a training step (docs/benchmarks.md, 2026-12-05, third session). Taken before a
// parallel region, by the calling thread: the team works in the caller's set.
struct Transient {
  std::vector<Tensor> slab;  // one per thread, or two shared by the team (double buffered)
  std::vector<Tensor> part;  // one per thread: partial sums of a band (FF, BP) or of tap sums (WG)
  Tensor stats;              // 64-byte aligned: the epilogue loads and stores it as vectors
  std::vector<double> stats_d;
  std::vector<float> wg_part;
  std::vector<float> wg_blocks;  // WG by image block: per block, the gradients of the kept taps

  // By default each thread copies its own slabs: no barrier between slabs (a barrier costs a whole time
  // slice when the machine is oversubscribed), and each core reads lines it wrote itself.
  void slab_buffers(int nth, int64_t floats) {
    slab.resize(static_cast<size_t>(nth));
    for (Tensor& t : slab)
      if (t.storage_size() < floats) t.resize({floats});
  }
  void part_buffers(int nth, int64_t floats) {
    part.resize(static_cast<size_t>(nth));
    for (Tensor& t : part)
      if (t.storage_size() < floats) t.resize({floats});
  }
};

Transient& transient() {
  thread_local Transient t;
  return t;
}

}  // namespace

struct SparseConvScratch::Impl {
  std::vector<uint8_t> zero_in, zero_err;
  std::vector<FilteredTaps> filtered;
  TapCache ff_cache, bp_cache, wg_cache;
  std::vector<SparseCounters> counters;
  std::vector<int64_t> bounds;

  void per_thread(int nth) {
    filtered.resize(static_cast<size_t>(nth));
    counters.assign(static_cast<size_t>(nth), SparseCounters{});
  }
};

SparseConvScratch::SparseConvScratch() : impl_(std::make_unique<Impl>()) {}
SparseConvScratch::~SparseConvScratch() = default;

namespace {

// ---------------------------------------------------------------------------------------------------
// FF and BP, one engine: for output channel o and phase (a, b),
//   out[o][a + ost*i][b + ost*j] = Σ_taps val * in[ci][i*ist + dr][j*ist + ds]
// FF: in = x, ist = stride, ost = 1, (dr, ds) = (r - pad, s - pad).
// BP: in = dy, ist = 1, ost = stride, one phase per (h mod stride, w mod stride) of dx, holding the taps
//     whose (r, s) land there, (dr, ds) = ((a + pad - r) / stride, (b + pad - s) / stride).

struct CorrProblem {
  const float* in = nullptr;
  int64_t Cin = 0, Hin = 0, Win = 0;
  float* out = nullptr;
  int64_t Cout = 0, Hout = 0, Wout = 0;
  int64_t N = 0, NB = 0;
  int64_t ist = 1, ost = 1;  // one of them is the stride, the other 1
  int64_t R = 0, S = 0;
  std::vector<int64_t> drow, dcol;  // input displacement of tap row r / column s
  // Taps of (o, phase, ci): [ptr[(o * nph + ph) * Cin + ci], ... + 1), with rs and val per entry.
  const int32_t* ptr = nullptr;
  const int32_t* rs = nullptr;
  const float* val = nullptr;
  int64_t nnz = 0;
  uint64_t version = 0;
  const std::vector<int32_t>* nnz_out = nullptr;  // kept taps per output channel
  int64_t dense_taps_per_out = 0;                 // Cin * R * S
  int64_t positions = 0;                          // P * Q of the convolution (for the counters)
  bool is_bp = false;
};

// What a rectangle of tiles needs; one per (slab, phase), shared by all tiles of it.
struct TileCtx {
  const float* slab = nullptr;
  int64_t i0 = 0, slab_cols = 0, ist = 1;
  float* out_nb = nullptr;
  int64_t out_plane = 0, Hout = 0, Wout = 0, a = 0, b = 0, ost = 1;
  // Partial sums of the band while channel groups remain, in this thread's own buffer (it stays in L2;
  // the output itself is written once, at the last group): [o - o0][i - i0][j][16], for this phase.
  float* part = nullptr;
  int64_t part_plane = 0, part_row = 0;
  bool stream = false;      // write the output with non-temporal stores
  bool accumulate = false;  // add to the output instead of writing it
  // Ask for the next tile's output lines ahead (accumulating always does). A tile writes a short run in
  // each of its output channels' planes, too many streams for the hardware's prefetchers, so each
  // line's read for ownership was waited for; a strided BP phase's writes also skip lines, and a phase
  // a first writer left (write_phases) was not touched this step. Measured at 90%: ResNet-20's stride-2
  // blocks (per call) the shortcut's BP 0.41 -> 0.31 ms, the second writer's 1.03-1.12 -> 0.80-0.85 ms
  // (Intel); in training on the AMD Zen 4 (150 steps, uniform) stage 0's six FF 826-906 -> 690-705 ms,
  // stage 1's 715-793 -> 671-686 ms. With the output already in cache it costs (16->16 @28x28 FF, warm
  // 0.45 -> 0.50 ms), but a training step's outputs never are: cold 0.84-0.89 -> 0.68-0.69 ms.
  bool prefetch_out = false;
  // Keep the result (the sum, when accumulating) only where this (out's layout) is > 0.
  const float* relu_nb = nullptr;
  const int32_t* off = nullptr;
  const float* val = nullptr;
  const int32_t* seg = nullptr;  // entries of output channel o: [seg[2o], seg[2o + 1])
  int64_t o0 = 0, o1 = 0;
  bool first = false, last = false;
  const float* bias = nullptr;
  float* stats = nullptr;  // [Cout][32]: per-lane Σy (0..15), Σy² (16..31) of the current block
  // BP grad sums (kStats 2 and 3; ConvEpilogue::bn_x): the batch norm's input for this image block, its
  // mean, and its fused ReLU's scale and shift (kStats 3). stats then holds Σm·dx, Σm·dx·(x - mean).
  const float* gx_nb = nullptr;
  const float* gmean = nullptr;
  const float* gscale = nullptr;
  const float* gshift = nullptr;
  int64_t lanes = kLanes;
  const uint8_t* keep = nullptr;  // output mask of this image block: [Cout][Hout][Wout]
  bool count_tiles = false;
  int64_t n_real = kLanes;
  SparseCounters* cnt = nullptr;
};

// All full TP x TQ tiles in rows [ra, rb) and columns [ja, jb) of the current phase, for every output
// channel of this thread; output channels innermost so that the tile's slab region stays in L1.
// kStats: what the epilogue sums into c.stats: 0 nothing; 1 Σy and Σy² (FF, ConvEpilogue::sum); 2 a batch
// norm's gradient sums Σdx and Σdx·(x - mean) (BP, ConvEpilogue::bn_x); 3 the same through its ReLU's mask.
template <class V, int TP, int TQ, int IST, bool kBias, int kStats>
void tile_rect(const TileCtx& c, int64_t ra, int64_t rb, int64_t ja, int64_t jb) {
  using R = typename V::R;
  constexpr int T = TP * TQ;
  const int64_t ist = IST ? IST : c.ist;
  const int64_t x_row = ist * c.slab_cols * kLanes, x_col = ist * kLanes;
  const int64_t y_row = c.ost * c.Wout * kLanes, y_col = c.ost * kLanes;
  const int32_t* const off = c.off;
  const float* const val = c.val;
  for (int64_t i = ra; i + TP <= rb; i += TP) {
    for (int64_t j = ja; j + TQ <= jb; j += TQ) {
      const float* xb = c.slab + ((i - c.i0) * ist * c.slab_cols + j * ist) * kLanes;
      const int64_t y_off = ((c.a + c.ost * i) * c.Wout + c.b + c.ost * j) * kLanes;
      const int64_t p_off = (i - c.i0) * c.part_row + j * kLanes;
      // Accumulating reads the output (and the ReLU's) straight from memory, one short run per output
      // channel: too many streams for the hardware prefetchers. The next tile's are asked for here.
      const int64_t y_next = j + 2 * TQ <= jb ? TQ * y_col : TP * y_row + (ja - j) * y_col;
      for (int64_t o = c.o0; o < c.o1; ++o) {
        int32_t e = c.seg[2 * o];
        const int32_t end = c.seg[2 * o + 1];
        float* y = c.out_nb + o * c.out_plane + y_off;
        float* part = c.part + (o - c.o0) * c.part_plane + p_off;
        const uint8_t* km = nullptr;
        if (c.keep) {
          km = c.keep + (o * c.Hout + i) * c.Wout + j;
          int kept = 0;
          for (int pp = 0; pp < TP; ++pp)
            for (int qq = 0; qq < TQ; ++qq) kept += km[pp * c.Wout + qq] != 0;
          if (kept == 0) {  // nothing to compute: the output is written 0 once, at the last group
            if (c.last)
              for (int t = 0; t < T; ++t) V::store(y + (t / TQ) * y_row + (t % TQ) * y_col, V::zero());
            c.cnt->skipped_masked_output += (end - e) * T * c.n_real;
            continue;
          }
          if (kept == T) km = nullptr;
        }
        if (e == end && !c.first && !c.last) continue;
        if (c.count_tiles) c.cnt->executed_macs += (end - e) * T * c.n_real;
        R acc[T];
        if (c.first) {
          const R init = kBias ? V::bcast(c.bias[o]) : V::zero();
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) acc[t] = init;
        } else {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) acc[t] = V::load(part + (t / TQ) * c.part_row + (t % TQ) * kLanes);
        }
        for (; e < end; ++e) {
          const R w = V::bcast(val[e]);
          const float* xp = xb + off[e];
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t)
            acc[t] = V::fma(w, V::load(xp + (t / TQ) * x_row + (t % TQ) * x_col), acc[t]);
        }
        if (!c.last) {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) V::store(part + (t / TQ) * c.part_row + (t % TQ) * kLanes, acc[t]);
          continue;
        }
        if (km)
          for (int t = 0; t < T; ++t)
            if (!km[(t / TQ) * c.Wout + t % TQ]) acc[t] = V::zero();
        if (kBias && c.lanes < kLanes)
          for (int t = 0; t < T; ++t) acc[t] = V::first_lanes(acc[t], c.lanes);
        if constexpr (kStats == 1) {
          R s = acc[0], q = V::fma(acc[0], acc[0], V::zero());
          for (int t = 1; t < T; ++t) {
            s = V::add(s, acc[t]);
            q = V::fma(acc[t], acc[t], q);
          }
          float* st = c.stats + o * 2 * kLanes;
          V::store(st, V::add(V::load(st), s));
          V::store(st + kLanes, V::add(V::load(st + kLanes), q));
        }
        if (c.accumulate) {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            acc[t] = V::add(acc[t], V::load(y + (t / TQ) * y_row + (t % TQ) * y_col));
            V::prefetch_l2(y, y_next + (t / TQ) * y_row + (t % TQ) * y_col);
          }
        }
        if (c.relu_nb) {
          const float* m = c.relu_nb + o * c.out_plane + y_off;
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            acc[t] = V::where_positive(V::load(m + (t / TQ) * y_row + (t % TQ) * y_col), acc[t]);
            V::prefetch_l2(m, y_next + (t / TQ) * y_row + (t % TQ) * y_col);
          }
        }
        if constexpr (kStats >= 2) {  // the final gradient: a batch norm's sums of it (ConvEpilogue::bn_x)
          const float* xg = c.gx_nb + o * c.out_plane + y_off;
          const R mean = V::bcast(c.gmean[o]);
          R d[T];
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) d[t] = acc[t];
          if constexpr (kStats == 3) {  // through its fused ReLU's mask
            const R sc = V::bcast(c.gscale[o]), sh = V::bcast(c.gshift[o]);
#pragma GCC unroll 16
            for (int t = 0; t < T; ++t)
              d[t] =
                  V::where_positive(V::fma(sc, V::load(xg + (t / TQ) * y_row + (t % TQ) * y_col), sh), d[t]);
          }
          if (c.lanes < kLanes)
            for (int t = 0; t < T; ++t) d[t] = V::first_lanes(d[t], c.lanes);
          R s = d[0], q = V::zero();
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            if (t > 0) s = V::add(s, d[t]);
            q = V::fma(d[t], V::sub(V::load(xg + (t / TQ) * y_row + (t % TQ) * y_col), mean), q);
            V::prefetch_l2(xg, y_next + (t / TQ) * y_row + (t % TQ) * y_col);
          }
          float* st = c.stats + o * 2 * kLanes;
          V::store(st, V::add(V::load(st), s));
          V::store(st + kLanes, V::add(V::load(st + kLanes), q));
        }
        if (c.prefetch_out && !c.accumulate) {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) V::prefetch_l2(y, y_next + (t / TQ) * y_row + (t % TQ) * y_col);
        }
        if (c.stream) {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) V::stream(y + (t / TQ) * y_row + (t % TQ) * y_col, acc[t]);
        } else {
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) V::store(y + (t / TQ) * y_row + (t % TQ) * y_col, acc[t]);
        }
      }
    }
  }
}

// Rows [ra, rb) x columns [ja, jb) in one-row tiles of 8, 4, 2, 1 columns.
template <class V, int IST, bool kBias, int kStats>
void tile_rows(const TileCtx& c, int64_t ra, int64_t rb, int64_t ja, int64_t jb) {
  int64_t j = ja;
  const int64_t j8 = ja + (jb - ja) / 8 * 8;
  if (j8 > j) tile_rect<V, 1, 8, IST, kBias, kStats>(c, ra, rb, j, j8), j = j8;
  if (jb - j >= 4) tile_rect<V, 1, 4, IST, kBias, kStats>(c, ra, rb, j, j + 4), j += 4;
  if (jb - j >= 2) tile_rect<V, 1, 2, IST, kBias, kStats>(c, ra, rb, j, j + 2), j += 2;
  if (jb - j >= 1) tile_rect<V, 1, 1, IST, kBias, kStats>(c, ra, rb, j, j + 1);
}

// Rows [ra, rb) x all Jb columns: the main tile shape where it fits, one-row tiles for the rest.
template <class V, int TP, int TQ, int IST, bool kBias, int kStats>
void tile_phase(const TileCtx& c, int64_t ra, int64_t rb, int64_t Jb) {
  const int64_t rm = ra + (rb - ra) / TP * TP, jm = Jb / TQ * TQ;
  if (rm > ra && jm > 0) tile_rect<V, TP, TQ, IST, kBias, kStats>(c, ra, rm, 0, jm);
  if (rm > ra && jm < Jb) tile_rows<V, IST, kBias, kStats>(c, ra, rm, jm, Jb);
  if (rm < rb) {  // the rows left under the main tiles: one-row tiles of its width, then narrower ones
    if constexpr (TP > 1) {
      if (jm > 0) tile_rect<V, 1, TQ, IST, kBias, kStats>(c, rm, rb, 0, jm);
      if (jm < Jb) tile_rows<V, IST, kBias, kStats>(c, rm, rb, jm, Jb);
    } else {
      tile_rows<V, IST, kBias, kStats>(c, rm, rb, 0, Jb);
    }
  }
}

template <class V, int IST, bool kBias, int kStats>
void tile_dispatch(int shape, const TileCtx& c, int64_t ra, int64_t rb, int64_t Jb) {
  switch (shape) {
    case 1:
      tile_phase<V, 2, 8, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
    case 2:
      tile_phase<V, 1, 16, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
    case 3:
      tile_phase<V, 1, 8, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
    case 5:
      tile_phase<V, 2, 7, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
    case 6:
      tile_phase<V, 1, 7, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
    case 7:
      tile_phase<V, 1, 14, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
    case 8:
      tile_phase<V, 1, 4, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
    default:
      tile_phase<V, 4, 4, IST, kBias, kStats>(c, ra, rb, Jb);
      break;
  }
}

template <class V, bool kBias, int kStats>
void tile_dispatch_ist(int shape, const TileCtx& c, int64_t ra, int64_t rb, int64_t Jb) {
  if (c.ist == 1)
    tile_dispatch<V, 1, kBias, kStats>(shape, c, ra, rb, Jb);
  else if (c.ist == 2)
    tile_dispatch<V, 2, kBias, kStats>(shape, c, ra, rb, Jb);
  else
    tile_rows<V, 0, kBias, kStats>(c, ra, rb, 0, Jb);
}

int tile_shape_rows(int shape) { return shape == 1 || shape == 5 ? 2 : shape == 4 ? 4 : 1; }
int tile_shape_cols(int shape) {
  switch (shape) {
    case 2:
      return 16;
    case 4:
    case 8:
      return 4;
    case 5:
    case 6:
      return 7;
    case 7:
      return 14;
    default:
      return 8;
  }
}

// Input channels per slab: 16 (the tile's slab region stays in L1) unless the output channels then
// have fewer than min_taps taps per group (high sparsity, or a BP phase holding a quarter of the taps),
// so that loading and storing the partial sums between groups would cost more than the taps: then 32
// or 64.
int64_t auto_channel_group(int64_t nnz, int64_t Cout, int64_t groups_per_out, int64_t Cin,
                           double min_taps = 12) {
  const double taps_per_channel =
      static_cast<double>(nnz) / static_cast<double>(std::max<int64_t>(1, Cout * groups_per_out * Cin));
  int64_t CG = 16;
  while (CG < 64 && static_cast<double>(CG) * taps_per_channel < min_taps) CG *= 2;
  return std::min(CG, Cin);
}

// Whether the team copies each slab once, together (two shared buffers, one barrier per slab), rather
// than each thread its own copy: the input is then read from memory once instead of once per thread,
// which is what limits the layers with large images. Only with the full planned team (a caller inside
// a parallel region may get fewer threads; then every thread must run the same worksharing loops).
bool share_slabs(int nth, const SparseConvOptions& opt) {
  return nth > 1 && omp_get_num_threads() == nth && opt.shared_slabs > 0;
}

template <class V>
void corr_run(const CorrProblem& pb, SparseConvScratch::Impl& ws, const ConvPrologue& pro,
              const ConvEpilogue& epi, const ConvOutputMask& mask, const SparseConvOptions& opt,
              SparseCounters& total) {
  const int64_t ist = pb.ist, ost = pb.ost, nph = ost * ost;
  const int64_t Imax = (pb.Hout + ost - 1) / ost, Jmax = (pb.Wout + ost - 1) / ost;
  const int64_t drmin = *std::min_element(pb.drow.begin(), pb.drow.end());
  const int64_t drmax = *std::max_element(pb.drow.begin(), pb.drow.end());
  const int64_t dcmin = *std::min_element(pb.dcol.begin(), pb.dcol.end());
  const int64_t dcmax = *std::max_element(pb.dcol.begin(), pb.dcol.end());
  // A single tap read at a stride (a strided 1x1 FF) reads one input position in ist x ist: the slab
  // holds only those (sub = ist), a quarter of the input at stride 2, and the tiles read it at stride 1.
  const int64_t sub = ist > 1 && drmin == drmax && dcmin == dcmax ? ist : 1, kst = ist / sub;
  // Small output planes (at most 64 positions) take groups of twice the taps, except on AVX2 (not
  // measured). Measured at 90% on the Zen 4, groups of 32 against 16, ms: 512->512 @4x4 FF 3.58-3.61 ->
  // 3.37-3.41 (on the 1x4 tile the L1 rule then picks), BP 3.56 -> 3.36; 256->512 @8x8 s2 FF 1.96 ->
  // 1.82; ResNet-20's 64->64 @7x7 FF 0.36-0.37 -> 0.34, BP 0.36 -> 0.33-0.34; 256->256 @8x8 FF 3.46
  // either way alone, 3.87 -> 4.09x oneDNN in the full bench; but on 14x14 they cost 3-5% (32->32 FF
  // 0.43 -> 0.44), so larger planes keep 12.
  const double min_taps = !V::kNarrow && pb.Hout * pb.Wout <= 64 ? 24.0 : 12.0;
  const int64_t CG = opt.channel_group > 0 ? std::min<int64_t>(pb.Cin, opt.channel_group)
                                           : auto_channel_group(pb.nnz, pb.Cout, nph, pb.Cin, min_taps);
  const int shape =
      opt.tile ? opt.tile
               : sparse_conv_default_tile(Jmax, kst, CG, drmax - drmin + 1, dcmax - dcmin + 1, V::kNarrow,
                                          opt.l1_bytes > 0 ? opt.l1_bytes : l1_data_cache_bytes());
  const int64_t TP = tile_shape_rows(shape);
  const int64_t ncg = (pb.Cin + CG - 1) / CG;
  const int nth = omp_get_max_threads();
  const int64_t slab_cols = (Jmax - 1) * kst + dcmax - dcmin + 1;
  // Threads share out the output channels (each reads all of the input, its slabs are its own), or,
  // when the input outweighs the taps (large images: reading it once per thread would cost more memory
  // traffic than the taps, which each thread then reads whole), the image blocks.
  const bool split_blocks =
      opt.split_images > 0 || (opt.split_images < 0 && nth > 1 && pb.NB % nth == 0 &&
                               pb.NB * pb.Cin * pb.Hin * pb.Win * kLanes * 4 > 16 * pb.nnz * 8);
  // Band: enough output rows that the thread's partial outputs and the slab stay in L2 (about 256 KiB
  // each), a multiple of the tile's rows.
  int64_t BR = opt.band_rows;
  if (BR <= 0) {
    const int64_t out_row_bytes =
        std::max<int64_t>(1, split_blocks ? pb.Cout : pb.Cout / nth) * Jmax * nph * kLanes * 4;
    const int64_t in_row_bytes = CG * slab_cols * kLanes * 4 * kst;
    BR = std::max<int64_t>(1, std::min(262144 / out_row_bytes, 262144 / std::max<int64_t>(1, in_row_bytes)));
    // A thread with all output channels of its blocks and several channel groups reads and writes the band's
    // partial outputs at every group, beside the slab: then both together, counted per output row (the slab's
    // halo rows aside), within 256 KiB, down to 2 rows. On the Zen 4 (1 MiB L2), ResNet-20's 32->32 layers
    // (two groups of 16) ran in two modes from process to process with bands of 9 rows (partial outputs 252
    // KiB, slab 176 KiB): stage 1's FF summed over a 150-step ERK run to 608 ms in one process, 690-747 in
    // five; with 5 rows 601-621 in all six (BP 528 / 594-645 -> 534-551; docs/benchmarks.md). A floor of 1
    // row measured slower (64->128 @32x32 s2 FF 2.7-2.9 -> 3.4-3.5 ms); the channel split (512->512 @4x4)
    // gained nothing.
    if (split_blocks && ncg > 1)
      BR = std::min(BR, std::max<int64_t>(2, 262144 / (out_row_bytes + in_row_bytes)));
    BR = std::max<int64_t>(TP, BR / TP * TP);
  }
  BR = std::min(BR, Imax);
  const int64_t slab_rows_max = (BR - 1) * kst + drmax - drmin + 1;
  const int64_t chan_stride = slab_rows_max * slab_cols * kLanes;
  Transient& tr = transient();
  tr.slab_buffers(std::max(nth, 2), CG * chan_stride);
  split_by_cost(*pb.nnz_out, nth, ws.bounds);
  int64_t max_no = split_blocks ? pb.Cout : 0;
  for (int t = 0; t < nth; ++t) max_no = std::max(max_no, ws.bounds[t + 1] - ws.bounds[t]);
  const int64_t part_plane = BR * Jmax * kLanes;
  tr.part_buffers(nth, std::max<int64_t>(1, nph * max_no * part_plane));
  std::vector<int64_t> tap_off(static_cast<size_t>(pb.R * pb.S));
  for (int64_t r = 0; r < pb.R; ++r)
    for (int64_t s = 0; s < pb.S; ++s)
      tap_off[r * pb.S + s] = ((pb.drow[r] - drmin) * slab_cols + (pb.dcol[s] - dcmin)) * kLanes;

  TapCache& cache = pb.is_bp ? ws.bp_cache : ws.ff_cache;
  const std::vector<int64_t> key = {pb.Cin, pb.Cout, nph,       CG,    chan_stride,
                                    pb.R,   pb.S,    slab_cols, drmin, dcmin};
  if (!cache.valid(pb.version, key)) {
    cache.off.assign(static_cast<size_t>(pb.nnz), 0);
    cache.seg.assign(static_cast<size_t>(ncg * nph * pb.Cout * 2), 0);
    for (int64_t o = 0; o < pb.Cout; ++o)
      for (int64_t ph = 0; ph < nph; ++ph) {
        const int32_t* p = pb.ptr + (o * nph + ph) * pb.Cin;
        for (int64_t ci = 0; ci < pb.Cin; ++ci)
          for (int32_t e = p[ci]; e < p[ci + 1]; ++e)
            cache.off[e] = static_cast<int32_t>((ci % CG) * chan_stride + tap_off[pb.rs[e]]);
        for (int64_t cg = 0; cg < ncg; ++cg) {
          int32_t* sg = cache.seg.data() + ((cg * nph + ph) * pb.Cout + o) * 2;
          sg[0] = p[cg * CG];
          sg[1] = p[std::min(pb.Cin, (cg + 1) * CG)];
        }
      }
    cache.version = pb.version;
    cache.key = key;
  }

  ws.zero_in.resize(static_cast<size_t>(pb.NB * pb.Cin));
  ws.per_thread(nth);
  // An output bigger than the caches is written around them (the next layer reads it from memory
  // anyway); a small one stays cached for it.
  const bool stream = opt.stream_output >= 0 ? opt.stream_output > 0
                                             : pb.NB * pb.Cout * pb.Hout * pb.Wout * kLanes * 4 > (8 << 20);
  const bool grad_sums = epi.bn_x != nullptr;
  const bool stats = epi.sum || epi.sumsq || grad_sums;
  // Statistics: per-lane sums per thread (threads may share a channel when they split the images),
  // folded into double per image block, then summed over the blocks in order: the same result for any
  // thread count and split.
  if (stats) {
    tr.stats.resize({nth * pb.Cout * 2 * kLanes});
    tr.stats.zero();
    tr.stats_d.assign(static_cast<size_t>(pb.NB * pb.Cout * 2), 0.0);
  }
  const int64_t out_plane = pb.Hout * pb.Wout * kLanes;

#pragma omp parallel num_threads(nth)
  {
    detect_zero_planes<V>(pb.in, pb.N, pb.Cin, pb.Hin * pb.Win, pro, opt.skip_zero_planes, ws.zero_in.data());
    // Called from inside a parallel region, the team may be smaller than planned: each thread then
    // takes several of the planned shares.
    const bool shared = !split_blocks && share_slabs(nth, opt);
    for (int tid = omp_get_thread_num(); tid < nth; tid += omp_get_num_threads()) {
      const int64_t o0 = split_blocks ? 0 : ws.bounds[tid], o1 = split_blocks ? pb.Cout : ws.bounds[tid + 1];
      const int64_t no = o1 - o0;
      SparseCounters cnt;  // this thread's own: counters of both threads in one cache line would ping-pong
      int parity = 0;
      FilteredTaps& ft = ws.filtered[tid];

      float* const lane_stats = stats ? tr.stats.data() + tid * pb.Cout * 2 * kLanes : nullptr;
      // Split: each thread a contiguous run of blocks, the share the element-wise passes (batch norm,
      // adds: static schedules over blocks) give it, so that it reads what its own core wrote.
      const int64_t nb_lo = split_blocks ? pb.NB * tid / nth : 0;
      const int64_t nb_hi = split_blocks ? pb.NB * (tid + 1) / nth : pb.NB;
      for (int64_t nb = nb_lo; nb < nb_hi; ++nb) {
        const int64_t n_real = real_images(pb.N, nb);
        const uint8_t* zero_nb = ws.zero_in.data() + nb * pb.Cin;
        const bool nb_has_zero = std::find(zero_nb, zero_nb + pb.Cin, uint8_t{1}) != zero_nb + pb.Cin;
        // Pruned and zero-plane multiplies of this block, per output channel, over all positions.
        for (int64_t o = o0; o < o1; ++o) {
          const int64_t kept = (*pb.nnz_out)[o];
          int64_t dead = 0;
          for (int64_t ci = 0; ci < pb.Cin && nb_has_zero; ++ci)
            if (zero_nb[ci])
              for (int64_t ph = 0; ph < nph; ++ph)
                dead += pb.ptr[(o * nph + ph) * pb.Cin + ci + 1] - pb.ptr[(o * nph + ph) * pb.Cin + ci];
          const int64_t m = n_real * pb.positions;
          cnt.skipped_pruned += (pb.dense_taps_per_out - kept) * m;
          (pb.is_bp ? cnt.skipped_zero_error : cnt.skipped_zero_activation) += dead * m;
          if (pb.is_bp) cnt.executed_macs += (kept - dead) * m;
        }
        for (int64_t i0 = 0; i0 < Imax; i0 += BR) {
          const int64_t i1 = std::min(Imax, i0 + BR);
          const int64_t row_org = i0 * ist + drmin, rows = (i1 - 1 - i0) * kst + drmax - drmin + 1;
          for (int64_t cg = 0; cg < ncg; ++cg) {
            const int64_t c0 = cg * CG, cga = std::min(CG, pb.Cin - c0);
            float* const slab = tr.slab[shared ? parity : tid].data();
            parity ^= 1;
            build_slab<V>(pb.in, pb.Cin, pb.Hin, pb.Win, pb.N, nb, c0, cga, row_org, rows, dcmin, slab_cols,
                          chan_stride, pro, slab, shared, sub);
            const int32_t* off = cache.off.data();
            const float* val = pb.val;
            const int32_t* seg = cache.seg.data() + cg * nph * pb.Cout * 2;
            bool any_zero = false;
            for (int64_t ci = c0; ci < c0 + cga; ++ci) any_zero |= zero_nb[ci] != 0;
            if (any_zero) {  // this slab's taps without those on zero planes
              ft.off.clear();
              ft.val.clear();
              ft.seg.assign(static_cast<size_t>(nph * pb.Cout * 2), 0);
              for (int64_t ph = 0; ph < nph; ++ph)
                for (int64_t o = o0; o < o1; ++o) {
                  ft.seg[(ph * pb.Cout + o) * 2] = static_cast<int32_t>(ft.off.size());
                  for (int64_t ci = c0; ci < c0 + cga; ++ci) {
                    if (zero_nb[ci]) continue;
                    const int64_t sg = (o * nph + ph) * pb.Cin + ci;
                    for (int32_t e = pb.ptr[sg]; e < pb.ptr[sg + 1]; ++e) {
                      ft.off.push_back(off[e]);
                      ft.val.push_back(val[e]);
                    }
                  }
                  ft.seg[(ph * pb.Cout + o) * 2 + 1] = static_cast<int32_t>(ft.off.size());
                }
              off = ft.off.data();
              val = ft.val.data();
              seg = ft.seg.data();
            }
            for (int64_t ph = 0; ph < nph; ++ph) {
              const int64_t a = ph / ost, b = ph % ost;
              const int64_t Ia = a < pb.Hout ? (pb.Hout - a + ost - 1) / ost : 0;
              const int64_t Jb = b < pb.Wout ? (pb.Wout - b + ost - 1) / ost : 0;
              const int64_t ra = i0, rb = std::min(i1, Ia);
              if (rb <= ra || Jb == 0) continue;
              if (opt.leave_phases && (*opt.leave_phases)[ph]) continue;
              const bool write = opt.write_phases && (*opt.write_phases)[ph];
              TileCtx c;
              c.slab = slab;
              c.i0 = i0;
              c.slab_cols = slab_cols;
              c.ist = kst;
              c.out_nb = pb.out + nb * pb.Cout * out_plane;
              c.out_plane = out_plane;
              c.part = tr.part[tid].data() + ph * no * part_plane;
              c.part_plane = part_plane;
              c.part_row = Jmax * kLanes;
              c.stream = stream;
              c.accumulate = opt.accumulate_output && !write;
              c.prefetch_out = ost > 1 || !stream;
              if (opt.accumulate_relu) c.relu_nb = opt.accumulate_relu->data() + nb * pb.Cout * out_plane;
              c.Hout = pb.Hout;
              c.Wout = pb.Wout;
              c.a = a;
              c.b = b;
              c.ost = ost;
              c.off = off;
              c.val = val;
              c.seg = seg + ph * pb.Cout * 2;
              c.o0 = o0;
              c.o1 = o1;
              c.first = cg == 0;
              c.last = cg == ncg - 1;
              c.bias = epi.bias;
              c.stats = lane_stats;
              if (grad_sums) {
                c.gx_nb = epi.bn_x->data() + nb * pb.Cout * out_plane;
                c.gmean = epi.bn_mean;
                c.gscale = epi.bn_relu_scale;
                c.gshift = epi.bn_relu_shift;
              }
              c.lanes = n_real;
              c.keep = mask.keep ? mask.keep + nb * pb.Cout * pb.Hout * pb.Wout : nullptr;
              c.count_tiles = !pb.is_bp;
              c.n_real = n_real;
              c.cnt = &cnt;
              if (grad_sums && epi.bn_relu_scale)
                tile_dispatch_ist<V, false, 3>(shape, c, ra, rb, Jb);
              else if (grad_sums)
                tile_dispatch_ist<V, false, 2>(shape, c, ra, rb, Jb);
              else if (epi.bias && stats)
                tile_dispatch_ist<V, true, 1>(shape, c, ra, rb, Jb);
              else if (epi.bias)
                tile_dispatch_ist<V, true, 0>(shape, c, ra, rb, Jb);
              else if (stats)
                tile_dispatch_ist<V, false, 1>(shape, c, ra, rb, Jb);
              else
                tile_dispatch_ist<V, false, 0>(shape, c, ra, rb, Jb);
            }
          }
        }
        if (stats) {  // fold this block's per-lane sums into double, one channel at a time
          for (int64_t o = o0; o < o1; ++o) {
            float* st = lane_stats + o * 2 * kLanes;
            double s = 0, q = 0;
            for (int64_t l = 0; l < kLanes; ++l) s += st[l], q += st[kLanes + l];
            tr.stats_d[(nb * pb.Cout + o) * 2] = s;
            tr.stats_d[(nb * pb.Cout + o) * 2 + 1] = q;
            std::fill(st, st + 2 * kLanes, 0.0f);
          }
        }
      }
      ws.counters[tid] = cnt;
    }
    V::fence();  // the streamed outputs are visible before the region ends
  }
  for (const SparseCounters& c : ws.counters) total += c;
  if (stats)
    for (int64_t o = 0; o < pb.Cout; ++o) {
      double s = 0, q = 0;
      for (int64_t nb = 0; nb < pb.NB; ++nb)
        s += tr.stats_d[(nb * pb.Cout + o) * 2], q += tr.stats_d[(nb * pb.Cout + o) * 2 + 1];
      if (epi.sum) epi.sum[o] = s;
      if (epi.sumsq) epi.sumsq[o] = q;
      if (epi.grad_sum) epi.grad_sum[o] = s;
      if (epi.grad_sum_xc) epi.grad_sum_xc[o] = q;
    }
}

// ---------------------------------------------------------------------------------------------------
// WG: for a tile of 8 or 16 positions and one output channel k, the dy vectors sit in registers while
// the kept taps of k stream past, 8 at a time: tap e gets Σ_t x_slab[off(e) + t] * dy[t] (one x load
// per FMA, 8 independent sums). The sums go to a per-tap vector in this thread's buffer, reduced
// across lanes once per band. Output channels are innermost so that the tile's slab region (group
// channels x tile rows x tile columns) stays in L1 across them.

// The input rows of the next slab, asked for into L2 a few lines at a time while the current one
// computes. WG's input was written in the forward pass, a whole step's activations ago: it comes from
// memory, and the slab copy otherwise waits for every line of it. Measured on the Zen 4 at 90%
// (16->16 @28x28): cold 0.89-0.91 -> 0.69-0.70 ms, warm 0.50 -> 0.53 ms; in training stage 0's six WG
// 738-746 -> 591-611 ms over 150 steps. FF and BP read inputs written just before them, from L3,
// where the same prefetch measured slower (docs/benchmarks.md), so only WG does it.
struct SlabPrefetch {
  static constexpr int kMaxRuns = 64;
  const float* run[kMaxRuns] = {};  // contiguous runs of input rows, one per channel of the next group
  int64_t lines[kMaxRuns] = {};     // 64-byte lines in each
  int nruns = 0, cur = 0;
  int64_t line = 0;
  int64_t per_step = 0;  // lines asked for at each step()
  template <class V>
  void step() {
    for (int64_t n = 0; n < per_step && cur < nruns; ++n) {
      V::prefetch_l2(run[cur], line * kLanes);
      if (++line == lines[cur]) line = 0, ++cur;
    }
  }
};

struct WgTileCtx {
  SlabPrefetch* pf = nullptr;  // may be null
  const float* slab = nullptr;
  int64_t i0 = 0, slab_cols = 0, ist = 1;
  const float* dy_nb = nullptr;  // dy of this image block
  int64_t dy_plane = 0, Q = 0;
  const int32_t* off = nullptr;   // per entry: offset in the slab
  const int32_t* slot = nullptr;  // per entry: where its sums are in pv
  const int32_t* seg = nullptr;   // taps of output channel k in this group: [seg[2k], seg[2k + 1])
  int64_t k0 = 0, k1 = 0;
  const uint8_t* dead = nullptr;  // per k - k0: dy plane zero in this block
  float* pv = nullptr;            // per tap slot: 16 partial sums
  // With a single tile per band, the sums are reduced at once into grad[idx ? idx[e] : e] instead.
  bool direct = false;
  float* grad = nullptr;
  const int32_t* idx = nullptr;
};

template <class V, int T, int J>
[[gnu::always_inline]] inline void wg_taps(const WgTileCtx& c, int32_t e, const float* xb,
                                           const int64_t* t_off, const typename V::R* d) {
  using R = typename V::R;
  R acc[J];
  const float* xp[J];
#pragma GCC unroll 8
  for (int jj = 0; jj < J; ++jj) acc[jj] = V::zero(), xp[jj] = xb + c.off[e + jj];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int jj = 0; jj < J; ++jj) acc[jj] = V::fma(V::load(xp[jj] + t_off[t]), d[t], acc[jj]);
  if (c.direct) {  // one tile per band: straight into the gradients
    float sums[J];
    V::template reduce_n<J>(acc, sums);
#pragma GCC unroll 8
    for (int jj = 0; jj < J; ++jj) c.grad[c.idx ? c.idx[e + jj] : e + jj] += sums[jj];
    return;
  }
#pragma GCC unroll 8
  for (int jj = 0; jj < J; ++jj) {
    float* p = c.pv + c.slot[e + jj] * kLanes;
    V::store(p, V::add(V::load(p), acc[jj]));
  }
}

// All full TP x TQ tiles in rows [ra, rb) and columns [ja, jb), for every output channel of the thread.
template <class V, int TP, int TQ, int IST>
void wg_rect(const WgTileCtx& c, int64_t ra, int64_t rb, int64_t ja, int64_t jb) {
  using R = typename V::R;
  constexpr int T = TP * TQ;
  const int64_t ist = IST ? IST : c.ist;
  int64_t t_off[T];
  for (int t = 0; t < T; ++t) t_off[t] = ((t / TQ) * ist * c.slab_cols + (t % TQ) * ist) * kLanes;
  for (int64_t i = ra; i + TP <= rb; i += TP) {
    for (int64_t j = ja; j + TQ <= jb; j += TQ) {
      const float* xb = c.slab + ((i - c.i0) * ist * c.slab_cols + j * ist) * kLanes;
      // The next tile's dy, from this one's: to the right, or the first of the next row of tiles.
      const int64_t next = (j + 2 * TQ <= jb ? TQ : TP * c.Q + ja - j) * kLanes;
      for (int64_t k = c.k0; k < c.k1; ++k) {
        int32_t e = c.seg[2 * k];
        const int32_t end = c.seg[2 * k + 1];
        if (e == end || c.dead[k - c.k0]) continue;
        const float* dyk = c.dy_nb + k * c.dy_plane + (i * c.Q + j) * kLanes;
        R d[T];
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) d[t] = V::load(dyk + ((t / TQ) * c.Q + t % TQ) * kLanes);
          // dy is read straight from memory, one short run per output channel: too many streams for the
          // hardware prefetchers. Ask for the next tile's while this one computes.
#pragma GCC unroll 16
        for (int t = 0; t < T; ++t) V::prefetch_l2(dyk, next + ((t / TQ) * c.Q + t % TQ) * kLanes);
        if (c.pf) c.pf->step<V>();
        constexpr int J = V::kWgTaps;
        for (; end - e >= J; e += J) wg_taps<V, T, J>(c, e, xb, t_off, d);
        if constexpr (J > 4)
          if (end - e >= 4) wg_taps<V, T, 4>(c, e, xb, t_off, d), e += 4;
        if constexpr (J > 2)
          if (end - e >= 2) wg_taps<V, T, 2>(c, e, xb, t_off, d), e += 2;
        if constexpr (J > 1)
          if (end - e >= 1) wg_taps<V, T, 1>(c, e, xb, t_off, d);
      }
    }
  }
}

template <class V, int IST>
void wg_rows(const WgTileCtx& c, int64_t ra, int64_t rb, int64_t ja, int64_t jb) {
  int64_t j = ja;
  const int64_t j8 = ja + (jb - ja) / 8 * 8;
  if (j8 > j) wg_rect<V, 1, 8, IST>(c, ra, rb, j, j8), j = j8;
  if (jb - j >= 4) wg_rect<V, 1, 4, IST>(c, ra, rb, j, j + 4), j += 4;
  if (jb - j >= 2) wg_rect<V, 1, 2, IST>(c, ra, rb, j, j + 2), j += 2;
  if (jb - j >= 1) wg_rect<V, 1, 1, IST>(c, ra, rb, j, j + 1);
}

// Rows [ra, rb) x all Q columns: the main tile shape where it fits, one-row tiles for the rest.
template <class V, int TP, int TQ, int IST>
void wg_shape(const WgTileCtx& c, int64_t ra, int64_t rb) {
  const int64_t rm = ra + (rb - ra) / TP * TP, jm = c.Q / TQ * TQ;
  if (rm > ra && jm > 0) wg_rect<V, TP, TQ, IST>(c, ra, rm, 0, jm);
  if (rm > ra && jm < c.Q) wg_rows<V, IST>(c, ra, rm, jm, c.Q);
  if (rm < rb) {  // the rows left under the main tiles: one-row tiles of its width, then narrower ones
    if constexpr (TP > 1) {
      if (jm > 0) wg_rect<V, 1, TQ, IST>(c, rm, rb, 0, jm);
      if (jm < c.Q) wg_rows<V, IST>(c, rm, rb, jm, c.Q);
    } else {
      wg_rows<V, IST>(c, rm, rb, 0, c.Q);
    }
  }
}

template <class V, int IST>
void wg_band(const WgTileCtx& c, int64_t ra, int64_t rb, int shape) {
  switch (shape) {
    case 1:
      wg_shape<V, 2, 8, IST>(c, ra, rb);
      break;
    case 2:
      wg_shape<V, 1, 16, IST>(c, ra, rb);
      break;
    case 3:
      wg_shape<V, 1, 8, IST>(c, ra, rb);
      break;
    case 5:
      wg_shape<V, 2, 7, IST>(c, ra, rb);
      break;
    case 6:
      wg_shape<V, 1, 7, IST>(c, ra, rb);
      break;
    case 7:
      wg_shape<V, 1, 14, IST>(c, ra, rb);
      break;
    case 8:
      wg_shape<V, 1, 4, IST>(c, ra, rb);
      break;
    default:
      wg_shape<V, 4, 4, IST>(c, ra, rb);
      break;
  }
}

template <class V>
void wg_run(const ConvGeom& g, const float* x, const float* dy, const SparseWeights& w, float* part,
            float* db, SparseConvScratch::Impl& ws, const ConvPrologue& pro, const SparseConvOptions& opt,
            SparseCounters& total) {
  const int64_t C = g.C, K = g.K, R = g.R, S = g.S, st = g.stride, P = g.P(), Q = g.Q();
  const int64_t NB = (g.N + kLanes - 1) / kLanes;
  const int nth = omp_get_max_threads();
  // 1x16 for wide outputs, 2x8, then 4x4; widths that are multiples of 7 but not of 8 (ResNet-20 on
  // 28x28 images) in tiles that cover a row exactly, 14 or 7 positions wide (measured: 10-24% faster).
  // A strided 3x3 reads a wide output's rows from a slab twice as wide: 1x8 there, measured on the Zen 4
  // (64->128 @32x32 s2, ms, 1x16 -> 1x8) at 50% 10.7 -> 9.6, 70% 6.8 -> 5.8, 90% 2.55 -> 2.49, 95% 1.65
  // -> 1.56 (at stride 1, 1x8 measured 9-20% slower; ResNet-20's strided 1x14 and 2x7 beat 1x7 and 1x8).
  // A strided 1x1 reads one x position in st x st: the slab holds only those, read at stride 1.
  const int64_t sub = st > 1 && R == 1 && S == 1 ? st : 1, kst = st / sub;
  const int shape = opt.tile                    ? opt.tile
                    : Q % 14 == 0 && Q % 8 != 0 ? 7
                    : Q % 7 == 0 && Q % 8 != 0  ? 5
                    : Q >= 16                   ? (kst > 1 ? 3 : 2)
                    : Q >= 8                    ? 1
                                                : 4;
  const int64_t TP = tile_shape_rows(shape);
  const int64_t row_tiles = Q / tile_shape_cols(shape);  // full tiles across an output row
  int64_t CG =
      opt.channel_group > 0 ? std::min<int64_t>(C, opt.channel_group) : auto_channel_group(w.nnz(), K, 1, C);
  // Groups of 8 channels (kernels larger than 1x1; not on AVX2, not measured there) where each output
  // channel still has 8 taps or more in one (a 3x3 keeping at least 1/9 of its weights) and the band has
  // several tiles at stride 1: the tiles' slab region, half as large, is then read from L1 instead of L2.
  // Measured on the Zen 4, ms, groups of 16 -> 8: ResNet-20's 16->16 @28x28 at 50% 1.91 -> 1.74, at 71%
  // 1.17 -> 1.11; 32->32 @14x14 at 71% 1.11 -> 1.04, at 87% 0.58 -> 0.56; ResNet-18's 64->64 @32x32 at
  // 50% 20.1 -> 18.2, 128->128 @16x16 19.4 -> 17.5, 256->256 @8x8 19.7 -> 18.7. A single tile per band
  // (512->512 @4x4: 15.2 -> 16.6) and stride 2 (64->128 @32x32: 10.7 -> 11.3) measured slower, 64->64
  // @7x7 the same, and so did 16->16 @28x28 at 90%, where the rule keeps 16 (0.53 ms either way).
  if (!V::kNarrow && opt.channel_group <= 0 && CG == 16 && C > 8 && st == 1 && R * S > 1 &&
      (P / TP) * row_tiles > 2 && w.nnz() >= K * C)
    CG = 8;
  const int64_t ncg = (C + CG - 1) / CG;
  const int64_t slab_cols = (Q - 1) * kst + S;
  // When the activations outweigh the taps (large images, few channels), each block's gradient is summed
  // on its own, and the blocks' sums are added in block order at the end: then the threads can split
  // the image blocks, each reading its share of x and dy once, instead of the output channels, each
  // reading all of x; and the bits do not depend on the split. Otherwise one running sum per tap.
  const int64_t nnz = w.nnz();
  const bool per_block = NB >= 2 && NB * C * g.H * g.W * kLanes * 4 > 16 * nnz * 8;
  const bool split_nb = per_block && nth > 1 && NB % nth == 0;
  const int nks = split_nb ? 1 : nth;  // shares of the output channels
  // Band: output rows whose slab (the group's channels) stays in L2 beside the tap sums.
  int64_t BR = opt.band_rows;
  if (BR <= 0) BR = std::max<int64_t>(TP, 131072 / (CG * slab_cols * kst * kLanes * 4) / TP * TP);
  BR = std::min(BR, P);
  const int64_t slab_rows_max = (BR - 1) * kst + R;
  const int64_t chan_stride = slab_rows_max * slab_cols * kLanes;
  Transient& tr = transient();
  tr.slab_buffers(std::max(nth, 2), CG * chan_stride);
  split_by_cost(w.nnz_per_k(), nks, ws.bounds);
  ws.per_thread(nth);
  const std::vector<int32_t>& fptr = w.ff_ptr();
  const std::vector<int32_t>& frs = w.ff_rs();

  TapCache& cache = ws.wg_cache;
  std::vector<int64_t> key = {C, K, CG, chan_stride, slab_cols, R, S};
  key.insert(key.end(), ws.bounds.begin(), ws.bounds.end());
  if (!cache.valid(w.structure_version(), key)) {
    cache.off.assign(static_cast<size_t>(w.nnz()), 0);
    cache.slot.assign(static_cast<size_t>(w.nnz()), 0);
    cache.seg.assign(static_cast<size_t>(ncg * K * 2), 0);
    cache.slots.assign(static_cast<size_t>(nks * ncg), 0);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t c = 0; c < C; ++c)
        for (int32_t e = fptr[k * C + c]; e < fptr[k * C + c + 1]; ++e)
          cache.off[e] =
              static_cast<int32_t>((c % CG) * chan_stride + (frs[e] / S * slab_cols + frs[e] % S) * kLanes);
    for (int t = 0; t < nks; ++t)
      for (int64_t cg = 0; cg < ncg; ++cg) {
        const int64_t c0 = cg * CG, c1 = std::min(C, c0 + CG);
        int32_t n = 0;
        for (int64_t k = ws.bounds[t]; k < ws.bounds[t + 1]; ++k) {
          cache.seg[(cg * K + k) * 2] = fptr[k * C + c0];
          cache.seg[(cg * K + k) * 2 + 1] = fptr[k * C + c1];
          for (int32_t e = fptr[k * C + c0]; e < fptr[k * C + c1]; ++e) cache.slot[e] = n++;
        }
        cache.slots[t * ncg + cg] = n;
      }
    cache.version = w.structure_version();
    cache.key = key;
  }
  int64_t max_slots = 1;
  for (int64_t n : cache.slots) max_slots = std::max(max_slots, n);
  tr.part_buffers(nth, max_slots * kLanes);
  ws.zero_in.resize(static_cast<size_t>(NB * C));
  ws.zero_err.resize(static_cast<size_t>(NB * K));
  const int64_t dy_plane = P * Q * kLanes;
  if (per_block) tr.wg_blocks.resize(static_cast<size_t>(NB * nnz));

#pragma omp parallel num_threads(nth)
  {
    detect_zero_planes<V>(x, g.N, C, g.H * g.W, pro, opt.skip_zero_planes, ws.zero_in.data());
    detect_zero_planes<V>(dy, g.N, K, P * Q, ConvPrologue{}, opt.skip_zero_planes, ws.zero_err.data());
    const bool shared = !split_nb && share_slabs(nth, opt);
    for (int tid = omp_get_thread_num(); tid < nth; tid += omp_get_num_threads()) {
      const int ks = split_nb ? 0 : tid;  // this thread's share of the output channels
      const int64_t k0 = ws.bounds[ks], k1 = ws.bounds[ks + 1], nk = k1 - k0;
      SparseCounters cnt;  // this thread's own: counters of both threads in one cache line would ping-pong
      int parity = 0;
      float* const pv = tr.part[tid].data();
      FilteredTaps& ft = ws.filtered[tid];
      if (!per_block)
        for (int32_t e = fptr[k0 * C]; e < fptr[k1 * C]; ++e) part[e] = 0.0f;

      std::vector<uint8_t> dead(static_cast<size_t>(nk));
      // A slab this thread copies alone, of whole input rows: ask for the next one's rows ahead.
      const bool prefetch_next = !shared && sub == 1;
      SlabPrefetch pf;
      // Split: contiguous runs of blocks, as in corr_run.
      const int64_t nb_lo = split_nb ? NB * tid / nth : 0, nb_hi = split_nb ? NB * (tid + 1) / nth : NB;
      for (int64_t nb = nb_lo; nb < nb_hi; ++nb) {
        const int64_t n_real = real_images(g.N, nb);
        float* const grad = per_block ? tr.wg_blocks.data() + nb * nnz : part;
        if (per_block) std::fill(grad + fptr[k0 * C], grad + fptr[k1 * C], 0.0f);
        const uint8_t* zero_x = ws.zero_in.data() + nb * C;
        for (int64_t k = k0; k < k1; ++k) dead[k - k0] = ws.zero_err[nb * K + k];
        for (int64_t i0 = 0; i0 < P; i0 += BR) {
          const int64_t rows = std::min(BR, P - i0);
          const int64_t row_org = i0 * st - g.pad, slab_rows = (rows - 1) * kst + R;
          const int64_t positions = n_real * rows * Q;
          // Few tiles per band: reducing each tile's sums at once costs less than zeroing, updating and
          // folding the per-tap vectors.
          const bool direct = (rows / TP) * row_tiles <= 2;
          for (int64_t cg = 0; cg < ncg; ++cg) {
            const int64_t c0 = cg * CG, cga = std::min(CG, C - c0);
            const int64_t nslots = cache.slots[ks * ncg + cg];
            float* const slab = tr.slab[shared ? parity : tid].data();
            parity ^= 1;
            build_slab<V>(x, C, g.H, g.W, g.N, nb, c0, cga, row_org, slab_rows, -g.pad, slab_cols,
                          chan_stride, pro, slab, shared, sub);
            WgTileCtx c;
            if (prefetch_next) {
              // The next slab in this thread's order: the next group, else the next band, else the next
              // block; its rows inside the input, one contiguous run per channel.
              int64_t nnb = nb, ni0 = i0, ncgi = cg + 1;
              if (ncgi == ncg) {
                ncgi = 0;
                ni0 += BR;
                if (ni0 >= P) ni0 = 0, ++nnb;
              }
              pf = SlabPrefetch{};
              if (nnb < nb_hi) {
                const int64_t org = ni0 * st - g.pad, nrows = std::min(BR, P - ni0);
                const int64_t r0 = std::max<int64_t>(0, org),
                              r1 = std::min<int64_t>(g.H, org + (nrows - 1) * kst + R);
                const int64_t nc0 = ncgi * CG, ncga = std::min(CG, C - nc0);
                int64_t total = 0;
                for (int64_t ci = 0; r1 > r0 && ci < ncga && pf.nruns < SlabPrefetch::kMaxRuns; ++ci) {
                  pf.run[pf.nruns] = x + ((nnb * C + nc0 + ci) * g.H + r0) * g.W * kLanes;
                  pf.lines[pf.nruns] = (r1 - r0) * g.W;  // a position is one 64-byte line
                  total += pf.lines[pf.nruns++];
                }
                // Spread over this slab's (tile, output channel) steps.
                const int64_t steps =
                    std::max<int64_t>(1, (rows / TP) * std::max<int64_t>(1, row_tiles) * nk);
                pf.per_step = (total + steps - 1) / steps;
              }
              c.pf = &pf;
            }
            c.slab = slab;
            c.i0 = i0;
            c.slab_cols = slab_cols;
            c.ist = kst;
            c.dy_nb = dy + nb * K * dy_plane;
            c.dy_plane = dy_plane;
            c.Q = Q;
            c.off = cache.off.data();
            c.slot = cache.slot.data();
            c.seg = cache.seg.data() + cg * K * 2;
            c.k0 = k0;
            c.k1 = k1;
            c.dead = dead.data();
            c.pv = pv;
            c.grad = grad;
            c.direct = direct;
            bool any_zero = false;
            for (int64_t ci = c0; ci < c0 + cga; ++ci) any_zero |= zero_x[ci] != 0;
            if (any_zero) {  // this block's taps without those on zero x planes
              ft.off.clear();
              ft.slot.clear();
              ft.idx.clear();
              ft.seg.assign(static_cast<size_t>(K * 2), 0);
              for (int64_t k = k0; k < k1; ++k) {
                ft.seg[2 * k] = static_cast<int32_t>(ft.off.size());
                for (int64_t ci = c0; ci < c0 + cga; ++ci)
                  if (!zero_x[ci])
                    for (int32_t e = fptr[k * C + ci]; e < fptr[k * C + ci + 1]; ++e) {
                      ft.off.push_back(cache.off[e]);
                      ft.slot.push_back(cache.slot[e]);
                      ft.idx.push_back(e);
                    }
                ft.seg[2 * k + 1] = static_cast<int32_t>(ft.off.size());
              }
              c.off = ft.off.data();
              c.slot = ft.slot.data();
              c.seg = ft.seg.data();
              c.idx = ft.idx.data();
            }
            for (int64_t k = k0; k < k1; ++k) {
              const int64_t seg = fptr[k * C + c0 + cga] - fptr[k * C + c0];
              const int64_t kept = c.seg[2 * k + 1] - c.seg[2 * k];
              cnt.skipped_pruned += (cga * R * S - seg) * positions;
              if (dead[k - k0]) {
                cnt.skipped_zero_error += seg * positions;
              } else {
                cnt.skipped_zero_activation += (seg - kept) * positions;
                cnt.executed_macs += kept * positions;
              }
            }
            if (!direct) std::fill(pv, pv + nslots * kLanes, 0.0f);
            if (kst == 1)
              wg_band<V, 1>(c, i0, i0 + rows, shape);
            else if (kst == 2)
              wg_band<V, 2>(c, i0, i0 + rows, shape);
            else
              wg_rows<V, 0>(c, i0, i0 + rows, 0, Q);
            if (direct) continue;
            // Fold the lanes of this band's tap sums into the gradients, always 8 at a time (zero-padded)
            // so that every sum is added in the same order whatever the thread split.
            typename V::R a[8];
            int32_t idx[8];
            int n = 0;
            float sums[8];
            auto flush = [&] {
              for (int jj = n; jj < 8; ++jj) a[jj] = V::zero();
              V::template reduce_n<8>(a, sums);
              for (int jj = 0; jj < n; ++jj) grad[idx[jj]] += sums[jj];
              n = 0;
            };
            for (int64_t k = k0; k < k1; ++k)
              for (int32_t e = fptr[k * C + c0]; e < fptr[k * C + c0 + cga]; ++e) {
                idx[n] = e;
                a[n++] = V::load(pv + cache.slot[e] * kLanes);
                if (n == 8) flush();
              }
            if (n) flush();
          }
        }
      }
      ws.counters[tid] = cnt;
    }
#pragma omp barrier
    if (per_block) {  // the blocks' sums, in block order
#pragma omp for schedule(static)
      for (int64_t e = 0; e < nnz; ++e) {
        float s = tr.wg_blocks[e];
        for (int64_t nb = 1; nb < NB; ++nb) s += tr.wg_blocks[nb * nnz + e];
        part[e] = s;
      }
    }
    if (db) {
#pragma omp for schedule(static)
      for (int64_t k = 0; k < K; ++k) {
        typename V::R acc = V::zero();
        for (int64_t nb = 0; nb < NB; ++nb) {
          const float* d = dy + (nb * K + k) * dy_plane;
          for (int64_t i = 0; i < P * Q; ++i) acc = V::add(acc, V::load(d + i * kLanes));
        }
        db[k] = V::reduce(acc);
      }
    }
  }
  for (const SparseCounters& c : ws.counters) total += c;
}

void check_activation(const Tensor& t, const char* what, const Shape& expected) {
  TRAINER_CHECK(t.layout() == Layout::NCHW16n, "sparse conv: {} must be NCHW16n, got {}", what,
                layout_name(t.layout()));
  check_shape(t, expected, what);
}

template <class Fn>
void with_backend(SparseImpl impl, Fn&& fn) {
#ifdef __AVX512F__
  if (impl == SparseImpl::best) {
    fn(VecAvx512{});
    return;
  }
#elif defined(__AVX2__) && defined(__FMA__)
  if (impl == SparseImpl::best) {
    fn(VecAvx2{});
    return;
  }
#endif
  (void)impl;
  fn(VecScalar{});
}

}  // namespace

const char* sparse_conv_backend() {
#ifdef __AVX512F__
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "portable";
#endif
}

bool cpu_is_amd() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool amd = [] {
    __builtin_cpu_init();  // a no-op once done; needed if this runs before the runtime probed the CPU
    return __builtin_cpu_is("amd") != 0;
  }();
  return amd;
#else
  return false;
#endif
}

int64_t l1_data_cache_bytes() {
  static const int64_t bytes = [] {
    const long b = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return b > 0 ? static_cast<int64_t>(b) : int64_t{48} << 10;
  }();
  return bytes;
}

// Measured on ResNet-18 CIFAR shapes: 2x8 for wide outputs, one-row tiles when the input is read at
// stride 2 (a taller tile's slab region would not fit L1), 4x4 for 4-wide outputs. Widths that are
// multiples of 7 but not of 8 (28, 14, 7: ResNet-20 on 28x28 images) take 1x7 tiles, which cover a
// row exactly; 8-wide tiles left a third to a half of each row to narrow, slower tiles (measured on
// the ResNet-20 shapes: 3-30% faster, most at 7x7).
// With 16 vector registers of half a 16-image vector each (AVX2), tiles of more than 7 positions spill
// their accumulators: 1x7 wherever a row is that wide, else one-row tiles of 4, 2, 1 (measured on the
// ResNet-18 shapes at 90%: 2x8 -> 1x7 took FF at 32x32 from 12.3 to 8.9 ms, 4x4 -> 1x4 at 4x4 from
// 11-15 to 9-10 ms); rows a multiple of 8 wide take 1x8, which covers them exactly where 1x7 leaves a
// column to one-position tiles (8-wide rows, 256->256 at 8x8, one thread: BP 19.7-20.4 -> 17.1 ms,
// FF 19.0-19.3 -> 13.3-17.4 ms).
// The 2x8 and 4x4 tiles were chosen on a machine with a 48 KiB L1. Their slab region (16 channels: 40
// KiB for 2x8, 36 KiB for 4x4 at stride 1, 81 KiB for 4x4 at stride 2) overflows a 32 KiB L1 (AMD Zen
// 4), where the one-row tile of the same width is faster (ResNet-18 shapes at 90%, 2 threads, fastest
// of 11-21, two alternating runs each, ms): 1x8 for 64->64 @32x32 FF 4.51-4.55 against 4.65, BP
// 4.44-4.54 against 4.59-4.62; 128->128 @16x16 FF 4.17 / 4.31, BP 4.13-4.16 / 4.35-4.38; 256->256 @8x8
// FF 3.99-4.00 / 4.11-4.20, BP 3.99-4.07 / 4.17-4.29; 1x4 for 256->512 @8x8 s2 (81 KiB in FF, 100 KiB
// in BP's 64-channel slabs) FF 2.39-2.41 / 2.48-2.75, BP 2.37-2.59 / 2.63-2.77. A 4x4 tile covers a
// 4-wide image in one pass over the output channels' taps, four 1x4 tiles in four: on 512->512 @4x4
// (36 KiB, its taps 1.9 MB, past L2) 1x4 was no faster (FF alike in one set and 5% slower in another,
// BP faster in one and 3% slower in the other), so 4x4 gives way only past twice the L1. The 1x7 tiles and
// the strided 1x8 stay: narrower ones leave columns to slower tiles (1x4 on 32->64 s2 @14x14, 7-wide rows: FF
// 0.37-0.39 against 0.28-0.30 ms).
int sparse_conv_default_tile(int64_t Jmax, int64_t ist, int64_t channels, int64_t tap_rows, int64_t tap_cols,
                             bool narrow, int64_t l1_bytes) {
  TRAINER_CHECK(
      Jmax > 0 && ist > 0 && channels > 0 && tap_rows > 0 && tap_cols > 0 && l1_bytes > 0,
      "sparse conv: tile choice for jmax {} ist {} channels {} taps {}x{} l1 {}: every value must be "
      "positive",
      Jmax, ist, channels, tap_rows, tap_cols, l1_bytes);
  if (narrow) return Jmax % 8 == 0 ? 3 : Jmax >= 7 ? 6 : 3;
  if (Jmax % 7 == 0 && Jmax % 8 != 0) return 6;
  auto fits = [&](int64_t tp, int64_t tq, int64_t slack) {
    return channels * ((tp - 1) * ist + tap_rows) * ((tq - 1) * ist + tap_cols) * kLanes * 4 <=
           slack * l1_bytes;
  };
  if (Jmax >= 8) return ist >= 2 || !fits(2, 8, 1) ? 3 : 1;
  if (Jmax >= 4) return fits(4, 4, 2) ? 4 : 8;
  return 3;
}

ConvGeom sparse_conv_geom(const SparseWeights& w, const Shape& x_shape) {
  TRAINER_CHECK(!w.empty(), "sparse conv: weights were never built");
  TRAINER_CHECK(x_shape.size() == 4 && x_shape[1] == w.C(),
                "sparse conv: input {} does not match weights [{}, {}, {}, {}]", shape_str(x_shape), w.K(),
                w.C(), w.R(), w.S());
  ConvGeom g;
  g.N = x_shape[0], g.C = x_shape[1], g.H = x_shape[2], g.W = x_shape[3];
  g.K = w.K(), g.R = w.R(), g.S = w.S(), g.stride = w.stride(), g.pad = w.pad();
  TRAINER_CHECK(g.P() >= 1 && g.Q() >= 1,
                "sparse conv: input {} is smaller than the {}x{} kernel with pad {}", shape_str(x_shape), g.R,
                g.S, g.pad);
  return g;
}

SparseCounters sparse_conv_ff(const Tensor& x, const SparseWeights& w, Tensor& y, SparseConvScratch& scratch,
                              const ConvPrologue& prologue, const ConvEpilogue& epilogue,
                              const ConvOutputMask& mask, const SparseConvOptions& opt) {
  TRAINER_CHECK(!opt.accumulate_output, "sparse conv ff: accumulate_output is for bp only");
  TRAINER_CHECK(!epilogue.bn_x, "sparse conv ff: the epilogue's batch-norm grad sums are for bp only");
  const ConvGeom g = sparse_conv_geom(w, x.shape());
  check_activation(x, "ff input x", x.shape());
  y.resize({g.N, g.K, g.P(), g.Q()}, Layout::NCHW16n);
  CorrProblem pb;
  pb.in = x.data(), pb.Cin = g.C, pb.Hin = g.H, pb.Win = g.W;
  pb.out = y.data(), pb.Cout = g.K, pb.Hout = g.P(), pb.Wout = g.Q();
  pb.N = g.N, pb.NB = (g.N + kLanes - 1) / kLanes;
  pb.ist = g.stride, pb.ost = 1, pb.R = g.R, pb.S = g.S;
  for (int64_t r = 0; r < g.R; ++r) pb.drow.push_back(r - g.pad);
  for (int64_t s = 0; s < g.S; ++s) pb.dcol.push_back(s - g.pad);
  pb.ptr = w.ff_ptr().data(), pb.rs = w.ff_rs().data(), pb.val = w.ff_val().data();
  pb.nnz = w.nnz(), pb.version = w.structure_version();
  pb.nnz_out = &w.nnz_per_k();
  pb.dense_taps_per_out = g.C * g.R * g.S;
  pb.positions = g.P() * g.Q();
  SparseCounters total;
  total.dense_macs = g.macs();
  with_backend(opt.impl, [&](auto v) {
    corr_run<decltype(v)>(pb, scratch.impl(), prologue, epilogue, mask, opt, total);
  });
  return total;
}

std::vector<uint8_t> sparse_conv_bp_tapless_phases(int64_t R, int64_t S, int64_t stride, int64_t pad) {
  if (stride <= 1) return {};
  std::vector<uint8_t> rows(static_cast<size_t>(stride), 1), cols(static_cast<size_t>(stride), 1);
  for (int64_t r = 0; r < R; ++r) rows[static_cast<size_t>(((r - pad) % stride + stride) % stride)] = 0;
  for (int64_t s = 0; s < S; ++s) cols[static_cast<size_t>(((s - pad) % stride + stride) % stride)] = 0;
  std::vector<uint8_t> out(static_cast<size_t>(stride * stride));
  for (int64_t a = 0; a < stride; ++a)
    for (int64_t b = 0; b < stride; ++b) out[static_cast<size_t>(a * stride + b)] = rows[a] || cols[b];
  return out;
}

SparseCounters sparse_conv_bp(const Tensor& dy, const SparseWeights& w, const Shape& x_shape, Tensor& dx,
                              SparseConvScratch& scratch, const SparseConvOptions& opt,
                              const ConvEpilogue& epi) {
  const ConvGeom g = sparse_conv_geom(w, x_shape);
  TRAINER_CHECK(
      !epi.bias && !epi.sum && !epi.sumsq,
      "sparse conv bp: the epilogue's bias and output statistics are for FF; BP takes its grad sums");
  if (epi.bn_x) {
    TRAINER_CHECK(epi.bn_x->shape() == x_shape && epi.bn_x->layout() == Layout::NCHW16n,
                  "sparse conv bp: the batch norm input for the grad sums is {} ({}), expected {} (NCHW16n)",
                  shape_str(epi.bn_x->shape()), layout_name(epi.bn_x->layout()), shape_str(x_shape));
    TRAINER_CHECK(epi.bn_mean && epi.grad_sum && epi.grad_sum_xc && !epi.bn_relu_scale == !epi.bn_relu_shift,
                  "sparse conv bp: grad sums need bn_mean, grad_sum and grad_sum_xc, and a ReLU's scale with "
                  "its shift");
  }
  check_activation(dy, "bp error dy", {g.N, g.K, g.P(), g.Q()});
  if (opt.accumulate_output)
    TRAINER_CHECK(dx.shape() == x_shape && dx.layout() == Layout::NCHW16n,
                  "sparse conv bp: accumulating into dx {} ({}), expected {} (NCHW16n)",
                  shape_str(dx.shape()), layout_name(dx.layout()), shape_str(x_shape));
  else
    dx.resize(x_shape, Layout::NCHW16n);
  if (opt.accumulate_relu)
    TRAINER_CHECK(opt.accumulate_output && opt.accumulate_relu->shape() == x_shape &&
                      opt.accumulate_relu->layout() == Layout::NCHW16n,
                  "sparse conv bp: a ReLU mask {} ({}) needs accumulate_output and x's shape {} in NCHW16n",
                  shape_str(opt.accumulate_relu->shape()), layout_name(opt.accumulate_relu->layout()),
                  shape_str(x_shape));
  const int64_t st = g.stride;
  auto check_phases = [&](const std::vector<uint8_t>* v, const char* what) {
    if (!v) return;
    TRAINER_CHECK(static_cast<int64_t>(v->size()) == st * st, "sparse conv bp: {} has {} flags, expected {}",
                  what, v->size(), st * st);
  };
  check_phases(opt.leave_phases, "leave_phases");
  check_phases(opt.write_phases, "write_phases");
  TRAINER_CHECK(!opt.write_phases || opt.accumulate_output,
                "sparse conv bp: write_phases needs accumulate_output");
  if (opt.leave_phases) {
    TRAINER_CHECK(!opt.accumulate_output, "sparse conv bp: leave_phases is for the first writer of dx");
    const std::vector<uint8_t> tapless = sparse_conv_bp_tapless_phases(g.R, g.S, st, g.pad);
    for (int64_t ph = 0; ph < st * st; ++ph)
      TRAINER_CHECK(!(*opt.leave_phases)[ph] || tapless[ph],
                    "sparse conv bp: leave_phases asks to leave phase {}, which taps reach", ph);
  }
  CorrProblem pb;
  pb.in = dy.data(), pb.Cin = g.K, pb.Hin = g.P(), pb.Win = g.Q();
  pb.out = dx.data(), pb.Cout = g.C, pb.Hout = g.H, pb.Wout = g.W;
  pb.N = g.N, pb.NB = (g.N + kLanes - 1) / kLanes;
  pb.ist = 1, pb.ost = st, pb.R = g.R, pb.S = g.S;
  // dx row h = a + st*i gathers dy row (h + pad - r) / st = i + (a + pad - r) / st from the taps r of
  // its phase a = (r - pad) mod st.
  auto disp = [&](int64_t r) {
    const int64_t a = ((r - g.pad) % st + st) % st;
    return (a + g.pad - r) / st;
  };
  for (int64_t r = 0; r < g.R; ++r) pb.drow.push_back(disp(r));
  for (int64_t s = 0; s < g.S; ++s) pb.dcol.push_back(disp(s));
  pb.ptr = w.bp_ptr().data(), pb.rs = w.bp_rs().data(), pb.val = w.bp_val().data();
  pb.nnz = w.nnz(), pb.version = w.structure_version();
  pb.nnz_out = &w.nnz_per_c();
  pb.dense_taps_per_out = g.K * g.R * g.S;
  pb.positions = g.P() * g.Q();
  pb.is_bp = true;
  SparseCounters total;
  total.dense_macs = g.macs();
  with_backend(opt.impl, [&](auto v) {
    corr_run<decltype(v)>(pb, scratch.impl(), ConvPrologue{}, epi, ConvOutputMask{}, opt, total);
  });
  return total;
}

SparseCounters sparse_conv_wg_values(const Tensor& x, const Tensor& dy, const SparseWeights& w,
                                     float* dw_values, float* db, SparseConvScratch& scratch,
                                     const ConvPrologue& prologue, const SparseConvOptions& opt) {
  const ConvGeom g = sparse_conv_geom(w, x.shape());
  check_activation(x, "wg input x", x.shape());
  check_activation(dy, "wg error dy", {g.N, g.K, g.P(), g.Q()});
  SparseCounters total;
  total.dense_macs = g.macs();
  with_backend(opt.impl, [&](auto v) {
    wg_run<decltype(v)>(g, x.data(), dy.data(), w, dw_values, db, scratch.impl(), prologue, opt, total);
  });
  return total;
}

SparseCounters sparse_conv_wg(const Tensor& x, const Tensor& dy, const SparseWeights& w, Tensor& dw,
                              Tensor* db, SparseConvScratch& scratch, const ConvPrologue& prologue,
                              const SparseConvOptions& opt) {
  std::vector<float>& part = transient().wg_part;
  part.resize(static_cast<size_t>(w.nnz()));
  if (db) db->resize({w.K()});
  const SparseCounters c =
      sparse_conv_wg_values(x, dy, w, part.data(), db ? db->data() : nullptr, scratch, prologue, opt);
  dw.resize({w.K(), w.C(), w.R(), w.S()});
  dw.zero();
  const int32_t* src = w.ff_src().data();
  float* d = dw.data();
  for (int64_t e = 0; e < w.nnz(); ++e) d[src[e]] = part[e];
  return c;
}

}  // namespace trainer
