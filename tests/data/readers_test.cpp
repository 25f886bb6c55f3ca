// IDX and CIFAR-10 readers: round trips through files written here, every bad-file error, and the real
// Fashion-MNIST when the machine has it.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "data/dataset.hpp"

using namespace trainer;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the test temp dir, removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    const fs::path base = testing::TempDir();
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    for (int attempt = 0;; ++attempt) {
      path_ = base / fmt::format("trainer_data_{}_{}_{}_{}", info ? info->name() : "x", getpid(),
                                 std::chrono::steady_clock::now().time_since_epoch().count(), attempt);
      if (fs::create_directories(path_)) break;
    }
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

void put_u32_be(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}

std::vector<uint8_t> idx_images_bytes(uint32_t count, uint32_t rows, uint32_t cols,
                                      const std::vector<uint8_t>& px, uint32_t magic = 0x803) {
  std::vector<uint8_t> b;
  put_u32_be(b, magic);
  put_u32_be(b, count);
  put_u32_be(b, rows);
  put_u32_be(b, cols);
  b.insert(b.end(), px.begin(), px.end());
  return b;
}

std::vector<uint8_t> idx_labels_bytes(const std::vector<uint8_t>& labels, uint32_t magic = 0x801) {
  std::vector<uint8_t> b;
  put_u32_be(b, magic);
  put_u32_be(b, static_cast<uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes, bool gzip) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr) << path;
    if (!bytes.empty()) {
      ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), int(bytes.size()));
    }
    ASSERT_EQ(gzclose(f), Z_OK);
  } else {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(f.good()) << path;
  }
}

// Runs fn, which must throw trainer::Error whose message names `path` and contains `reason`.
template <typename Fn>
void expect_error(Fn fn, const std::string& path, const std::string& reason) {
  try {
    fn();
    ADD_FAILURE() << "expected an Error naming " << path << " (" << reason << ")";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(reason), std::string::npos) << msg;
  }
}

struct Tiny {
  uint32_t count = 5, rows = 3, cols = 4;
  std::vector<uint8_t> pixels, labels;
  Tiny() {
    for (uint32_t i = 0; i < count * rows * cols; ++i)
      pixels.push_back(static_cast<uint8_t>((i * 37 + 11) % 256));
    labels = {3, 0, 9, 1, 7};
  }
};

}  // namespace

TEST(Idx, RoundTripsGzippedAndPlainFiles) {
  ScratchDir dir;
  const Tiny t;
  for (bool gzip : {true, false}) {
    const std::string img = dir.file(gzip ? "img.gz" : "img"), lab = dir.file(gzip ? "lab.gz" : "lab");
    write_file(img, idx_images_bytes(t.count, t.rows, t.cols, t.pixels), gzip);
    write_file(lab, idx_labels_bytes(t.labels), gzip);
    const Dataset ds = load_idx(img, lab, 10);
    EXPECT_EQ(ds.size(), 5);
    EXPECT_EQ(ds.channels, 1);
    EXPECT_EQ(ds.height, 3);
    EXPECT_EQ(ds.width, 4);
    EXPECT_EQ(ds.num_classes, 10);
    EXPECT_EQ(ds.image_shape(), (Shape{1, 3, 4}));
    EXPECT_EQ(ds.images, t.pixels);
    ASSERT_EQ(ds.labels.size(), t.labels.size());
    for (size_t i = 0; i < t.labels.size(); ++i) EXPECT_EQ(ds.labels[i], t.labels[i]);
  }
}

