#include "kernels/pool.hpp"

#include <algorithm>
#include <cstring>

#include "core/error.hpp"
#include "kernels/norm_pool_ref.hpp"

namespace trainer {

namespace {
constexpr int64_t kLanes = 16;
constexpr int64_t kChunk = 1024;  // values summed in float before moving to a double total

using V16f = float __attribute__((vector_size(64)));
using V16i = int32_t __attribute__((vector_size(64)));

// Blocked layouts as planes of H*W positions x 16 lanes: nChw16c has one plane per (image, channel
// block), NCHW16n one per (image block, channel). Pooling treats lanes alike, whatever they hold.
int64_t lane_planes(const Shape& s, Layout layout) {
  return layout == Layout::nChw16c ? s[0] * ((s[1] + kLanes - 1) / kLanes)
                                   : (s[0] + kLanes - 1) / kLanes * s[1];
}

// Index n*C + c in an [N, C] tensor of the (image, channel) that lane l of blocked plane nb holds, or -1
// for a padding lane.
inline int64_t plane_lane_index(int64_t nb, int64_t l, int64_t N, int64_t C, Layout layout) {
  if (layout == Layout::NCHW16n) {
    const int64_t n = (nb / C) * kLanes + l;
    return n < N ? n * C + nb % C : -1;
  }
  const int64_t CB = (C + kLanes - 1) / kLanes, c = (nb % CB) * kLanes + l;
  return c < C ? (nb / CB) * C + c : -1;
}

// By reference: returning a 64-byte vector by value changes the ABI on targets without AVX-512.
inline void load16(V16f& v, const float* p) { std::memcpy(&v, p, sizeof v); }
}  // namespace

void maxpool_ff(const Tensor& x, int64_t kernel, int64_t stride, int64_t pad, Tensor& y,
                std::vector<int32_t>& argmax) {
  TRAINER_CHECK(x.rank() == 4, "maxpool: expected [N, C, H, W], got {}", shape_str(x.shape()));
  TRAINER_CHECK(kernel > 0 && stride > 0 && pad >= 0 && 2 * pad <= kernel,
                "maxpool: kernel {} stride {} padding {} (need kernel, stride > 0 and padding <= kernel/2)",
                kernel, stride, pad);
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t P = ref::pool_out_size(H, kernel, stride, pad),
                Q = ref::pool_out_size(W, kernel, stride, pad);
  TRAINER_CHECK(H + 2 * pad >= kernel && W + 2 * pad >= kernel,
                "maxpool: kernel {} larger than the input {} padded by {}", kernel, shape_str(x.shape()),
                pad);
  y.resize({N, C, P, Q}, x.layout());
  argmax.resize(static_cast<size_t>(y.storage_size()));
  const float* px = x.data();
  float* py = y.data();
  int32_t* pa = argmax.data();

  if (x.layout() == Layout::plain && kernel == 2 && stride == 2 && pad == 0) {
    // The common 2x2 window, written so that the loop over q vectorises (branch-free selects, in the
    // same first-maximum order as the general loop below).
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const float* plane = px + nc * H * W;
      for (int64_t p = 0; p < P; ++p) {
        const float* r0 = plane + 2 * p * W;
        const float* r1 = r0 + W;
        float* yr = py + (nc * P + p) * Q;
        int32_t* ar = pa + (nc * P + p) * Q;
        const int32_t base = static_cast<int32_t>(2 * p * W);
        const int32_t row = static_cast<int32_t>(W);
#pragma omp simd
        for (int64_t q = 0; q < Q; ++q) {
          const float a = r0[2 * q], b = r0[2 * q + 1], c = r1[2 * q], d = r1[2 * q + 1];
          const int32_t at = base + 2 * static_cast<int32_t>(q);
          float best = a;
          int32_t where = at;
          where = b > best ? at + 1 : where;
          best = b > best ? b : best;
          where = c > best ? at + row : where;
          best = c > best ? c : best;
          where = d > best ? at + row + 1 : where;
          best = d > best ? d : best;
          yr[q] = best;
          ar[q] = where;
        }
      }
    }
    return;
  }

  if (x.layout() == Layout::plain) {
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const float* plane = px + nc * H * W;
      for (int64_t p = 0; p < P; ++p) {
        // Window rows clipped to the input: padding never wins, so it need not be visited.
        const int64_t h0 = std::max<int64_t>(p * stride - pad, 0),
                      h1 = std::min(p * stride - pad + kernel, H);
        for (int64_t q = 0; q < Q; ++q) {
          const int64_t w0 = std::max<int64_t>(q * stride - pad, 0),
                        w1 = std::min(q * stride - pad + kernel, W);
          int64_t where = h0 * W + w0;
          float best = plane[where];
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w)
              if (plane[h * W + w] > best) {
                best = plane[h * W + w];
                where = h * W + w;
              }
          py[(nc * P + p) * Q + q] = best;
          pa[(nc * P + p) * Q + q] = static_cast<int32_t>(where);
        }
      }
    }
    return;
  }

  // Blocked: one window sweep serves the 16 lanes of a plane in one vector. Padding lanes hold zero,
  // so their maximum is zero too.
  const int64_t planes = lane_planes(x.shape(), x.layout());
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < planes; ++nb) {
    const float* plane = px + nb * H * W * kLanes;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t h0 = std::max<int64_t>(p * stride - pad, 0), h1 = std::min(p * stride - pad + kernel, H);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t w0 = std::max<int64_t>(q * stride - pad, 0),
                      w1 = std::min(q * stride - pad + kernel, W);
        // The 16 lanes live in one vector register each for value and index (GCC/Clang vector
        // extensions: a plain array here round-trips through memory on every window element).
        const int32_t first = static_cast<int32_t>(h0 * W + w0);
        V16f best;
        load16(best, plane + first * kLanes);
        V16i where = V16i{} + first;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) {
            const int32_t pos = static_cast<int32_t>(h * W + w);
            V16f v;
            load16(v, plane + pos * kLanes);
            const V16i better = v > best;
            best = better ? v : best;
            where = better ? V16i{} + pos : where;
          }
        const int64_t o = ((nb * P + p) * Q + q) * kLanes;
        std::memcpy(py + o, &best, sizeof best);
        std::memcpy(pa + o, &where, sizeof where);
      }
    }
  }
}

