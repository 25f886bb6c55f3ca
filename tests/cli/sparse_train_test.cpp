// Sparse training through the `trainer` binary: each pruning policy reaches its target sparsity and the
// run's counters say what was skipped and why; the sparse and the dense kernels train the same numbers;
// a pruned run resumes bit-identically (masks in the checkpoint); mismatched resumes are refused.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "binary.hpp"

namespace {

using namespace trainer::cli_testing;

class SparseTrain : public BinaryTest {
 protected:
  std::vector<nlohmann::json> metrics(const std::string& name) const {
    std::vector<nlohmann::json> lines;
    std::ifstream in(dir_ / name);
    for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
    return lines;
  }
};

// A small ResNet on small synthetic images: 6 steps per epoch, a fraction of a second per epoch.
const std::string kRun =
    "train --data synthetic --synthetic-size 192 --synthetic-shape 1x16x16 --batch-size 32 --threads 1 "
    "--progress off --model resnet8 --width 16 --init kaiming ";

// executed + every skip reason == the dense multiplies, for one counters object.
void expect_adds_up(const nlohmann::json& p, const std::string& what) {
  const uint64_t skipped = p.at("skipped_pruned").get<uint64_t>() + p.at("skipped_zero_activation").get<uint64_t>() +
                           p.at("skipped_zero_error").get<uint64_t>() + p.at("skipped_masked_output").get<uint64_t>();
  EXPECT_GT(p.at("dense_macs").get<uint64_t>(), 0u) << what;
  EXPECT_EQ(p.at("executed_macs").get<uint64_t>() + skipped, p.at("dense_macs").get<uint64_t>()) << what;
}

void expect_work_adds_up(const nlohmann::json& work) {
  for (const char* phase : {"ff", "bp", "wg"}) expect_adds_up(work.at(phase), phase);
}

TEST_F(SparseTrain, EachPolicyReachesItsTargetAndSkipsThePrunedWork) {
  for (const std::string policy : {"magnitude", "dns", "rigl"}) {
    SCOPED_TRACE(policy);
    const std::string m = policy + ".jsonl";
    // Schedule over the first half of the run, so that the last epochs run at the target.
    const Result r = run(kRun + "--epochs 3 --prune " + policy +
                         " --sparsity 0.8 --prune-every 2 --prune-begin 0 --prune-end 0.5 --kernels sparse "
                         "--prune-distribution uniform --metrics " + m);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_HAS(r.out, "pruning: " + policy + " to 80% weight sparsity");
    EXPECT_HAS(r.out, "sparse work");  // the end-of-run table of skipped multiplies
    const auto lines = metrics(m);
    ASSERT_EQ(lines.size(), 3u);
    const auto& last = lines.back();
    EXPECT_NEAR(last.at("sparsity").get<double>(), 0.8, 0.01) << last.dump();
    expect_work_adds_up(last.at("work"));
    // At 80% uniform sparsity of every tensor but the first conv and the last linear, most ff multiplies
    // of the last epoch were skipped because their weight was pruned.
    const auto& ff = last.at("work").at("ff");
    const double pruned_share =
        ff.at("skipped_pruned").get<double>() / ff.at("dense_macs").get<double>();
    EXPECT_GT(pruned_share, 0.6) << ff.dump();
    EXPECT_LT(pruned_share, 0.8) << ff.dump();
    if (policy == "dns") {
      // The default dense WG every 40 steps: of these 18, step 0 only.
      EXPECT_HAS(r.out, "dense WG every 40 steps");
      EXPECT_EQ(last.at("dense_wg_steps").get<int64_t>(), 1);
    } else {
      EXPECT_EQ(r.out.find("dense WG every"), std::string::npos) << r.out;
    }
    if (policy == "magnitude") {
      EXPECT_EQ(last.at("dense_wg_steps").get<int64_t>(), 0);
      EXPECT_EQ(last.at("total_grown").get<int64_t>(), 0);  // pruned weights stay pruned
    }
    // The churn counters (transitions over the run). rigl's sparsity is fixed from its initial mask, so
    // each update grows as many as it drops; the gradual schedules prune more than they splice back.
    if (policy == "rigl") {
      EXPECT_GT(last.at("total_grown").get<int64_t>(), 0);
      EXPECT_EQ(last.at("total_pruned").get<int64_t>(), last.at("total_grown").get<int64_t>());
    } else {
      EXPECT_GT(last.at("total_pruned").get<int64_t>(), last.at("total_grown").get<int64_t>());
    }
    EXPECT_TRUE(std::isfinite(last.at("test_loss").get<double>()));
    // Per layer and phase: each row adds up, and the rows of a phase sum to the phase's totals.
    uint64_t ff_dense = 0, ff_pruned = 0;
    for (const auto& row : last.at("layers")) {
      expect_adds_up(row, row.at("layer").get<std::string>() + " " + row.at("phase").get<std::string>());
      if (row.at("phase") == "ff") {
        ff_dense += row.at("dense_macs").get<uint64_t>();
        ff_pruned += row.at("skipped_pruned").get<uint64_t>();
      }
    }
    EXPECT_EQ(ff_dense, ff.at("dense_macs").get<uint64_t>());
    EXPECT_EQ(ff_pruned, ff.at("skipped_pruned").get<uint64_t>());
    EXPECT_HAS(r.out, "x dense*");
  }
}

// --dns-surgery schedule: the masks stop moving where the schedule ends (step 9 of 18), and so does the
// dense WG (here every step, as published); the sparsity holds.
TEST_F(SparseTrain, DnsScheduleSurgeryEndsTheDenseWgWithTheSchedule) {
  const Result r = run(kRun +
                       "--epochs 3 --prune dns --dns-dense-every 1 --dns-surgery schedule --sparsity 0.8 "
                       "--prune-every 2 "
                       "--prune-begin 0 --prune-end 0.5 --prune-distribution uniform --no-ops-summary "
                       "--metrics d.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto lines = metrics("d.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines.back().at("dense_wg_steps").get<int64_t>(), 9);
  EXPECT_NEAR(lines.back().at("sparsity").get<double>(), 0.8, 0.01);
  expect_work_adds_up(lines.back().at("work"));
}

// --dns-dense-every 3: the dense WG on 6 of the 18 steps, said in the header and counted in the metrics;
// the schedule still reaches its target.
TEST_F(SparseTrain, DnsDenseWgEveryNSteps) {
  const Result r = run(kRun +
                       "--epochs 3 --prune dns --dns-dense-every 3 --sparsity 0.8 --prune-every 2 "
                       "--prune-begin 0 --prune-end 0.5 --prune-distribution uniform --no-ops-summary "
                       "--metrics d.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.out, "dense WG every 3 steps, pruned gradient x1");
  const auto lines = metrics("d.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines.back().at("dense_wg_steps").get<int64_t>(), 6);
  EXPECT_NEAR(lines.back().at("sparsity").get<double>(), 0.8, 0.01);
  expect_work_adds_up(lines.back().at("work"));
}

TEST_F(SparseTrain, SparseAndDenseKernelsTrainTheSameNumbers) {
  const std::string recipe = kRun + "--epochs 1 --max-steps 4 --prune magnitude --sparsity 0.7 --prune-every 1 "
                                    "--prune-begin 0 --prune-end 0.5 --no-ops-summary ";
  Result r = run(recipe + "--kernels sparse --metrics s.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(recipe + "--kernels dense --metrics d.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto s = metrics("s.jsonl"), d = metrics("d.jsonl");
  ASSERT_EQ(s.size(), 1u);
  ASSERT_EQ(d.size(), 1u);
  // Same masks, same math, different summation orders: float-level differences only.
  EXPECT_NEAR(s[0]["train_loss"].get<double>(), d[0]["train_loss"].get<double>(), 1e-3);
  EXPECT_NEAR(s[0]["test_loss"].get<double>(), d[0]["test_loss"].get<double>(), 1e-2);
  EXPECT_DOUBLE_EQ(s[0]["sparsity"].get<double>(), d[0]["sparsity"].get<double>());
  // The dense kernels execute every multiply; the sparse ones skip the pruned ones.
  EXPECT_EQ(d[0]["work"]["ff"]["skipped_pruned"].get<uint64_t>(), 0u);
  EXPECT_GT(s[0]["work"]["ff"]["skipped_pruned"].get<uint64_t>(), 0u);
  // The batch norms' gradient sums taken in the BP epilogue: the same training to rounding, same work.
  r = run(recipe + "--kernels sparse --bn-sums-in-epilogue --metrics e.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto e = metrics("e.jsonl");
  ASSERT_EQ(e.size(), 1u);
  EXPECT_NEAR(e[0]["train_loss"].get<double>(), s[0]["train_loss"].get<double>(), 1e-4);
  EXPECT_DOUBLE_EQ(e[0]["sparsity"].get<double>(), s[0]["sparsity"].get<double>());
  EXPECT_EQ(e[0]["work"]["bp"]["executed_macs"], s[0]["work"]["bp"]["executed_macs"]);
}

TEST_F(SparseTrain, APrunedRunResumesBitIdentically) {
  for (const std::string policy : {"magnitude", "rigl"}) {
    SCOPED_TRACE(policy);
    const std::string recipe = kRun + "--epochs 2 --prune " + policy +
                               " --sparsity 0.8 --prune-every 2 --no-ops-summary ";
    Result r = run(recipe + "--checkpoint whole.ckpt");
    ASSERT_EQ(r.code, 0) << r.err;
    r = run(recipe + "--stop-after 1 --checkpoint split.ckpt");
    ASSERT_EQ(r.code, 0) << r.err;
    r = run(recipe + "--resume split.ckpt --checkpoint split.ckpt");
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
    const std::string whole = slurp(path("whole.ckpt")), split = slurp(path("split.ckpt"));
    ASSERT_FALSE(whole.empty());
    EXPECT_TRUE(whole == split) << "the resumed pruned run's final checkpoint differs from the uninterrupted one";
  }
}

TEST_F(SparseTrain, MismatchedResumesAreRefused) {
  Result r = run(kRun + "--epochs 2 --stop-after 1 --prune magnitude --checkpoint p.ckpt --no-ops-summary");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(kRun + "--epochs 2 --resume p.ckpt --no-ops-summary");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "p.ckpt");
  EXPECT_HAS(r.err, "written by a pruned run");
  r = run(kRun + "--epochs 2 --stop-after 1 --checkpoint d.ckpt --no-ops-summary");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(kRun + "--epochs 2 --resume d.ckpt --prune rigl --no-ops-summary");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "holds no pruning state");
}

// --prune-erk-power: the first stage's 3x3 conv keeps fewer weights as the power falls from ERK (1) toward
// uniform (0), the last stage's more; at 0 both are at the target. Masks at the target from step 0. The
// default is 0.75: between ERK and 0.5.
TEST_F(SparseTrain, ErkPowerMovesDensityFromSmallLayersToLargeOnes) {
  auto pruned_share = [&](const std::string& power, const std::string& layer) {
    const std::string m = "erk" + power + ".jsonl";
    if (!std::filesystem::exists(dir_ / m)) {
      const Result r = run(kRun +
                           "--epochs 1 --max-steps 1 --prune magnitude --sparsity 0.9 --initial-sparsity 0.9 "
                           "--prune-begin 0 --kernels sparse " +
                           (power == "default" ? "" : "--prune-erk-power " + power) + " --metrics " + m);
      EXPECT_EQ(r.code, 0) << r.err;
      if (power == "1") {
        EXPECT_HAS(r.out, "(erk distribution");
      } else {
        EXPECT_HAS(r.out, "erk (power " + (power == "default" ? "0.75" : power) + ") distribution");
      }
    }
    const auto lines = metrics(m);
    if (lines.empty()) return 0.0;
    for (const auto& row : lines.back().at("layers"))
      if (row.at("layer") == layer && row.at("phase") == "ff")
        return row.at("skipped_pruned").get<double>() / row.at("dense_macs").get<double>();
    ADD_FAILURE() << "no ff row for " << layer;
    return 0.0;
  };
  const std::string first = "stage0.block0.conv0", last = "stage2.block0.conv1";
  EXPECT_LT(pruned_share("1", first), pruned_share("default", first));
  EXPECT_LT(pruned_share("default", first), pruned_share("0.5", first));
  EXPECT_LT(pruned_share("0.5", first), pruned_share("0", first));
  EXPECT_GT(pruned_share("1", last), pruned_share("0.5", last));
  EXPECT_GT(pruned_share("0.5", last), pruned_share("0", last));
  EXPECT_NEAR(pruned_share("0", first), 0.9, 0.01);
  EXPECT_NEAR(pruned_share("0", last), 0.9, 0.01);
}

TEST_F(SparseTrain, BadPruningOptionsAreNamed) {
  Result r = run(kRun + "--prune sometimes");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--prune");
  EXPECT_HAS(r.err, "magnitude");
  r = run(kRun + "--prune magnitude --sparsity 1.5");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--sparsity");
  r = run(kRun + "--prune rigl --prune-distribution erdos");
  EXPECT_NE(r.code, 0);
  EXPECT_HAS(r.err, "erdos");
  r = run(kRun + "--prune rigl --prune-erk-power -1");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--prune-erk-power");
  r = run(kRun + "--prune rigl --prune-distribution uniform --prune-erk-power 0.5");
  EXPECT_NE(r.code, 0);
  EXPECT_HAS(r.err, "prune_erk_power");
  r = run(kRun + "--prune dns --dns-dense-every 0");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--dns-dense-every");
  r = run(kRun + "--prune rigl --dns-dense-every 2");
  EXPECT_NE(r.code, 0);
  EXPECT_HAS(r.err, "dns_dense_every");
  r = run(kRun + "--prune dns --dns-dense-scale -2");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--dns-dense-scale");
  r = run(kRun + "--prune magnitude --calibration missing.json");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "missing.json");
}

}  // namespace