TEST(Idx, BadFilesNameTheFileAndTheReason) {
  ScratchDir dir;
  const Tiny t;
  const std::string good_img = dir.file("good-img.gz"), good_lab = dir.file("good-lab.gz");
  write_file(good_img, idx_images_bytes(t.count, t.rows, t.cols, t.pixels), true);
  write_file(good_lab, idx_labels_bytes(t.labels), true);

  const std::string missing = dir.file("missing-img.gz");
  expect_error([&] { load_idx(missing, good_lab); }, missing, "no such file");
  expect_error([&] { load_idx(good_img, missing); }, missing, "no such file");

  for (bool gzip : {true, false}) {
    const std::string sfx = gzip ? ".gz" : "";
    // The pixels stop 7 bytes short of what the header promises.
    std::vector<uint8_t> short_px(t.pixels.begin(), t.pixels.end() - 7);
    const std::string truncated = dir.file("truncated-img" + sfx);
    write_file(truncated, idx_images_bytes(t.count, t.rows, t.cols, short_px), gzip);
    expect_error([&] { load_idx(truncated, good_lab); }, truncated, "truncated");

    // The file ends inside the header.
    const std::string stub = dir.file("stub-img" + sfx);
    write_file(stub, {0, 0, 8, 3, 0, 0}, gzip);
    expect_error([&] { load_idx(stub, good_lab); }, stub, "truncated");

    const std::string short_lab = dir.file("truncated-lab" + sfx);
    std::vector<uint8_t> lab_bytes = idx_labels_bytes(t.labels);
    lab_bytes.pop_back();
    write_file(short_lab, lab_bytes, gzip);
    expect_error([&] { load_idx(good_img, short_lab); }, short_lab, "truncated");

    // A labels file given as the images file, and an images file given as the labels file.
    expect_error([&] { load_idx(good_lab, good_lab); }, good_lab, "wrong magic");
    expect_error([&] { load_idx(good_img, good_img); }, good_img, "wrong magic");
    const std::string bad_magic = dir.file("bad-magic-img" + sfx);
    write_file(bad_magic, idx_images_bytes(t.count, t.rows, t.cols, t.pixels, 0x0d03), gzip);
    expect_error([&] { load_idx(bad_magic, good_lab); }, bad_magic, "wrong magic");

    const std::string few_labels = dir.file("few-lab" + sfx);
    write_file(few_labels, idx_labels_bytes({1, 2, 3}), gzip);
    expect_error([&] { load_idx(good_img, few_labels); }, few_labels, "holds 3 labels");

    const std::string big_label = dir.file("big-lab" + sfx);
    write_file(big_label, idx_labels_bytes({1, 2, 10, 3, 4}), gzip);
    expect_error([&] { load_idx(good_img, big_label, 10); }, big_label, "out of range");
    // The same labels are fine with more classes.
    EXPECT_EQ(load_idx(good_img, big_label, 11).labels[2], 10);
  }
  // A gzip stream cut short is truncated too, even though zlib sees the damage rather than a short file.
  std::ifstream in(good_img, std::ios::binary);
  std::vector<char> gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  gz.resize(gz.size() / 2);
  const std::string cut = dir.file("cut-img.gz");
  write_file(cut, std::vector<uint8_t>(gz.begin(), gz.end()), false);
  expect_error([&] { load_idx(cut, good_lab); }, cut, "truncated");
}

TEST(Idx, FashionMnistNamesAndAcceptsPlainFiles) {
  ScratchDir dir;
  const Tiny t;
  // Test split gzip'd, train split unpacked.
  write_file(dir.file("t10k-images-idx3-ubyte.gz"), idx_images_bytes(t.count, t.rows, t.cols, t.pixels),
             true);
  write_file(dir.file("t10k-labels-idx1-ubyte.gz"), idx_labels_bytes(t.labels), true);
  write_file(dir.file("train-images-idx3-ubyte"), idx_images_bytes(t.count, t.rows, t.cols, t.pixels), false);
  write_file(dir.file("train-labels-idx1-ubyte"), idx_labels_bytes(t.labels), false);
  const Dataset test = load_fashion_mnist(dir.file(""), false);
  const Dataset train = load_fashion_mnist(dir.file(""), true);
  EXPECT_EQ(test.name, "fashion-mnist/test");
  EXPECT_EQ(train.name, "fashion-mnist/train");
  EXPECT_EQ(test.images, train.images);
  EXPECT_EQ(test.labels, train.labels);

  fs::remove(dir.file("train-labels-idx1-ubyte"));
  expect_error([&] { load_fashion_mnist(dir.file(""), true); }, "train-labels-idx1-ubyte.gz", "no such file");
}

