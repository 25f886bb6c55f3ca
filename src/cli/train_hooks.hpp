// What `trainer train` attaches to a run through TrainHooks (train/trainer.hpp): the chip model, costing
// the steps live, and the trace writer. Command-line only (not RunConfig keys: src/train knows neither).
//
//   --chip FILE          chip spec (YAML); repeatable: each spec is costed on the same steps and maps
//   --chip-mode MODE     exact (from the nonzero maps, default) or statistical (densities only)
//   --chip-every N       cost every Nth step (global steps 0, N, 2N, ...; default 1: every step)
//   --chip-out PREFIX    write PREFIX.json and PREFIX.csv (several --chip: PREFIX.<spec file stem>.json/csv)
//   --trace FILE         record steps' Op streams with their nonzero maps (`trainer simulate` reads it)
//   --trace-every N      record every Nth step (global steps 0, N, 2N, ...; default 50)
//   --chip-maps WHICH    which Ops carry nonzero maps on those steps: all (default) or pe_array (only
//                        conv and linear: the element-wise Ops are then costed as if their operands
//                        were dense, for a cheaper capture)
//
// A step is run with nonzero maps (which cost the engine a pass over each operand) only when it is costed
// or recorded. Both modes need the maps: statistical mode reads the operand densities from them.
// Report totals are sums over the costed steps, not scaled to the run (the JSON's "sampling" says how
// many of the run's steps were costed).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "chip/model.hpp"
#include "ops/trace.hpp"
#include "train/trainer.hpp"

namespace trainer::cli {

struct ChipTraceOptions {
  std::vector<std::string> chips;
  std::string chip_mode = "exact";
  int64_t chip_every = 1;
  std::string chip_out;
  std::string trace;
  int64_t trace_every = 50;
  std::string chip_maps = "all";
};

// Registers the options above on `train`, writing into `o` (which must outlive the parse).
void add_chip_trace_options(CLI::App* app, ChipTraceOptions& o);

// The hooks' state for one run. The constructor checks the options (UsageError: exit code 2), loads every
// chip spec and creates the trace's partial file, so that a bad spec or an unwritable path fails before
// training. If the run throws, the destructor removes the partial trace.
class ChipTraceHooks {
 public:
  explicit ChipTraceHooks(const ChipTraceOptions& o);
  ~ChipTraceHooks();
  ChipTraceHooks(const ChipTraceHooks&) = delete;
  ChipTraceHooks& operator=(const ChipTraceHooks&) = delete;

  // Hooks that refer to *this (empty when neither --chip nor --trace is given).
  TrainHooks hooks();

  bool costs(int64_t step) const;
  bool traces(int64_t step) const;
  NonzeroCapture capture() const { return capture_; }
  void on_step(int64_t step, const std::vector<Op>& ops);
  // Prints each chip's summary and what was costed and recorded, writes the reports, finishes the trace.
  void on_finish(std::FILE* out);

 private:
  NonzeroCapture capture_ = NonzeroCapture::all;
  struct Chip {
    std::string spec_path;
    std::string out_prefix;  // "" = no report files
    std::unique_ptr<ChipModel> model;
    ChipRun run;
    double seconds = 0;  // spent in cost_step
  };
  ChipTraceOptions opts_;
  std::vector<Chip> chips_;
  std::unique_ptr<TraceWriter> trace_;
  int64_t steps_seen_ = 0;
  double trace_seconds_ = 0;
};

}  // namespace trainer::cli
