#include "chip/model.hpp"

#include <algorithm>
#include <cmath>
#include <exception>

#include "chip/energy.hpp"
#include "chip/memory.hpp"
#include "chip/vector_unit.hpp"
#include "core/error.hpp"
#include "ops/trace.hpp"

namespace trainer {

const char* cost_mode_name(CostMode m) { return m == CostMode::statistical ? "statistical" : "exact"; }

CostMode parse_cost_mode(const std::string& s) {
  if (s == "exact") return CostMode::exact;
  if (s == "statistical") return CostMode::statistical;
  fail("unknown cost mode '{}': expected exact or statistical", s);
}

ChipModel::ChipModel(ChipSpec spec, CostMode mode) : spec_(std::move(spec)), mode_(mode) {
  validate_chip_spec(spec_);
}

OpCost ChipModel::cost_mapping(const Op& op, const ConvWork& w, const Mapping& m, bool exact,
                               const OutputLiveness& live) const {
  OpCost c;
  c.layer = op.layer;
  c.layer_name = op.layer_name;
  c.kind = op.kind;
  c.phase = op.phase;
  c.unit = "pe_array";
  c.compressed = m.skipping ? (m.compressed == Compressed::a ? w.a_name : w.b_name) : "-";
  c.regroup = spec_.regroupings[m.shape].name();
  c.peak_macs_per_cycle = spec_.peak_macs_per_cycle();
  c.dense_macs = w.dense_macs;

  const ComputeResult cr = array_compute(w, m, spec_, exact, live);
  // Effectual products of the needed outputs: exact in total; when outputs are skipped, their share of
  // the effectual products is taken as their share of the slots (docs/chip-model.md, "Speculation").
  const double effectual = exact && w.exact ? w.effectual_macs : w.valid_macs * w.a_density() * w.b_density();
  const double kept = cr.all_slots > 0 ? cr.mac_slots / cr.all_slots : 1.0;
  c.effectual_macs = effectual * kept;
  c.skipped_dead_output_macs = effectual - c.effectual_macs;

  Events& ev = c.events;
  ev.mac_slots = cr.mac_slots;
  ev.mac_fired = m.skipping ? c.effectual_macs : cr.mac_slots;
  add_array_traffic(w, m, spec_, ev.mac_slots, ev.mac_fired, ev);

  c.compute_cycles = cr.cycles;
  double bound = memory_cycles(ev, spec_);
  if (m.skipping) {
    const double compressed = static_cast<double>(m.compressed == Compressed::a ? w.a_elems : w.b_elems);
    bound = std::max(bound, std::ceil(compressed / spec_.encode_elements_per_cycle));
  }
  c.cycles = std::max(c.compute_cycles, bound);
  c.stall_cycles = c.cycles - c.compute_cycles;
  ev.cycles = c.cycles;
  c.energy = energy_of(ev, spec_);
  return c;
}

Mapping ChipModel::choose_mapping(const ConvWork& w, const OutputLiveness& live) const {
  std::vector<Mapping> candidates;
  const int shapes = spec_.features.pe_regrouping ? static_cast<int>(spec_.regroupings.size()) : 1;
  for (int s = 0; s < shapes; ++s) {
    if (!spec_.features.zero_skipping) {
      candidates.push_back({false, Compressed::b, s});
    } else if (spec_.features.adaptive_dataflow) {
      candidates.push_back({true, Compressed::b, s});
      candidates.push_back({true, Compressed::a, s});
    } else {
      candidates.push_back({true, spec_.fixed_dataflow, s});
    }
  }
  if (candidates.size() == 1) return candidates.front();
  Op probe;  // labels only; the estimate needs nothing else from the Op
  probe.phase = w.phase;
  size_t best = 0;
  double best_key = 0, best_tie = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const OpCost c = cost_mapping(probe, w, candidates[i], /*exact=*/false, live);
    const double e = c.energy.total();
    double key = c.cycles, tie = e;
    if (spec_.objective == DataflowObjective::energy) key = e, tie = c.cycles;
    if (spec_.objective == DataflowObjective::edp) key = e * c.cycles, tie = c.cycles;
    if (i == 0 || key < best_key || (key == best_key && tie < best_tie))
      best = i, best_key = key, best_tie = tie;
  }
  return candidates[best];
}

OpCost ChipModel::cost_with_context(const Op& op, const OutputLiveness& live, AnalysisCache* cache) const {
  if (is_array_op(op)) {
    const bool exact = mode_ == CostMode::exact;
    const ConvWork w = exact ? analyse_exact(op, cache, cache ? memo_.get() : nullptr) : analyse_statistical(op);
    const Mapping m = choose_mapping(w, live);
    return cost_mapping(op, w, m, exact, live);
  }
  OpCost c;
  c.layer = op.layer;
  c.layer_name = op.layer_name;
  c.kind = op.kind;
  c.phase = op.phase;
  c.peak_macs_per_cycle = spec_.peak_macs_per_cycle();
  VectorCost v = cost_vector_op(op, spec_);
  c.unit = v.unit;
  c.events = v.events;
  c.compute_cycles = v.compute_cycles;
  c.cycles =
      std::string(v.unit) == "vector" ? std::max(c.compute_cycles, memory_cycles(c.events, spec_)) : 0.0;
  c.stall_cycles = c.cycles - c.compute_cycles;
  c.events.cycles = c.cycles;
  c.energy = energy_of(c.events, spec_);
  return c;
}

