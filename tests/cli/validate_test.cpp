// `trainer validate`: end to end on a tiny sparse trace recorded by `trainer train` (ResNet-8, width 16,
// 90% of the weights pruned from step 0), and bad input (missing or truncated trace, bad options) refused
// with a clear message and exit code.
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
#include <string>

#include "binary.hpp"

namespace {

using namespace trainer::cli_testing;

// One trace for the whole suite (recording it is the slow part: well under a second).
class Validate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("trainer_validate_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const Result r = run(
        "train --data synthetic --synthetic-size 64 --model resnet8 --width 16 --epochs 1 --batch-size 16 "
        "--threads 1 --prune magnitude --sparsity 0.9 --initial-sparsity 0.9 --prune-begin 0 "
        "--trace t.trace --trace-every 1 --no-ops-summary --progress off");
    ASSERT_EQ(r.code, 0) << r.out << r.err;
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static Result run(const std::string& args) { return run_trainer(dir_, args); }
  static std::string chip(const std::string& name) {
    return std::string(TRAINER_SOURCE_DIR) + "/configs/chips/" + name;
  }
  static std::string specs() {
    return " --chip " + chip("trainer-28nm.yaml") + " --baseline " + chip("zero-skip-baseline.yaml") +
           " --dense " + chip("dense-baseline.yaml") + " --threads 1";
  }
  static fs::path dir_;
};

fs::path Validate::dir_;

TEST_F(Validate, ReportsEveryClaimOnARecordedTrace) {
  const Result r = run("validate --trace t.trace --out v" + specs());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_HAS(r.out,
             "| claim | published figure | model figure | how the model figure is computed | verdict |");
  EXPECT_HAS(r.out, "4 step(s) costed in exact mode");
  EXPECT_HAS(r.out, "| implicit redundancy speculation: throughput | 1.46x throughput |");
  EXPECT_HAS(r.out, "the engine does not yet speculate");
  EXPECT_HAS(r.out, "validation report: v.md, v.json");
  EXPECT_EQ(slurp(dir_ / "v.md"), r.out.substr(0, r.out.find("\ncosted ")));  // the file is what was printed
  EXPECT_FALSE(fs::exists(dir_ / "v.md.partial"));
  EXPECT_FALSE(fs::exists(dir_ / "v.json.partial"));

  const nlohmann::json j = nlohmann::json::parse(slurp(dir_ / "v.json"));
  EXPECT_EQ(j["steps"], 4);
  EXPECT_EQ(j["claims"].size(), 12u);
  EXPECT_EQ(j["variants"].size(), 12u);
  // The trace is sparse: pruning at 90% from step 0 (the first and last layers are kept dense), and
  // ReLU zeros in the activations.
  EXPECT_GT(j["sparsity"]["weights"].get<double>(), 0.5);
  EXPECT_GT(j["sparsity"]["activations"].get<double>(), 0.2);
  for (const auto& c : j["claims"]) {
    ASSERT_TRUE(c["model"].is_number()) << c;
    EXPECT_GT(c["model"].get<double>(), 0.0) << c;
    const std::string verdict = c["verdict"];
    EXPECT_TRUE(verdict.rfind("within ", 0) == 0 || verdict.rfind("differs by ", 0) == 0) << verdict;
  }
  // Trainer beats both baselines on this trace, in time and energy.
  std::map<std::string, nlohmann::json> v;
  for (const auto& x : j["variants"]) v[x["key"]] = x;
  for (const char* base : {"zero_skip", "dense"}) {
    EXPECT_GT(v[base]["seconds"].get<double>(), v["trainer"]["seconds"].get<double>()) << base;
    EXPECT_GT(v[base]["all"]["energy_pJ"].get<double>(), v["trainer"]["all"]["energy_pJ"].get<double>())
        << base;
  }
  // The same dense MACs on every variant (the same Ops).
  for (const auto& [key, x] : v)
    EXPECT_EQ(x["all"]["dense_MACs"].get<double>(), v["trainer"]["all"]["dense_MACs"].get<double>()) << key;
}

TEST_F(Validate, FromStepLeavesOutTheDenseFirstSteps) {
  // Pruning begins at step 1 (a quarter of the 4 steps), so steps 0 and 1 run dense weights (the first
  // mask update comes after step 1's gradients): the report says so, and --from-step 2 costs the two
  // pruned steps only.
  Result r = run(
      "train --data synthetic --synthetic-size 64 --model resnet8 --width 16 --epochs 1 --batch-size 16 "
      "--threads 1 --prune magnitude --sparsity 0.9 --initial-sparsity 0.9 --prune-begin 0.25 "
      "--trace late.trace --trace-every 1 --no-ops-summary --progress off");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  r = run("validate --trace late.trace --no-published-point --mode statistical --out all" + specs());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_HAS(r.out, "The weight sparsity varies over the costed steps (step 0: 0.0%");
  r = run("validate --trace late.trace --no-published-point --mode statistical --from-step 2 --out late" +
          specs());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_HAS(r.out, "2 step(s) costed in statistical mode");
  EXPECT_HAS(r.out, "2 recorded step(s) before step 2 were not costed");
  const nlohmann::json all = nlohmann::json::parse(slurp(dir_ / "all.json"));
  const nlohmann::json late = nlohmann::json::parse(slurp(dir_ / "late.json"));
  EXPECT_EQ(all["variants"].size(), 9u);
  EXPECT_EQ(late["sparsity"]["per_step"].size(), 2u);
  EXPECT_EQ(late["sparsity"]["per_step"][0]["step"], 2);
  EXPECT_GT(late["sparsity"]["weights"].get<double>(), all["sparsity"]["weights"].get<double>());
  EXPECT_GT(late["sparsity"]["weights"].get<double>(), 0.8);

  r = run("validate --trace late.trace --from-step 99" + specs());
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "no steps to cost (4 recorded before step 99)");
}

// A schedule that begins at step 0 above zero sparsity starts the run pruned: the recorded step 0 is
// already at the initial sparsity, not dense.
TEST_F(Validate, PruningFromStepZeroRecordsASparseFirstStep) {
  const Result r = run("validate --trace t.trace --no-published-point --mode statistical --out first" + specs());
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const nlohmann::json first = nlohmann::json::parse(slurp(dir_ / "first.json"));
  ASSERT_EQ(first["sparsity"]["per_step"].size(), 4u);
  EXPECT_EQ(first["sparsity"]["per_step"][0]["step"], 0);
  EXPECT_GT(first["sparsity"]["per_step"][0]["weights"].get<double>(), 0.8);
}

TEST_F(Validate, RefusesBadInput) {
  Result r = run("validate --trace no-such.trace" + specs());
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "trace 'no-such.trace': cannot open the file");

  {
    const std::string bytes = slurp(dir_ / "t.trace");
    std::ofstream out(dir_ / "cut.trace", std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  r = run("validate --trace cut.trace --out cut" + specs());
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "truncated");
  EXPECT_FALSE(fs::exists(dir_ / "cut.md"));
  EXPECT_FALSE(fs::exists(dir_ / "cut.json"));

  r = run("validate --trace t.trace --chip no-such.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "no-such.yaml");

  r = run("validate --trace t.trace --tolerance -5" + specs());
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--tolerance");

  r = run("validate --trace t.trace --from-step -1" + specs());
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--from-step");

  r = run("validate --chip " + chip("trainer-28nm.yaml"));
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--trace");
}

}  // namespace
