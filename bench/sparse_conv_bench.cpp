// Sparse conv kernels (kernels/sparse_conv.hpp) against oneDNN dense, per phase, on the 3x3 conv layers of
// ResNet-18 for CIFAR at batch 64 (fp32), over unstructured weight sparsities; prints times, speedups and
// the break-even sparsity (where sparse time = dense time, interpolated between measured points), and
// beside it the break-even of the built-in cost model that makes the run-time choice (each kernel on its
// own layout, as measured here, and as a pruned run decides it, with dense paying the reorders).
// Beside each point, the kernel that model picks there (each kernel on its own layout) and that kernel's
// speed over dense; the worst of those per phase shows whether the dense fallback keeps the choice from
// being slower than dense.
//
// oneDNN: primitives created once with format_tag::any (its preferred blocked layouts), operands already
// in those layouts (no reorders timed). Sparse: activations in NCHW16n, weights compressed once (the
// per-step repack is timed separately); WG is timed as sparse_conv_wg_values (the gradient of the kept
// weights, what a compressed optimizer step reads). Each measurement: the median of `--reps` runs after
// a warm-up, dense and sparse interleaved so that load from other processes hits both alike.
//
// Usage: sparse_conv_bench [--reps N] [--set resnet18|resnet20] [--layer i] [--sparsity s] [--only ff|bp|wg]
//                          [--tile t] [--cg n] [--band n] [--stream 0|1] [--shared 0|1]
//                          [--cold 1]  (with --only: operands evicted from the caches before each call)
//                          [--split-images -1|0|1] [--calibration FILE]  (the cost model whose choice
//                          is shown: a file from `trainer calibrate`, e.g. with --model resnet18 --input
//                          3x32x32 for these shapes; default: the built-in model)
// (run with OMP_NUM_THREADS set; the thread count is printed). BENCH_MIN=1 in the environment reports
// the fastest run instead of the median (on a shared machine the fastest is the least disturbed).
#include <fmt/format.h>
#include <omp.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "core/timer.hpp"
#include "kernels/conv_choice.hpp"
#include "kernels/dnnl_context.hpp"
#include "kernels/sparse_conv.hpp"
#include "kernels/sparse_weights.hpp"

using namespace trainer;

namespace {

struct Layer {
  const char* name;
  int64_t N, C, H, W, K, R, stride, pad;
};

// ResNet-18 (CIFAR) 3x3 convs at batch 64: one per stage, and the stride-2 entries of stages 2 and 4.
const Layer kLayers[] = {
    {"64->64 @32x32", 64, 64, 32, 32, 64, 3, 1, 1},      {"128->128 @16x16", 64, 128, 16, 16, 128, 3, 1, 1},
    {"256->256 @8x8", 64, 256, 8, 8, 256, 3, 1, 1},      {"512->512 @4x4", 64, 512, 4, 4, 512, 3, 1, 1},
    {"64->128 @32x32 s2", 64, 64, 32, 32, 128, 3, 2, 1}, {"256->512 @8x8 s2", 64, 256, 8, 8, 512, 3, 2, 1},
};

// ResNet-20 (width 16) on Fashion-MNIST (28x28) at batch 128 (--set resnet20): the convs of the
// end-to-end sparse-training measurement, including the 1x1 stride-2 shortcuts.
const Layer kResNet20[] = {
    {"r20 16->16 @28x28", 128, 16, 28, 28, 16, 3, 1, 1},
    {"r20 16->32 @28x28 s2", 128, 16, 28, 28, 32, 3, 2, 1},
    {"r20 32->32 @14x14", 128, 32, 14, 14, 32, 3, 1, 1},
    {"r20 32->64 @14x14 s2", 128, 32, 14, 14, 64, 3, 2, 1},
    {"r20 64->64 @7x7", 128, 64, 7, 7, 64, 3, 1, 1},
    {"r20 1x1 16->32 @28x28 s2", 128, 16, 28, 28, 32, 1, 2, 0},
    {"r20 1x1 32->64 @14x14 s2", 128, 32, 14, 14, 64, 1, 2, 0},
};

void fill_random(float* p, int64_t n, Rng& rng) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(2 * rng.uniform() - 1);
}

