// `trainer train` with the chip model and the trace writer attached (--chip, --chip-out, --trace, ...):
// the reports' totals are the sums of their rows, `trainer simulate` on the recorded trace gives the
// live costing's numbers, sampling (--chip-every, --trace-every) picks the steps it says, and bad options
// fail before training.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ops/trace.hpp"

#include "binary.hpp"

namespace {

using namespace trainer::cli_testing;

class TrainChip : public BinaryTest {
 protected:
  nlohmann::json json(const std::string& name) const { return nlohmann::json::parse(slurp(dir_ / name)); }
};

std::string chip(const std::string& name) {
  return std::string(TRAINER_SOURCE_DIR) + "/configs/chips/" + name;
}

// 64 images in batches of 16: 4 training steps of LeNet-5, single-threaded (well under a second each).
const std::string kRun =
    "train --data synthetic --synthetic-size 64 --model lenet5 --epochs 1 --batch-size 16 --threads 1 "
    "--progress off --no-ops-summary ";

// Columns that do not add over rows (ratios).
const std::set<std::string> kRatios = {"layer", "pe_utilization", "effectual_utilization", "dense_TFLOPS",
                                       "TFLOPS_per_W"};

void expect_close(double sum, double total, double rel, const std::string& what) {
  EXPECT_NEAR(sum, total, rel * std::max(1.0, std::abs(total))) << what;
}

// JSON: every additive column of "total" and of each "phases" entry is the sum of its rows.
void expect_json_adds_up(const nlohmann::json& j) {
  ASSERT_TRUE(j["rows"].is_array());
  ASSERT_FALSE(j["rows"].empty());
  int checked = 0;
  for (const auto& [key, total] : j["total"].items()) {
    if (!total.is_number() || kRatios.count(key)) continue;
    double sum = 0;
    std::map<std::string, double> by_phase;
    for (const auto& row : j["rows"]) {
      sum += row[key].get<double>();
      by_phase[row["phase"].get<std::string>()] += row[key].get<double>();
    }
    expect_close(sum, total.get<double>(), 1e-12, "total " + key);
    for (const auto& [phase, t] : j["phases"].items())
      expect_close(by_phase[phase], t[key].get<double>(), 1e-12, "phase " + phase + " " + key);
    ++checked;
  }
  EXPECT_GE(checked, 20);
  EXPECT_GT(j["total"]["cycles"].get<double>(), 0.0);
}

std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream s(line);
  for (std::string f; std::getline(s, f, ',');) out.push_back(f);
  return out;
}

// CSV: the last row ("total", kind "total") is the sum of the layer x phase rows, per additive column.
void expect_csv_adds_up(const std::string& text) {
  std::stringstream in(text);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  const std::vector<std::string> header = split(line);
  std::vector<std::vector<std::string>> rows, totals;
  while (std::getline(in, line)) {
    auto f = split(line);
    ASSERT_EQ(f.size(), header.size()) << line;
    (f[2] == "total" ? totals : rows).push_back(f);
  }
  ASSERT_FALSE(rows.empty());
  ASSERT_EQ(totals.size(), 6u);  // 5 phases and the run
  const auto& total = totals.back();
  EXPECT_EQ(total[1], "total");
  for (size_t c = 7; c < header.size(); ++c) {
    if (kRatios.count(header[c])) continue;
    double sum = 0;
    for (const auto& r : rows) sum += std::stod(r[c]);
    expect_close(sum, std::stod(total[c]), 1e-8, "CSV " + header[c]);  // printed with 10 digits
  }
}