namespace {

// records: (label, 3072 pixels) packed into CIFAR-10's binary records.
std::vector<uint8_t> cifar_bytes(const std::vector<uint8_t>& labels, uint8_t pixel_salt) {
  std::vector<uint8_t> b;
  for (size_t r = 0; r < labels.size(); ++r) {
    b.push_back(labels[r]);
    for (int j = 0; j < 3072; ++j) b.push_back(static_cast<uint8_t>((j * 7 + r * 13 + pixel_salt) % 256));
  }
  return b;
}

}  // namespace

TEST(Cifar10, ReadsTrainAndTestBatches) {
  ScratchDir dir;
  for (int i = 1; i <= 5; ++i)
    write_file(dir.file(fmt::format("data_batch_{}.bin", i)),
               cifar_bytes({uint8_t(i), uint8_t(9 - i)}, uint8_t(i)), false);
  write_file(dir.file("test_batch.bin"), cifar_bytes({0, 9, 4}, 100), false);

  const Dataset train = load_cifar10(dir.file(""), true);
  EXPECT_EQ(train.name, "cifar10/train");
  EXPECT_EQ(train.size(), 10);
  EXPECT_EQ(train.image_shape(), (Shape{3, 32, 32}));
  EXPECT_EQ(train.num_classes, 10);
  EXPECT_EQ(train.labels, (std::vector<int32_t>{1, 8, 2, 7, 3, 6, 4, 5, 5, 4}));
  // Example 3 is record 1 of data_batch_2; its pixels are stored CHW, exactly as in the file.
  for (int j : {0, 1023, 1024, 3071})
    EXPECT_EQ(train.images[3 * 3072 + j], static_cast<uint8_t>((j * 7 + 1 * 13 + 2) % 256)) << j;

  const Dataset test = load_cifar10(dir.file(""), false);
  EXPECT_EQ(test.name, "cifar10/test");
  EXPECT_EQ(test.labels, (std::vector<int32_t>{0, 9, 4}));
  EXPECT_EQ(test.images[2 * 3072 + 5], static_cast<uint8_t>((5 * 7 + 2 * 13 + 100) % 256));
}

TEST(Cifar10, BadFilesNameTheFileAndTheReason) {
  ScratchDir dir;
  const std::string test = dir.file("test_batch.bin");
  expect_error([&] { load_cifar10(dir.file(""), false); }, test, "no such file");

  std::vector<uint8_t> bytes = cifar_bytes({1, 2}, 0);
  bytes.pop_back();
  write_file(test, bytes, false);
  expect_error([&] { load_cifar10(dir.file(""), false); }, test,
               "not a positive multiple of the 3073-byte record");

  write_file(test, cifar_bytes({1, 10}, 0), false);
  expect_error([&] { load_cifar10(dir.file(""), false); }, test, "record 1 has label 10");

  // Train needs all five batches: the first missing one is named.
  for (int i : {1, 2, 4, 5})
    write_file(dir.file(fmt::format("data_batch_{}.bin", i)), cifar_bytes({0}, 0), false);
  expect_error([&] { load_cifar10(dir.file(""), true); }, dir.file("data_batch_3.bin"), "no such file");
}

TEST(FashionMnist, RealFilesHaveTheKnownShapeAndMean) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " is not on this machine";
  const auto t0 = std::chrono::steady_clock::now();
  const Dataset train = load_fashion_mnist(dir, true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const Dataset test = load_fashion_mnist(dir, false);
  std::printf("fashion-mnist/train loaded in %.3f s\n", seconds);

  EXPECT_EQ(train.size(), 60000);
  EXPECT_EQ(test.size(), 10000);
  for (const Dataset* ds : {&train, &test}) {
    EXPECT_EQ(ds->image_shape(), (Shape{1, 28, 28}));
    EXPECT_EQ(ds->images.size(), static_cast<size_t>(ds->size()) * 28 * 28);
    std::vector<int64_t> per_class(10, 0);
    for (int32_t l : ds->labels) {
      ASSERT_GE(l, 0);
      ASSERT_LE(l, 9);
      ++per_class[l];
    }
    // Both splits are balanced.
    for (int64_t c : per_class) EXPECT_EQ(c, ds->size() / 10);
  }
  const Normalization stats = channel_stats(train);
  EXPECT_NEAR(stats.mean[0], 0.2860, 0.001);
  EXPECT_NEAR(stats.std[0], 0.3530, 0.001);
}
