// Reference implementations of the non-GEMM layers and the loss: batch norm, ReLU, max pooling, global
// average pooling and softmax cross-entropy. Plain NCHW, plain pointers, templated on the scalar type
// so that the gradient tests can run them in double. Written to be read, not to be fast: the fast
// kernels (batchnorm.hpp, pool.hpp, activation.hpp) are tested against these.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace trainer::ref {

// Output extent of a pooling window sweep (floor mode, as PyTorch's default).
inline int64_t pool_out_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad) {
  return (in + 2 * pad - kernel) / stride + 1;
}

// ---- batch norm --------------------------------------------------------------------------------
// With M = N*H*W values per channel, training ff normalises with the batch statistics:
//   mean = sum(x)/M, var = sum((x-mean)^2)/M (biased), xhat = (x-mean)/sqrt(var+eps),
//   y = gamma*xhat + beta.

// x, y: [N, C, H, W]; gamma, beta, mean, invstd: [C]. Writes the batch mean and 1/sqrt(var+eps).
template <typename T>
void batchnorm_ff_train(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* invstd, int64_t N,
                        int64_t C, int64_t HW, double eps) {
  const T M = static_cast<T>(N * HW);
  for (int64_t c = 0; c < C; ++c) {
    T sum = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) sum += x[(n * C + c) * HW + i];
    const T m = sum / M;
    T sq = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const T d = x[(n * C + c) * HW + i] - m;
        sq += d * d;
      }
    const T is = T(1) / std::sqrt(sq / M + static_cast<T>(eps));
    mean[c] = m;
    invstd[c] = is;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t o = (n * C + c) * HW + i;
        y[o] = gamma[c] * (x[o] - m) * is + beta[c];
      }
  }
}

// Evaluation: the running statistics stand in for the batch's. running_mean, running_var: [C].
template <typename T>
void batchnorm_ff_eval(const T* x, const T* gamma, const T* beta, const T* running_mean, const T* running_var,
                       T* y, int64_t N, int64_t C, int64_t HW, double eps) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const T is = T(1) / std::sqrt(running_var[c] + static_cast<T>(eps));
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t o = (n * C + c) * HW + i;
        y[o] = gamma[c] * (x[o] - running_mean[c]) * is + beta[c];
      }
    }
}

// x, dy: [N, C, H, W]; mean, invstd, dgamma, dbeta: [C].
// In the forward pass gamma scaled xhat and beta was added to every value of its channel, so
//   dgamma = sum over the channel of dy*xhat, dbeta = sum of dy.
template <typename T>
void batchnorm_wg(const T* x, const T* dy, const T* mean, const T* invstd, T* dgamma, T* dbeta, int64_t N,
                  int64_t C, int64_t HW) {
  for (int64_t c = 0; c < C; ++c) {
    T dg = 0, db = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t o = (n * C + c) * HW + i;
        dg += dy[o] * (x[o] - mean[c]) * invstd[c];
        db += dy[o];
      }
    dgamma[c] = dg;
    dbeta[c] = db;
  }
}

// x, dy, dx: [N, C, H, W]; gamma, mean, invstd: [C]. Training mode: mean and invstd depend on every x of
// the channel, which adds two terms to the direct path gamma*invstd*dy:
//   dx = gamma*invstd/M * (M*dy - sum(dy) - xhat*sum(dy*xhat)).
template <typename T>
void batchnorm_bp(const T* x, const T* dy, const T* gamma, const T* mean, const T* invstd, T* dx, int64_t N,
                  int64_t C, int64_t HW) {
  const T M = static_cast<T>(N * HW);
  for (int64_t c = 0; c < C; ++c) {
    T dg = 0, db = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t o = (n * C + c) * HW + i;
        dg += dy[o] * (x[o] - mean[c]) * invstd[c];
        db += dy[o];
      }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < HW; ++i) {
        const int64_t o = (n * C + c) * HW + i;
        const T xhat = (x[o] - mean[c]) * invstd[c];
        dx[o] = gamma[c] * invstd[c] / M * (M * dy[o] - db - xhat * dg);
      }
  }
}

// ---- ReLU --------------------------------------------------------------------------------------
// x, y: n values.
template <typename T>
void relu_ff(const T* x, T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : T(0);
}

