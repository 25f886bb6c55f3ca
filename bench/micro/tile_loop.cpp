// The FF/BP tile loop of the sparse kernels (src/kernels/sparse_conv.cpp, tile_rect) alone, on data in
// L1, beside the machine's peak: how far is the loop from one 512-bit multiply-add a cycle, and what do
// fewer loads buy? A throw-away measurement kept so that docs/benchmarks.md's figures can be rerun:
//
//   g++ -O3 -march=native -std=c++20 bench/micro/tile_loop.cpp -o /tmp/tile_loop && /tmp/tile_loop [density]
//
// Not built by CMake (AVX-512 only, no project code). Shape: ResNet-20's first stage, 16 -> 16 channels,
// one band of 8 output rows x 28 columns, 1x7 tiles, the slab (16 channels x 10 rows x 30 columns x 16
// images) 64-byte aligned as the engine's is, random taps at the given density (default 0.29, ERK's).
// Variants of the tap loop:
//   0 as the engine: offset and value from two arrays (two scalar loads a tap), 7 multiply-adds each
//     reading its input vector from memory
//   1 offset and value packed in one 64-bit word, the value broadcast from a general register
//   2 the same word loaded into a vector register, the offset extracted from it
//   3 upper bound of sharing input loads: pairs of output channels with identical taps, each input
//     vector loaded once for two multiply-adds
//   4 weights stored pre-broadcast (a plain 64-byte load, no broadcast)
// Compile-time variants of the shape (docs/benchmarks.md, 2026-12-06, tenth session), e.g.
//   -DTL_CHANNELS=8   input channels in the slab (default 16): half the tile's L1 footprint
//   -DTL_TQ=14        tile width (default 7; 28 must be a multiple of it)
//   -DTL_SAME_TILE=1  every tile reads the same slab region (no L1 refills between tiles)
#ifndef TL_CHANNELS
#define TL_CHANNELS 16
#endif
#ifndef TL_TQ
#define TL_TQ 7
#endif
#ifndef TL_SAME_TILE
#define TL_SAME_TILE 0
#endif
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int kC = TL_CHANNELS, kK = 16, kRows = 10, kCols = 30, kL = 16, kTq = TL_TQ;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void peaks() {
  __m512 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(i * 0.001f);
  const __m512 w = _mm512_set1_ps(0.999f), x = _mm512_set1_ps(0.0001f);
  const long n = 100000000;
  auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < n; ++it)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], w, x);
  double s = seconds_since(t0);
  float r = 0;
  for (int i = 0; i < 12; ++i) r += _mm512_reduce_add_ps(a[i]);
  std::printf("register operands:        %.2f G multiply-adds/s (one a cycle = the clock)  [%g]\n",
              n * 12.0 / s / 1e9, r);
  for (int misalign = 0; misalign < 2; ++misalign) {
    float* buf = static_cast<float*>(std::aligned_alloc(64, 16 * 64 * 4 + 64));
    for (int i = 0; i < 16 * 64 + 16; ++i) buf[i] = 0.5f;
    const float* base = buf + (misalign ? 4 : 0);
    t0 = std::chrono::steady_clock::now();
    for (long it = 0; it < n; ++it) {
      asm("" : "+r"(base));  // the loads cannot be hoisted out of the loop
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(w, _mm512_loadu_ps(base + (i % 8) * 16), a[i]);
    }
    s = seconds_since(t0);
    r = 0;
    for (int i = 0; i < 12; ++i) r += _mm512_reduce_add_ps(a[i]);
    std::printf("one operand from L1, %s: %.2f G multiply-adds/s  [%g]\n",
                misalign ? "split lines" : "aligned    ", n * 12.0 / s / 1e9, r);
    std::free(buf);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const double density = argc > 1 ? std::atof(argv[1]) : 0.29;
  peaks();
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uni(-1, 1);
  float* slab = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * kC * kRows * kCols * kL));
  for (int i = 0; i < kC * kRows * kCols * kL; ++i) slab[i] = uni(rng);
  std::vector<int32_t> off, seg(kK + 1);
  std::vector<float> val;
  std::uniform_real_distribution<double> u01(0, 1);
  for (int k = 0; k < kK; ++k) {
    seg[k] = static_cast<int32_t>(off.size());
    for (int c = 0; c < kC; ++c)
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s)
          if (u01(rng) < density)
            off.push_back(((c * kRows + r) * kCols + s) * kL), val.push_back(0.01f * (c + r + s));
  }
  seg[kK] = static_cast<int32_t>(off.size());
  std::vector<uint64_t> packed(off.size());
  for (size_t e = 0; e < off.size(); ++e) {
    uint32_t bits;
    std::memcpy(&bits, &val[e], 4);
    packed[e] = static_cast<uint64_t>(static_cast<uint32_t>(off[e] * 4)) << 32 | bits;
  }
  float* wv = static_cast<float*>(std::aligned_alloc(64, val.size() * 64 + 64));
  for (size_t e = 0; e < val.size(); ++e)
    for (int l = 0; l < kL; ++l) wv[e * kL + l] = val[e];
  std::vector<float> out(kK * 8 * 28 * kL);
  auto band = [&](int variant) {
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j + kTq <= 28; j += kTq) {
        const float* xb = slab + (TL_SAME_TILE ? 0 : (i * kCols + j) * kL);
        for (int k = 0; k < kK; ++k) {
          __m512 acc[kTq], acc2[kTq];
          for (int t = 0; t < kTq; ++t) acc[t] = acc2[t] = _mm512_setzero_ps();
          int e = seg[k];
          const int end = seg[k + 1];
          if (variant == 0) {
            for (; e < end; ++e) {
              const __m512 w = _mm512_set1_ps(val[e]);
              const float* xp = xb + off[e];
#pragma GCC unroll 16
              for (int t = 0; t < kTq; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_load_ps(xp + t * kL), acc[t]);
            }
          } else if (variant == 1) {
            for (; e < end; ++e) {
              uint64_t p = packed[e];
              asm("" : "+r"(p));
              const __m512 w =
                  _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(p))));
              const float* xp = reinterpret_cast<const float*>(reinterpret_cast<const char*>(xb) + (p >> 32));
#pragma GCC unroll 16
              for (int t = 0; t < kTq; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_load_ps(xp + t * kL), acc[t]);
            }
          } else if (variant == 2) {
            for (; e < end; ++e) {
              const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(&packed[e]));
              const __m512 w = _mm512_broadcastss_ps(_mm_castsi128_ps(q));
              const float* xp = reinterpret_cast<const float*>(
                  reinterpret_cast<const char*>(xb) + static_cast<uint32_t>(_mm_extract_epi32(q, 1)));
#pragma GCC unroll 16
              for (int t = 0; t < kTq; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_load_ps(xp + t * kL), acc[t]);
            }
          } else if (variant == 3) {
            if (k & 1) continue;
            for (; e < end; ++e) {
              const __m512 w = _mm512_set1_ps(val[e]), w2 = _mm512_set1_ps(0.5f * val[e]);
              const float* xp = xb + off[e];
#pragma GCC unroll 16
              for (int t = 0; t < kTq; ++t) {
                const __m512 xv = _mm512_load_ps(xp + t * kL);
                acc[t] = _mm512_fmadd_ps(w, xv, acc[t]);
                acc2[t] = _mm512_fmadd_ps(w2, xv, acc2[t]);
              }
            }
            float* y2 = out.data() + (((k + 1) * 8 + i) * 28 + j) * kL;
            for (int t = 0; t < kTq; ++t) _mm512_storeu_ps(y2 + t * kL, acc2[t]);
          } else {
            for (; e < end; ++e) {
              const __m512 w = _mm512_load_ps(wv + static_cast<size_t>(e) * kL);
              const float* xp = xb + off[e];
#pragma GCC unroll 16
              for (int t = 0; t < kTq; ++t) acc[t] = _mm512_fmadd_ps(w, _mm512_load_ps(xp + t * kL), acc[t]);
            }
          }
          float* y = out.data() + ((k * 8 + i) * 28 + j) * kL;
          for (int t = 0; t < kTq; ++t) _mm512_storeu_ps(y + t * kL, acc[t]);
        }
      }
  };
  const long tiles = 8 * (28 / kTq);
  long paired = 0;  // variant 3: the even channels' taps, twice
  for (int k = 0; k < kK; k += 2) paired += 2L * (seg[k + 1] - seg[k]);
  std::printf(
      "tap loop, density %.2f (%zu taps over %d output channels), 1x%d tiles, %d input channels%s, one "
      "core:\n",
      density, off.size(), kK, kTq, kC, TL_SAME_TILE ? " (every tile the same region)" : "");
  const char* names[] = {"0 two arrays (engine)", "1 packed, GPR broadcast", "2 packed, vector extract",
                         "3 shared input loads", "4 pre-broadcast weights"};
  for (int rep = 0; rep < 3; ++rep)
    for (int v = 0; v < 5; ++v) {
      const int reps = 2000;
      const auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; it < reps; ++it) band(v);
      const double s = seconds_since(t0);
      const double n =
          static_cast<double>(reps) * tiles * kTq * (v == 3 ? paired : static_cast<long>(off.size()));
      std::printf("  %-26s %.4f ms a band, %.2f G multiply-adds/s\n", names[v], s / reps * 1e3, n / s / 1e9);
    }
  double sum = 0;
  for (float v : out) sum += v;
  std::printf("(checksum %g)\n", sum);
  std::free(wv);
  std::free(slab);
  return 0;
}