TEST_F(TrainChip, ReportsAddUpAndTheTraceCostsLikeTheLiveRun) {
  const Result r = run(kRun + "--chip " + chip("trainer-28nm.yaml") +
                       " --chip-out live --trace run.trace --trace-every 1");
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_HAS(r.out, "chip model (");
  EXPECT_HAS(r.out, "costed 4 of this run's 4 training steps");
  EXPECT_HAS(r.out, "chip report: live.json, live.csv");
  EXPECT_HAS(r.out, "trace: 4 of this run's 4 training steps");
  EXPECT_HAS(r.out, "test accuracy");
  EXPECT_FALSE(fs::exists(path("live.json.partial")));
  EXPECT_FALSE(fs::exists(path("run.trace.partial")));

  const nlohmann::json live = json("live.json");
  EXPECT_EQ(live["steps"], 4);
  EXPECT_EQ(live["mode"], "exact");
  EXPECT_EQ(live["sampling"]["costed_steps"], 4);
  EXPECT_EQ(live["sampling"]["training_steps"], 4);
  expect_json_adds_up(live);
  expect_csv_adds_up(slurp(dir_ / "live.csv"));

  // The trace holds steps 0..3 with the maps the chip needs, and the new Op fields.
  const auto steps = trainer::read_trace(path("run.trace"));
  ASSERT_EQ(steps.size(), 4u);
  int conv_ff = 0;
  for (size_t s = 0; s < steps.size(); ++s) {
    EXPECT_EQ(steps[s].step, s);
    for (const trainer::Op& op : steps[s].ops) {
      if (op.kind == "conv2d" || op.kind == "linear") {
        EXPECT_EQ(op.executed_macs + op.skipped(), op.dense_macs) << op.layer_name;
      }
      if (op.kind == "conv2d" && op.phase == trainer::Phase::ff) {
        ++conv_ff;
        EXPECT_TRUE(op.x_nz && op.w_nz) << op.layer_name;
      }
    }
  }
  EXPECT_EQ(conv_ff, 4 * 2);  // LeNet-5 has two convolutions

  // Costing the trace again gives the live numbers, row by row.
  const Result s = run("simulate --trace run.trace --chip " + chip("trainer-28nm.yaml") + " --json sim.json");
  ASSERT_EQ(s.code, 0) << s.err << s.out;
  EXPECT_HAS(s.out, "costed 4 step(s)");
  const nlohmann::json sim = json("sim.json");
  EXPECT_EQ(sim["total"]["cycles"].get<double>(), live["total"]["cycles"].get<double>());
  EXPECT_EQ(sim["total"]["energy_total_pJ"].get<double>(), live["total"]["energy_total_pJ"].get<double>());
  ASSERT_EQ(sim["rows"].size(), live["rows"].size());
  for (size_t i = 0; i < live["rows"].size(); ++i) {
    EXPECT_EQ(sim["rows"][i]["layer_name"], live["rows"][i]["layer_name"]);
    EXPECT_EQ(sim["rows"][i]["cycles"].get<double>(), live["rows"][i]["cycles"].get<double>()) << i;
  }
}

TEST_F(TrainChip, SamplingAndSeveralChips) {
  // Steps 0..3: costed 0 and 3 (--chip-every 3), recorded 0 and 2 (--trace-every 2).
  const Result r =
      run(kRun + "--chip " + chip("trainer-28nm.yaml") + " --chip " + chip("dense-baseline.yaml") +
          " --chip-mode statistical --chip-every 3 --chip-out r --trace t.trace --trace-every 2");
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  for (const char* name : {"r.trainer-28nm", "r.dense-baseline"}) {
    const nlohmann::json j = json(std::string(name) + ".json");
    EXPECT_EQ(j["steps"], 2) << name;
    EXPECT_EQ(j["mode"], "statistical") << name;
    EXPECT_EQ(j["sampling"]["chip_every"], 3) << name;
    EXPECT_EQ(j["sampling"]["training_steps"], 4) << name;
    expect_json_adds_up(j);
    EXPECT_TRUE(fs::exists(path(std::string(name) + ".csv"))) << name;
  }
  // The features cut cycles below the dense baseline's on the same steps.
  EXPECT_LT(json("r.trainer-28nm.json")["total"]["cycles"].get<double>(),
            json("r.dense-baseline.json")["total"]["cycles"].get<double>());
  const auto steps = trainer::read_trace(path("t.trace"));
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].step, 0u);
  EXPECT_EQ(steps[1].step, 2u);
  EXPECT_HAS(r.out, "trace: 2 of this run's 4 training steps (--trace-every 2)");
}

