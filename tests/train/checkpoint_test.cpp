// Checkpoints: round trip of parameters, momentum and buffers; truncated, corrupt and foreign files;
// a model that does not match. Uses a tiny test layer so that it needs only core and graph.
#include "train/checkpoint.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.hpp"
#include "nn/graph.hpp"

namespace trainer {
namespace {

namespace fs = std::filesystem;

// y = x (a stand-in with a weight, a bias and a running statistic, as batch norm has).
class Probe : public Layer {
 public:
  Probe(std::string name, int64_t features) : Layer(std::move(name)) {
    weight_.name = this->name() + ".weight";
    weight_.value = Tensor({features, 2});
    weight_.grad = Tensor({features, 2});
    bias_.name = this->name() + ".bias";
    bias_.value = Tensor({features});
    bias_.grad = Tensor({features});
    bias_.weight_decay = false;
    running_ = Tensor({features});
  }
  const char* kind() const override { return "probe"; }
  Shape infer_shape(const std::vector<Shape>& in) const override { return in.at(0); }
  void init(Rng& rng) override {
    for (Tensor* t : {&weight_.value, &bias_.value, &running_})
      for (int64_t i = 0; i < t->numel(); ++i) t->data()[i] = static_cast<float>(rng.normal());
  }
  void ff(const std::vector<const Tensor*>& x, Tensor& y, bool) override { y = *x[0]; }
  void bp(const std::vector<const Tensor*>&, const Tensor&, const Tensor& dy,
          const std::vector<Tensor*>& dx) override {
    if (dx[0]) *dx[0] = dy;
  }
  std::vector<Param*> params() override { return {&weight_, &bias_}; }
  std::vector<Buffer> buffers() override { return {{name() + ".running_mean", &running_}}; }
  Param weight_, bias_;
  Tensor running_;
};

std::unique_ptr<Graph> make_graph(int64_t features, uint64_t seed, const std::string& second = "b") {
  auto g = std::make_unique<Graph>();
  g->add(std::make_unique<Probe>("a", features));
  g->add(std::make_unique<Probe>(second, 3));
  Rng rng(seed);
  g->init(rng);
  return g;
}

CheckpointInfo info_for(const std::string& model) {
  CheckpointInfo info;
  info.model = model;
  info.width = 4;
  info.input = {1, 8, 8};
  info.classes = 10;
  info.epoch = 3;
  info.global_step = 42;
  info.recipe = {{"lr", 0.1}, {"seed", 1}};
  return info;
}

bool equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.numel(); ++i)
    if (a.data()[i] != b.data()[i]) return false;
  return true;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class CheckpointFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("trainer_ckpt_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "run.ckpt").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Saves a model with two SGD steps of momentum history.
  void save(Graph& g) {
    Sgd sgd(g.params(), SgdOptions{0.9f, true, 1e-3f});
    for (int s = 0; s < 2; ++s) {
      for (Param* p : g.params()) p->grad.fill(0.25f * static_cast<float>(s + 1));
      sgd.step(0.1f);
    }
    write_checkpoint(path_, capture_checkpoint(g, &sgd, info_for("probe-net")));
    sgd_state_ = sgd.momentum_buffers();
  }
  std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
  std::string path_;
  std::vector<Tensor> sgd_state_;
};

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

TEST_F(CheckpointFile, RoundTripRestoresEverything) {
  auto a = make_graph(4, 1);
  save(*a);
  EXPECT_FALSE(fs::exists(path_ + ".tmp"));

  const Checkpoint ck = read_checkpoint(path_);
  EXPECT_EQ(ck.info.model, "probe-net");
  EXPECT_EQ(ck.info.width, 4);
  EXPECT_EQ(ck.info.input, Shape({1, 8, 8}));
  EXPECT_EQ(ck.info.classes, 10);
  EXPECT_EQ(ck.info.epoch, 3);
  EXPECT_EQ(ck.info.global_step, 42);
  EXPECT_EQ(ck.info.recipe.at("lr"), 0.1);
  EXPECT_EQ(ck.sgd_steps, 2);

  auto b = make_graph(4, 99);  // different initial values
  Sgd sgd(b->params(), SgdOptions{0.9f, true, 1e-3f});
  restore_checkpoint(ck, path_, *b, &sgd);
  const auto pa = a->params(), pb = b->params();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(equal(pa[i]->value, pb[i]->value)) << pa[i]->name;
  const auto ba = a->buffers(), bb = b->buffers();
  for (size_t i = 0; i < ba.size(); ++i) EXPECT_TRUE(equal(*ba[i].tensor, *bb[i].tensor)) << ba[i].name;
  for (size_t i = 0; i < sgd_state_.size(); ++i) EXPECT_TRUE(equal(sgd_state_[i], sgd.momentum_buffers()[i]));
  EXPECT_EQ(sgd.steps(), 2);

  // Saving the restored state again gives the same bytes.
  const std::string first = read_bytes(path_);
  write_checkpoint(path_, capture_checkpoint(*b, &sgd, info_for("probe-net")));
  EXPECT_EQ(read_bytes(path_), first);
}

TEST_F(CheckpointFile, TruncatedFileIsNamed) {
  auto g = make_graph(4, 1);
  save(*g);
  const std::string bytes = read_bytes(path_);
  for (size_t keep : {size_t{0}, size_t{5}, size_t{20}, bytes.size() / 2, bytes.size() - 1}) {
    std::ofstream(path_, std::ios::binary | std::ios::trunc)
        .write(bytes.data(), static_cast<std::streamsize>(keep));
    const std::string e = error_of([&] { read_checkpoint(path_); });
    EXPECT_HAS(e, path_);
    EXPECT_TRUE(e.find("truncated") != std::string::npos ||
                e.find("not a trainer checkpoint") != std::string::npos)
        << "kept " << keep << ": " << e;
  }
}

TEST_F(CheckpointFile, CorruptFileFailsTheChecksum) {
  auto g = make_graph(4, 1);
  save(*g);
  std::string bytes = read_bytes(path_);
  bytes[bytes.size() - 3] ^= 0x40;
  std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
  const std::string e = error_of([&] { read_checkpoint(path_); });
  EXPECT_HAS(e, path_);
  EXPECT_HAS(e, "checksum");
}

TEST_F(CheckpointFile, ForeignAndMissingFilesAreNamed) {
  std::ofstream(path_) << "model: lenet5\nepochs: 3\nthis is a recipe, not a checkpoint\n";
  std::string e = error_of([&] { read_checkpoint(path_); });
  EXPECT_HAS(e, path_);
  EXPECT_HAS(e, "not a trainer checkpoint");
  e = error_of([&] { read_checkpoint((dir_ / "nope.ckpt").string()); });
  EXPECT_HAS(e, "nope.ckpt");
  EXPECT_HAS(e, "cannot open");
}

TEST_F(CheckpointFile, WrongModelNamesTheTensor) {
  auto g = make_graph(4, 1);
  save(*g);
  const Checkpoint ck = read_checkpoint(path_);

  auto wider = make_graph(5, 1);  // a.weight is [5, 2] here, [4, 2] in the file
  const std::vector<float> before(wider->params()[0]->value.data(), wider->params()[0]->value.data() + 10);
  std::string e = error_of([&] { restore_checkpoint(ck, path_, *wider, nullptr); });
  EXPECT_HAS(e, path_);
  EXPECT_HAS(e, "'a.weight'");
  EXPECT_HAS(e, "[4, 2]");
  EXPECT_HAS(e, "[5, 2]");
  EXPECT_HAS(e, "probe-net");
  // A refused checkpoint leaves the model untouched.
  for (int i = 0; i < 10; ++i) EXPECT_EQ(wider->params()[0]->value.data()[i], before[i]);

  auto renamed = make_graph(4, 1, "c");  // the file has b.*, this model c.*
  e = error_of([&] { restore_checkpoint(ck, path_, *renamed, nullptr); });
  EXPECT_HAS(e, "'c.weight'");
}

TEST_F(CheckpointFile, WriteFailureNamesTheFileAndLeavesNoTmp) {
  auto g = make_graph(4, 1);
  const std::string bad = (dir_ / "is_a_dir").string();
  fs::create_directories(fs::path(bad) / "sub");
  const std::string e =
      error_of([&] { write_checkpoint(bad, capture_checkpoint(*g, nullptr, info_for("x"))); });
  EXPECT_HAS(e, bad);
  EXPECT_FALSE(fs::exists(bad + ".tmp"));
}

}  // namespace
}  // namespace trainer
