#include "report/validation.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <tuple>

#include "chip/workload.hpp"
#include "core/bitmap.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "ops/trace.hpp"

namespace trainer {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// a / b, NaN unless both are positive (a figure that cannot be formed is never shown as 0 or inf).
double ratio(double a, double b) { return a > 0 && b > 0 ? a / b : kNaN; }

std::string pct(double fraction) {
  return std::isfinite(fraction) ? fmt::format("{:.1f}%", 100 * fraction) : "n/a";
}
std::string times(double r) { return std::isfinite(r) ? fmt::format("{:.2f}x", r) : "n/a"; }
std::string num(double v, int digits = 2) {
  return std::isfinite(v) ? fmt::format("{:.{}f}", v, digits) : "n/a";
}

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const std::string& p : parts) {
    if (p.empty()) continue;
    if (!out.empty()) out += sep;
    out += p;
  }
  return out;
}

std::string model_text(ClaimKind kind, double v) {
  if (!std::isfinite(v)) return "n/a";
  switch (kind) {
    case ClaimKind::ratio:
      return fmt::format("{:.2f}x", v);
    case ClaimKind::percent:
      return fmt::format("{:.1f}%", v);
    default:
      return fmt::format("{:.2f} TFLOPS/W", v);
  }
}

ClaimRow make_row(const ValidationInputs& in, std::string id, std::string claim, ClaimKind kind,
                  double published, std::string published_text, double model, std::string how,
                  const std::string& why) {
  ClaimRow r;
  r.id = std::move(id);
  r.claim = std::move(claim);
  r.kind = kind;
  r.published = published;
  r.published_text = std::move(published_text);
  r.model = std::isfinite(model) ? model : kNaN;
  r.model_text = model_text(kind, r.model);
  r.how = std::move(how);
  r.deviation = std::isfinite(r.model) && published != 0 ? r.model / published - 1.0 : kNaN;
  r.within = std::isfinite(r.deviation) && std::abs(r.deviation) <= in.tolerance;
  r.verdict = verdict_text(kind, published, r.model, in.tolerance, why);
  return r;
}

// The Trainer spec at a precision, on the trace or at the published point.
const VariantResult* trainer_at(const ValidationInputs& in, const std::string& precision, bool p90) {
  const std::string base = p90 ? "p90_trainer" : "trainer";
  const VariantResult* v = in.find(base);
  if (v && v->precision == precision) return v;
  return in.find(base + "_" + precision);
}

std::string md_cell(std::string s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n')
      out += ' ';
    else
      out += c;
  }
  return out;
}

nlohmann::ordered_json totals_json(const CostTotals& t) {
  auto finite = [](double v) -> nlohmann::ordered_json {
    return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
  };
  nlohmann::ordered_json j;
  j["ops"] = t.ops;
  j["dense_MACs"] = t.dense_macs;
  j["effectual_MACs"] = t.effectual_macs;
  j["mac_slots"] = t.mac_slots;
  j["cycles"] = t.cycles;
  j["energy_pJ"] = t.energy_pj;
  j["energy_dram_pJ"] = t.dram_pj;
  j["peak_macs_per_cycle"] = t.peak_macs_per_cycle;
  j["TFLOPS_per_W"] = finite(t.tflops_per_watt());
  j["TFLOPS_per_W_without_dram"] = finite(t.tflops_per_watt_without_dram());
  j["effectual_utilization"] = finite(t.effectual_utilization());
  return j;
}

nlohmann::ordered_json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

void write_partial(const std::string& partial, const std::string& text, const std::string& path) {
  std::FILE* f = std::fopen(partial.c_str(), "wb");
  TRAINER_CHECK(f != nullptr, "validation report '{}': cannot create the file", path);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::remove(partial.c_str());
    fail("validation report '{}': cannot write the file", path);
  }
}

}  // namespace

// ---- sums ----

void CostTotals::add(const OpCost& c) {
  ops += static_cast<double>(c.calls);
  dense_macs += c.dense_macs;
  effectual_macs += c.effectual_macs;
  mac_slots += c.events.mac_slots;
  cycles += c.cycles;
  energy_pj += c.energy.total();
  dram_pj += c.energy.dram;
  peak_macs_per_cycle = std::max(peak_macs_per_cycle, c.peak_macs_per_cycle);
}

double CostTotals::tflops_per_watt() const { return ratio(2.0 * dense_macs, energy_pj); }
double CostTotals::tflops_per_watt_without_dram() const {
  return ratio(2.0 * dense_macs, energy_pj - dram_pj);
}
double CostTotals::effectual_utilization() const {
  return ratio(effectual_macs, cycles * peak_macs_per_cycle);
}
double CostTotals::dram_share() const { return ratio(dram_pj, energy_pj); }

