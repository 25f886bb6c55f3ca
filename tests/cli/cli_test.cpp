// The `trainer` binary as a user runs it: help, usage and configuration errors (messages and exit
// codes), a tiny synthetic training run, a resumed run that must be bit-identical to an uninterrupted
// one, and a diverging run that must leave the last checkpoint intact.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "binary.hpp"

namespace {

using namespace trainer::cli_testing;

class Cli : public BinaryTest {
};

// Tiny and single-threaded, so that the runs take a fraction of a second even on a busy machine.
const std::string kTiny =
    "train --data synthetic --synthetic-size 192 --synthetic-shape 1x16x16 --batch-size 32 --threads 1 "
    "--progress off ";

TEST_F(Cli, TrainHelpDocumentsEveryOptionWithItsDefault) {
  const Result r = run("train --help");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* opt :
       {"--model",      "--width",    "--data",     "--data-dir",     "--epochs",        "--batch-size",
        "--lr",         "--momentum", "--nesterov", "--weight-decay", "--schedule",      "--warmup-epochs",
        "--seed",       "--threads",  "--subset",   "--augment-crop", "--augment-flip",  "--metrics",
        "--checkpoint", "--resume",   "--config",   "--progress",     "--no-ops-summary"})
    EXPECT_HAS(r.out, std::string(opt) + " ");
  // Every option line but --help states its default.
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("  --", 0) == 0) {
      EXPECT_HAS(line, "(default: ");
    }
}

TEST_F(Cli, ModelsListsTheZoo) {
  const Result r = run("models");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.out, "lenet5\n");
  EXPECT_HAS(r.out, "resnet20\n");
}

TEST_F(Cli, UsageErrorsExitWithTwo) {
  Result r = run("");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "error: ");
  r = run("train --no-such-option");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "error: ");
  EXPECT_HAS(r.err, "--no-such-option");
  r = run("train --epochs many");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "error: option --epochs: expected an integer >= 1, got 'many'");
  r = run("train --momentum 1.2");
  EXPECT_EQ(r.code, 2);
  EXPECT_HAS(r.err, "--momentum");
}

TEST_F(Cli, BadConfigNamesFileAndKey) {
  std::ofstream(path("bad.yaml")) << "model: lenet5\nbatch_size: lots\n";
  Result r = run("train --config bad.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_HAS(r.err, "bad.yaml:2");
  EXPECT_HAS(r.err, "batch_size");

  std::ofstream(path("unknown.yaml")) << "learning-rate: 0.1\n";
  r = run("train --config unknown.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "unknown.yaml");
  EXPECT_HAS(r.err, "'learning-rate'");

  r = run("train --config missing.yaml");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "missing.yaml");
}

TEST_F(Cli, BadInputsGiveErrorsNotCrashes) {
  Result r = run(kTiny + "--model resnet7");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "resnet7");
  r = run("train --data fashion-mnist --data-dir /nonexistent/fashion --epochs 1 --progress off");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "/nonexistent/fashion");
  std::ofstream(path("not.ckpt")) << "hello";
  r = run(kTiny + "--epochs 1 --resume not.ckpt");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "not.ckpt");
}

TEST_F(Cli, ConfigFileWithCommandLineOverride) {
  std::ofstream(path("run.yaml"))
      << "model: lenet5\ndata: synthetic\nsynthetic_size: 96\nsynthetic_shape: 1x16x16\n"
         "epochs: 5\nbatch_size: 32\nthreads: 1\nprogress: off\nops_summary: false\n";
  const Result r = run("train --config run.yaml --epochs 1 --metrics m.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.out, "after 1 of 1 epochs");
  EXPECT_EQ(r.out.find("per-layer"), std::string::npos) << r.out;  // ops_summary: false
}

TEST_F(Cli, TinySyntheticRunWritesMetricsAndSummary) {
  const Result r = run(kTiny + "--epochs 2 --metrics m.jsonl --checkpoint out/run.ckpt");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.out, "test accuracy");
  EXPECT_HAS(r.out, "images/s");
  EXPECT_HAS(r.out, "conv0");  // the per-layer table
  std::ifstream in(path("m.jsonl"));
  std::vector<nlohmann::json> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(lines.size(), 2u);
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["epoch"], i + 1);
    for (const char* key :
         {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s", "seconds"})
      EXPECT_TRUE(lines[i][key].is_number()) << key << " in " << lines[i].dump();
  }
  EXPECT_TRUE(fs::exists(path("out/run.ckpt")));
  EXPECT_FALSE(fs::exists(path("out/run.ckpt.tmp")));
}