void fill_random(Tensor& t, Rng& rng) {
  // Logical elements only: padding images of NCHW16n stay zero.
  const Tensor plain = [&] {
    Tensor p(t.shape(), Layout::plain);
    fill_random(p.data(), p.numel(), rng);
    return p;
  }();
  t = plain.to_layout(t.layout());
}

// Writes back and drops every line of t from all cache levels, so that the next call reads it from
// memory, as a training step mostly does (its activations are far larger than the caches).
// clflushopt where the build targets it (the figures in docs/benchmarks.md were taken so; plain clflush
// measured 5-25% slower cold calls), else clflush (SSE2, every x86-64).
bool evict(const Tensor& t) {
#if defined(__x86_64__)
  const char* p = reinterpret_cast<const char*>(t.data());
  const size_t bytes = sizeof(float) * static_cast<size_t>(t.storage_size());
#if defined(__CLFLUSHOPT__)
  for (size_t i = 0; i < bytes; i += 64) _mm_clflushopt(const_cast<char*>(p + i));
  _mm_sfence();
#else
  for (size_t i = 0; i < bytes; i += 64) _mm_clflush(p + i);
  _mm_mfence();
#endif
  return true;
#else
  (void)t;
  return false;
#endif
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return getenv("BENCH_MIN") ? v.front() : v[v.size() / 2];
}

// oneDNN dense conv, all three phases, primitives and operands created once.
struct DenseConv {
  dnnl::convolution_forward ff;
  dnnl::convolution_backward_data bp;
  dnnl::convolution_backward_weights wg;
  dnnl::memory src, wei, dst, diff_src, diff_wei, diff_dst;
  std::string impl;

  explicit DenseConv(const Layer& l, Rng& rng) {
    using dnnl::memory;
    using tag = memory::format_tag;
    const auto f32 = memory::data_type::f32;
    const int64_t P = (l.H + 2 * l.pad - l.R) / l.stride + 1, Q = (l.W + 2 * l.pad - l.R) / l.stride + 1;
    const memory::desc src_md({l.N, l.C, l.H, l.W}, f32, tag::any),
        wei_md({l.K, l.C, l.R, l.R}, f32, tag::any), dst_md({l.N, l.K, P, Q}, f32, tag::any);
    const memory::dims strides = {l.stride, l.stride}, pads = {l.pad, l.pad};
    dnnl::engine& eng = cpu_engine();
    const dnnl::convolution_forward::primitive_desc ff_pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training,
                                        dnnl::algorithm::convolution_direct, src_md, wei_md, dst_md, strides,
                                        pads, pads),
        eng);
    const dnnl::convolution_backward_data::primitive_desc bp_pd(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, src_md, wei_md, dst_md,
                                              strides, pads, pads),
        eng, ff_pd);
    const dnnl::convolution_backward_weights::primitive_desc wg_pd(
        dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src_md, wei_md, dst_md,
                                                 strides, pads, pads),
        eng, ff_pd);
    ff = dnnl::convolution_forward(ff_pd);
    bp = dnnl::convolution_backward_data(bp_pd);
    wg = dnnl::convolution_backward_weights(wg_pd);
    src = memory(ff_pd.src_desc(), eng);
    wei = memory(ff_pd.weights_desc(), eng);
    dst = memory(ff_pd.dst_desc(), eng);
    diff_src = memory(bp_pd.diff_src_desc(), eng);
    diff_wei = memory(wg_pd.diff_weights_desc(), eng);
    diff_dst = memory(bp_pd.diff_dst_desc(), eng);
    for (dnnl::memory* m : {&src, &wei, &diff_dst})
      fill_random(static_cast<float*>(m->get_data_handle()),
                  static_cast<int64_t>(m->get_desc().get_size() / sizeof(float)), rng);
    impl =
        fmt::format("ff={} bp={} wg={}", ff_pd.impl_info_str(), bp_pd.impl_info_str(), wg_pd.impl_info_str());
    // oneDNN wants the same diff_dst format for bp and wg; reorder cost is not what we time.
    if (wg_pd.diff_dst_desc() != bp_pd.diff_dst_desc()) impl += " (wg diff_dst format differs from bp)";
  }
  void run_ff() {
    ff.execute(cpu_stream(), {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, dst}});
    cpu_stream().wait();
  }
  void run_bp() {
    bp.execute(cpu_stream(),
               {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DIFF_SRC, diff_src}});
    cpu_stream().wait();
  }
  void run_wg() {
    wg.execute(cpu_stream(),
               {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_wei}});
    cpu_stream().wait();
  }
};