// --chip-maps pe_array: only conv and linear Ops carry maps (the same maps as with every Op's), and the
// element-wise Ops are costed as dense; the report says which capture it used.
TEST_F(TrainChip, PeArrayMapsOnlyOnConvAndLinear) {
  const std::string spec = chip("zero-skip-baseline.yaml");
  Result r = run(kRun + "--max-steps 1 --chip " + spec + " --chip-out all --trace all.trace --trace-every 1");
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  r = run(kRun + "--max-steps 1 --chip " + spec +
          " --chip-out pe --trace pe.trace --trace-every 1 --chip-maps pe_array");
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_HAS(r.out, "pe_array maps");
  EXPECT_EQ(json("pe.json")["sampling"]["nonzero_maps"], "pe_array");
  EXPECT_EQ(json("all.json")["sampling"]["nonzero_maps"], "all");
  const auto all = trainer::read_trace(path("all.trace")), pe = trainer::read_trace(path("pe.trace"));
  ASSERT_EQ(all.size(), 1u);
  ASSERT_EQ(pe.size(), 1u);
  ASSERT_EQ(all[0].ops.size(), pe[0].ops.size());
  int array_ops = 0, others_mapped_in_all = 0;
  for (size_t i = 0; i < pe[0].ops.size(); ++i) {
    const trainer::Op &a = all[0].ops[i], &p = pe[0].ops[i];
    const bool array = p.kind == "conv2d" || p.kind == "linear";
    SCOPED_TRACE(p.layer_name + " " + trainer::phase_name(p.phase));
    for (auto [ma, mp] : {std::pair{a.x_nz, p.x_nz}, std::pair{a.w_nz, p.w_nz}, std::pair{a.dy_nz, p.dy_nz}}) {
      if (array) {
        ASSERT_EQ(static_cast<bool>(ma), static_cast<bool>(mp));
        if (ma) {
          EXPECT_TRUE(*ma == *mp);
        }
      } else {
        EXPECT_FALSE(mp);
        others_mapped_in_all += static_cast<bool>(ma);
      }
    }
    array_ops += array;
  }
  EXPECT_GE(array_ops, 10);
  EXPECT_GE(others_mapped_in_all, 10);
  // Same PE-array cycles; the element-wise Ops' operands read as dense can only cost more traffic.
  const nlohmann::json ja = json("all.json"), jp = json("pe.json");
  EXPECT_EQ(ja["phases"]["ff"]["compute_cycles"], jp["phases"]["ff"]["compute_cycles"]);
  EXPECT_GE(jp["total"]["dram_read_bytes"].get<double>(), ja["total"]["dram_read_bytes"].get<double>());

  r = run(kRun + "--chip " + spec + " --chip-maps some");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--chip-maps: expected all or pe_array, got 'some'");
  r = run(kRun + "--chip-maps pe_array");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--chip-maps needs --chip or --trace");
}

TEST_F(TrainChip, BadOptionsFailBeforeTraining) {
  const std::string spec = chip("trainer-28nm.yaml");
  Result r = run(kRun + "--chip-out x");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--chip-out needs --chip");
  r = run(kRun + "--trace-every 3");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--trace-every needs --trace");
  r = run(kRun + "--chip " + spec + " --chip-mode fuzzy");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--chip-mode");
  r = run(kRun + "--chip " + spec + " --chip-every 0");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--chip-every");
  r = run(kRun + "--chip " + spec + " --chip " + spec + " --chip-out x");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "same report");

  r = run(kRun + "--chip missing.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "missing.yaml");
  EXPECT_EQ(r.out.find("epoch"), std::string::npos) << r.out;  // nothing trained
  r = run(kRun + "--trace no/such/dir/t.trace");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "t.trace");
  EXPECT_EQ(r.out.find("epoch"), std::string::npos) << r.out;
}

}  // namespace