// ---- variants ----

std::vector<ValidationVariant> validation_variants(const ChipSpec& trainer, const ChipSpec& zero_skip,
                                                   const ChipSpec& dense, bool published_point) {
  const Precision other = trainer.precision == Precision::fp8 ? Precision::fp16 : Precision::fp8;
  const std::string other_name = precision_name(other);
  std::vector<ValidationVariant> v;
  auto off = [&](const std::string& key, const std::string& label, auto&& change) {
    ChipSpec s = trainer;
    change(s.features);
    v.push_back({key, label, s, false});
  };
  v.push_back({"trainer", fmt::format("Trainer spec as given ({})", precision_name(trainer.precision)),
               trainer, false});
  ChipSpec o = trainer;
  o.precision = other;
  v.push_back({"trainer_" + other_name, fmt::format("Trainer spec at {}", other_name), o, false});
  off("no_speculation", "Trainer, speculation off", [](Features& f) { f.speculation = false; });
  off("no_adaptive_dataflow", "Trainer, adaptive dataflow off (fixed compressed operand)",
      [](Features& f) { f.adaptive_dataflow = false; });
  off("no_pe_regrouping", "Trainer, PE regrouping off (fixed first split)",
      [](Features& f) { f.pe_regrouping = false; });
  off("no_dataflow_no_regrouping", "Trainer, adaptive dataflow and PE regrouping off",
      [](Features& f) { f.adaptive_dataflow = false, f.pe_regrouping = false; });
  off("conventional_bn", "Trainer, conventional BN unit (reformulated_bn off)",
      [](Features& f) { f.reformulated_bn = false; });
  v.push_back({"zero_skip", fmt::format("zero-skipping baseline ({})", zero_skip.name), zero_skip, false});
  v.push_back({"dense", fmt::format("dense baseline ({})", dense.name), dense, false});
  if (published_point) {
    v.push_back(
        {"p90_trainer",
         fmt::format("Trainer spec as given ({}), x and w maps at 10%", precision_name(trainer.precision)),
         trainer, true});
    v.push_back({"p90_trainer_" + other_name,
                 fmt::format("Trainer spec at {}, x and w maps at 10%", other_name), o, true});
    v.push_back(
        {"p90_dense", fmt::format("dense baseline ({}), x and w maps at 10%", dense.name), dense, true});
  }
  return v;
}

VariantResult summarize_variant(const ValidationVariant& v, const ChipRun& run) {
  VariantResult r;
  r.key = v.key;
  r.label = v.label;
  r.spec_name = v.spec.name;
  r.precision = precision_name(v.spec.precision);
  r.published_point = v.published_point;
  r.clock_mhz = v.spec.clock_mhz;
  r.steps = run.steps();
  for (const OpCost& c : run.rows()) {
    r.all.add(c);
    if (c.unit == "pe_array")
      r.array.add(c);
    else
      r.elementwise.add(c);
    if (c.kind == "batchnorm2d") r.bn.add(c);
  }
  return r;
}

const VariantResult* ValidationInputs::find(const std::string& key) const {
  for (const VariantResult& v : variants)
    if (v.key == key) return &v;
  return nullptr;
}

// ---- the trace ----

void TraceSparsity::add_step(const std::vector<Op>& ops, uint64_t step) {
  ++steps;
  const double a0 = act_elems, an0 = act_nonzeros, w0 = weight_elems, wn0 = weight_nonzeros;
  int32_t first = INT32_MAX;
  for (const Op& op : ops)
    if (is_array_op(op) && op.phase == Phase::ff) first = std::min(first, op.layer);
  auto count = [](const std::shared_ptr<const Bitmap>& m, double& elems, double& nonzeros) {
    if (!m) return;
    elems += static_cast<double>(m->size());
    nonzeros += static_cast<double>(m->count());
  };
  for (const Op& op : ops) {
    if (!is_array_op(op)) continue;
    ++array_ops;
    if (op.phase == Phase::ff) {
      if (!op.x_nz || !op.w_nz) ++array_ops_no_maps;
      if (op.layer == first)
        count(op.x_nz, image_elems, image_nonzeros);
      else
        count(op.x_nz, act_elems, act_nonzeros);
      count(op.w_nz, weight_elems, weight_nonzeros);
      ff_dense_macs += static_cast<double>(op.dense_macs);
      ff_masked_output_macs += static_cast<double>(op.skipped_masked_output);
    } else if (op.phase == Phase::bp) {
      if (!op.dy_nz || !op.w_nz) ++array_ops_no_maps;
      count(op.dy_nz, grad_elems, grad_nonzeros);
    } else if (!op.x_nz || !op.dy_nz) {
      ++array_ops_no_maps;
    }
  }
  per_step.push_back({step, sparsity(act_nonzeros - an0, act_elems - a0),
                      sparsity(weight_nonzeros - wn0, weight_elems - w0)});
}

