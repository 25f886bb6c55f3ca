#include "kernels/batchnorm.hpp"

#include <algorithm>
#include <cmath>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "core/error.hpp"
#include "kernels/sparse_conv.hpp"

namespace trainer {

namespace {

constexpr int64_t kLanes = 16;
// Values summed in float before the running total moves to double: short enough that float rounding
// stays near 1e-7 relative, long enough for the vector loop to run at full speed.
constexpr int64_t kChunk = 1024;

// A 4-D activation as `groups` contiguous runs of `run` floats.
//  - plain:   a run is one (image, channel) plane of HW values.
//  - NCHW16n: a run is one (image block, channel) plane of HW positions x 16 images. One channel per
//             run as in plain; only the last block may hold padding images (zero), which the
//             statistics must skip and the outputs must keep zero.
//  - nChw16c: a run is one (image, channel block) plane of HW positions x 16 channels: the channel
//             changes with the lane, so per-channel values are loaded as 16-lane vectors.
struct Geometry {
  int64_t N, C, HW;
  Layout layout;
  int64_t groups, run;
  int64_t CB;  // nChw16c: channel blocks

  bool lane_channels() const { return layout == Layout::nChw16c; }
  int64_t channel(int64_t grp) const { return grp % C; }  // plain and NCHW16n
  // NCHW16n: real images in the group's block (16 except perhaps in the last block); else 0.
  int64_t real_images(int64_t grp) const {
    return layout == Layout::NCHW16n ? std::min<int64_t>(kLanes, N - (grp / C) * kLanes) : 0;
  }
};

Geometry geometry(const Tensor& x, const char* what) {
  TRAINER_CHECK(x.rank() == 4, "{}: expected a 4-D activation [N, C, H, W], got {}", what,
                shape_str(x.shape()));
  Geometry g;
  g.N = x.dim(0);
  g.C = x.dim(1);
  g.HW = x.dim(2) * x.dim(3);
  g.layout = x.layout();
  g.CB = (g.C + kLanes - 1) / kLanes;
  switch (g.layout) {
    case Layout::plain:
      g.groups = g.N * g.C;
      g.run = g.HW;
      break;
    case Layout::nChw16c:
      g.groups = g.N * g.CB;
      g.run = g.HW * kLanes;
      break;
    case Layout::NCHW16n:
      g.groups = (g.N + kLanes - 1) / kLanes * g.C;
      g.run = g.HW * kLanes;
      break;
  }
  return g;
}

void check_same(const Tensor& a, const Tensor& b, const char* what) {
  TRAINER_CHECK(a.shape() == b.shape() && a.layout() == b.layout(),
                "{}: x is {} ({}) but the other operand is {} ({})", what, shape_str(a.shape()),
                layout_name(a.layout()), shape_str(b.shape()), layout_name(b.layout()));
}

// The 16 per-lane values of channel block cb, zero past C so that padding lanes stay zero.
inline void load_lanes(const float* per_channel, int64_t C, int64_t cb, float* lanes) {
  for (int64_t l = 0; l < kLanes; ++l) {
    const int64_t c = cb * kLanes + l;
    lanes[l] = c < C ? per_channel[c] : 0.0f;
  }
}

// NCHW16n: zero the padding images of a group of the last block after a vector loop wrote them.
inline void zero_padding_images(const Geometry& g, int64_t grp, float* q) {
  const int64_t real = g.real_images(grp);
  if (real == 0 || real == kLanes) return;
  for (int64_t i = 0; i < g.HW; ++i)
    for (int64_t l = real; l < kLanes; ++l) q[i * kLanes + l] = 0.0f;
}

// Totals per channel from the partials (a pair per group, or per lane for nChw16c), summed over the
// images (or image blocks) in order, so that the result does not depend on how threads split groups.
void reduce_partials(const Geometry& g, const double* partial, double* s0, double* s1) {
  for (int64_t c = 0; c < g.C; ++c) {
    double a = 0, b = 0;
    if (g.lane_channels()) {
      for (int64_t n = 0; n < g.N; ++n) {
        const double* p = partial + ((n * g.CB + c / kLanes) * kLanes + c % kLanes) * 2;
        a += p[0];
        b += p[1];
      }
    } else {
      for (int64_t grp = c; grp < g.groups; grp += g.C) {
        a += partial[grp * 2];
        b += partial[grp * 2 + 1];
      }
    }
    s0[c] = a;
    s1[c] = b;
  }
}

// Sums of d = x - k and d*d over one run of one channel (plain, NCHW16n). real: images per position
// in NCHW16n's last block (lanes past it are padding and skipped); 0 when every value is real.
void run_shifted_sums(const float* p, int64_t run, float k, int64_t real, double& s, double& ss) {
  s = ss = 0;
  if (real == 0 || real == kLanes) {
    for (int64_t i0 = 0; i0 < run; i0 += kChunk) {
      const int64_t i1 = std::min(run, i0 + kChunk);
      float fs = 0, fss = 0;
#pragma omp simd reduction(+ : fs, fss)
      for (int64_t i = i0; i < i1; ++i) {
        const float d = p[i] - k;
        fs += d;
        fss += d * d;
      }
      s += fs;
      ss += fss;
    }
    return;
  }
  for (int64_t i0 = 0; i0 < run; i0 += kChunk) {
    const int64_t i1 = std::min(run, i0 + kChunk);
    float fs = 0, fss = 0;
#pragma omp simd reduction(+ : fs, fss)
    for (int64_t i = i0; i < i1; ++i) {
      const float d = (i % kLanes) < real ? p[i] - k : 0.0f;
      fs += d;
      fss += d * d;
    }
    s += fs;
    ss += fss;
  }
}

}  // namespace

void batchnorm_stats(const Tensor& x, double* mean, double* var, std::vector<double>& partial) {
  const Geometry g = geometry(x, "batchnorm stats");
  const int64_t M = g.N * g.HW;
  TRAINER_CHECK(M > 0, "batchnorm stats: empty input {}", shape_str(x.shape()));
  const int64_t pairs = g.lane_channels() ? g.groups * kLanes : g.groups;
  // The partials, then the shifts (kept with them so that a step allocates nothing once warm).
  partial.resize(static_cast<size_t>(pairs * 2 + g.C));
  double* pp = partial.data();
  double* shift = pp + pairs * 2;
  for (int64_t c = 0; c < g.C; ++c) shift[c] = x.at(0, c, 0, 0);
  const float* px = x.data();

  if (!g.lane_channels()) {
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp)
      run_shifted_sums(px + grp * g.run, g.run, static_cast<float>(shift[g.channel(grp)]), g.real_images(grp),
                       pp[grp * 2], pp[grp * 2 + 1]);
  } else {
    constexpr int64_t kChunkPos = kChunk / kLanes;
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const float* p = px + grp * g.run;
      float k[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) {
        const int64_t c = (grp % g.CB) * kLanes + l;
        k[l] = c < g.C ? static_cast<float>(shift[c]) : 0.0f;
      }
      double s[kLanes] = {}, ss[kLanes] = {};
      for (int64_t i0 = 0; i0 < g.HW; i0 += kChunkPos) {
        const int64_t i1 = std::min(g.HW, i0 + kChunkPos);
        float fs[kLanes] = {}, fss[kLanes] = {};
        for (int64_t i = i0; i < i1; ++i) {
#pragma omp simd
          for (int64_t l = 0; l < kLanes; ++l) {
            const float d = p[i * kLanes + l] - k[l];
            fs[l] += d;
            fss[l] += d * d;
          }
        }
        for (int64_t l = 0; l < kLanes; ++l) {
          s[l] += fs[l];
          ss[l] += fss[l];
        }
      }
      for (int64_t l = 0; l < kLanes; ++l) {
        pp[(grp * kLanes + l) * 2] = s[l];
        pp[(grp * kLanes + l) * 2 + 1] = ss[l];
      }
    }
  }

  reduce_partials(g, pp, mean, var);
  for (int64_t c = 0; c < g.C; ++c) {
    const double m = mean[c] / static_cast<double>(M);  // mean of (x - shift)
    mean[c] = shift[c] + m;
    var[c] = std::max(0.0, var[c] / static_cast<double>(M) - m * m);
  }
}