// With one thread, the thread's CPU time: robust to the preemption of a shared machine (for tuning).
// With more, wall time.
double clock_ms() {
  if (omp_get_max_threads() == 1) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) * 1e-6;
  }
  return static_cast<double>(now_ns()) * 1e-6;
}

template <typename Fn>
double time_ms(Fn&& fn) {
  const double t0 = clock_ms();
  fn();
  return clock_ms() - t0;
}

// Median times (ms) of a dense and a sparse call, interleaved.
template <typename D, typename S>
std::pair<double, double> compare(int reps, D&& dense, S&& sparse) {
  dense();
  sparse();
  std::vector<double> td, ts;
  for (int i = 0; i < reps; ++i) {
    td.push_back(time_ms(dense));
    ts.push_back(time_ms(sparse));
  }
  return {median(td), median(ts)};
}

// Sparsity at which the speedup crosses 1, interpolated linearly in (sparsity, log speedup).
std::string break_even(const std::vector<double>& sparsity, const std::vector<double>& speedup) {
  if (!speedup.empty() && speedup.front() >= 1.0) return fmt::format("<={:.0f}%", 100 * sparsity.front());
  for (size_t i = 1; i < speedup.size(); ++i)
    if (speedup[i] >= 1.0) {
      const double a = std::log(speedup[i - 1]), b = std::log(speedup[i]);
      const double s = sparsity[i - 1] + (sparsity[i] - sparsity[i - 1]) * (0 - a) / (b - a);
      return fmt::format("{:.0f}%", 100 * s);
    }
  return "never";
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 7, only_layer = -1;
  bool resnet20 = false;
  std::string only_phase;  // "ff", "bp" or "wg": time that sparse phase alone, no oneDNN (for profiling)
  bool cold = false;       // with --only: evict the activations from every cache level before each call
  std::vector<double> sparsities = {0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95};
  SparseConvOptions opt;
  std::string calibration;  // a cost model written by `trainer calibrate` (default: the built-in one)
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const char* v = argv[i + 1];
    if (a == "--reps")
      reps = std::atoi(v);
    else if (a == "--layer")
      only_layer = std::atoi(v);
    else if (a == "--sparsity")
      sparsities = {std::atof(v)};
    else if (a == "--set")
      resnet20 = std::string(v) == "resnet20";
    else if (a == "--only")
      only_phase = v;
    else if (a == "--tile")
      opt.tile = std::atoi(v);
    else if (a == "--cg")
      opt.channel_group = std::atoi(v);
    else if (a == "--band")
      opt.band_rows = std::atoi(v);
    else if (a == "--stream")
      opt.stream_output = std::atoi(v);
    else if (a == "--shared")
      opt.shared_slabs = std::atoi(v);
    else if (a == "--cold") {
      cold = std::atoi(v) != 0;
      if (cold && !evict(Tensor())) {
        fmt::print(stderr, "--cold: evicting caches is implemented for x86-64 only\n");
        return 2;
      }
    } else if (a == "--split-images")
      opt.split_images = std::atoi(v);
    else if (a == "--calibration")
      calibration = v;
    else {
      fmt::print(stderr, "unknown option {}\n", a);
      return 2;
    }
  }
  ConvCostModel model;
  try {
    model = calibration.empty() ? ConvCostModel::defaults() : ConvCostModel::load(calibration);
  } catch (const Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 2;
  }
  fmt::print("sparse conv vs oneDNN {}.{} dense, fp32, {} threads, sparse kernels: {}, median of {} runs\n",
             dnnl_version()->major, dnnl_version()->minor, omp_get_max_threads(), sparse_conv_backend(),
             reps);
  fmt::print(
      "speedup = oneDNN time / sparse time; weights pruned uniformly at random to the given sparsity\n");
  fmt::print("clock: {}\n\n", omp_get_max_threads() == 1 ? "thread CPU time" : "wall time");

  const Layer* layers = resnet20 ? kResNet20 : kLayers;
  const int num_layers = static_cast<int>(resnet20 ? std::size(kResNet20) : std::size(kLayers));
  for (int li = 0; li < num_layers; ++li) {
    if (only_layer >= 0 && li != only_layer) continue;
    const Layer& l = layers[li];
    Rng rng(1234 + li);
    DenseConv dense(l, rng);
    const int64_t P = (l.H + 2 * l.pad - l.R) / l.stride + 1, Q = (l.W + 2 * l.pad - l.R) / l.stride + 1;
    Tensor x({l.N, l.C, l.H, l.W}, Layout::NCHW16n), dy({l.N, l.K, P, Q}, Layout::NCHW16n), y, dx;
    fill_random(x, rng);
    fill_random(dy, rng);
    Tensor w({l.K, l.C, l.R, l.R});
    fill_random(w.data(), w.numel(), rng);
    SparseConvScratch scratch;
    std::vector<float> dw_values(static_cast<size_t>(w.numel()));
    const double gmacs = static_cast<double>(l.N * l.K * P * Q * l.C * l.R * l.R) * 1e-9;

    fmt::print("{}  ({:.2f} GMAC per phase; oneDNN {})\n", l.name, gmacs, dense.impl);
    ConvGeom g;
    g.N = l.N, g.C = l.C, g.H = l.H, g.W = l.W, g.K = l.K, g.R = l.R, g.S = l.R, g.stride = l.stride,
    g.pad = l.pad;
    const double model_be[3] = {model.kernel_break_even_density(ConvPhase::ff, g),
                                model.kernel_break_even_density(ConvPhase::bp, g),
                                model.kernel_break_even_density(ConvPhase::wg, g)};
    if (only_phase.empty())
      fmt::print("  {:>8} {:>5} {:>10} {:>10} {:>8} {:>10} {:>7} {:>8}\n", "sparsity", "phase", "dense ms",
                 "sparse ms", "speedup", "repack ms", "choice", "chosen");
    else
      fmt::print("  {:>8} {:>5} {:>10} {:>10}\n", "sparsity", "phase", "dense ms", "sparse ms");
    std::vector<double> speed[3];
    // The kernel the cost model picks at each measured point (each kernel on its own layout), and that
    // kernel's speed over dense: below 1.00x where the model picks sparse and sparse is slower. The worst
    // of these per phase says whether the dense fallback keeps the choice from being slower than dense.
    double worst_chosen[3] = {1e30, 1e30, 1e30};
    double worst_at[3] = {0, 0, 0};
    for (double sp : sparsities) {
      Tensor mask(w.shape());
      for (int64_t i = 0; i < mask.numel(); ++i) mask.data()[i] = rng.uniform() >= sp ? 1.0f : 0.0f;
      SparseWeights sw;
      sw.build(w, mask, l.stride, l.pad);
      std::vector<double> repacks;
      for (int i = 0; i < reps; ++i) repacks.push_back(time_ms([&] { sw.repack(w); }));
      const double repack = median(repacks);
      if (!only_phase.empty()) {
        auto run = [&] {
          if (only_phase == "ff") sparse_conv_ff(x, sw, y, scratch, {}, {}, {}, opt);
          if (only_phase == "bp") sparse_conv_bp(dy, sw, x.shape(), dx, scratch, opt);
          if (only_phase == "wg")
            sparse_conv_wg_values(x, dy, sw, dw_values.data(), nullptr, scratch, {}, opt);
        };
        run();
        std::vector<double> t;
        for (int i = 0; i < reps; ++i) {
          if (cold)
            for (const Tensor* a : {&x, &dy, &y, &dx}) evict(*a);
          t.push_back(time_ms(run));
        }
        fmt::print("  {:>7.0f}% {:>5} {:>10} {:>10.3f}\n", 100 * sp, only_phase, "-", median(t));
        continue;
      }
      const char* phases[3] = {"FF", "BP", "WG"};
      for (int ph = 0; ph < 3; ++ph) {
        std::pair<double, double> t;
        if (ph == 0)
          t = compare(
              reps, [&] { dense.run_ff(); }, [&] { sparse_conv_ff(x, sw, y, scratch, {}, {}, {}, opt); });
        else if (ph == 1)
          t = compare(
              reps, [&] { dense.run_bp(); }, [&] { sparse_conv_bp(dy, sw, x.shape(), dx, scratch, opt); });
        else
          t = compare(
              reps, [&] { dense.run_wg(); },
              [&] { sparse_conv_wg_values(x, dy, sw, dw_values.data(), nullptr, scratch, {}, opt); });
        const double speedup = t.first / t.second;
        speed[ph].push_back(speedup);
        const double density = static_cast<double>(sw.nnz()) / static_cast<double>(w.numel());
        const bool pick_sparse = density < model_be[ph];
        const double chosen = pick_sparse ? speedup : 1.0;
        if (chosen < worst_chosen[ph]) worst_chosen[ph] = chosen, worst_at[ph] = sp;
        fmt::print("  {:>7.0f}% {:>5} {:>10.3f} {:>10.3f} {:>7.2f}x {:>10.3f} {:>7} {:>7.2f}x\n", 100 * sp,
                   phases[ph], t.first, t.second, speedup, repack, pick_sparse ? "sparse" : "dense", chosen);
      }
    }
    if (sparsities.size() > 1)
      fmt::print("  break-even sparsity: FF {}, BP {}, WG {}\n", break_even(sparsities, speed[0]),
                 break_even(sparsities, speed[1]), break_even(sparsities, speed[2]));
    if (only_phase.empty()) {
      auto worst = [&](int ph) {
        return worst_chosen[ph] >= 1.0
                   ? std::string("never slower")
                   : fmt::format("{:.2f}x at {:.0f}%", worst_chosen[ph], 100 * worst_at[ph]);
      };
      fmt::print("  the model's choice against oneDNN at its worst: FF {}, BP {}, WG {}\n", worst(0),
                 worst(1), worst(2));
    }
    // The cost model's break-even for this shape: with each kernel on its own layout (what is measured
    // above), and where a pruned run's choice switches to sparse (activations held in NCHW16n, so dense
    // would pay the reorders).
    auto pct = [](double density) { return fmt::format("{:.0f}%", 100 * (1.0 - density)); };
    if (only_phase.empty())
      fmt::print("  cost model ({}): break-even FF {}, BP {}, WG {}; in a pruned run FF {}, BP {}, WG {}\n",
                 model.source, pct(model_be[0]), pct(model_be[1]), pct(model_be[2]),
                 pct(model.break_even_density(ConvPhase::ff, g, true)),
                 pct(model.break_even_density(ConvPhase::bp, g, true)),
                 pct(model.break_even_density(ConvPhase::wg, g, true)));
    fmt::print("\n");
  }
  return 0;
}