void maxpool_bp(const Tensor& dy, const std::vector<int32_t>& argmax, const Shape& x_shape, Tensor& dx) {
  TRAINER_CHECK(dy.rank() == 4 && x_shape.size() == 4 && dy.dim(0) == x_shape[0] && dy.dim(1) == x_shape[1],
                "maxpool bp: gradient {} does not fit input {}", shape_str(dy.shape()), shape_str(x_shape));
  TRAINER_CHECK(static_cast<int64_t>(argmax.size()) >= dy.storage_size(),
                "maxpool bp: {} argmax entries for a gradient of {} values (bp without a matching ff?)",
                argmax.size(), dy.storage_size());
  dx.resize(x_shape, dy.layout());
  const int64_t N = x_shape[0], C = x_shape[1], HW = x_shape[2] * x_shape[3];
  const int64_t PQ = dy.dim(2) * dy.dim(3);
  const float* pd = dy.data();
  const int32_t* pa = argmax.data();
  float* px = dx.data();
  // Parallel over planes: overlapping windows only ever add into their own plane, so no two threads
  // touch one value, and each plane is zeroed just before its scatter while it is in cache.
  if (dy.layout() == Layout::plain) {
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      float* plane = px + nc * HW;
      std::fill(plane, plane + HW, 0.0f);
      for (int64_t i = 0; i < PQ; ++i) plane[pa[nc * PQ + i]] += pd[nc * PQ + i];
    }
    return;
  }
  const int64_t planes = lane_planes(x_shape, dy.layout());
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < planes; ++nb) {
    float* plane = px + nb * HW * kLanes;
    std::fill(plane, plane + HW * kLanes, 0.0f);
    const float* d = pd + nb * PQ * kLanes;
    const int32_t* a = pa + nb * PQ * kLanes;
    // Padding lanes carry dy = 0, so they add zero and the padding of dx stays zero.
    for (int64_t i = 0; i < PQ; ++i)
      for (int64_t l = 0; l < kLanes; ++l) plane[a[i * kLanes + l] * kLanes + l] += d[i * kLanes + l];
  }
}

void gap_ff(const Tensor& x, Tensor& y) {
  TRAINER_CHECK(x.rank() == 4, "global average pool: expected [N, C, H, W], got {}", shape_str(x.shape()));
  const int64_t N = x.dim(0), C = x.dim(1), HW = x.dim(2) * x.dim(3);
  TRAINER_CHECK(HW > 0, "global average pool: empty plane in {}", shape_str(x.shape()));
  y.resize({N, C}, Layout::plain);
  const float* px = x.data();
  float* py = y.data();
  const double inv = 1.0 / static_cast<double>(HW);
  if (x.layout() == Layout::plain) {
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const float* p = px + nc * HW;
      double total = 0;
      for (int64_t i0 = 0; i0 < HW; i0 += kChunk) {
        const int64_t i1 = std::min(HW, i0 + kChunk);
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = i0; i < i1; ++i) s += p[i];
        total += s;
      }
      py[nc] = static_cast<float>(total * inv);
    }
    return;
  }
  const int64_t planes = lane_planes(x.shape(), x.layout());
  constexpr int64_t kChunkPos = kChunk / kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < planes; ++nb) {
    const float* p = px + nb * HW * kLanes;
    double total[kLanes] = {};
    for (int64_t i0 = 0; i0 < HW; i0 += kChunkPos) {
      const int64_t i1 = std::min(HW, i0 + kChunkPos);
      float s[kLanes] = {};
      for (int64_t i = i0; i < i1; ++i) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) s[l] += p[i * kLanes + l];
      }
      for (int64_t l = 0; l < kLanes; ++l) total[l] += s[l];
    }
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t o = plane_lane_index(nb, l, N, C, x.layout());
      if (o >= 0) py[o] = static_cast<float>(total[l] * inv);
    }
  }
}

void gap_bp(const Tensor& dy, const Shape& x_shape, Layout x_layout, Tensor& dx) {
  TRAINER_CHECK(x_shape.size() == 4 && dy.shape() == Shape({x_shape[0], x_shape[1]}),
                "global average pool bp: gradient {} does not fit input {}", shape_str(dy.shape()),
                shape_str(x_shape));
  dx.resize(x_shape, x_layout);
  const int64_t N = x_shape[0], C = x_shape[1], HW = x_shape[2] * x_shape[3];
  const float inv = 1.0f / static_cast<float>(HW);
  const float* pd = dy.data();
  float* px = dx.data();
  if (x_layout == Layout::plain) {
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const float v = pd[nc] * inv;
      std::fill(px + nc * HW, px + (nc + 1) * HW, v);
    }
    return;
  }
  const int64_t planes = lane_planes(x_shape, x_layout);
#pragma omp parallel for schedule(static)
  for (int64_t nb = 0; nb < planes; ++nb) {
    float v[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t o = plane_lane_index(nb, l, N, C, x_layout);
      v[l] = o >= 0 ? pd[o] * inv : 0.0f;  // padding lanes stay zero
    }
    float* p = px + nb * HW * kLanes;
    for (int64_t i = 0; i < HW; ++i) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) p[i * kLanes + l] = v[l];
    }
  }
}

}  // namespace trainer