namespace {

// Whether a pass over plain or NCHW16n runs writes its output with non-temporal stores: when the output
// is larger than min_bytes, so that its lines are not first read for ownership; every pointer 64-byte
// aligned and every run whole vectors. The price: its readers then find it in memory, not in the shared
// cache. Measured in 90% sparse training of ResNet-20 (6.4 MB first-stage tensors):
//  - the input-gradient passes, above a core's L2 (2 MiB), on the Intel machine: 4.1-4.3 -> 2.8-3.0 ms
//    per step for the first stage's six, and +3-8% images/s; on an AMD Zen 4 the same cost 2-19%
//    images/s (batchnorm_gradient_stream_bytes);
//  - the forward apply (+ residual), read by three kernels (the next convolution's FF and WG and the
//    next residual add): streaming its 6.4 MB outputs cost 1-3% images/s, so it streams only above
//    8 MiB, as the convolutions' outputs do.
bool stream_output(const Geometry& g, std::initializer_list<const float*> ptrs, int64_t min_bytes) {
#ifdef __AVX512F__
  if (g.lane_channels() || g.run % kLanes != 0 || g.groups * g.run * 4 <= min_bytes) return false;
  for (const float* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 64 != 0) return false;
  return true;
#else
  (void)g, (void)ptrs, (void)min_bytes;
  return false;
#endif
}

// v, or 0 where it is not positive (as relu_ff: NaN and -0 give 0).
inline float relu(float v) { return v > 0.0f ? v : 0.0f; }

template <bool kRelu, bool kAdd>
void apply_impl(const Tensor& x, const float* scale, const float* shift, const float* pr, Tensor& y) {
  const Geometry g = geometry(x, "batchnorm apply");
  y.resize(x.shape(), x.layout());
  const float* px = x.data();
  float* py = y.data();
  [[maybe_unused]] const bool stream = stream_output(g, {px, py, kAdd ? pr : px}, 8 << 20);
  // Whole aligned vectors take the AVX-512 loop whether or not they stream (the compiler's loop is 8
  // lanes wide): the residual adds 2.78-2.82 -> 2.68 ms per step at 90%.
  [[maybe_unused]] const bool vec = stream || stream_output(g, {px, py, kAdd ? pr : px}, 0);
  if (!g.lane_channels()) {
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const float a = scale[g.channel(grp)], b = shift[g.channel(grp)];
      const float* __restrict p = px + grp * g.run;
      const float* __restrict r = kAdd ? pr + grp * g.run : nullptr;
      float* __restrict q = py + grp * g.run;
#ifdef __AVX512F__
      if (vec) {
        const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
        for (int64_t i = 0; i < g.run; i += kLanes) {
          __m512 v = _mm512_fmadd_ps(va, _mm512_load_ps(p + i), vb);  // FusedRelu recomputes exactly this
          if constexpr (kAdd) v = _mm512_add_ps(v, _mm512_load_ps(r + i));
          // relu as below: NaN and -0 give 0
          if constexpr (kRelu)
            v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ), v);
          if (stream)
            _mm512_stream_ps(q + i, v);
          else
            _mm512_store_ps(q + i, v);
        }
        if (stream) _mm_sfence();  // visible, in order with the stores below and to the other threads
      } else
#endif
      {
#pragma omp simd
        for (int64_t i = 0; i < g.run; ++i) {
          float v = std::fma(a, p[i], b);  // FusedRelu recomputes exactly this
          if constexpr (kAdd) v += r[i];
          q[i] = kRelu ? relu(v) : v;
        }
      }
      zero_padding_images(g, grp, q);
    }
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      float a[kLanes], b[kLanes];
      load_lanes(scale, g.C, grp % g.CB, a);
      load_lanes(shift, g.C, grp % g.CB, b);
      const float* __restrict p = px + grp * g.run;
      const float* __restrict r = kAdd ? pr + grp * g.run : nullptr;
      float* __restrict q = py + grp * g.run;
      for (int64_t i = 0; i < g.HW; ++i) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          float v = std::fma(a[l], p[i * kLanes + l], b[l]);
          if constexpr (kAdd) v += r[i * kLanes + l];
          q[i * kLanes + l] = kRelu ? relu(v) : v;
        }
      }
    }
  }
}

}  // namespace