TEST_F(Cli, MaxStepsCutsEpochsShort) {
  const Result r = run(kTiny + "--epochs 2 --max-steps 2 --metrics m.jsonl --no-ops-summary");
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream in(path("m.jsonl"));
  int64_t expect_step = 0;
  for (std::string line; std::getline(in, line);)
    EXPECT_EQ(nlohmann::json::parse(line)["step"], expect_step += 2);
  EXPECT_EQ(expect_step, 4);
  EXPECT_HAS(r.out, "(128 images in");  // 2 epochs x 2 steps x 32 images
}

TEST_F(Cli, ResumedRunIsBitIdentical) {
  const std::string recipe =
      kTiny +
      "--model resnet8 --width 4 --epochs 2 --nesterov --augment-crop 2 --augment-flip "
      "--no-ops-summary ";
  Result r = run(recipe + "--checkpoint whole.ckpt");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(recipe + "--stop-after 1 --checkpoint split.ckpt --metrics split.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(slurp(path("split.ckpt")), slurp(path("whole.ckpt")));  // after 1 epoch they differ
  r = run(recipe + "--resume split.ckpt --checkpoint split.ckpt --metrics split.jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_HAS(r.out, "resumed from 'split.ckpt' after epoch 1");
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << r.err;
  const std::string whole = slurp(path("whole.ckpt")), split = slurp(path("split.ckpt"));
  ASSERT_FALSE(whole.empty());
  EXPECT_TRUE(whole == split) << "the resumed run's final checkpoint differs from the uninterrupted run's";
  // The metrics file continued: one line per epoch.
  std::ifstream in(path("split.jsonl"));
  int n = 0;
  for (std::string line; std::getline(in, line);) EXPECT_EQ(nlohmann::json::parse(line)["epoch"], ++n);
  EXPECT_EQ(n, 2);
}

TEST_F(Cli, ResumeIntoAnotherModelNamesTheTensor) {
  Result r = run(kTiny + "--model resnet8 --width 4 --epochs 2 --stop-after 1 --checkpoint a.ckpt");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run(kTiny + "--model resnet8 --width 8 --epochs 2 --resume a.ckpt");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "a.ckpt");
  EXPECT_HAS(r.err, "has shape");
  EXPECT_HAS(r.err, "'resnet8' (width 4)");
}

TEST_F(Cli, DivergenceStopsWithTheLastCheckpointIntact) {
  Result r = run(kTiny + "--epochs 3 --stop-after 1 --checkpoint d.ckpt");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string saved = slurp(path("d.ckpt"));
  r = run(kTiny + "--epochs 3 --resume d.ckpt --checkpoint d.ckpt --lr 1e6 --schedule constant");
  EXPECT_EQ(r.code, 1);
  EXPECT_HAS(r.err, "error: training diverged");
  EXPECT_HAS(r.err, "epoch 2/3");
  EXPECT_HAS(r.err, "learning rate 1e+06");
  EXPECT_HAS(r.err, "'d.ckpt' of epoch 1 is intact");
  EXPECT_EQ(slurp(path("d.ckpt")), saved);
  EXPECT_FALSE(fs::exists(path("d.ckpt.tmp")));
}

}  // namespace