OpCost ChipModel::cost_op(const Op& op) const { return cost_with_context(op, {}); }

std::vector<OpCost> ChipModel::cost_step(const std::vector<Op>& ops) const {
  // Which outputs each Op needs, from the maps each layer's ff recorded: its input's nonzeros and its
  // weights' nonzeros.
  std::vector<OutputLiveness> live(ops.size());
  std::map<int32_t, std::pair<std::shared_ptr<const Bitmap>, std::shared_ptr<const Bitmap>>> ff_maps;
  for (size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    if (!is_array_op(op)) continue;
    if (op.phase == Phase::ff) ff_maps[op.layer] = {op.x_nz, op.w_nz};
    auto it = ff_maps.find(op.layer);
    if (!spec_.features.speculation || it == ff_maps.end()) continue;
    const ConvGeometry g = conv_geometry(op);
    const std::shared_ptr<const Bitmap>* mask = nullptr;
    int64_t expect = 0;
    if (op.phase == Phase::bp) mask = &it->second.first, expect = g.N * g.C * g.H * g.W;
    if (op.phase == Phase::wg && spec_.skip_pruned_weight_gradients)
      mask = &it->second.second, expect = g.K * g.C * g.R * g.S;
    if (mask && *mask && (*mask)->size() == expect) {
      live[i].bits = &(*mask)->words();
      live[i].live_fraction = (*mask)->density();
    }
  }
  // One parallel region for the whole step (the Ops are independent once their liveness is known);
  // each Op's result depends only on the Op, so the order threads take them in changes nothing.
  std::vector<OpCost> out(ops.size());
  std::vector<std::exception_ptr> errors(ops.size());
  AnalysisCache cache;  // ff and wg share x's sums, bp and wg dy's
  const int64_t n = static_cast<int64_t>(ops.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      out[i] = cost_with_context(ops[i], live[i], &cache);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  memo_->end_step();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

// ---- ChipRun ----

void ChipRun::accumulate(OpCost& into, const OpCost& c) {
  auto merge = [](std::string& a, const std::string& b) {
    if (a != b) a = "mixed";
  };
  merge(into.unit, c.unit);
  merge(into.compressed, c.compressed);
  merge(into.regroup, c.regroup);
  into.calls += c.calls;
  into.dense_macs += c.dense_macs;
  into.effectual_macs += c.effectual_macs;
  into.skipped_dead_output_macs += c.skipped_dead_output_macs;
  into.compute_cycles += c.compute_cycles;
  into.stall_cycles += c.stall_cycles;
  into.cycles += c.cycles;
  into.peak_macs_per_cycle = c.peak_macs_per_cycle;
  into.events += c.events;
  into.energy += c.energy;
}

void ChipRun::add_step(const std::vector<OpCost>& costs) {
  ++steps_;
  for (const OpCost& c : costs) {
    auto key = std::make_tuple(c.layer, c.phase, c.layer_name);
    auto it = index_.find(key);
    if (it == index_.end()) {
      index_.emplace(key, rows_.size());
      rows_.push_back(c);
    } else {
      accumulate(rows_[it->second], c);
    }
  }
}

OpCost ChipRun::total() const {
  OpCost t;
  t.layer_name = "total";
  t.kind = t.unit = t.compressed = t.regroup = "all";
  t.calls = 0;
  for (const OpCost& r : rows_) {
    OpCost c = r;
    c.kind = c.unit = c.compressed = c.regroup = "all";
    accumulate(t, c);
  }
  return t;
}

OpCost ChipRun::phase_total(Phase p) const {
  OpCost t;
  t.layer_name = phase_name(p);
  t.phase = p;
  t.kind = t.unit = t.compressed = t.regroup = "all";
  t.calls = 0;
  for (const OpCost& r : rows_) {
    if (r.phase != p) continue;
    OpCost c = r;
    c.kind = c.unit = c.compressed = c.regroup = "all";
    accumulate(t, c);
  }
  return t;
}

double OpCost::pe_utilization() const {
  const double cap = cycles * peak_macs_per_cycle;
  return cap > 0 ? events.mac_slots / cap : 0.0;
}

double OpCost::effectual_utilization() const {
  const double cap = cycles * peak_macs_per_cycle;
  return cap > 0 ? effectual_macs / cap : 0.0;
}

double seconds(const OpCost& c, const ChipSpec& spec) { return c.cycles / (spec.clock_mhz * 1e6); }

double dense_tflops(const OpCost& c, const ChipSpec& spec) {
  const double s = seconds(c, spec);
  return s > 0 ? 2.0 * c.dense_macs / s * 1e-12 : 0.0;
}

double tflops_per_watt(const OpCost& c) {
  const double e = c.energy.total();
  return e > 0 ? 2.0 * c.dense_macs / e : 0.0;  // FLOP per pJ = TFLOP per J
}

ChipRun cost_trace(const std::string& trace_path, const ChipModel& model) {
  ChipRun run;
  TraceReader reader(trace_path);
  TraceStep step;
  while (reader.next(step)) run.add_step(model.cost_step(step.ops));
  return run;
}

}  // namespace trainer