std::vector<Op> with_operand_density(const std::vector<Op>& ops, double density, uint64_t seed,
                                     uint64_t step) {
  std::vector<Op> out = ops;
  std::map<std::tuple<int32_t, int, int64_t>, std::shared_ptr<const Bitmap>> drawn;
  auto redraw = [&](int32_t layer, int which, const std::shared_ptr<const Bitmap>& m) {
    if (!m) return m;
    const auto key = std::make_tuple(layer, which, m->size());
    auto it = drawn.find(key);
    if (it != drawn.end()) return it->second;
    auto b = std::make_shared<Bitmap>(m->shape());
    Rng rng = Rng::derive(seed, step, static_cast<uint64_t>(static_cast<int64_t>(layer) + 1) * 2 + which);
    for (int64_t i = 0; i < b->size(); ++i)
      if (rng.uniform() < density) b->set(i);
    std::shared_ptr<const Bitmap> c = b;
    drawn.emplace(key, c);
    return c;
  };
  for (Op& op : out) {
    if (!is_array_op(op)) continue;
    op.x_nz = redraw(op.layer, 0, op.x_nz);
    op.w_nz = redraw(op.layer, 1, op.w_nz);
  }
  return out;
}

ValidationInputs run_validation(const std::string& trace_path, const ChipSpec& trainer,
                                const ChipSpec& zero_skip, const ChipSpec& dense,
                                const ValidationOptions& options) {
  const std::vector<ValidationVariant> variants =
      validation_variants(trainer, zero_skip, dense, options.published_point);
  std::vector<std::unique_ptr<ChipModel>> models;
  for (const ValidationVariant& v : variants)
    models.push_back(std::make_unique<ChipModel>(v.spec, options.mode));
  std::vector<ChipRun> runs(variants.size());

  ValidationInputs in;
  in.trace = trace_path;
  in.mode = cost_mode_name(options.mode);
  in.tolerance = options.tolerance;
  in.from_step = options.from_step;
  in.chip_file = trainer.source;
  in.baseline_file = zero_skip.source;
  in.dense_file = dense.source;

  TraceReader reader(trace_path);
  TraceStep step;
  while (reader.next(step)) {
    if (step.step < options.from_step) {
      ++in.sparsity.skipped_steps;
      continue;
    }
    in.sparsity.add_step(step.ops, step.step);
    std::vector<Op> redrawn;
    bool have_redrawn = false;
    for (size_t i = 0; i < variants.size(); ++i) {
      if (!variants[i].published_point) {
        runs[i].add_step(models[i]->cost_step(step.ops));
        continue;
      }
      if (!have_redrawn) {
        redrawn = with_operand_density(step.ops, kPublishedDensity, options.seed, step.step);
        have_redrawn = true;
      }
      runs[i].add_step(models[i]->cost_step(redrawn));
    }
  }
  TRAINER_CHECK(in.sparsity.steps > 0, "trace '{}': no steps to cost ({} recorded before step {})",
                trace_path, in.sparsity.skipped_steps, options.from_step);
  TRAINER_CHECK(in.sparsity.array_ops > 0, "trace '{}': no convolution or linear Ops to cost", trace_path);
  for (size_t i = 0; i < variants.size(); ++i) in.variants.push_back(summarize_variant(variants[i], runs[i]));
  return in;
}

// ---- verdicts and claims ----

std::string verdict_text(ClaimKind kind, double published, double model, double tolerance,
                         const std::string& why) {
  if (!std::isfinite(model) || published == 0)
    return why.empty() ? "cannot be computed" : "cannot be computed: " + why;
  const double dev = model / published - 1.0;
  const bool within = std::abs(dev) <= tolerance;
  std::string s = within ? fmt::format("within {:g}% ({:+.1f}%)", 100 * tolerance, 100 * dev)
                         : fmt::format("differs by {:+.1f}%", 100 * dev);
  if (kind == ClaimKind::ratio)
    s += fmt::format(" (gain {:+.0f}% against the published {:+.0f}%)", 100 * (model - 1),
                     100 * (published - 1));
  else if (kind == ClaimKind::percent)
    s += fmt::format(" ({:+.1f} points)", model - published);
  else if (!within)
    s += fmt::format(" ({:.3g}x the published figure)", model / published);
  if (!why.empty()) s += (within ? "; note: " : "; why: ") + why;
  return s;
}