// y, dy, dx: n values. The gradient passes where the output was positive.
template <typename T>
void relu_bp(const T* y, const T* dy, T* dx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] > T(0) ? dy[i] : T(0);
}

// ---- max pooling -------------------------------------------------------------------------------
// x: [N, C, H, W]; y, argmax: [N, C, P, Q]. argmax holds h*W+w of the chosen input within its plane;
// padding never wins (it acts as -inf) and ties go to the first maximum in row-major order.
template <typename T>
void maxpool_ff(const T* x, T* y, int32_t* argmax, int64_t N, int64_t C, int64_t H, int64_t W, int64_t kernel,
                int64_t stride, int64_t pad) {
  const int64_t P = pool_out_size(H, kernel, stride, pad), Q = pool_out_size(W, kernel, stride, pad);
  for (int64_t nc = 0; nc < N * C; ++nc)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q) {
        T best = -std::numeric_limits<T>::infinity();
        int32_t where = -1;
        for (int64_t r = 0; r < kernel; ++r)
          for (int64_t s = 0; s < kernel; ++s) {
            const int64_t h = p * stride - pad + r, w = q * stride - pad + s;
            if (h < 0 || h >= H || w < 0 || w >= W) continue;
            const T v = x[(nc * H + h) * W + w];
            if (where < 0 || v > best) {
              best = v;
              where = static_cast<int32_t>(h * W + w);
            }
          }
        y[(nc * P + p) * Q + q] = best;
        argmax[(nc * P + p) * Q + q] = where;
      }
}

// dy, argmax: [N, C, P, Q]; dx: [N, C, H, W]. Each output sends its gradient to the input it copied;
// overlapping windows (stride < kernel) may send several to one input.
template <typename T>
void maxpool_bp(const T* dy, const int32_t* argmax, T* dx, int64_t N, int64_t C, int64_t H, int64_t W,
                int64_t P, int64_t Q) {
  for (int64_t i = 0; i < N * C * H * W; ++i) dx[i] = T(0);
  for (int64_t nc = 0; nc < N * C; ++nc)
    for (int64_t pq = 0; pq < P * Q; ++pq) dx[nc * H * W + argmax[nc * P * Q + pq]] += dy[nc * P * Q + pq];
}

// ---- global average pooling --------------------------------------------------------------------
// x: [N, C, H, W]; y: [N, C].
template <typename T>
void gap_ff(const T* x, T* y, int64_t N, int64_t C, int64_t HW) {
  for (int64_t nc = 0; nc < N * C; ++nc) {
    T sum = 0;
    for (int64_t i = 0; i < HW; ++i) sum += x[nc * HW + i];
    y[nc] = sum / static_cast<T>(HW);
  }
}

// dy: [N, C]; dx: [N, C, H, W]. Every input contributed 1/HW of its channel's mean.
template <typename T>
void gap_bp(const T* dy, T* dx, int64_t N, int64_t C, int64_t HW) {
  for (int64_t nc = 0; nc < N * C; ++nc)
    for (int64_t i = 0; i < HW; ++i) dx[nc * HW + i] = dy[nc] / static_cast<T>(HW);
}

// ---- softmax cross-entropy ---------------------------------------------------------------------
// logits, probs: [N, K]; labels: [N] in [0, K). Returns the mean over rows of -log softmax(z)[label];
// subtracting the row maximum keeps exp() finite.
template <typename T>
double softmax_xent_ff(const T* logits, const int32_t* labels, T* probs, int64_t N, int64_t K) {
  double loss = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* z = logits + n * K;
    T zmax = z[0];
    for (int64_t k = 1; k < K; ++k) zmax = z[k] > zmax ? z[k] : zmax;
    T sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(z[k] - zmax);
    for (int64_t k = 0; k < K; ++k) probs[n * K + k] = std::exp(z[k] - zmax) / sum;
    loss += std::log(static_cast<double>(sum)) - static_cast<double>(z[labels[n]] - zmax);
  }
  return loss / static_cast<double>(N);
}

// probs, dlogits: [N, K]. The mean over rows makes each row's gradient (softmax - onehot) / N.
template <typename T>
void softmax_xent_bp(const T* probs, const int32_t* labels, T* dlogits, int64_t N, int64_t K) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      dlogits[n * K + k] = (probs[n * K + k] - (k == labels[n] ? T(1) : T(0))) / static_cast<T>(N);
}

}  // namespace trainer::ref
