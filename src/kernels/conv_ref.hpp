// Reference kernels for convolution and fully connected layers: the clean, readable definition of what
// the fast (oneDNN, sparse) kernels compute, and what they are tested against. Templated on the scalar
// so the gradient tests can run them in double against finite differences.
//
// All operands are plain row-major: activations NCHW, conv weights OIHW ([K, C, R, S]), linear weights
// [out, in]. One stride and one padding for both spatial dimensions (what Conv2d takes).
// OpenMP over independent outputs is the only concession to speed; every output is a sum computed by
// one thread in a fixed order, so results do not depend on the thread count.
#pragma once

#include <cstdint>

namespace trainer {

// Below this many multiply-accumulates a parallel region costs more than it saves (and on a busy
// machine a barrier can wait a whole scheduler slice), so small calls run on the calling thread.
constexpr int64_t kRefParallelMinMacs = int64_t{1} << 16;

// The sizes of one convolution. x: [N, C, H, W], w: [K, C, R, S], y: [N, K, P, Q].
struct ConvGeom {
  int64_t N = 0, C = 0, H = 0, W = 0;  // input
  int64_t K = 0, R = 0, S = 0;         // output channels, kernel height and width
  int64_t stride = 1, pad = 0;
  int64_t P() const { return (H + 2 * pad - R) / stride + 1; }
  int64_t Q() const { return (W + 2 * pad - S) / stride + 1; }
  // Multiply-accumulates of one dense phase; ff, bp and wg each do this many.
  int64_t macs() const { return N * K * P() * Q() * C * R * S; }
};

// ---------------------------------------------------------------------------------------------------
// Convolution

// y[n,k,p,q] = b[k] + sum_{c,r,s} x[n, c, p*stride - pad + r, q*stride - pad + s] * w[k,c,r,s]
// x: [N, C, H, W], w: [K, C, R, S], b: [K] or nullptr, y: [N, K, P, Q]
template <typename T>
void conv2d_ff_ref(const ConvGeom& g, const T* x, const T* w, const T* b, T* y) {
  const int64_t P = g.P(), Q = g.Q();
#pragma omp parallel for collapse(2) schedule(static) if (g.macs() > kRefParallelMinMacs)
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t k = 0; k < g.K; ++k) {
      for (int64_t p = 0; p < P; ++p) {
        for (int64_t q = 0; q < Q; ++q) {
          T acc = b ? b[k] : T(0);
          for (int64_t c = 0; c < g.C; ++c) {
            const T* x_nc = x + (n * g.C + c) * g.H * g.W;
            const T* w_kc = w + (k * g.C + c) * g.R * g.S;
            for (int64_t r = 0; r < g.R; ++r) {
              const int64_t h = p * g.stride - g.pad + r;
              if (h < 0 || h >= g.H) continue;  // zero padding contributes nothing
              for (int64_t s = 0; s < g.S; ++s) {
                const int64_t ww = q * g.stride - g.pad + s;
                if (ww < 0 || ww >= g.W) continue;
                acc += x_nc[h * g.W + ww] * w_kc[r * g.S + s];
              }
            }
          }
          y[((n * g.K + k) * P + p) * Q + q] = acc;
        }
      }
    }
  }
}

// In the forward pass x[n,c,h,w] reached y[n,k,p,q] through w[k,c,r,s] whenever h = p*stride - pad + r
// and w = q*stride - pad + s, so now its gradient gathers dy over exactly those (k, p, q, r, s).
// dy: [N, K, P, Q], w: [K, C, R, S], dx: [N, C, H, W] (written, not accumulated)
template <typename T>
void conv2d_bp_ref(const ConvGeom& g, const T* dy, const T* w, T* dx) {
  const int64_t P = g.P(), Q = g.Q();
#pragma omp parallel for collapse(2) schedule(static) if (g.macs() > kRefParallelMinMacs)
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t c = 0; c < g.C; ++c) {
      for (int64_t h = 0; h < g.H; ++h) {
        for (int64_t ww = 0; ww < g.W; ++ww) {
          T acc = T(0);
          for (int64_t k = 0; k < g.K; ++k) {
            const T* dy_nk = dy + (n * g.K + k) * P * Q;
            const T* w_kc = w + (k * g.C + c) * g.R * g.S;
            for (int64_t r = 0; r < g.R; ++r) {
              const int64_t ph = h + g.pad - r;  // = p * stride
              if (ph < 0 || ph % g.stride != 0 || ph / g.stride >= P) continue;
              const int64_t p = ph / g.stride;
              for (int64_t s = 0; s < g.S; ++s) {
                const int64_t qw = ww + g.pad - s;  // = q * stride
                if (qw < 0 || qw % g.stride != 0 || qw / g.stride >= Q) continue;
                acc += dy_nk[p * Q + qw / g.stride] * w_kc[r * g.S + s];
              }
            }
          }
          dx[((n * g.C + c) * g.H + h) * g.W + ww] = acc;
        }
      }
    }
  }
}

