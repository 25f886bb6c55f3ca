// ChipModel: costs the Ops of a training step on one chip (spec), exactly from their nonzero maps or
// statistically from densities. Analysis (workload.hpp: which products exist, per-line nonzeros) comes
// first and knows nothing of the chip; the mapper then chooses a dataflow and an array split per Op from
// the chip's own cheap estimate; the cost stage (pe_array, memory, vector_unit, energy) prices the
// chosen mapping.
//
// Live use, once per training step (before OpStream::begin_step clears the step):
//   ChipModel model(load_chip_spec("configs/chips/trainer-28nm.yaml"), CostMode::exact);
//   ChipRun run;
//   run.add_step(model.cost_step(stream.step_ops()));
// and, at the end, write_chip_json / write_chip_csv (report/chip_report.hpp).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "chip/cost.hpp"
#include "chip/pe_array.hpp"
#include "chip/spec.hpp"
#include "chip/workload.hpp"
#include "ops/op.hpp"

namespace trainer {

enum class CostMode : uint8_t { exact = 0, statistical = 1 };
const char* cost_mode_name(CostMode m);
// "exact" or "statistical"; anything else throws trainer::Error naming the value.
CostMode parse_cost_mode(const std::string& s);

class ChipModel {
 public:
  ChipModel(ChipSpec spec, CostMode mode);

  const ChipSpec& spec() const { return spec_; }
  CostMode mode() const { return mode_; }

  // Costs one step's Ops in stream order. With speculation on, a conv/linear layer's bp and wg use the
  // maps its ff recorded earlier in the same list: dx is needed only where the layer's input x is
  // nonzero (a ReLU zero passes no gradient back); dw is not needed for pruned (zero) weights when
  // speculation.skip_pruned_weight_gradients is set. The engine's own skip counters (Op::skipped_*) are
  // not read: skipped_masked_output counts MACs, not which outputs, and the array's cost depends on which
  // (docs/chip-model.md, "Not modelled").
  std::vector<OpCost> cost_step(const std::vector<Op>& ops) const;
  // One Op on its own (no speculation context).
  OpCost cost_op(const Op& op) const;

  // The mapping the chip chooses for an array Op: all candidates its features allow, each priced by the
  // statistical estimate (densities the compressor counts at run time), best by spec.objective.
  Mapping choose_mapping(const ConvWork& w, const OutputLiveness& live = {}) const;
  // Prices an array Op under a given mapping (exact: from w's line counts, when w is exact).
  OpCost cost_mapping(const Op& op, const ConvWork& w, const Mapping& m, bool exact,
                      const OutputLiveness& live = {}) const;

 private:
  OpCost cost_with_context(const Op& op, const OutputLiveness& live, AnalysisCache* cache = nullptr) const;
  // Weight lines kept across cost_step calls (see WeightMemo); shared by copies of the model.
  std::shared_ptr<WeightMemo> memo_ = std::make_shared<WeightMemo>();
  ChipSpec spec_;
  CostMode mode_;
};

// Costs summed per (layer, phase) over the steps of a run, in first-seen order.
class ChipRun {
 public:
  void add_step(const std::vector<OpCost>& costs);
  uint64_t steps() const { return steps_; }
  const std::vector<OpCost>& rows() const { return rows_; }
  OpCost total() const;               // every row summed (labels "all")
  OpCost phase_total(Phase p) const;  // the rows of one phase summed
  // Sums a cost into another (numbers add; differing labels become "mixed").
  static void accumulate(OpCost& into, const OpCost& c);

 private:
  uint64_t steps_ = 0;
  std::vector<OpCost> rows_;
  std::map<std::tuple<int32_t, Phase, std::string>, size_t> index_;
};

// Derived figures of a cost on a chip.
double seconds(const OpCost& c, const ChipSpec& spec);
double dense_tflops(const OpCost& c, const ChipSpec& spec);  // 2 x dense MACs / time
double tflops_per_watt(const OpCost& c);                     // 2 x dense MACs / energy

// Cost of every step of a trace file on a chip (reads the file step by step).
ChipRun cost_trace(const std::string& trace_path, const ChipModel& model);

}  // namespace trainer
