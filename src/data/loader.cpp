// Loader: epoch order, augmentation and normalisation of batches. Every random draw comes from a
// stream derived from (seed, epoch[, position in the epoch]), never from a stream shared across
// examples, so batches are the same on any thread count and after resuming at an epoch boundary.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/dataset.hpp"

namespace trainer {

Loader::Loader(const Dataset& ds, int64_t batch_size, Normalization norm, bool shuffle, Augmentation aug,
               uint64_t seed, bool drop_last)
    : ds_(ds),
      batch_size_(batch_size),
      norm_(std::move(norm)),
      shuffle_(shuffle),
      aug_(aug),
      seed_(seed),
      drop_last_(drop_last) {
  TRAINER_CHECK(batch_size > 0, "Loader({}): batch size must be positive, got {}", ds.name, batch_size);
  TRAINER_CHECK(aug.crop_padding >= 0, "Loader({}): crop padding must be >= 0, got {}", ds.name,
                aug.crop_padding);
  // No statistics given: leave pixels in [0, 1].
  if (norm_.mean.empty() && norm_.std.empty()) {
    norm_.mean.assign(ds.channels, 0.0f);
    norm_.std.assign(ds.channels, 1.0f);
  }
  TRAINER_CHECK(static_cast<int64_t>(norm_.mean.size()) == ds.channels &&
                    static_cast<int64_t>(norm_.std.size()) == ds.channels,
                "Loader({}): normalisation has {} means and {} stds, expected one per channel ({})", ds.name,
                norm_.mean.size(), norm_.std.size(), ds.channels);
  for (int64_t c = 0; c < ds.channels; ++c)
    TRAINER_CHECK(norm_.std[c] > 0.0f && std::isfinite(norm_.std[c]) && std::isfinite(norm_.mean[c]),
                  "Loader({}): channel {} has mean {} and std {}, expected a finite mean and a positive std",
                  ds.name, c, norm_.mean[c], norm_.std[c]);
  start_epoch(0);
}

void Loader::start_epoch(int64_t epoch) {
  TRAINER_CHECK(epoch >= 0, "Loader({}): epoch must be >= 0, got {}", ds_.name, epoch);
  epoch_ = epoch;
  order_.resize(ds_.size());
  std::iota(order_.begin(), order_.end(), int64_t{0});
  if (!shuffle_) return;
  Rng rng = Rng::derive(seed_, static_cast<uint64_t>(epoch));
  for (int64_t i = ds_.size() - 1; i > 0; --i)
    std::swap(order_[i], order_[rng.below(static_cast<uint64_t>(i + 1))]);
}

int64_t Loader::num_batches() const {
  const int64_t n = ds_.size();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

// x: [B, C, H, W] plain.
void Loader::batch(int64_t index, Tensor& x, std::vector<int32_t>& labels) const {
  TRAINER_CHECK(static_cast<int64_t>(order_.size()) == ds_.size(),
                "Loader({}): the data set changed size ({} -> {}) since start_epoch", ds_.name, order_.size(),
                ds_.size());
  TRAINER_CHECK(index >= 0 && index < num_batches(),
                "Loader({}): batch {} out of range, epoch has {} batches", ds_.name, index, num_batches());
  const int64_t first = index * batch_size_;
  const int64_t count = std::min(batch_size_, ds_.size() - first);
  const int64_t channels = ds_.channels, height = ds_.height, width = ds_.width;
  const int64_t plane = height * width, image_size = channels * plane;
  x.resize({count, channels, height, width}, Layout::plain);
  labels.resize(count);

  // (pixel / 255 - mean) / std for every pixel value, per channel, evaluated with that exact formula;
  // lut[c][0] is also the value of padding pixels (zero before normalisation).
  std::vector<std::array<float, 256>> lut(channels);
  for (int64_t c = 0; c < channels; ++c)
    for (int p = 0; p < 256; ++p) lut[c][p] = (static_cast<float>(p) / 255.0f - norm_.mean[c]) / norm_.std[c];

  const int64_t pad = aug_.crop_padding;
  const bool augment = pad > 0 || aug_.horizontal_flip;
  float* out = x.data();
  // Below a few tens of thousands of pixels waking the thread team costs more than the copy.
  const bool parallel = count * image_size >= (int64_t{1} << 15);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < count; ++i) {
    const int64_t position = first + i;
    const int64_t example = order_[position];
    labels[i] = ds_.labels[example];
    const uint8_t* src = ds_.images.data() + example * image_size;
    float* dst = out + i * image_size;
    if (!augment) {
      for (int64_t c = 0; c < channels; ++c) {
        const float* l = lut[c].data();
        for (int64_t j = 0; j < plane; ++j) dst[c * plane + j] = l[src[c * plane + j]];
      }
      continue;
    }
    // Stream b = position + 1: b = 0 is the stream the epoch's order was drawn from.
    Rng rng = Rng::derive(seed_, static_cast<uint64_t>(epoch_), static_cast<uint64_t>(position) + 1);
    // The crop's top-left corner in the padded image, in [0, 2 * pad]; an offset of pad is no shift.
    const int64_t dy = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * pad + 1))) - pad;
    const int64_t dx = static_cast<int64_t>(rng.below(static_cast<uint64_t>(2 * pad + 1))) - pad;
    const bool flip = aug_.horizontal_flip && rng.uniform() < 0.5;
    // Output column w reads source column w + dx (before the flip), valid for w in [w_lo, w_hi).
    const int64_t w_lo = std::clamp<int64_t>(-dx, 0, width), w_hi = std::clamp<int64_t>(width - dx, 0, width);
    for (int64_t c = 0; c < channels; ++c) {
      const float* l = lut[c].data();
      const float pad_value = l[0];
      for (int64_t h = 0; h < height; ++h) {
        float* row = dst + (c * height + h) * width;
        const int64_t sh = h + dy;
        if (sh < 0 || sh >= height) {
          std::fill(row, row + width, pad_value);
          continue;
        }
        const uint8_t* src_row = src + (c * height + sh) * width;
        if (!flip) {
          std::fill(row, row + w_lo, pad_value);
          for (int64_t w = w_lo; w < w_hi; ++w) row[w] = l[src_row[w + dx]];
          std::fill(row + w_hi, row + width, pad_value);
        } else {
          // Flipped: output column w shows cropped column width - 1 - w.
          for (int64_t w = 0; w < width; ++w) {
            const int64_t cw = width - 1 - w;
            row[w] = (cw >= w_lo && cw < w_hi) ? l[src_row[cw + dx]] : pad_value;
          }
        }
      }
    }
  }
}

}  // namespace trainer