std::vector<ClaimRow> validation_claims(const ValidationInputs& in) {
  std::vector<ClaimRow> rows;
  const TraceSparsity& sp = in.sparsity;
  const VariantResult* t = in.find("trainer");
  const std::string steps = fmt::format("{} costed step(s)", sp.steps);
  const std::string measured =
      fmt::format("trace sparsity: activations {}, weights {}, errors (dy) {}", pct(sp.activation_sparsity()),
                  pct(sp.weight_sparsity()), pct(sp.gradient_sparsity()));
  const bool off_point =
      std::abs(sp.activation_sparsity() - 0.9) > 0.02 || std::abs(sp.weight_sparsity() - 0.9) > 0.02;
  const std::string scope =
      "the model's figure is a whole training step (ff, bp, wg, BN and other element-wise Ops, the update), "
      "the published one a peak";
  auto dram_note = [](const VariantResult& v) {
    return fmt::format(
        "DRAM is {} of the model's energy (every Op reads its operands from DRAM and writes its result back; "
        "data kept on chip between Ops is not modelled), while a chip's published efficiency normally "
        "excludes DRAM ({} TFLOPS/W without it)",
        pct(v.all.dram_share()), num(v.all.tflops_per_watt_without_dram()));
  };

  // 1-4: peak energy efficiency at FP8 and FP16, on the trace and at the published point.
  for (const char* precision : {"fp8", "fp16"}) {
    const double published = std::string(precision) == "fp8" ? 276.55 : 173.28;
    for (bool p90 : {false, true}) {
      const VariantResult* v = trainer_at(in, precision, p90);
      if (p90 && !v) continue;  // published point not costed
      const std::string id = fmt::format("tflops_per_w_{}_{}", precision, p90 ? "90_90" : "trace");
      const std::string claim = fmt::format(
          "peak energy efficiency, {} ({})", precision == std::string("fp8") ? "FP8" : "FP16",
          p90 ? "at 90% / 90%: trace's layers, x and w maps redrawn at 10%" : "on the trace as recorded");
      const std::string published_text =
          fmt::format("{:.2f} TFLOPS/W at 90% activation and 90% weight sparsity", published);
      if (!v) {
        rows.push_back(make_row(in, id, claim, ClaimKind::value, published, published_text, kNaN,
                                "the Trainer spec at this precision was not costed", "variant missing"));
        continue;
      }
      std::string how = fmt::format(
          "2 x dense MACs / energy over every Op of the {} on the Trainer spec at {}; {}{}; PE-array Ops "
          "alone: {}; without DRAM: {}",
          steps, precision,
          p90 ? "every conv/linear input and weight map redrawn uniformly at 10% density, errors as "
                "recorded; "
              : "",
          measured, num(v->array.tflops_per_watt()), num(v->all.tflops_per_watt_without_dram()));
      std::vector<std::string> why;
      if (!p90 && off_point)
        why.push_back(fmt::format("the trace is not at 90% / 90% (activations {}, weights {})",
                                  pct(sp.activation_sparsity()), pct(sp.weight_sparsity())));
      if (p90)
        why.push_back(
            fmt::format("the errors (dy) keep the trace's density (sparsity {}), and redrawn maps are "
                        "uniform where real nonzeros cluster",
                        pct(sp.gradient_sparsity())));
      why.push_back(dram_note(*v));
      why.push_back(scope);
      why.push_back(
          "per-event energies are public 45 nm and CACTI figures scaled to 28 nm / 0.8 V, not fitted");
      rows.push_back(make_row(in, id, claim, ClaimKind::value, published, published_text,
                              v->all.tflops_per_watt(), how, join(why, "; ")));
    }
  }

  // 5: FP8 over FP16 (a ratio the mechanism decides, independent of the absolute energies' scale).
  {
    const VariantResult* f8 = trainer_at(in, "fp8", false);
    const VariantResult* f16 = trainer_at(in, "fp16", false);
    const VariantResult* p8 = trainer_at(in, "fp8", true);
    const VariantResult* p16 = trainer_at(in, "fp16", true);
    const double model = f8 && f16 ? ratio(f8->all.tflops_per_watt(), f16->all.tflops_per_watt()) : kNaN;
    const std::string at90 =
        p8 && p16 ? fmt::format("; at 90% / 90%: {}",
                                times(ratio(p8->all.tflops_per_watt(), p16->all.tflops_per_watt())))
                  : "";
    rows.push_back(make_row(
        in, "fp8_over_fp16", "FP8 over FP16 energy efficiency", ClaimKind::ratio, 276.55 / 173.28,
        "1.60x (276.55 / 173.28)", model,
        fmt::format("TFLOPS/W of the Trainer spec at fp8 / at fp16 on the trace{}", at90),
        "in the model FP8 doubles the MACs per PE, quarters the MAC energy and halves the bits moved and "
        "stored, while element-wise, metadata and leakage energy do not change with precision; how the "
        "silicon shares its datapath between the formats is not published"));
  }

  // 6: adaptive dataflow (reuse-adaptive compression and PE regrouping): utilization on vs off.
  {
    const VariantResult* offv = in.find("no_dataflow_no_regrouping");
    const VariantResult* dfo = in.find("no_adaptive_dataflow");
    const VariantResult* rgo = in.find("no_pe_regrouping");
    double model = kNaN;
    std::string how = "variants missing";
    std::string why;
    if (t && offv) {
      model = ratio(t->array.effectual_utilization(), offv->array.effectual_utilization());
      auto alone = [&](const VariantResult* v) {
        return v ? times(ratio(t->array.effectual_utilization(), v->array.effectual_utilization())) : "n/a";
      };
      how = fmt::format(
          "PE utilization = effectual MACs / (cycles x peak MACs per cycle) over the PE-array Ops; all "
          "features "
          "({}) over adaptive dataflow and PE regrouping off ({}: the fixed compressed operand on the fixed "
          "first split); adaptive dataflow alone {}, PE regrouping alone {}",
          pct(t->array.effectual_utilization()), pct(offv->array.effectual_utilization()), alone(dfo),
          alone(rgo));
      why = fmt::format(
          "the 'off' chip still walks the weight-side operand compressed, so the gain is only what choosing "
          "the "
          "operand and the split per Op buys at this trace's densities (activations {}, weights {}); outputs "
          "skipped by speculation are not compacted into tiles; the published figure's workload and baseline "
          "are "
          "not in the abstract",
          pct(sp.activation_sparsity()), pct(sp.weight_sparsity()));
    }
    rows.push_back(make_row(in, "adaptive_dataflow_utilization",
                            "adaptive dataflow: PE utilization, on vs off", ClaimKind::ratio, 1.52,
                            "1.52x utilization", model, how, why));
  }

  // 7-8: the reformulated BN unit, on the BN Ops' own energy and on the whole step's.
  {
    const VariantResult* conv = in.find("conventional_bn");
    const bool have = t && conv && conv->bn.ops > 0;
    const double bn_saved = have ? 100.0 * (1.0 - t->bn.energy_pj / conv->bn.energy_pj) : kNaN;
    const double step_saved =
        t && conv && conv->all.energy_pj > 0 ? 100.0 * (1.0 - t->all.energy_pj / conv->all.energy_pj) : kNaN;
    const std::string missing = t && conv ? "the trace has no batchnorm2d Ops" : "variants missing";
    const std::string basis =
        "the abstract does not say what the 37.1% is a share of (the BN unit's energy or "
        "the chip's)";
    rows.push_back(make_row(
        in, "bn_energy_saved_bn_ops", "reformulated BN unit: energy saved (the BN Ops' own energy)",
        ClaimKind::percent, 37.1, "37.1% energy saved", bn_saved,
        have ? fmt::format("1 - energy of the batchnorm2d Ops (ff, bp, wg) with reformulated_bn on / off, "
                           "all other features on; conventional: {:.3g} uJ per step, reformulated: {:.3g} uJ",
                           conv->bn.energy_pj * 1e-6 / static_cast<double>(sp.steps),
                           t->bn.energy_pj * 1e-6 / static_cast<double>(sp.steps))
             : missing,
        have ? fmt::format(
                   "the model's reformulated unit has no traffic of its own (statistics in the producing "
                   "conv's epilogue, normalisation as the next layer reads), so the BN Ops keep only "
                   "their arithmetic, and the conventional unit's BN energy is {} DRAM traffic in the "
                   "model (BN tensors do not stay on chip); {}",
                   pct(conv->bn.dram_share()), basis)
             : missing));
    rows.push_back(make_row(
        in, "bn_energy_saved_step", "reformulated BN unit: energy saved (the whole training step)",
        ClaimKind::percent, 37.1, "37.1% energy saved", step_saved,
        t && conv
            ? fmt::format("1 - energy of every Op with reformulated_bn on / off, all other features on; BN "
                          "Ops are {} of the step's energy with the conventional unit",
                          pct(ratio(conv->bn.energy_pj, conv->all.energy_pj)))
            : missing,
        t && conv
            ? fmt::format("switching the unit also un-fuses ReLU (the model's reformulated unit applies "
                          "ReLU in the same read paths), and the saving's share depends on how much of the "
                          "step is convolution; {}",
                          basis)
            : missing));
  }

  // 9-10: against the earlier sparse training processor (the zero-skipping baseline).
  {
    const VariantResult* zs = in.find("zero_skip");
    const VariantResult* ns = in.find("no_speculation");
    const VariantResult* nd = in.find("no_dataflow_no_regrouping");
    const VariantResult* nb = in.find("conventional_bn");
    auto split = [&](bool energy) {
      auto f = [&](const VariantResult* v) {
        if (!v || !t) return std::string("n/a");
        return times(energy ? ratio(v->all.energy_pj, t->all.energy_pj) : ratio(v->seconds(), t->seconds()));
      };
      return fmt::format(
          "speculation {}, adaptive dataflow + regrouping {}, reformulated BN {} (each: that "
          "feature off over all on)",
          f(ns), f(nd), f(nb));
    };
    const std::string base =
        "the baseline is Trainer's own hardware (same technology, array, buffers and DRAM) with zero "
        "skipping "
        "only (fixed dataflow and split, conventional BN, no speculation), not the earlier chip itself (most "
        "likely PNPU: its own technology, array and workload); ff dead-output speculation is not modelled";
    const bool have = t && zs;
    rows.push_back(make_row(
        in, "energy_vs_earlier", "training energy against the earlier sparse training processor",
        ClaimKind::ratio, 2.23, "2.23x less training energy",
        have ? ratio(zs->all.energy_pj, t->all.energy_pj) : kNaN,
        have ? fmt::format("energy of every Op: zero-skipping baseline / Trainer spec, same trace; the gain "
                           "splits as {}",
                           split(true))
             : "variants missing",
        have ? base : "variants missing"));
    rows.push_back(make_row(
        in, "speed_vs_earlier", "training speed against the earlier sparse training processor",
        ClaimKind::ratio, 1.76, "1.76x faster training", have ? ratio(zs->seconds(), t->seconds()) : kNaN,
        have ? fmt::format("time of every Op (cycles / clock): zero-skipping baseline / Trainer spec, same "
                           "trace; the gain splits as {}",
                           split(false))
             : "variants missing",
        have ? base : "variants missing"));
  }

  // 11: sparsity-to-efficiency conversion ratio.
  {
    const VariantResult* pt = in.find("p90_trainer");
    const VariantResult* pd = in.find("p90_dense");
    const VariantResult* d = in.find("dense");
    const bool at90 = pt && pd;
    const VariantResult* num_v = at90 ? pt : t;
    const VariantResult* den_v = at90 ? pd : d;
    const double model =
        num_v && den_v ? ratio(num_v->all.tflops_per_watt(), den_v->all.tflops_per_watt()) : kNaN;
    std::string how = "variants missing";
    if (num_v && den_v) {
      const double trace_ratio = t && d ? ratio(t->all.tflops_per_watt(), d->all.tflops_per_watt()) : kNaN;
      const double ideal = ratio(num_v->array.dense_macs, num_v->array.effectual_macs);
      how = fmt::format(
          "assumed definition: TFLOPS/W of the Trainer spec over that of the dense baseline (the same "
          "hardware, "
          "every sparsity feature off) on the same Ops, {}; on the trace as recorded: {}; ideal gain (dense "
          "MACs / effectual MACs of the PE-array Ops): {}, of which the model converts {}",
          at90 ? "at 90% / 90% (redrawn maps)" : "on the trace", times(trace_ratio), times(ideal),
          pct(ratio(model, ideal)));
    }
    rows.push_back(make_row(
        in, "conversion_ratio", "sparsity-to-efficiency conversion ratio", ClaimKind::value, 80.9,
        "80.9 (1.55x the previous best)", model, how,
        "the abstract does not define the ratio, so it cannot be validated unambiguously; under the assumed "
        "reading 276.55 / 80.9 = 3.42 TFLOPS/W would be Trainer's dense FP8 efficiency; the model's ratio is "
        "bounded by DRAM traffic that sparsity does not remove (dense baseline without DRAM: " +
            (den_v ? num(den_v->all.tflops_per_watt_without_dram()) : std::string("n/a")) + " TFLOPS/W)"));
    rows.back().model_text =
        std::isfinite(rows.back().model) ? fmt::format("{:.1f}", rows.back().model) : "n/a";
  }

  // 12: speculation throughput.
  {
    const VariantResult* ns = in.find("no_speculation");
    const bool have = t && ns;
    const double masked = ratio(sp.ff_masked_output_macs, sp.ff_dense_macs);
    const std::string engine =
        sp.ff_masked_output_macs > 0
            ? fmt::format("the engine skipped {} of the ff MACs as masked outputs", pct(masked))
            : "the engine does not yet speculate (0 ff MACs skipped as masked outputs in the trace)";
    rows.push_back(make_row(
        in, "speculation_throughput", "implicit redundancy speculation: throughput", ClaimKind::ratio, 1.46,
        "1.46x throughput", have ? ratio(ns->seconds(), t->seconds()) : kNaN,
        have ? fmt::format("time of every Op (cycles / clock): speculation off / on, all other features on; "
                           "energy: {}",
                           times(ratio(ns->all.energy_pj, t->all.energy_pj)))
             : "variants missing",
        have ? fmt::format(
                   "ff dead-output speculation (outputs the next ReLU zeroes, predicted from partial sums) "
                   "is not modelled: {}, and the Op record carries no map of which outputs; the model "
                   "skips only what the ff maps make certain (bp at the input's zeros, wg of pruned "
                   "weights), and does not compact the needed outputs into tiles, so skipped outputs "
                   "save energy more than time",
                   engine)
             : "variants missing"));
  }
  return rows;
}

