// `trainer validate --trace FILE [--chip FILE] [--baseline FILE] [--dense FILE] [--mode exact|statistical]
//                  [--out PREFIX] [--tolerance PCT] [--from-step N] [--threads N]
//                  [--no-published-point]`:
// the chip model's validation report (report/validation.hpp). Costs a recorded trace on the Trainer spec,
// on the same spec with each feature switched off in turn and at the other precision, on the two
// baselines and (unless --no-published-point) at 90% / 90% sparsity, then prints the claims table and,
// with --out, writes PREFIX.md and PREFIX.json (each to .partial, then renamed).
#include <fmt/format.h>
#include <omp.h>

#include <cstdio>
#include <memory>
#include <string>

#include "chip/model.hpp"
#include "chip/spec.hpp"
#include "cli/commands.hpp"
#include "core/timer.hpp"
#include "report/validation.hpp"

namespace trainer::cli {

namespace {

struct ValidateOptions {
  std::string trace;
  std::string chip = "configs/chips/trainer-28nm.yaml";
  std::string baseline = "configs/chips/zero-skip-baseline.yaml";
  std::string dense = "configs/chips/dense-baseline.yaml";
  std::string mode = "exact";
  std::string out;
  double tolerance_pct = 10;
  int threads = 0;
  int64_t from_step = 0;
  bool no_published_point = false;
};

int run_validate(const ValidateOptions& o) {
  if (!(o.tolerance_pct >= 0 && o.tolerance_pct <= 1000))
    throw UsageError(
        fmt::format("option --tolerance: expected a percentage in [0, 1000], got '{}'", o.tolerance_pct));
  if (o.threads < 0)
    throw UsageError(fmt::format("option --threads: expected an integer >= 1, got '{}'", o.threads));
  if (o.from_step < 0)
    throw UsageError(fmt::format("option --from-step: expected an integer >= 0, got '{}'", o.from_step));
  if (o.threads > 0) omp_set_num_threads(o.threads);
  ValidationOptions opts;
  opts.mode = parse_cost_mode(o.mode);
  opts.tolerance = o.tolerance_pct / 100.0;
  opts.published_point = !o.no_published_point;
  opts.from_step = static_cast<uint64_t>(o.from_step);
  // Specs first: a bad spec fails before the (possibly long) pass over the trace.
  const ChipSpec trainer = load_chip_spec(o.chip);
  const ChipSpec zero_skip = load_chip_spec(o.baseline);
  const ChipSpec dense = load_chip_spec(o.dense);
  const uint64_t t0 = now_ns();
  const ValidationInputs in = run_validation(o.trace, trainer, zero_skip, dense, opts);
  const double secs = static_cast<double>(now_ns() - t0) * 1e-9;
  const std::vector<ClaimRow> rows = validation_claims(in);
  std::fputs(validation_markdown(in, rows).c_str(), stdout);
  fmt::print("\ncosted {} step(s) of '{}' on {} variants in {} mode in {:.3f} s\n", in.sparsity.steps,
             o.trace, in.variants.size(), in.mode, secs);
  if (!o.out.empty()) {
    write_validation_reports(o.out, in, rows);
    fmt::print("validation report: {0}.md, {0}.json\n", o.out);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

Command add_validate_command(CLI::App& root) {
  auto o = std::make_shared<ValidateOptions>();
  CLI::App* app = root.add_subcommand(
      "validate",
      "Cost a recorded trace on Trainer, its feature ablations and the baselines, beside the "
      "published figures (the chip model's validation report)");
  app->add_option("--trace", o->trace, "trace written by `trainer train --trace` (with --trace-every)")
      ->required()
      ->type_name("FILE");
  app->add_option("--chip", o->chip, "the Trainer spec (default: configs/chips/trainer-28nm.yaml)")
      ->type_name("FILE");
  app->add_option(
         "--baseline", o->baseline,
         "the earlier-style zero-skipping processor (default: configs/chips/zero-skip-baseline.yaml)")
      ->type_name("FILE");
  app->add_option("--dense", o->dense, "the dense processor (default: configs/chips/dense-baseline.yaml)")
      ->type_name("FILE");
  app->add_option("--mode", o->mode, "exact (from the nonzero maps, default) or statistical (densities only)")
      ->check(CLI::IsMember({"exact", "statistical"}))
      ->type_name("MODE");
  app->add_option("--out", o->out, "write PREFIX.md and PREFIX.json (default: print only)")
      ->type_name("PREFIX");
  app->add_option("--tolerance", o->tolerance_pct,
                  "a model figure within PCT percent of the published one is 'within' (default: 10)")
      ->type_name("PCT");
  app->add_option("--threads", o->threads, "threads for the chip model (default: OpenMP's default)")
      ->type_name("N");
  app->add_option(
         "--from-step", o->from_step,
         "cost only the recorded steps from this training step on, e.g. to leave out a step recorded "
         "before the first mask update (default: 0)")
      ->type_name("N");
  app->add_flag("--no-published-point", o->no_published_point,
                "skip the costing at 90% / 90% sparsity (the trace's x and w maps redrawn at 10% density)");
  return {app, [o] { return run_validate(*o); }};
}

}  // namespace trainer::cli
