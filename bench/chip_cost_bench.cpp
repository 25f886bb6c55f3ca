// The chip model's cost against the engine's: ResNet-18 training steps (synthetic data, CIFAR shapes
// 3x32x32, batch 32 by default) through the real training loop (train() with TrainHooks, as
// `trainer train --chip` runs it), and the time the chip model takes to cost the same steps in exact and
// in statistical mode. Prints medians and their ratios.
//
// Steps 0 and 1 warm up (1 with maps and costing). After them, steps take turns: plain, with every Op's
// nonzero maps (costed in both modes), with the PE-array operands' maps only (costed exactly), so that
// load from other processes hits all alike. Engine step time is the wall time between one step's hook
// and the next (data loading, forward, backward, update; the costing itself excluded).
//
// Usage (from the repository root; OMP threads = --threads):
//   chip_cost_bench [--steps N (14)] [--threads N (2)] [--batch N (32)] [--model NAME (resnet18)]
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
  int64_t steps = 14, threads = 2, batch = 32;
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

    // Steps 0 and 1 warm up (1 with maps). Then in turn: a plain step, a step with every map (costed
    // exactly and statistically), a step with the PE-array operands' maps only (costed exactly).
    std::vector<double> plain, mapped, mapped_pe, t_exact, t_stat, t_exact_pe;
    size_t ops_per_step = 0;
    double dense_macs = 0, cycles_exact = 0, cycles_stat = 0;
    uint64_t last = now_ns();
    auto kind = [](int64_t step) { return step < 2 ? static_cast<int>(step) : static_cast<int>(step % 3); };
    TrainHooks hooks;
    hooks.wants_nonzeros = [&](int64_t step) {
      const int k = kind(step);
      return k == 0 ? NonzeroCapture::none : k == 1 ? NonzeroCapture::all : NonzeroCapture::pe_array;
    };
    hooks.on_step = [&](int64_t step, const std::vector<Op>& ops) {
      const double engine = secs_since(last);
      const int k = kind(step);
      if (step >= 2) (k == 0 ? plain : k == 1 ? mapped : mapped_pe).push_back(engine);
      if (k == 1) {
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
      } else if (k == 2) {
        const uint64_t t0 = now_ns();
        exact.cost_step(ops);
        t_exact_pe.push_back(secs_since(t0));
      }
      last = now_ns();
    };
    std::FILE* sink = std::fopen("/dev/null", "w");
    train(cfg, sink ? sink : stderr, hooks);
    if (sink) std::fclose(sink);

    const double p = median(plain), m = median(mapped), e = median(t_exact), s = median(t_stat),
                 mp = median(mapped_pe), ep = median(t_exact_pe);
    auto pct = [&](double x) { return p > 0 ? 100.0 * x / p : 0.0; };
    fmt::print("{}, 3x32x32, batch {}, {} threads, {} steps ({} timed plain); chip {} ({})\n", model, batch,
               threads, steps, plain.size(), spec.name, spec_path);
    fmt::print("one step: {} Ops, {:.2f} dense GMAC; chip cycles exact {:.4g}, statistical {:.4g} ({:+.1f}%)\n",
               ops_per_step, dense_macs * 1e-9, cycles_exact, cycles_stat,
               cycles_exact > 0 ? 100.0 * (cycles_stat / cycles_exact - 1.0) : 0.0);
    fmt::print("engine step, no maps                {:8.3f} s (median)\n", p);
    fmt::print("maps of every Op (--chip-maps all)\n");
    fmt::print("  capture                           {:8.3f} s   {:+.1f}% of a plain step\n", m - p, pct(m - p));
    fmt::print("  exact costing                     {:8.3f} s   {:+.1f}%\n", e, pct(e));
    fmt::print("  statistical costing               {:8.3f} s   {:+.1f}%\n", s, pct(s));
    fmt::print("  capture + exact costing           {:8.3f} s   {:+.1f}%\n", m - p + e, pct(m - p + e));
    fmt::print("PE-array operands' maps only (--chip-maps pe_array)\n");
    fmt::print("  capture                           {:8.3f} s   {:+.1f}%\n", mp - p, pct(mp - p));
    fmt::print("  exact costing                     {:8.3f} s   {:+.1f}%\n", ep, pct(ep));
    fmt::print("  capture + exact costing           {:8.3f} s   {:+.1f}%\n", mp - p + ep, pct(mp - p + ep));
    fmt::print("exact / statistical costing         {:8.2f}x\n", s > 0 ? e / s : 0.0);
  } catch (const std::exception& ex) {
    fmt::print(stderr, "error: {}\n", ex.what());
    return 1;
  }
  return 0;
}
