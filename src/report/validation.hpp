// The chip model's validation report: a recorded trace costed on the Trainer spec, on the same spec with
// each feature switched off in turn, and on the two baselines, set beside the figures the Trainer papers
// publish (shared/docs/TRAINER.md). Each claim gets the model's figure, how it was computed, and a
// verdict: within the tolerance, or by how much it differs and why (docs/chip-model.md,
// "Validation report").
//
// The arithmetic (validation_claims and what it reads) works on plain sums (CostTotals), so it is tested
// on hand-made totals; run_validation is the only part that reads a trace and runs the chip model.
//
//   ValidationInputs in = run_validation(trace, trainer_spec, zero_skip_spec, dense_spec, options);
//   std::vector<ClaimRow> rows = validation_claims(in);
//   std::fputs(validation_markdown(in, rows).c_str(), stdout);
//   write_validation_reports("validation", in, rows);   // validation.md, validation.json
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "chip/model.hpp"
#include "chip/spec.hpp"
#include "ops/op.hpp"

namespace trainer {

// Sums over one subset of a run's costs (all Ops, the PE-array Ops, the BN Ops, ...).
struct CostTotals {
  double ops = 0;  // Op records summed
  double dense_macs = 0;
  double effectual_macs = 0;
  double mac_slots = 0;
  double cycles = 0;
  double energy_pj = 0;
  double dram_pj = 0;
  double peak_macs_per_cycle = 0;

  void add(const OpCost& c);
  double tflops_per_watt() const;               // 2 x dense MACs / energy (FLOP per pJ = TFLOP per J)
  double tflops_per_watt_without_dram() const;  // the same without DRAM energy (the chip alone)
  double effectual_utilization() const;         // effectual MACs / (cycles x peak MACs per cycle)
  double dram_share() const;                    // DRAM energy / energy
};

// One costing of the trace: a spec, and whether the trace's maps are used as recorded or redrawn at the
// published operating point (every conv/linear input and weight map at 10% density).
struct ValidationVariant {
  std::string key;    // "trainer", "trainer_fp16", "no_speculation", ..., "zero_skip", "dense", "p90_trainer"
  std::string label;  // what differs from the Trainer spec, in words
  ChipSpec spec;
  bool published_point = false;
};

// The variants costed, from the three specs: the Trainer spec as given; the same at the other precision;
// the Trainer spec with speculation, adaptive dataflow, PE regrouping, both of those, and the
// reformulated BN unit switched off in turn; the zero-skipping and dense baselines as given; and, when
// `published_point`, the Trainer spec at both precisions and the dense baseline on the redrawn maps.
std::vector<ValidationVariant> validation_variants(const ChipSpec& trainer, const ChipSpec& zero_skip,
                                                   const ChipSpec& dense, bool published_point);

struct VariantResult {
  std::string key, label;
  std::string spec_name;
  std::string precision;  // "fp8" / "fp16"
  bool published_point = false;
  double clock_mhz = 0;
  uint64_t steps = 0;
  CostTotals all;          // every Op
  CostTotals array;        // conv/linear ff, bp, wg on the PE array
  CostTotals bn;           // batchnorm2d Ops (every phase)
  CostTotals elementwise;  // every Op not on the PE array
  double seconds() const { return clock_mhz > 0 ? all.cycles / (clock_mhz * 1e6) : 0.0; }
};

VariantResult summarize_variant(const ValidationVariant& v, const ChipRun& run);

// What the trace says of its own sparsity (element counts summed over its steps, from the nonzero maps),
// and what the engine skipped (its Op counters).
struct TraceSparsity {
  struct Step {
    uint64_t step = 0;                  // the training step's index, as recorded
    double activation = 0, weight = 0;  // sparsities of this step alone (as below)
  };
  uint64_t steps = 0;
  uint64_t skipped_steps = 0;      // recorded steps before ValidationOptions::from_step, not costed
  uint64_t array_ops = 0;          // conv/linear ff/bp/wg Ops
  uint64_t array_ops_no_maps = 0;  // of which some operand map is missing (costed as dense)
  // Inputs of conv/linear layers in ff, except the first such layer of each step (it reads the image).
  double act_elems = 0, act_nonzeros = 0;
  double image_elems = 0, image_nonzeros = 0;    // the first layer's input
  double weight_elems = 0, weight_nonzeros = 0;  // conv/linear weights, in ff
  double grad_elems = 0, grad_nonzeros = 0;      // output errors dy of conv/linear layers, in bp
  // Engine counters of the conv/linear ff Ops: dense MACs, and MACs skipped as masked (predicted dead)
  // outputs.
  double ff_dense_macs = 0, ff_masked_output_macs = 0;

