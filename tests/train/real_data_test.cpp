// One short run on real data: LeNet-5 on the first 6,000 Fashion-MNIST training images for one epoch
// must reach at least 80% test accuracy (on the full 10,000-image test set).
//
// Recipe: He (kaiming) initialisation, SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 16,
// lr 0.01 with cosine decay, no augmentation, one thread. With PyTorch's default initialisation the
// same model and data plateau near 78-79% after one epoch, in PyTorch as in this engine (see
// docs/benchmarks.md), so the recipe uses He initialisation. Accuracy after so few steps varies with
// the seed by about a point, so the test asserts the mean over three seeds.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "train/trainer.hpp"

using namespace trainer;

TEST(RealData, LeNet5On6000FashionMnistImagesReaches80PercentInOneEpoch) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(dir + "/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST at " << dir;
  double sum = 0.0;
  for (uint64_t seed : {1, 2, 3}) {
    RunConfig cfg;
    cfg.model = "lenet5";
    cfg.data = "fashion-mnist";
    cfg.data_dir = dir;
    cfg.subset = 6000;
    cfg.epochs = 1;
    cfg.batch_size = 16;
    cfg.lr = 0.01;
    cfg.momentum = 0.9;
    cfg.nesterov = true;
    cfg.weight_decay = 5e-4;
    cfg.schedule = "cosine";
    cfg.init = "kaiming";
    cfg.threads = 1;
    cfg.seed = seed;
    cfg.progress = "off";
    cfg.ops_summary = false;
    std::FILE* sink = std::tmpfile();
    const RunResult r = train(cfg, sink);
    std::fclose(sink);
    EXPECT_EQ(r.images, 6000);
    EXPECT_GT(r.test_acc, 0.75) << "seed " << seed;
    sum += r.test_acc;
  }
  EXPECT_GE(sum / 3, 0.80);
}
