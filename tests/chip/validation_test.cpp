// The validation report's arithmetic (report/validation.hpp) on hand-made totals: each claim's model
// figure is the ratio it says, verdicts name the deviation, missing inputs give "cannot be computed";
// and the parts that touch Ops: the trace's measured sparsity, the maps redrawn at the published point,
// the variants' split into PE-array / BN / element-wise sums, and the atomic report files.
#include "report/validation.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "chip_test_util.hpp"
#include "core/error.hpp"

namespace trainer {
namespace {

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

// A variant whose every Op is summed into `all`, with the PE-array and BN parts given separately.
VariantResult variant(const std::string& key, const std::string& precision, double cycles, double energy,
                      double dense_macs = 1e6, bool p90 = false) {
  VariantResult v;
  v.key = key;
  v.label = key;
  v.spec_name = key;
  v.precision = precision;
  v.published_point = p90;
  v.clock_mhz = 100;  // 1 cycle = 10 ns
  v.steps = 2;
  v.all.ops = 10;
  v.all.cycles = cycles;
  v.all.energy_pj = energy;
  v.all.dram_pj = energy / 2;
  v.all.dense_macs = dense_macs;
  v.all.effectual_macs = dense_macs / 10;
  v.all.peak_macs_per_cycle = 512;
  v.array = v.all;
  v.array.energy_pj = energy * 0.8;
  v.array.cycles = cycles * 0.9;
  return v;
}

// Trainer and its ablations with round ratios (speed and energy against the Trainer row).
ValidationInputs hand_made() {
  ValidationInputs in;
  in.trace = "hand.trace";
  in.tolerance = 0.10;
  in.sparsity.steps = 2;
  in.sparsity.array_ops = 6;
  in.sparsity.act_elems = 100, in.sparsity.act_nonzeros = 40;        // 60% sparse
  in.sparsity.weight_elems = 100, in.sparsity.weight_nonzeros = 10;  // 90% sparse
  in.sparsity.grad_elems = 100, in.sparsity.grad_nonzeros = 50;
  in.sparsity.ff_dense_macs = 1000;
  VariantResult t = variant("trainer", "fp8", 1000, 1e4);  // 2e6 FLOP / 1e4 pJ = 200 TFLOPS/W
  t.bn.ops = 4, t.bn.energy_pj = 60;                       // 40% saved
  in.variants.push_back(t);
  in.variants.push_back(variant("trainer_fp16", "fp16", 2000, 2e4));  // 100 TFLOPS/W
  in.variants.push_back(variant("no_speculation", "fp8", 1200, 1.1e4));
  VariantResult off = variant("no_dataflow_no_regrouping", "fp8", 1500, 1.2e4);
  off.array.cycles = 1000 * 0.9 * 2;  // utilization halves: 2.00x
  in.variants.push_back(off);
  VariantResult conv = variant("conventional_bn", "fp8", 1100, 1.25e4);  // 20% of the step saved
  conv.bn.ops = 4, conv.bn.energy_pj = 100, conv.bn.dram_pj = 90;
  in.variants.push_back(conv);
  in.variants.push_back(variant("zero_skip", "fp8", 1760, 2.23e4));
  in.variants.push_back(variant("dense", "fp8", 5000, 1e6));                            // 2 TFLOPS/W
  in.variants.push_back(variant("p90_trainer", "fp8", 900, 8e3, 1e6, true));            // 250
  in.variants.push_back(variant("p90_trainer_fp16", "fp16", 1800, 1.25e4, 1e6, true));  // 160
  in.variants.push_back(variant("p90_dense", "fp8", 5000, 5e5, 1e6, true));             // 4
  return in;
}

const ClaimRow& row(const std::vector<ClaimRow>& rows, const std::string& id) {
  for (const ClaimRow& r : rows)
    if (r.id == id) return r;
  ADD_FAILURE() << "no claim " << id;
  static ClaimRow none;
  return none;
}

TEST(ValidationVerdict, NamesTheDeviation) {
  EXPECT_EQ(verdict_text(ClaimKind::value, 100, 104, 0.10, ""), "within 10% (+4.0%)");
  EXPECT_EQ(verdict_text(ClaimKind::value, 200, 50, 0.10, "because"),
            "differs by -75.0% (0.25x the published figure); why: because");
  EXPECT_EQ(verdict_text(ClaimKind::ratio, 1.5, 1.2, 0.10, ""),
            "differs by -20.0% (gain +20% against the published +50%)");
  EXPECT_EQ(verdict_text(ClaimKind::percent, 37.1, 40.0, 0.10, "x"),
            "within 10% (+7.8%) (+2.9 points); note: x");
  EXPECT_EQ(verdict_text(ClaimKind::ratio, 1.46, std::nan(""), 0.10, "not modelled"),
            "cannot be computed: not modelled");
}

TEST(ValidationClaims, RatiosFromHandMadeTotals) {
  const ValidationInputs in = hand_made();
  const std::vector<ClaimRow> rows = validation_claims(in);
  EXPECT_EQ(rows.size(), 12u);

  const ClaimRow& fp8 = row(rows, "tflops_per_w_fp8_trace");
  EXPECT_DOUBLE_EQ(fp8.model, 200.0);
  EXPECT_NEAR(fp8.deviation, 200.0 / 276.55 - 1, 1e-12);
  EXPECT_FALSE(fp8.within);
  EXPECT_HAS(fp8.verdict, "differs by -27.7%");
  EXPECT_HAS(fp8.verdict, "the trace is not at 90% / 90% (activations 60.0%, weights 90.0%)");
  EXPECT_HAS(fp8.verdict, "DRAM is 50.0% of the model's energy");
  EXPECT_HAS(fp8.how, "without DRAM: 400.00");
  EXPECT_HAS(fp8.how, "PE-array Ops alone: 250.00");
  EXPECT_DOUBLE_EQ(row(rows, "tflops_per_w_fp16_trace").model, 100.0);
  EXPECT_DOUBLE_EQ(row(rows, "tflops_per_w_fp8_90_90").model, 250.0);
  EXPECT_DOUBLE_EQ(row(rows, "tflops_per_w_fp16_90_90").model, 160.0);
  EXPECT_TRUE(row(rows, "tflops_per_w_fp16_90_90").within);  // 160 / 173.28 = -7.7%
  EXPECT_HAS(row(rows, "tflops_per_w_fp16_90_90").verdict, "within 10% (-7.7%)");
  EXPECT_DOUBLE_EQ(row(rows, "fp8_over_fp16").model, 2.0);

  const ClaimRow& adf = row(rows, "adaptive_dataflow_utilization");
  EXPECT_NEAR(adf.model, 2.0, 1e-12);
  EXPECT_HAS(adf.verdict, "differs by +31.6%");

  const ClaimRow& bn = row(rows, "bn_energy_saved_bn_ops");
  EXPECT_NEAR(bn.model, 40.0, 1e-9);
  EXPECT_TRUE(bn.within);
  EXPECT_HAS(bn.verdict, "within 10% (+7.8%) (+2.9 points); note: ");
  EXPECT_HAS(bn.verdict, "90.0% DRAM traffic");
  const ClaimRow& bn_step = row(rows, "bn_energy_saved_step");
  EXPECT_NEAR(bn_step.model, 20.0, 1e-9);
  EXPECT_HAS(bn_step.verdict, "differs by -46.1% (-17.1 points)");

  EXPECT_NEAR(row(rows, "energy_vs_earlier").model, 2.23, 1e-12);
  EXPECT_TRUE(row(rows, "energy_vs_earlier").within);
  const ClaimRow& speed = row(rows, "speed_vs_earlier");
  EXPECT_NEAR(speed.model, 1.76, 1e-12);
  EXPECT_HAS(speed.how, "speculation 1.20x, adaptive dataflow + regrouping 1.50x, reformulated BN 1.10x");

  const ClaimRow& conv = row(rows, "conversion_ratio");
  EXPECT_NEAR(conv.model, 250.0 / 4.0, 1e-9);  // at the published point
  EXPECT_EQ(conv.model_text, "62.5");
  EXPECT_HAS(conv.how, "on the trace as recorded: 100.00x");
  EXPECT_HAS(conv.how, "ideal gain (dense MACs / effectual MACs of the PE-array Ops): 10.00x");
  EXPECT_HAS(conv.verdict, "does not define the ratio");

  const ClaimRow& spec = row(rows, "speculation_throughput");
  EXPECT_NEAR(spec.model, 1.2, 1e-12);
  EXPECT_HAS(spec.verdict, "differs by -17.8% (gain +20% against the published +46%)");
  EXPECT_HAS(spec.verdict, "the engine does not yet speculate");
}

TEST(ValidationClaims, MissingInputsCannotBeComputed) {
  ValidationInputs in = hand_made();
  in.variants.erase(in.variants.begin() + 2);      // no_speculation
  for (VariantResult& v : in.variants) v.bn = {};  // a model without BN
  in.sparsity.ff_masked_output_macs = 250;         // the engine skipped a quarter of ff
  const std::vector<ClaimRow> rows = validation_claims(in);
  const ClaimRow& spec = row(rows, "speculation_throughput");
  EXPECT_TRUE(std::isnan(spec.model));
  EXPECT_EQ(spec.model_text, "n/a");
  EXPECT_HAS(spec.verdict, "cannot be computed");
  const ClaimRow& bn = row(rows, "bn_energy_saved_bn_ops");
  EXPECT_TRUE(std::isnan(bn.model));
  EXPECT_HAS(bn.verdict, "cannot be computed: the trace has no batchnorm2d Ops");
  // The JSON carries null for figures that cannot be computed.
  const nlohmann::ordered_json j = validation_json(in, rows);
  bool found = false;
  for (const auto& c : j["claims"])
    if (c["id"] == "speculation_throughput") {
      found = true;
      EXPECT_TRUE(c["model"].is_null());
    }
  EXPECT_TRUE(found);
}

TEST(ValidationVariants, SwitchFeaturesOneAtATime) {
  ChipSpec t = testing::tiny_chip();
  t.name = "t";
  t.precision = Precision::fp8;
  t.features = {true, true, true, true, true};
  ChipSpec zs = t, d = t;
  zs.name = "zs", d.name = "d";
  const std::vector<ValidationVariant> v = validation_variants(t, zs, d, true);
  ASSERT_EQ(v.size(), 12u);
  auto get = [&](const std::string& key) -> const ValidationVariant& {
    for (const ValidationVariant& x : v)
      if (x.key == key) return x;
    ADD_FAILURE() << key;
    return v.front();
  };
  EXPECT_EQ(get("trainer_fp16").spec.precision, Precision::fp16);
  EXPECT_FALSE(get("no_speculation").spec.features.speculation);
  EXPECT_TRUE(get("no_speculation").spec.features.adaptive_dataflow);
  EXPECT_FALSE(get("no_adaptive_dataflow").spec.features.adaptive_dataflow);
  EXPECT_TRUE(get("no_adaptive_dataflow").spec.features.pe_regrouping);
  EXPECT_FALSE(get("no_dataflow_no_regrouping").spec.features.pe_regrouping);
  EXPECT_FALSE(get("conventional_bn").spec.features.reformulated_bn);
  EXPECT_TRUE(get("conventional_bn").spec.features.speculation);
  EXPECT_EQ(get("zero_skip").spec.name, "zs");
  EXPECT_TRUE(get("p90_dense").published_point);
  EXPECT_EQ(get("p90_trainer_fp16").spec.precision, Precision::fp16);
  EXPECT_EQ(validation_variants(t, zs, d, false).size(), 9u);
}

TEST(ValidationSums, SplitsRunRowsByUnitAndKind) {
  OpCost conv, bn, relu;
  conv.layer = 0, conv.layer_name = "conv", conv.kind = "conv2d", conv.unit = "pe_array";
  conv.dense_macs = 100, conv.effectual_macs = 10, conv.cycles = 5, conv.peak_macs_per_cycle = 4;
  conv.energy.mac = 30, conv.energy.dram = 10;
  bn.layer = 1, bn.layer_name = "bn", bn.kind = "batchnorm2d", bn.unit = "fused", bn.energy.vector = 7;
  relu.layer = 2, relu.layer_name = "relu", relu.kind = "relu", relu.unit = "vector", relu.cycles = 3;
  relu.energy.dram = 3;
  ChipRun run;
  run.add_step({conv, bn, relu});
  run.add_step({conv, bn, relu});
  ValidationVariant v{"trainer", "label", testing::tiny_chip(), false};
  const VariantResult r = summarize_variant(v, run);
  EXPECT_EQ(r.steps, 2u);
  EXPECT_DOUBLE_EQ(r.all.ops, 6);
  EXPECT_DOUBLE_EQ(r.all.energy_pj, 2 * (40 + 7 + 3));
  EXPECT_DOUBLE_EQ(r.all.dram_pj, 26);
  EXPECT_DOUBLE_EQ(r.array.cycles, 10);
  EXPECT_DOUBLE_EQ(r.array.effectual_utilization(), 20.0 / (10 * 4));
  EXPECT_DOUBLE_EQ(r.array.tflops_per_watt(), 400.0 / 80);
  EXPECT_DOUBLE_EQ(r.array.tflops_per_watt_without_dram(), 400.0 / 60);
  EXPECT_DOUBLE_EQ(r.bn.energy_pj, 14);
  EXPECT_DOUBLE_EQ(r.elementwise.cycles, 6);
  EXPECT_DOUBLE_EQ(r.seconds(), 16 / 100e6);
}

TEST(ValidationTrace, MeasuredSparsityAndRedrawnMaps) {
  testing::ConvShape s1{4, 3, 8, 8, 16, 3, 3, 1, 1}, s2{4, 16, 8, 8, 16, 3, 3, 1, 1};
  Op ff1 = testing::conv_op(s1, Phase::ff, 1.0, 0.5, 1.0, 1, "stem", 0);
  Op ff2 = testing::conv_op(s2, Phase::ff, 0.25, 0.2, 1.0, 2, "conv", 1);
  Op wg2 = testing::conv_op(s2, Phase::wg, 0.25, 0.2, 0.5, 3, "conv", 1);
  wg2.x_nz = ff2.x_nz;  // the engine shares the ff map
  Op bp2 = testing::conv_op(s2, Phase::bp, 0.25, 0.2, 0.5, 4, "conv", 1);
  bp2.w_nz = ff2.w_nz;
  ff2.skipped_masked_output = ff2.dense_macs / 4;
  const std::vector<Op> ops{ff1, ff2, wg2, bp2};

  TraceSparsity sp;
  sp.add_step(ops, 40);
  EXPECT_EQ(sp.array_ops, 4u);
  EXPECT_EQ(sp.array_ops_no_maps, 0u);
  EXPECT_DOUBLE_EQ(sp.image_elems, 4 * 3 * 64);  // the first layer's input is the image
  EXPECT_DOUBLE_EQ(sp.act_elems, 4 * 16 * 64);
  EXPECT_DOUBLE_EQ(sp.act_nonzeros, static_cast<double>(ff2.x_nz->count()));
  EXPECT_DOUBLE_EQ(sp.weight_elems, 16 * 3 * 9 + 16 * 16 * 9);
  EXPECT_DOUBLE_EQ(sp.grad_nonzeros, static_cast<double>(bp2.dy_nz->count()));
  EXPECT_NEAR(sp.activation_sparsity(), 0.75, 0.05);
  ASSERT_EQ(sp.per_step.size(), 1u);
  EXPECT_EQ(sp.per_step[0].step, 40u);
  EXPECT_DOUBLE_EQ(sp.per_step[0].weight, sp.weight_sparsity());
  EXPECT_DOUBLE_EQ(sp.per_step[0].activation, sp.activation_sparsity());
  Op dense_ff = ff2;
  dense_ff.w_nz = testing::random_map({16, 16, 3, 3}, 1.0, 9);
  sp.add_step({ff1, dense_ff}, 41);  // a step alone: its own sparsities
  EXPECT_DOUBLE_EQ(sp.per_step[1].weight,
                   1.0 - static_cast<double>(ff1.w_nz->count() + 16 * 16 * 9) / (16 * 3 * 9 + 16 * 16 * 9));
  EXPECT_DOUBLE_EQ(
      sp.ff_masked_output_macs / sp.ff_dense_macs,
      static_cast<double>(ff2.dense_macs / 4) / static_cast<double>(ff1.dense_macs + ff2.dense_macs));

  const std::vector<Op> p = with_operand_density(ops, 0.1, 7, 3);
  ASSERT_EQ(p.size(), ops.size());
  EXPECT_EQ(p[1].x_nz, p[2].x_nz);  // one map per layer and operand, shared by ff and wg
  EXPECT_EQ(p[1].w_nz, p[3].w_nz);
  EXPECT_EQ(p[3].dy_nz, bp2.dy_nz);  // errors as recorded
  EXPECT_EQ(p[1].x_nz->shape(), ff2.x_nz->shape());
  EXPECT_NEAR(p[1].x_nz->density(), 0.1, 0.02);
  EXPECT_NEAR(p[0].w_nz->density(), 0.1, 0.04);
  EXPECT_TRUE(*with_operand_density(ops, 0.1, 7, 3)[1].x_nz == *p[1].x_nz);   // deterministic
  EXPECT_FALSE(*with_operand_density(ops, 0.1, 7, 4)[1].x_nz == *p[1].x_nz);  // another step, other maps
}

TEST(ValidationReport, WritesMarkdownAndJsonAtomically) {
  const ValidationInputs in = hand_made();
  const std::vector<ClaimRow> rows = validation_claims(in);
  const std::string md = validation_markdown(in, rows);
  EXPECT_HAS(md, "| claim | published figure | model figure | how the model figure is computed | verdict |");
  EXPECT_HAS(md, "| implicit redundancy speculation: throughput | 1.46x throughput | 1.20x |");
  EXPECT_HAS(md, "activations (inputs of conv/linear layers after the first) **60.0%**");

  const std::string prefix =
      (std::filesystem::temp_directory_path() / ("validation_test_" + std::to_string(::getpid()))).string();
  write_validation_reports(prefix, in, rows);
  std::ifstream f(prefix + ".json");
  const nlohmann::json j = nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(f), {}));
  EXPECT_EQ(j["claims"].size(), 12u);
  EXPECT_EQ(j["variants"].size(), in.variants.size());
  EXPECT_DOUBLE_EQ(j["sparsity"]["weights"].get<double>(), 0.9);
  EXPECT_TRUE(std::filesystem::exists(prefix + ".md"));
  EXPECT_FALSE(std::filesystem::exists(prefix + ".md.partial"));
  EXPECT_FALSE(std::filesystem::exists(prefix + ".json.partial"));
  std::filesystem::remove(prefix + ".md");
  std::filesystem::remove(prefix + ".json");
  EXPECT_THROW(write_validation_reports("/no/such/dir/v", in, rows), Error);
}

}  // namespace
}  // namespace trainer