// ---- output ----

std::string validation_markdown(const ValidationInputs& in, const std::vector<ClaimRow>& rows) {
  const TraceSparsity& sp = in.sparsity;
  std::string s = "# Chip model validation\n\n";
  s += fmt::format(
      "Trace `{}`: {} step(s) costed in {} mode. Specs: `{}` (Trainer), `{}` (zero-skipping "
      "baseline), `{}` (dense baseline). Totals are sums over the costed steps.\n\n",
      in.trace, sp.steps, in.mode, in.chip_file, in.baseline_file, in.dense_file);
  s += fmt::format(
      "Measured sparsity (zeros / elements of the nonzero maps, over the costed steps): activations (inputs "
      "of conv/linear layers after the first) **{}**, weights **{}**, errors dy (into conv/linear bp) {}, "
      "the "
      "image (first layer's input) {}. The published efficiency is at 90% / 90%. Engine: {} of the ff MACs "
      "skipped as masked (predicted dead) outputs.",
      pct(sp.activation_sparsity()), pct(sp.weight_sparsity()), pct(sp.gradient_sparsity()),
      pct(sp.image_sparsity()),
      pct(sp.ff_dense_macs > 0 ? sp.ff_masked_output_macs / sp.ff_dense_macs : 0.0));
  if (!sp.per_step.empty()) {
    double lo = 1, hi = 0;
    for (const TraceSparsity::Step& st : sp.per_step)
      lo = std::min(lo, st.weight), hi = std::max(hi, st.weight);
    if (hi - lo > 0.05) {
      std::vector<std::string> list;
      for (size_t i = 0; i < sp.per_step.size() && i < 12; ++i)
        list.push_back(fmt::format("step {}: {}", sp.per_step[i].step, pct(sp.per_step[i].weight)));
      if (sp.per_step.size() > 12) list.push_back("...");
      s += fmt::format(
          " The weight sparsity varies over the costed steps ({}): a step recorded before the first "
          "mask update has dense weights; `--from-step N` costs only steps N and later.",
          join(list, ", "));
    }
  }
  if (sp.skipped_steps > 0)
    s += fmt::format(" {} recorded step(s) before step {} were not costed (--from-step).", sp.skipped_steps,
                     in.from_step);
  if (sp.array_ops_no_maps > 0)
    s += fmt::format(" {} of {} conv/linear Ops lack an operand map and were costed as dense.",
                     sp.array_ops_no_maps, sp.array_ops);
  s += fmt::format(" A figure within {:g}% of the published one is \"within\".\n\n", 100 * in.tolerance);

  s += "| claim | published figure | model figure | how the model figure is computed | verdict |\n";
  s += "| --- | --- | --- | --- | --- |\n";
  for (const ClaimRow& r : rows)
    s += fmt::format("| {} | {} | {} | {} | {} |\n", md_cell(r.claim), md_cell(r.published_text),
                     md_cell(r.model_text), md_cell(r.how), md_cell(r.verdict));

  const VariantResult* t = in.find("trainer");
  s += "\n## Variants (per costed step)\n\n";
  s += "| variant | maps | precision | time (us) | energy (uJ) | TFLOPS/W | TFLOPS/W without DRAM | PE "
       "utilization "
       "(effectual) | DRAM share | time / Trainer | energy / Trainer |\n";
  s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (const VariantResult& v : in.variants) {
    const double steps = v.steps > 0 ? static_cast<double>(v.steps) : 1.0;
    s += fmt::format("| {} (`{}`) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", md_cell(v.label),
                     v.key, v.published_point ? "x, w at 10%" : "as recorded", v.precision,
                     num(v.seconds() * 1e6 / steps, 1), num(v.all.energy_pj * 1e-6 / steps, 3),
                     num(v.all.tflops_per_watt()), num(v.all.tflops_per_watt_without_dram()),
                     pct(v.array.effectual_utilization()), pct(v.all.dram_share()),
                     t ? times(ratio(v.seconds(), t->seconds())) : "n/a",
                     t ? times(ratio(v.all.energy_pj, t->all.energy_pj)) : "n/a");
  }
  return s;
}

