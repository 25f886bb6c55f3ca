// The batch norm's backward over an NCHW16n tensor two ways, stand-alone: as the engine does it
// (src/kernels/batchnorm.cpp: the gradient sums over the whole tensor, then the input gradient over the
// whole tensor) and per channel (a thread sums one channel's blocks, then writes that channel's input
// gradient while its data are in L2). Caches are evicted (64 MB written) and dy written afresh before
// each call, as a training step's convolution BP leaves them. A throw-away measurement kept so that
// docs/benchmarks.md's figures can be rerun:
//
//   g++ -O3 -march=native -fopenmp bench/micro/bn_backward.cpp -o /tmp/bn_backward
//   OMP_NUM_THREADS=2 /tmp/bn_backward 16 784; OMP_NUM_THREADS=2 /tmp/bn_backward 32 196
//
// Arguments: channels, positions per plane (H*W); 8 blocks of 16 images (batch 128). Not built by CMake.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
constexpr int L = 16;
int NB = 8, C = 16, HW = 784;
float *x, *dy, *dx, *junk;
double* part;
static inline void sums_grp(int grp, double& s, double& sx, float m) {
  const float* p = x + (size_t)grp * HW * L;
  const float* e = dy + (size_t)grp * HW * L;
  __m512 as = _mm512_setzero_ps(), ax = _mm512_setzero_ps(), vm = _mm512_set1_ps(m);
  for (int i = 0; i < HW * L; i += L) {
    __m512 xv = _mm512_load_ps(p + i), ev = _mm512_load_ps(e + i);
    as = _mm512_add_ps(as, ev);
    ax = _mm512_fmadd_ps(ev, _mm512_sub_ps(xv, vm), ax);
  }
  s = _mm512_reduce_add_ps(as);
  sx = _mm512_reduce_add_ps(ax);
}
static inline void apply_grp(int grp, float a, float b, float d) {
  const float* p = x + (size_t)grp * HW * L;
  const float* e = dy + (size_t)grp * HW * L;
  float* q = dx + (size_t)grp * HW * L;
  __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), vd = _mm512_set1_ps(d);
  for (int i = 0; i < HW * L; i += L) {
    __m512 xv = _mm512_load_ps(p + i), ev = _mm512_load_ps(e + i);
    _mm512_store_ps(q + i, _mm512_add_ps(_mm512_fmadd_ps(va, ev, _mm512_mul_ps(vb, xv)), vd));
  }
}
int main(int argc, char** argv) {
  if (argc > 1) C = atoi(argv[1]);
  if (argc > 2) HW = atoi(argv[2]);
  size_t n = (size_t)NB * C * HW * L;
  x = (float*)aligned_alloc(64, n * 4);
  dy = (float*)aligned_alloc(64, n * 4);
  dx = (float*)aligned_alloc(64, n * 4);
  size_t jn = 64 << 20;
  junk = (float*)aligned_alloc(64, jn);
  for (size_t i = 0; i < n; ++i) {
    x[i] = (i % 97) * 0.01f;
    dy[i] = (i % 89) * 0.001f;
    dx[i] = 0;
  }
  part = new double[NB * C * 2];
  std::vector<double> S(C), SX(C);
  for (int rep = 0; rep < 3; ++rep)
    for (int v = 0; v < 2; ++v) {
      std::vector<double> ts;
      for (int it = 0; it < 30; ++it) {
        memset(junk, it, jn);  // evict
// dy freshly written (as the conv BP would)
#pragma omp parallel for schedule(static)
        for (int g = 0; g < NB * C; ++g) {
          float* e = dy + (size_t)g * HW * L;
          for (int i = 0; i < HW * L; i += L) _mm512_store_ps(e + i, _mm512_set1_ps(0.001f * (g + i % 7)));
        }
        auto t0 = std::chrono::steady_clock::now();
        if (v == 0) {
#pragma omp parallel for schedule(static)
          for (int g = 0; g < NB * C; ++g) {
            double s, sx;
            sums_grp(g, s, sx, 0.5f);
            part[2 * g] = s;
            part[2 * g + 1] = sx;
          }
          for (int c = 0; c < C; ++c) {
            double s = 0, sx = 0;
            for (int nb = 0; nb < NB; ++nb) {
              s += part[2 * (nb * C + c)];
              sx += part[2 * (nb * C + c) + 1];
            }
            S[c] = s;
            SX[c] = sx;
          }
#pragma omp parallel for schedule(static)
          for (int g = 0; g < NB * C; ++g) {
            int c = g % C;
            apply_grp(g, 0.9f, (float)(1e-9 * SX[c]), (float)(1e-9 * S[c]));
          }
        } else {
#pragma omp parallel for schedule(static)
          for (int c = 0; c < C; ++c) {
            double s = 0, sx = 0;
            for (int nb = 0; nb < NB; ++nb) {
              double a, b;
              sums_grp(nb * C + c, a, b, 0.5f);
              s += a;
              sx += b;
            }
            S[c] = s;
            SX[c] = sx;
            for (int nb = 0; nb < NB; ++nb)
              apply_grp(nb * C + c, 0.9f, (float)(1e-9 * sx), (float)(1e-9 * s));
          }
        }
        ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ts.begin(), ts.end());
      printf("C=%d HW=%d variant %s: min %.3f median %.3f ms\n", C, HW, v ? "per-channel" : "two-pass",
             ts[0] * 1e3, ts[ts.size() / 2] * 1e3);
    }
}
