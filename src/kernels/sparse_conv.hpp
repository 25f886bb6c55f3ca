// Sparse convolution: FF, BP and WG that execute only the multiplies of unpruned weights (and skip
// whole zero input/error planes), on activations in Layout::NCHW16n.
//
// Why NCHW16n: one 512-bit vector holds one (c, h, w) position of 16 images, so a kept weight is one
// broadcast and a run of aligned FMAs over neighbouring positions — no gathers, any sparsity pattern.
//
// How (FF; BP is the same engine on dy with the transposed taps, one stride-1 pass per phase):
//  - the input is copied per (image block, band of output rows, group of input channels) into a zero-
//    padded slab (the prologue is applied there, so a fused BN apply costs one multiply-add per input
//    element, not one per FMA; the slab also makes every tap's offset a constant: no bounds checks);
//  - a tile of up to 16 output positions of one output channel (2x8, 1x16, 1x8 or 4x4; 2x7, 1x7 or
//    1x14 where a row is a multiple of 7 wide, so that tiles cover it exactly) is held in registers
//    while the kept taps of that channel in the group stream past: one broadcast and up to 16 FMAs per tap,
//    each FMA reading a vector from the slab (output channels innermost, so the tile's slab region stays in
//    L1); between groups the partial sums wait in a per-thread buffer that stays in L2, and the output is
//    written once (with non-temporal stores when it is larger than the caches);
//  - the epilogue (bias, per-channel Σy and Σy² for fused batch-norm statistics, output mask; in BP a
//    batch norm's gradient sums) runs on the registers before that single store.
// WG (dW only at kept positions) holds the dy vectors of a tile of 8-16 positions of one output channel
// in registers while the kept taps of that channel stream past, 8 sums at a time; the sums are reduced
// across lanes once per band (or at once, when a band is a single tile).
// What is read straight from memory instead of through a slab (WG's dy; an accumulating BP's output and
// ReLU mask) is one short run per output channel, too many streams for the hardware prefetchers: the
// kernels ask for the next tile's lines into L2 while the current tile computes.
// Tap offsets in the slab are computed once per weight structure and geometry and cached in the
// scratch; values are read from the weights, so an optimizer step only needs SparseWeights::repack.
//
// Threads: OpenMP over the current thread count; output channels (FF, WG: k; BP: c) are split into
// contiguous ranges of equal kept-tap count, or (FF, BP, for large inputs) whole image blocks are.
// Every output value is accumulated by one thread in a fixed order, so results do not depend on the
// thread count.
//
// Counters: every multiply of the dense convolution (ConvGeom::macs(): N*K*P*Q*C*R*S, the same count
// for each phase) is either executed or skipped for one reason. Attribution order: pruned weight, then
// (WG) zero error, then zero activation / zero error plane, then masked output. Images are counted as
// real ones (the padding images of the last block are not), and multiplies by the convolution's zero
// padding count as executed, as in the dense count.
//
// Skipping zero activations in this layout pays only for whole planes (one channel of a block of 16
// images zero everywhere: dead channels, all-zero tensors); those are detected cheaply (the scan stops
// at the first nonzero) and skipped.
#pragma once

#include <cstdint>
#include <memory>

#include "core/tensor.hpp"
#include "kernels/conv_ref.hpp"
#include "kernels/sparse_weights.hpp"

namespace trainer {

struct SparseCounters {
  int64_t dense_macs = 0;  // what the dense convolution multiplies (ConvGeom::macs())
  int64_t executed_macs = 0;
  int64_t skipped_pruned = 0;           // the weight is pruned
  int64_t skipped_zero_activation = 0;  // the input (x) plane is zero
  int64_t skipped_zero_error = 0;       // the error (dy) plane is zero
  int64_t skipped_masked_output = 0;    // the output position was masked out (not computed)