  std::vector<Step> per_step;  // in trace order

  void add_step(const std::vector<Op>& ops, uint64_t step = 0);
  static double sparsity(double nonzeros, double elems) { return elems > 0 ? 1.0 - nonzeros / elems : 0.0; }
  double activation_sparsity() const { return sparsity(act_nonzeros, act_elems); }
  double weight_sparsity() const { return sparsity(weight_nonzeros, weight_elems); }
  double gradient_sparsity() const { return sparsity(grad_nonzeros, grad_elems); }
  double image_sparsity() const { return sparsity(image_nonzeros, image_elems); }
};

// The published operating point: 90% activation and 90% weight sparsity.
constexpr double kPublishedDensity = 0.10;

// The step with every conv/linear layer's input (x) and weight (w) maps redrawn uniformly at `density`:
// one map per layer and operand, shared by the layer's ff, bp and wg as the engine shares them; dy maps
// as recorded; Ops without a map keep none. Deterministic in (seed, step, layer).
std::vector<Op> with_operand_density(const std::vector<Op>& ops, double density, uint64_t seed,
                                     uint64_t step);

struct ValidationInputs {
  std::string trace;
  std::string mode = "exact";
  double tolerance = 0.10;  // a figure within this relative distance of the published one is "within"
  uint64_t from_step = 0;   // steps recorded before this one were not costed
  std::string chip_file, baseline_file, dense_file;
  TraceSparsity sparsity;
  std::vector<VariantResult> variants;
  const VariantResult* find(const std::string& key) const;  // nullptr when absent
};

struct ValidationOptions {
  CostMode mode = CostMode::exact;
  double tolerance = 0.10;
  bool published_point = true;
  uint64_t seed = 1;       // for the redrawn maps
  uint64_t from_step = 0;  // cost only the recorded steps whose index is >= this
};

// Reads the trace step by step and costs each step (from options.from_step on) on every variant (one pass
// over the file). Throws trainer::Error for a missing, foreign, damaged or truncated trace, or one without
// steps to cost.
ValidationInputs run_validation(const std::string& trace_path, const ChipSpec& trainer,
                                const ChipSpec& zero_skip, const ChipSpec& dense,
                                const ValidationOptions& options);

enum class ClaimKind : uint8_t { value = 0, ratio = 1, percent = 2 };

struct ClaimRow {
  std::string id;     // stable key for the JSON, e.g. "tflops_per_w_fp8_trace"
  std::string claim;  // in words
  ClaimKind kind = ClaimKind::value;
  double published = 0;  // TFLOPS/W, a ratio (x), or a percentage (37.1 = 37.1%)
  std::string published_text;
  double model = 0;  // NaN when it cannot be computed
  std::string model_text;
  std::string how;       // how the model figure is computed
  double deviation = 0;  // model / published - 1 (NaN when the model figure is)
  bool within = false;   // |deviation| <= tolerance
  std::string verdict;   // "within 10% (+3.2%)" or "differs by -64.3% (...); why: ..."
};

// The verdict of one figure: "within T% (+d%)" or "differs by d% (...)", for ratios the share of the
// published gain the model reproduces, for percentages the difference in points; then `why`.
std::string verdict_text(ClaimKind kind, double published, double model, double tolerance,
                         const std::string& why);

// Every claim of TRAINER.md's table that has a figure, computed from the variants (pure).
std::vector<ClaimRow> validation_claims(const ValidationInputs& in);

// The report: what was costed, the trace's sparsity, the claims table, the variants table.
std::string validation_markdown(const ValidationInputs& in, const std::vector<ClaimRow>& rows);
nlohmann::ordered_json validation_json(const ValidationInputs& in, const std::vector<ClaimRow>& rows);
// PREFIX.md and PREFIX.json, each written to `.partial` and renamed once both are complete.
void write_validation_reports(const std::string& prefix, const ValidationInputs& in,
                              const std::vector<ClaimRow>& rows);

}  // namespace trainer