void batchnorm_apply(const Tensor& x, const float* scale, const float* shift, Tensor& y, bool relu_after) {
  if (relu_after)
    apply_impl<true, false>(x, scale, shift, nullptr, y);
  else
    apply_impl<false, false>(x, scale, shift, nullptr, y);
}

void batchnorm_apply_add(const Tensor& x, const float* scale, const float* shift, const Tensor& r, Tensor& y,
                         bool relu_after) {
  check_same(x, r, "batchnorm apply + add (residual)");
  TRAINER_CHECK(&r != &y && &x != &y, "batchnorm apply + add: the output may not alias an input");
  if (relu_after)
    apply_impl<true, true>(x, scale, shift, r.data(), y);
  else
    apply_impl<false, true>(x, scale, shift, r.data(), y);
}

namespace {

// dy where the fused ReLU's output relu(fma(s, x, t)) is positive, else 0 (as relu_bp).
template <bool kMask>
inline float masked(float e, float x, float s, float t) {
  if constexpr (kMask) return std::fma(s, x, t) > 0.0f ? e : 0.0f;
  return e;
}

template <bool kMask>
void grad_sums_impl(const Tensor& x, const Tensor& dy, const float* mean, double* sum_dy, double* sum_dy_xc,
                    std::vector<double>& partial, const FusedRelu& fr) {
  const Geometry g = geometry(x, "batchnorm grad sums");
  check_same(x, dy, "batchnorm grad sums");
  const int64_t pairs = g.lane_channels() ? g.groups * kLanes : g.groups;
  partial.resize(static_cast<size_t>(pairs * 2));
  const float* px = x.data();
  const float* pd = dy.data();
  double* pp = partial.data();

  // Padding (channels or images) holds dy = 0, so it adds nothing to either sum: no masks needed.
  if (!g.lane_channels()) {
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const float* p = px + grp * g.run;
      const float* e = pd + grp * g.run;
      const int64_t c = g.channel(grp);
      const float rs = kMask ? fr.scale[c] : 0.0f, rt = kMask ? fr.shift[c] : 0.0f;
      const float m = mean[c];
      double s = 0, sx = 0;
#ifdef __AVX512F__
      // Runs of whole 64-byte vectors: four independent sums of each kind, so that the adds' latency
      // does not bound the loop (the compiler's reduction keeps one 8-lane sum of each). Measured in 90%
      // sparse ResNet-20 training: all batch norms' gradient sums 5.7 -> 4.8 ms per step.
      if (g.run % (4 * kLanes) == 0) {
        const __m512 vs = _mm512_set1_ps(rs), vt = _mm512_set1_ps(rt), vm = _mm512_set1_ps(m);
        for (int64_t i0 = 0; i0 < g.run; i0 += kChunk) {
          const int64_t i1 = std::min(g.run, i0 + kChunk);
          __m512 as[4], ax[4];
          for (int u = 0; u < 4; ++u) as[u] = _mm512_setzero_ps(), ax[u] = _mm512_setzero_ps();
          for (int64_t i = i0; i < i1; i += 4 * kLanes) {
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u) {
              const __m512 xv = _mm512_load_ps(p + i + u * kLanes);
              __m512 ev = _mm512_load_ps(e + i + u * kLanes);
              if constexpr (kMask)
                ev = _mm512_maskz_mov_ps(
                    _mm512_cmp_ps_mask(_mm512_fmadd_ps(vs, xv, vt), _mm512_setzero_ps(), _CMP_GT_OQ), ev);
              as[u] = _mm512_add_ps(as[u], ev);
              ax[u] = _mm512_fmadd_ps(ev, _mm512_sub_ps(xv, vm), ax[u]);
            }
          }
          alignas(64) float ls[kLanes], lx[kLanes];
          _mm512_store_ps(ls, _mm512_add_ps(_mm512_add_ps(as[0], as[1]), _mm512_add_ps(as[2], as[3])));
          _mm512_store_ps(lx, _mm512_add_ps(_mm512_add_ps(ax[0], ax[1]), _mm512_add_ps(ax[2], ax[3])));
          float fs = 0, fsx = 0;
          for (int64_t l = 0; l < kLanes; ++l) fs += ls[l], fsx += lx[l];
          s += fs;
          sx += fsx;
        }
        pp[grp * 2] = s;
        pp[grp * 2 + 1] = sx;
        continue;
      }
#endif
      for (int64_t i0 = 0; i0 < g.run; i0 += kChunk) {
        const int64_t i1 = std::min(g.run, i0 + kChunk);
        float fs = 0, fsx = 0;
#pragma omp simd reduction(+ : fs, fsx)
        for (int64_t i = i0; i < i1; ++i) {
          const float ev = masked<kMask>(e[i], p[i], rs, rt);
          fs += ev;
          fsx += ev * (p[i] - m);
        }
        s += fs;
        sx += fsx;
      }
      pp[grp * 2] = s;
      pp[grp * 2 + 1] = sx;
    }
  } else {
    constexpr int64_t kChunkPos = kChunk / kLanes;
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const float* p = px + grp * g.run;
      const float* e = pd + grp * g.run;
      float m[kLanes], rs[kLanes] = {}, rt[kLanes] = {};
      load_lanes(mean, g.C, grp % g.CB, m);
      if (kMask) load_lanes(fr.scale, g.C, grp % g.CB, rs), load_lanes(fr.shift, g.C, grp % g.CB, rt);
      double s[kLanes] = {}, sx[kLanes] = {};
      for (int64_t i0 = 0; i0 < g.HW; i0 += kChunkPos) {
        const int64_t i1 = std::min(g.HW, i0 + kChunkPos);
        float fs[kLanes] = {}, fsx[kLanes] = {};
        for (int64_t i = i0; i < i1; ++i) {
#pragma omp simd
          for (int64_t l = 0; l < kLanes; ++l) {
            const float ev = masked<kMask>(e[i * kLanes + l], p[i * kLanes + l], rs[l], rt[l]);
            fs[l] += ev;
            fsx[l] += ev * (p[i * kLanes + l] - m[l]);
          }
        }
        for (int64_t l = 0; l < kLanes; ++l) {
          s[l] += fs[l];
          sx[l] += fsx[l];
        }
      }
      for (int64_t l = 0; l < kLanes; ++l) {
        pp[(grp * kLanes + l) * 2] = s[l];
        pp[(grp * kLanes + l) * 2 + 1] = sx[l];
      }
    }
  }
  reduce_partials(g, pp, sum_dy, sum_dy_xc);
}