nlohmann::ordered_json validation_json(const ValidationInputs& in, const std::vector<ClaimRow>& rows) {
  const TraceSparsity& sp = in.sparsity;
  nlohmann::ordered_json j;
  j["trace"] = in.trace;
  j["mode"] = in.mode;
  j["steps"] = sp.steps;
  j["tolerance"] = in.tolerance;
  j["from_step"] = in.from_step;
  j["specs"] = {{"chip", in.chip_file}, {"baseline", in.baseline_file}, {"dense", in.dense_file}};
  j["sparsity"] = {
      {"activations", sp.activation_sparsity()},
      {"weights", sp.weight_sparsity()},
      {"errors", sp.gradient_sparsity()},
      {"image", sp.image_sparsity()},
      {"ff_masked_output_fraction", number_or_null(ratio(sp.ff_masked_output_macs, sp.ff_dense_macs))},
      {"array_ops", sp.array_ops},
      {"array_ops_without_maps", sp.array_ops_no_maps},
      {"skipped_steps", sp.skipped_steps}};
  nlohmann::ordered_json per_step = nlohmann::ordered_json::array();
  for (const TraceSparsity::Step& st : sp.per_step)
    per_step.push_back({{"step", st.step}, {"activations", st.activation}, {"weights", st.weight}});
  j["sparsity"]["per_step"] = per_step;
  nlohmann::ordered_json claims = nlohmann::ordered_json::array();
  for (const ClaimRow& r : rows) {
    const char* kind = r.kind == ClaimKind::ratio     ? "ratio"
                       : r.kind == ClaimKind::percent ? "percent"
                                                      : "value";
    claims.push_back({{"id", r.id},
                      {"claim", r.claim},
                      {"kind", kind},
                      {"published", r.published},
                      {"published_text", r.published_text},
                      {"model", number_or_null(r.model)},
                      {"model_text", r.model_text},
                      {"deviation", number_or_null(r.deviation)},
                      {"within", r.within},
                      {"how", r.how},
                      {"verdict", r.verdict}});
  }
  j["claims"] = claims;
  nlohmann::ordered_json vs = nlohmann::ordered_json::array();
  for (const VariantResult& v : in.variants)
    vs.push_back({{"key", v.key},
                  {"label", v.label},
                  {"spec", v.spec_name},
                  {"precision", v.precision},
                  {"published_point", v.published_point},
                  {"clock_mhz", v.clock_mhz},
                  {"steps", v.steps},
                  {"seconds", v.seconds()},
                  {"all", totals_json(v.all)},
                  {"array", totals_json(v.array)},
                  {"bn", totals_json(v.bn)},
                  {"elementwise", totals_json(v.elementwise)}});
  j["variants"] = vs;
  return j;
}

void write_validation_reports(const std::string& prefix, const ValidationInputs& in,
                              const std::vector<ClaimRow>& rows) {
  const std::string md = prefix + ".md", json = prefix + ".json";
  write_partial(md + ".partial", validation_markdown(in, rows), md);
  try {
    write_partial(json + ".partial", validation_json(in, rows).dump(2) + "\n", json);
  } catch (...) {
    std::remove((md + ".partial").c_str());
    throw;
  }
  for (const std::string& path : {md, json})
    if (std::rename((path + ".partial").c_str(), path.c_str()) != 0) {
      std::remove((md + ".partial").c_str());
      std::remove((json + ".partial").c_str());
      fail("validation report '{}': cannot write the file", path);
    }
}

}  // namespace trainer