  int64_t skipped() const {
    return skipped_pruned + skipped_zero_activation + skipped_zero_error + skipped_masked_output;
  }
  bool adds_up() const { return executed_macs + skipped() == dense_macs; }
  SparseCounters& operator+=(const SparseCounters& o);
};

// Applied to each input element as the kernel reads it, per input channel c:
// x' = x * scale[c] + shift[c], then max(x', 0) when relu (the fused batch-norm apply + ReLU).
// Padding (spatial and padding images) stays zero: the convolution pads x', not x.
struct ConvPrologue {
  const float* scale = nullptr;  // [C], nullptr = 1
  const float* shift = nullptr;  // [C], nullptr = 0
  bool relu = false;
  bool active() const { return scale || shift || relu; }
};

// Applied to each output channel k as the kernel finishes it.
struct ConvEpilogue {
  const float* bias = nullptr;  // [K]: y += bias[k]
  // [K] each, written (not accumulated): Σ y and Σ y² over the real images and all positions of channel
  // k, as written (masked positions count as 0) — the batch-norm statistics without re-reading y.
  double* sum = nullptr;
  double* sumsq = nullptr;
  // BP only: the sums a batch norm's backward needs of its output gradient, when the dx this call writes
  // is that gradient in its final form (after accumulate_output and accumulate_relu): for each channel c
  // of dx, grad_sum[c] = Σ m·dx and grad_sum_xc[c] = Σ m·dx·(bn_x - bn_mean[c]) over the real images and
  // every position this call writes, where bn_x is the batch norm's input (x_shape, NCHW16n) and m is
  // its fused ReLU's mask, fma(bn_relu_scale[c], bn_x, bn_relu_shift[c]) > 0 with the forward's own
  // arithmetic (1 without bn_relu_scale). Read while dx is in registers: the batch norm's pass over dx
  // and its input for these sums is not needed (reformulated batch norm's backward half).
  const Tensor* bn_x = nullptr;
  const float* bn_mean = nullptr;        // [C]
  const float* bn_relu_scale = nullptr;  // [C] or nullptr
  const float* bn_relu_shift = nullptr;  // [C], with bn_relu_scale
  double* grad_sum = nullptr;            // [C], written
  double* grad_sum_xc = nullptr;         // [C], written
};

// Output positions not to compute (e.g. speculated dead). One byte per 16-image vector:
// keep[((nb * K + k) * P + p) * Q + q], nb = image block; 0 = skip. Skipped positions are written as 0.
// A tile is skipped only when all its positions are masked; the others are computed and then zeroed.
struct ConvOutputMask {
  const uint8_t* keep = nullptr;
};

enum class SparseImpl : uint8_t {
  best,    // AVX-512 when compiled with it (__AVX512F__), else AVX2 + FMA, else the portable version
  scalar,  // the portable version (16-float arrays), always available; for tests
};

struct SparseConvOptions {
  SparseImpl impl = SparseImpl::best;
  bool skip_zero_planes = true;  // detect and skip all-zero input / error planes
  // Tuning knobs (0 = chosen from the shapes): input channels per slab (FF, WG) or error channels per
  // slab (BP); output rows per band; tile shape (1 = 2x8, 2 = 1x16, 3 = 1x8, 4 = 4x4,
  // 5 = 2x7, 6 = 1x7, 7 = 1x14, 8 = 1x4 positions, in every phase); non-temporal output stores (FF/BP: 1 =
  // always, 0 = never, -1 = for outputs larger than the caches).
  int channel_group = 0;
  int band_rows = 0;
  int tile = 0;
  int stream_output = -1;
  // 1: the threads copy each input slab once, together (one barrier per slab); 0: each thread copies
  // its own (no barriers, the input read once per thread). Measured at 2 threads on ResNet-18 shapes,
  // own copies were 1.3-1.5x faster: the barriers and the cross-core traffic cost more than the reads.
  int shared_slabs = 0;
  // The L1 data cache (bytes) the default FF/BP tile's slab region must fit (sparse_conv_default_tile);
  // 0: this machine's (l1_data_cache_bytes).
  int64_t l1_bytes = 0;
  // FF/BP: 1: threads take whole image blocks; 0: they take output channels (split by kept-tap count);
  // -1: image blocks when the blocks divide evenly and the input is over 16x the taps' bytes (it is
  // then read once instead of once per thread: measured up to 1.12x faster at 2 threads on the 16x16
  // and stride-2 32x32 layers, slower where the taps are many).
  int split_images = -1;
  // BP only: dx += the result instead of dx = it (dx must already be x_shape in NCHW16n). A tensor read
  // by two layers gets the sum of their gradients; the second can add its own in its epilogue instead
  // of a separate pass over memory.
  bool accumulate_output = false;
  // BP with accumulate_output: dx = (dx + result) where relu_y > 0, else 0 (relu_y: x_shape, NCHW16n).
  // The backward of a ReLU whose output is relu_y, done by the last gradient written into that output
  // (Graph::backward) instead of a pass of its own; the same bits as the add, then the ReLU's backward.
  const Tensor* accumulate_relu = nullptr;
  // BP at a stride, one flag per phase (a * stride + b: the dx positions (h, w) with h mod stride = a,
  // w mod stride = b), stride * stride of them, or empty:
  //  - leave_phases (not accumulating): the phases set here are left unwritten. Only phases that no tap
  //    of the kernel reaches (sparse_conv_bp_tapless_phases) may be left: their dx is 0, and the next
  //    writer of dx writes it (write_phases) instead of adding to a 0. A strided 1x1 convolution (the
  //    ResNet shortcut) reaches one phase in four.
  //  - write_phases (with accumulate_output): the phases set here are written (with accumulate_relu's
  //    mask), the others added to, as above. The same values as adding to zeros.
  const std::vector<uint8_t>* leave_phases = nullptr;
  const std::vector<uint8_t>* write_phases = nullptr;
};

// Per phase of dx (a * stride + b), 1 where no tap of an R x S kernel at this stride and padding lands:
// every dx there is 0 in the BP. Empty at stride 1.
std::vector<uint8_t> sparse_conv_bp_tapless_phases(int64_t R, int64_t S, int64_t stride, int64_t pad);

// What a layer keeps between calls (its tap programs, built once per mask; zero-plane flags): one per
// layer or per thread of control; kernels allocate only when a shape grows. The buffers a call needs
// only while it runs (slabs, partial sums, statistics) are not in here: they belong to the calling
// thread and are shared by every scratch, so that each call finds them in the caches.
class SparseConvScratch {
 public:
  SparseConvScratch();
  ~SparseConvScratch();
  SparseConvScratch(const SparseConvScratch&) = delete;
  SparseConvScratch& operator=(const SparseConvScratch&) = delete;
  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// The geometry of a conv with these weights on an input of this shape.
ConvGeom sparse_conv_geom(const SparseWeights& w, const Shape& x_shape);

// FF: y = conv(prologue(x), w) with w's pruned taps skipped, then the epilogue.
// x: [N, C, H, W] NCHW16n; w: [K, C, R, S] compressed; y: resized to [N, K, P, Q] NCHW16n.
SparseCounters sparse_conv_ff(const Tensor& x, const SparseWeights& w, Tensor& y, SparseConvScratch& scratch,
                              const ConvPrologue& prologue = {}, const ConvEpilogue& epilogue = {},
                              const ConvOutputMask& mask = {}, const SparseConvOptions& opt = {});

// BP: dx = conv_transpose(dy, w), pruned taps and zero dy planes skipped.
// dy: [N, K, P, Q] NCHW16n; w: [K, C, R, S] compressed; x_shape: [N, C, H, W] (the FF input's shape);
// dx: resized to x_shape in NCHW16n (written; added to with opt.accumulate_output).
// epilogue: only its batch-norm gradient sums (bn_x ...) apply to BP.
SparseCounters sparse_conv_bp(const Tensor& dy, const SparseWeights& w, const Shape& x_shape, Tensor& dx,
                              SparseConvScratch& scratch, const SparseConvOptions& opt = {},
                              const ConvEpilogue& epilogue = {});

// WG at kept positions only: dw_values[e] = Σ_{n,p,q} prologue(x)[n, c, p*st-pad+r, q*st-pad+s] * dy[n,k,p,q]
// for each kept tap e = (k, c, r, s) in the FF order of w (w.ff_src()[e] is its OIHW index). Zero x and
// dy planes skipped. x: [N, C, H, W] NCHW16n (the FF input, before its prologue); dy: [N, K, P, Q]
// NCHW16n; dw_values: [w.nnz()] (written); db: [K] or nullptr (Σ dy per channel, written).
SparseCounters sparse_conv_wg_values(const Tensor& x, const Tensor& dy, const SparseWeights& w,
                                     float* dw_values, float* db, SparseConvScratch& scratch,
                                     const ConvPrologue& prologue = {}, const SparseConvOptions& opt = {});

// The same, with the gradient scattered into a dense dw: [K, C, R, S] plain (resized; pruned positions
// are written 0), and db: [K] or nullptr (resized).
SparseCounters sparse_conv_wg(const Tensor& x, const Tensor& dy, const SparseWeights& w, Tensor& dw,
                              Tensor* db, SparseConvScratch& scratch, const ConvPrologue& prologue = {},
                              const SparseConvOptions& opt = {});

// The FF/BP tile shape (numbered as SparseConvOptions::tile) the kernels take when opt.tile is 0: output
// rows jmax positions wide (per phase of a strided BP), the input read at stride ist, slabs of `channels`
// channels whose taps span tap_rows x tap_cols input positions, narrow: the AVX2 backend (16 registers).
// Rows a multiple of 7 wide (not of 8) take 1x7; other rows of 8 or more 2x8 (1x8 at stride 2), rows of
// 4 to 6 4x4, narrower ones 1x8 (cut to the row); where the 2x8 tile's slab region (channels x its input
// rows x its input columns x 64 bytes) would not fit an L1 data cache of l1_bytes, or the 4x4 tile's would
// not fit twice that, the one-row tile of the same width (1x8, 1x4).
int sparse_conv_default_tile(int64_t jmax, int64_t ist, int64_t channels, int64_t tap_rows, int64_t tap_cols,
                             bool narrow, int64_t l1_bytes);

// This machine's L1 data cache per core in bytes (sysconf), or 48 KiB where the system does not say.
int64_t l1_data_cache_bytes();

// Whether this is an AMD CPU (x86 only; false elsewhere): the cost model's built-in set and the batch
// norm's streaming threshold were measured to differ between AMD and Intel.
bool cpu_is_amd();

// The vector code SparseImpl::best runs: "avx512", "avx2" (two 256-bit halves per 16-image vector, on
// machines without AVX-512) or "portable".
const char* sparse_conv_backend();

}  // namespace trainer