template <bool kMask>
void bp_apply_impl(const Tensor& x, const Tensor& dy, const float* a, const float* b, const float* d,
                   Tensor& dx, const FusedRelu& fr, int64_t stream_min_bytes) {
  const Geometry g = geometry(x, "batchnorm bp");
  check_same(x, dy, "batchnorm bp");
  dx.resize(x.shape(), x.layout());
  const float* px = x.data();
  const float* pd = dy.data();
  float* po = dx.data();
  [[maybe_unused]] const bool stream = stream_output(g, {px, pd, po}, stream_min_bytes);
  if (!g.lane_channels()) {
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const int64_t c = g.channel(grp);
      const float ca = a[c], cb = b[c], cd = d[c];
      const float rs = kMask ? fr.scale[c] : 0.0f, rt = kMask ? fr.shift[c] : 0.0f;
      const float* __restrict p = px + grp * g.run;
      const float* __restrict e = pd + grp * g.run;
      float* __restrict q = po + grp * g.run;
#ifdef __AVX512F__
      if (stream) {
        const __m512 va = _mm512_set1_ps(ca), vb = _mm512_set1_ps(cb), vd = _mm512_set1_ps(cd);
        const __m512 vs = _mm512_set1_ps(rs), vt = _mm512_set1_ps(rt);
        for (int64_t i = 0; i < g.run; i += kLanes) {
          const __m512 xv = _mm512_load_ps(p + i);
          __m512 ev = _mm512_load_ps(e + i);
          if constexpr (kMask)
            ev = _mm512_maskz_mov_ps(
                _mm512_cmp_ps_mask(_mm512_fmadd_ps(vs, xv, vt), _mm512_setzero_ps(), _CMP_GT_OQ), ev);
          _mm512_stream_ps(q + i, _mm512_add_ps(_mm512_fmadd_ps(va, ev, _mm512_mul_ps(vb, xv)), vd));
        }
        _mm_sfence();  // visible, in order with the stores below and to the other threads
      } else
#endif
      {
#pragma omp simd
        for (int64_t i = 0; i < g.run; ++i) q[i] = ca * masked<kMask>(e[i], p[i], rs, rt) + cb * p[i] + cd;
      }
      zero_padding_images(g, grp, q);
    }
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      float ca[kLanes], cb[kLanes], cd[kLanes], rs[kLanes] = {}, rt[kLanes] = {};
      load_lanes(a, g.C, grp % g.CB, ca);
      load_lanes(b, g.C, grp % g.CB, cb);
      load_lanes(d, g.C, grp % g.CB, cd);
      if (kMask) load_lanes(fr.scale, g.C, grp % g.CB, rs), load_lanes(fr.shift, g.C, grp % g.CB, rt);
      const float* __restrict p = px + grp * g.run;
      const float* __restrict e = pd + grp * g.run;
      float* __restrict q = po + grp * g.run;
      for (int64_t i = 0; i < g.HW; ++i) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l)
          q[i * kLanes + l] = ca[l] * masked<kMask>(e[i * kLanes + l], p[i * kLanes + l], rs[l], rt[l]) +
                              cb[l] * p[i * kLanes + l] + cd[l];
      }
    }
  }
}

}  // namespace

