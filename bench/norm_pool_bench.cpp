// Timings of the non-GEMM layers at a ResNet-on-MNIST size: x [128, 16, 28, 28] (6.4 MB per tensor),
// in each layout (0 plain, 1 nChw16c, 2 NCHW16n). Each of these kernels is a few passes over memory, so
// compare bytes moved per second (counter "bytes_per_second") with the machine's bandwidth. Threads:
// OMP_NUM_THREADS.
#include <benchmark/benchmark.h>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "nn/layers/basic.hpp"
#include "nn/layers/batchnorm2d.hpp"

using namespace trainer;

namespace {

const Shape kShape{128, 16, 28, 28};

Tensor random_tensor(const Shape& shape, uint64_t seed, Layout layout) {
  Rng rng(seed);
  Tensor t(shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<float>(rng.normal());
  return t.to_layout(layout);
}

Layout layout_arg(const benchmark::State& state) {
  const Layout layouts[] = {Layout::plain, Layout::nChw16c, Layout::NCHW16n};
  return layouts[state.range(0)];
}

void set_bytes(benchmark::State& state, const Tensor& x, int passes) {
  state.SetBytesProcessed(state.iterations() * x.storage_size() * 4 * passes);
  state.SetLabel(layout_name(x.layout()));
}

// ff (read x twice, write y) + wg (read x, dy) + bp (read x, dy, write dx): 9 tensor passes.
void BM_BatchNormFfWgBp(benchmark::State& state) {
  const Tensor x = random_tensor(kShape, 1, layout_arg(state)),
               dy = random_tensor(kShape, 2, layout_arg(state));
  BatchNorm2d bn("bn", kShape[1]);
  Tensor y, dx;
  for (auto _ : state) {
    bn.ff({&x}, y, true);
    bn.wg({&x}, y, dy);
    bn.bp({&x}, y, dy, {&dx});
    benchmark::DoNotOptimize(dx.data());
  }
  set_bytes(state, x, 9);
}

void BM_BatchNormFf(benchmark::State& state) {
  const Tensor x = random_tensor(kShape, 1, layout_arg(state));
  BatchNorm2d bn("bn", kShape[1]);
  Tensor y;
  for (auto _ : state) {
    bn.ff({&x}, y, true);
    benchmark::DoNotOptimize(y.data());
  }
  set_bytes(state, x, 3);
}

// ff (read x, write y) + bp (read y, dy, write dx): 5 tensor passes.
void BM_ReluFfBp(benchmark::State& state) {
  const Tensor x = random_tensor(kShape, 1, layout_arg(state)),
               dy = random_tensor(kShape, 2, layout_arg(state));
  ReLU relu("relu");
  Tensor y, dx;
  for (auto _ : state) {
    relu.ff({&x}, y, true);
    relu.bp({&x}, y, dy, {&dx});
    benchmark::DoNotOptimize(dx.data());
  }
  set_bytes(state, x, 5);
}

// 2x2 stride 2: ff reads x and writes y (1/4) and argmax (1/4); bp reads dy, argmax, writes dx.
void BM_MaxPoolFfBp(benchmark::State& state) {
  const Tensor x = random_tensor(kShape, 1, layout_arg(state));
  const Tensor dy = random_tensor({128, 16, 14, 14}, 2, layout_arg(state));
  MaxPool2d pool("pool", 2);
  Tensor y, dx;
  for (auto _ : state) {
    pool.ff({&x}, y, true);
    pool.bp({&x}, y, dy, {&dx});
    benchmark::DoNotOptimize(dx.data());
  }
  state.SetBytesProcessed(state.iterations() * x.storage_size() * 4 * 3);  // about 3 tensor passes
  state.SetLabel(layout_name(x.layout()));
}

void BM_Copy(benchmark::State& state) {
  // The memory roof: one read and one write pass.
  const Tensor x = random_tensor(kShape, 1, layout_arg(state));
  Tensor y(kShape, x.layout());
  for (auto _ : state) {
    const float* __restrict s = x.data();
    float* __restrict d = y.data();
    const int64_t n = x.storage_size();
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    benchmark::DoNotOptimize(y.data());
  }
  set_bytes(state, x, 2);
}

}  // namespace

BENCHMARK(BM_BatchNormFfWgBp)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BatchNormFf)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ReluFfBp)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MaxPoolFfBp)->DenseRange(0, 2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Copy)->Arg(0)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
