// Datasets held in memory as raw 8-bit pixels, and the Loader that turns them into normalised,
// optionally augmented batches, in a seeded order (same seed, same batches, on any thread count).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

struct Dataset {
  std::string name;          // "fashion-mnist/train", "cifar10/test", "synthetic", ...
  int64_t channels = 0, height = 0, width = 0;
  int64_t num_classes = 0;
  std::vector<uint8_t> images;  // [size, channels, height, width], row-major
  std::vector<int32_t> labels;  // [size], each in [0, num_classes)
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  Shape image_shape() const { return {channels, height, width}; }
};

// IDX files (optionally gzip'd): images (magic 2051, [n, rows, cols] u8) and labels (magic 2049,
// [n] u8). Throws trainer::Error naming the file on a missing or truncated file, a wrong magic number,
// or labels that disagree with images in count.
Dataset load_idx(const std::string& images_path, const std::string& labels_path, int64_t num_classes = 10);
// dir holds {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
Dataset load_fashion_mnist(const std::string& dir, bool train);
// CIFAR-10 binary version: dir holds data_batch_{1..5}.bin and test_batch.bin (3073-byte records).
Dataset load_cifar10(const std::string& dir, bool train);
// A learnable synthetic set for tests: each class has its own random template, images are the
// template plus noise. Deterministic in seed.
Dataset make_synthetic(int64_t size, int64_t channels, int64_t height, int64_t width, int64_t num_classes,
                       uint64_t seed);
// The first n examples (n >= size: the whole set).
Dataset take_first(const Dataset& ds, int64_t n);

// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
struct Normalization {
  std::vector<float> mean, std;
};
Normalization channel_stats(const Dataset& ds);

struct Augmentation {
  int64_t crop_padding = 0;  // random crop of the image zero-padded by this many pixels per side
  bool horizontal_flip = false;
};

class Loader {
 public:
  Loader(const Dataset& ds, int64_t batch_size, Normalization norm, bool shuffle, Augmentation aug,
         uint64_t seed, bool drop_last = false);
  // Fixes the order (and augmentation draws) of an epoch: a function of (seed, epoch) only, so a run
  // resumed at an epoch boundary sees exactly the batches an uninterrupted run would.
  void start_epoch(int64_t epoch);
  int64_t num_batches() const;
  int64_t batch_size() const { return batch_size_; }
  // x: resized to [B, C, H, W] plain, pixels scaled to [0, 1] then normalised; labels: B entries.
  // B = batch_size except possibly for the last batch (unless drop_last).
  void batch(int64_t index, Tensor& x, std::vector<int32_t>& labels) const;
  const Dataset& dataset() const { return ds_; }

 private:
  const Dataset& ds_;
  int64_t batch_size_;
  Normalization norm_;
  bool shuffle_;
  Augmentation aug_;
  uint64_t seed_;
  bool drop_last_;
  int64_t epoch_ = 0;
  std::vector<int64_t> order_;
};

}  // namespace trainer