void batchnorm_grad_sums(const Tensor& x, const Tensor& dy, const float* mean, double* sum_dy,
                         double* sum_dy_xc, std::vector<double>& partial, const FusedRelu* relu) {
  if (relu) {
    TRAINER_CHECK(relu->scale && relu->shift, "batchnorm grad sums: fused relu without scale and shift");
    grad_sums_impl<true>(x, dy, mean, sum_dy, sum_dy_xc, partial, *relu);
  } else {
    grad_sums_impl<false>(x, dy, mean, sum_dy, sum_dy_xc, partial, FusedRelu{});
  }
}

int64_t batchnorm_gradient_stream_bytes() { return cpu_is_amd() ? int64_t{8} << 20 : int64_t{2} << 20; }

void batchnorm_bp_apply(const Tensor& x, const Tensor& dy, const float* a, const float* b, const float* d,
                        Tensor& dx, const FusedRelu* relu, int64_t stream_min_bytes) {
  const int64_t min_bytes = stream_min_bytes < 0 ? batchnorm_gradient_stream_bytes() : stream_min_bytes;
  if (relu) {
    TRAINER_CHECK(relu->scale && relu->shift, "batchnorm bp: fused relu without scale and shift");
    bp_apply_impl<true>(x, dy, a, b, d, dx, *relu, min_bytes);
  } else {
    bp_apply_impl<false>(x, dy, a, b, d, dx, FusedRelu{}, min_bytes);
  }
}

}  // namespace trainer
