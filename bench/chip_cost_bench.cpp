// The chip model's cost against the engine's: ResNet-18 training steps (synthetic data, CIFAR shapes
// 3x32x32, batch 32 by default) through the real training loop (train() with TrainHooks, as
// `trainer train --chip` runs it), and the time the chip model takes to cost the same steps in exact and
// in statistical mode. Prints medians and their ratios.
//
// Steps 0 and 1 warm up (1 with maps and costing). After them, even steps run plain and odd steps
// capture the nonzero maps and are costed in both modes, so that load from other processes hits both
// alike. Engine step time is the wall time between one step's hook and the next (data loading, forward,
// backward, update; the costing itself excluded).
//
// Usage (from the repository root; OMP threads = --threads):
//   chip_cost_bench [--steps N (8)] [--threads N (2)] [--batch N (32)] [--model NAME (resnet18)]
//                   [--spec FILE (configs/chips/trainer-28nm.yaml)] [--sparsity S (0: dense)]
// --sparsity S: magnitude pruning held at S from the first step (uniform over the pruned tensors), so
// the engine runs its sparse kernels and the chip sees pruned weights; activations and errors as
// training makes them.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "chip/model.hpp"
#include "chip/spec.hpp"
#include "core/timer.hpp"
#include "train/config.hpp"
#include "train/trainer.hpp"

using namespace trainer;

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double secs_since(uint64_t t0) { return static_cast<double>(now_ns() - t0) * 1e-9; }

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 8, threads = 2, batch = 32;
  std::string model = "resnet18", spec_path = "configs/chips/trainer-28nm.yaml";
  double sparsity = 0.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--steps")
      steps = std::atoll(v.c_str());
    else if (k == "--threads")
      threads = std::atoll(v.c_str());
    else if (k == "--batch")
      batch = std::atoll(v.c_str());
    else if (k == "--model")
      model = v;
    else if (k == "--spec")
      spec_path = v;
    else if (k == "--sparsity")
      sparsity = std::atof(v.c_str());
    else {
      fmt::print(stderr, "unknown option {}\n", k);
      return 2;
    }
  }
  if (steps < 4) steps = 4;

  try {
    const ChipSpec spec = load_chip_spec(spec_path);
    const ChipModel exact(spec, CostMode::exact), statistical(spec, CostMode::statistical);

    RunConfig cfg;
    cfg.model = model;
    cfg.data = "synthetic";
    cfg.synthetic_shape = {3, 32, 32};
    cfg.synthetic_size = batch * steps;
    cfg.batch_size = batch;
    cfg.epochs = 1;
    cfg.max_steps = steps;
    cfg.threads = threads;
    cfg.progress = "off";
    cfg.ops_summary = false;
    if (sparsity > 0.0) {
      cfg.prune = "magnitude";
      cfg.sparsity = sparsity;
      cfg.initial_sparsity = sparsity;
      cfg.prune_begin = 0.0;
      cfg.prune_every = 1000;  // one mask update, at step 0
      cfg.prune_distribution = "uniform";
    }

    std::vector<double> plain, mapped, t_exact, t_stat;
    size_t ops_per_step = 0;
    double dense_macs = 0, cycles_exact = 0, cycles_stat = 0;
    uint64_t last = now_ns();
    TrainHooks hooks;
    hooks.wants_nonzeros = [](int64_t step) { return step == 1 || (step >= 2 && step % 2 == 1); };
    hooks.on_step = [&](int64_t step, const std::vector<Op>& ops) {
      const double engine = secs_since(last);
      if (step >= 2) (step % 2 ? mapped : plain).push_back(engine);
      if (step == 1 || (step >= 2 && step % 2 == 1)) {
        uint64_t t0 = now_ns();
        const auto ce = exact.cost_step(ops);
        const double te = secs_since(t0);
        t0 = now_ns();
        const auto cs = statistical.cost_step(ops);
        const double ts = secs_since(t0);
        if (step >= 2) {
          t_exact.push_back(te);
          t_stat.push_back(ts);
        }
        ops_per_step = ops.size();
        dense_macs = 0;
        for (const Op& op : ops) dense_macs += static_cast<double>(op.dense_macs);
        cycles_exact = cycles_stat = 0;
        for (const auto& c : ce) cycles_exact += c.cycles;
        for (const auto& c : cs) cycles_stat += c.cycles;
      }
      last = now_ns();
    };
    std::FILE* sink = std::fopen("/dev/null", "w");
    train(cfg, sink ? sink : stderr, hooks);
    if (sink) std::fclose(sink);

    const double p = median(plain), m = median(mapped), e = median(t_exact), s = median(t_stat);
    fmt::print("{}, 3x32x32, batch {}, {} threads, {} steps ({} timed of each kind); chip {} ({})\n", model,
               batch, threads, steps, plain.size(), spec.name, spec_path);
    fmt::print(
        "one step: {} Ops, {:.2f} dense GMAC; chip cycles exact {:.4g}, statistical {:.4g} ({:+.1f}%)\n",
        ops_per_step, dense_macs * 1e-9, cycles_exact, cycles_stat,
        cycles_exact > 0 ? 100.0 * (cycles_stat / cycles_exact - 1.0) : 0.0);
    fmt::print("engine step, no maps          {:8.3f} s (median)\n", p);
    fmt::print("engine step, maps captured    {:8.3f} s   x{:.2f} of a plain step\n", m, p > 0 ? m / p : 0.0);
    fmt::print("exact costing of a step       {:8.3f} s   {:.1f}% of a plain step\n", e,
               p > 0 ? 100.0 * e / p : 0.0);
    fmt::print("statistical costing of a step {:8.3f} s   {:.1f}% of a plain step\n", s,
               p > 0 ? 100.0 * s / p : 0.0);
    fmt::print("exact / statistical costing   {:8.2f}x\n", s > 0 ? e / s : 0.0);
  } catch (const std::exception& ex) {
    fmt::print(stderr, "error: {}\n", ex.what());
    return 1;
  }
  return 0;
}
