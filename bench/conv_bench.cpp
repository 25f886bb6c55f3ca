// Conv2d through the layer interface, one phase per benchmark: the 3x3 16->16 convolution of a
// ResNet stage at 28x28, batch 128, input in nChw16c as the previous conv writes it. Also the plain
// first layer (1->16) of a Fashion-MNIST model. Run with OMP_NUM_THREADS=2 to compare with PyTorch
// (bench/compare_pytorch.sh) on the same threads; the context lines name oneDNN's kernels.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "core/rng.hpp"
#include "nn/layers/conv2d.hpp"

namespace {

using namespace trainer;

struct ConvSetup {
  std::unique_ptr<Conv2d> conv;
  Tensor x, y, dy, dx;

  ConvSetup(int64_t N, int64_t C, int64_t K, int64_t HW, int64_t R, int64_t pad, Layout layout) {
    conv = std::make_unique<Conv2d>("bench.conv", C, K, R, 1, pad);
    Rng rng(1);
    conv->init(rng);
    Tensor xp({N, C, HW, HW});
    for (int64_t i = 0; i < xp.numel(); ++i) xp.data()[i] = static_cast<float>(rng.uniform());
    x = xp.to_layout(layout);
    conv->ff({&x}, y, true);
    dy = y;
    dx = x;
  }
};

ConvSetup& block_conv() {
  static ConvSetup s(128, 16, 16, 28, 3, 1, Layout::nChw16c);
  return s;
}
ConvSetup& first_conv() {
  static ConvSetup s(128, 1, 16, 28, 3, 1, Layout::plain);
  return s;
}

void run(benchmark::State& state, ConvSetup& s, Phase phase) {
  const Op op = s.conv->describe(phase, {&s.x}, s.y);
  for (auto _ : state) {
    switch (phase) {
      case Phase::ff:
        s.conv->ff({&s.x}, s.y, true);
        break;
      case Phase::bp:
        s.conv->bp({&s.x}, s.y, s.dy, {&s.dx});
        break;
      default:
        s.conv->wg({&s.x}, s.y, s.dy);
        break;
    }
    benchmark::ClobberMemory();
  }
  state.counters["GMAC/s"] = benchmark::Counter(static_cast<double>(op.dense_macs) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Conv3x3_16to16_28x28_b128_ff(benchmark::State& st) { run(st, block_conv(), Phase::ff); }
void BM_Conv3x3_16to16_28x28_b128_bp(benchmark::State& st) { run(st, block_conv(), Phase::bp); }
void BM_Conv3x3_16to16_28x28_b128_wg(benchmark::State& st) { run(st, block_conv(), Phase::wg); }
void BM_Conv3x3_1to16_28x28_b128_ff(benchmark::State& st) { run(st, first_conv(), Phase::ff); }
void BM_Conv3x3_1to16_28x28_b128_wg(benchmark::State& st) { run(st, first_conv(), Phase::wg); }

// With --benchmark_repetitions, "min" is the figure to compare on a shared machine: other processes
// only ever add time.
double min_of(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }
#define CONV_BENCHMARK(fn) \
  BENCHMARK(fn)->Unit(benchmark::kMillisecond)->UseRealTime()->ComputeStatistics("min", min_of)

CONV_BENCHMARK(BM_Conv3x3_16to16_28x28_b128_ff);
CONV_BENCHMARK(BM_Conv3x3_16to16_28x28_b128_bp);
CONV_BENCHMARK(BM_Conv3x3_16to16_28x28_b128_wg);
CONV_BENCHMARK(BM_Conv3x3_1to16_28x28_b128_ff);
CONV_BENCHMARK(BM_Conv3x3_1to16_28x28_b128_wg);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("conv 16->16 nChw16c", block_conv().conv->implementations(block_conv().x));
  benchmark::AddCustomContext("conv 1->16 plain", first_conv().conv->implementations(first_conv().x));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
