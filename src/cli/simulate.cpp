#include "cli/simulate.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include "chip/model.hpp"
#include "chip/spec.hpp"
#include "core/timer.hpp"
#include "report/chip_report.hpp"

namespace trainer {

namespace {

struct SimulateOptions {
  std::string trace, chip, mode = "exact", json, csv;
};

void run_simulate(const SimulateOptions& o) {
  const ChipSpec spec = load_chip_spec(o.chip);
  const CostMode mode = parse_cost_mode(o.mode);
  const ChipModel model(spec, mode);
  const uint64_t t0 = now_ns();
  const ChipRun run = cost_trace(o.trace, model);
  const double secs = static_cast<double>(now_ns() - t0) * 1e-9;
  std::fputs(format_chip_summary(run, spec).c_str(), stdout);
  std::printf("costed %llu step(s) of '%s' in %s mode in %.3f s\n",
              static_cast<unsigned long long>(run.steps()), o.trace.c_str(), cost_mode_name(mode), secs);
  if (!o.json.empty()) write_chip_json(o.json, run, spec, mode);
  if (!o.csv.empty()) write_chip_csv(o.csv, run, spec);
}

}  // namespace

void add_simulate_command(CLI::App& app) {
  auto opts = std::make_shared<SimulateOptions>();
  CLI::App* cmd = app.add_subcommand("simulate", "Cost a recorded Op trace on a chip spec (no training)");
  cmd->add_option("--trace", opts->trace, "Trace file written by `trainer train --trace`")->required();
  cmd->add_option("--chip", opts->chip, "Chip spec (YAML), e.g. configs/chips/trainer-28nm.yaml")->required();
  cmd->add_option("--mode", opts->mode, "exact (from the nonzero maps) or statistical (densities only)")
      ->check(CLI::IsMember({"exact", "statistical"}));
  cmd->add_option("--json", opts->json, "Write the full report as JSON");
  cmd->add_option("--csv", opts->csv, "Write one row per layer x phase as CSV (units in the headers)");
  cmd->callback([opts]() { run_simulate(*opts); });
}

}  // namespace trainer