// w[k,c,r,s] multiplied x[n, c, p*stride - pad + r, q*stride - pad + s] into y[n,k,p,q] for every
// (n, p, q), so its gradient sums those products with dy; the bias was added to every y[n,k,.,.].
// x: [N, C, H, W], dy: [N, K, P, Q], dw: [K, C, R, S], db: [K] or nullptr (written, not accumulated)
template <typename T>
void conv2d_wg_ref(const ConvGeom& g, const T* x, const T* dy, T* dw, T* db) {
  const int64_t P = g.P(), Q = g.Q();
#pragma omp parallel for collapse(2) schedule(static) if (g.macs() > kRefParallelMinMacs)
  for (int64_t k = 0; k < g.K; ++k) {
    for (int64_t c = 0; c < g.C; ++c) {
      for (int64_t r = 0; r < g.R; ++r) {
        for (int64_t s = 0; s < g.S; ++s) {
          T acc = T(0);
          for (int64_t n = 0; n < g.N; ++n) {
            const T* x_nc = x + (n * g.C + c) * g.H * g.W;
            const T* dy_nk = dy + (n * g.K + k) * P * Q;
            for (int64_t p = 0; p < P; ++p) {
              const int64_t h = p * g.stride - g.pad + r;
              if (h < 0 || h >= g.H) continue;
              for (int64_t q = 0; q < Q; ++q) {
                const int64_t ww = q * g.stride - g.pad + s;
                if (ww < 0 || ww >= g.W) continue;
                acc += x_nc[h * g.W + ww] * dy_nk[p * Q + q];
              }
            }
          }
          dw[((k * g.C + c) * g.R + r) * g.S + s] = acc;
        }
      }
    }
  }
  if (!db) return;
#pragma omp parallel for schedule(static) if (g.N * g.K * P * Q > kRefParallelMinMacs)
  for (int64_t k = 0; k < g.K; ++k) {
    T acc = T(0);
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t i = 0; i < P * Q; ++i) acc += dy[(n * g.K + k) * P * Q + i];
    db[k] = acc;
  }
}

// ---------------------------------------------------------------------------------------------------
// Fully connected (Linear): y = x w^T + b

// x: [N, I], w: [O, I], b: [O] or nullptr, y: [N, O]
template <typename T>
void linear_ff_ref(int64_t N, int64_t I, int64_t O, const T* x, const T* w, const T* b, T* y) {
#pragma omp parallel for collapse(2) schedule(static) if (N * I * O > kRefParallelMinMacs)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < O; ++o) {
      T acc = b ? b[o] : T(0);
      for (int64_t i = 0; i < I; ++i) acc += x[n * I + i] * w[o * I + i];
      y[n * O + o] = acc;
    }
  }
}

// x[n,i] reached every y[n,o] through w[o,i], so dx[n,i] = sum_o dy[n,o] * w[o,i].
// dy: [N, O], w: [O, I], dx: [N, I]
template <typename T>
void linear_bp_ref(int64_t N, int64_t I, int64_t O, const T* dy, const T* w, T* dx) {
#pragma omp parallel for collapse(2) schedule(static) if (N * I * O > kRefParallelMinMacs)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < I; ++i) {
      T acc = T(0);
      for (int64_t o = 0; o < O; ++o) acc += dy[n * O + o] * w[o * I + i];
      dx[n * I + i] = acc;
    }
  }
}

// dw[o,i] = sum_n dy[n,o] * x[n,i]; db[o] = sum_n dy[n,o].
// x: [N, I], dy: [N, O], dw: [O, I], db: [O] or nullptr
template <typename T>
void linear_wg_ref(int64_t N, int64_t I, int64_t O, const T* x, const T* dy, T* dw, T* db) {
#pragma omp parallel for collapse(2) schedule(static) if (N * I * O > kRefParallelMinMacs)
  for (int64_t o = 0; o < O; ++o) {
    for (int64_t i = 0; i < I; ++i) {
      T acc = T(0);
      for (int64_t n = 0; n < N; ++n) acc += dy[n * O + o] * x[n * I + i];
      dw[o * I + i] = acc;
    }
  }
  if (!db) return;
  for (int64_t o = 0; o < O; ++o) {
    T acc = T(0);
    for (int64_t n = 0; n < N; ++n) acc += dy[n * O + o];
    db[o] = acc;
  }
}

}  // namespace trainer
