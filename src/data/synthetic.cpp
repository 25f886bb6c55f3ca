// The synthetic data set, subsets, and per-channel statistics.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/dataset.hpp"

namespace trainer {
namespace {

// Stream ids under the seed, so templates, labels and each example's noise are independent draws.
constexpr uint64_t kTemplateStream = 0, kLabelStream = 1, kNoiseStream = 2;
// Coarse grid of the template pattern; upsampled so each class has large smooth blobs that survive
// pooling (per-pixel white-noise templates average out under global pooling and a CNN can't tell them apart).
constexpr int64_t kGrid = 4;
constexpr double kPatternAmplitude = 70.0, kNoiseStd = 28.0;

// templ: [C, H, W] in pixel units (unclipped).
std::vector<double> class_template(Rng& rng, int64_t channels, int64_t height, int64_t width) {
  std::vector<double> templ(channels * height * width);
  std::vector<double> grid(kGrid * kGrid);
  for (int64_t c = 0; c < channels; ++c) {
    const double base = 64.0 + 128.0 * rng.uniform();
    for (double& g : grid) g = kPatternAmplitude * (2.0 * rng.uniform() - 1.0);
    for (int64_t h = 0; h < height; ++h) {
      // Bilinear position of this pixel on the grid (grid points span the image corner to corner).
      const double gy =
          height > 1 ? static_cast<double>(h) * (kGrid - 1) / static_cast<double>(height - 1) : 0.0;
      const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(gy), kGrid - 2);
      const double fy = gy - static_cast<double>(y0);
      for (int64_t w = 0; w < width; ++w) {
        const double gx =
            width > 1 ? static_cast<double>(w) * (kGrid - 1) / static_cast<double>(width - 1) : 0.0;
        const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(gx), kGrid - 2);
        const double fx = gx - static_cast<double>(x0);
        const double top = grid[y0 * kGrid + x0] * (1 - fx) + grid[y0 * kGrid + x0 + 1] * fx;
        const double bottom = grid[(y0 + 1) * kGrid + x0] * (1 - fx) + grid[(y0 + 1) * kGrid + x0 + 1] * fx;
        templ[(c * height + h) * width + w] = base + top * (1 - fy) + bottom * fy;
      }
    }
  }
  return templ;
}

// Standard normal quantiles at (k + 0.5) / 256: noise is drawn one random byte per pixel from this
// table, eight pixels per Rng draw, about 50x cheaper than Box-Muller and plenty normal for noise.
std::array<double, 256> normal_quantiles() {
  std::array<double, 256> q{};
  for (int k = 0; k < 256; ++k) {
    const double p = (k + 0.5) / 256.0;
    double lo = -10.0, hi = 10.0;
    // Phi(z) = erfc(-z / sqrt 2) / 2 is increasing; bisect to double precision.
    for (int it = 0; it < 100; ++it) {
      const double mid = 0.5 * (lo + hi);
      (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
    }
    q[k] = 0.5 * (lo + hi);
  }
  return q;
}

}  // namespace

Dataset make_synthetic(int64_t size, int64_t channels, int64_t height, int64_t width, int64_t num_classes,
                       uint64_t seed) {
  TRAINER_CHECK(
      size >= 0 && channels > 0 && height > 0 && width > 0 && num_classes > 0,
      "make_synthetic: expected size >= 0 and positive channels, height, width, classes; got size {}, "
      "shape {}x{}x{}, {} classes",
      size, channels, height, width, num_classes);
  Dataset ds;
  ds.name = "synthetic";
  ds.channels = channels;
  ds.height = height;
  ds.width = width;
  ds.num_classes = num_classes;

  Rng template_rng = Rng::derive(seed, kTemplateStream);
  std::vector<std::vector<double>> templates;
  templates.reserve(num_classes);
  for (int64_t k = 0; k < num_classes; ++k)
    templates.push_back(class_template(template_rng, channels, height, width));

  // Balanced classes in a shuffled order, so any prefix (take_first) holds every class about equally.
  ds.labels.resize(size);
  for (int64_t i = 0; i < size; ++i) ds.labels[i] = static_cast<int32_t>(i % num_classes);
  Rng label_rng = Rng::derive(seed, kLabelStream);
  for (int64_t i = size - 1; i > 0; --i) std::swap(ds.labels[i], ds.labels[label_rng.below(i + 1)]);

  const int64_t image_size = channels * height * width;
  ds.images.resize(size * image_size);
  std::array<double, 256> noise_table = normal_quantiles();
  for (double& v : noise_table) v *= kNoiseStd;
    // Each example draws its noise from its own stream, so the result does not depend on thread count.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < size; ++i) {
    Rng noise = Rng::derive(seed, kNoiseStream, static_cast<uint64_t>(i));
    const std::vector<double>& templ = templates[ds.labels[i]];
    uint8_t* img = ds.images.data() + i * image_size;
    uint64_t bits = 0;
    for (int64_t j = 0; j < image_size; ++j) {
      if (j % 8 == 0) bits = noise.next();
      // Clamped first, so adding 0.5 and truncating rounds to nearest.
      const double v = std::clamp(templ[j] + noise_table[bits & 0xff], 0.0, 255.0);
      bits >>= 8;
      img[j] = static_cast<uint8_t>(v + 0.5);
    }
  }
  return ds;
}

Dataset take_first(const Dataset& ds, int64_t n) {
  TRAINER_CHECK(n >= 0, "take_first({}): expected a count >= 0, got {}", ds.name, n);
  const int64_t keep = std::min(n, ds.size());
  const int64_t image_size = ds.channels * ds.height * ds.width;
  Dataset out;
  out.name = ds.name;
  out.channels = ds.channels;
  out.height = ds.height;
  out.width = ds.width;
  out.num_classes = ds.num_classes;
  out.images.assign(ds.images.begin(), ds.images.begin() + keep * image_size);
  out.labels.assign(ds.labels.begin(), ds.labels.begin() + keep);
  return out;
}

Normalization channel_stats(const Dataset& ds) {
  TRAINER_CHECK(ds.size() > 0 && ds.channels > 0, "channel_stats({}): the data set is empty", ds.name);
  const int64_t n = ds.size(), channels = ds.channels, plane = ds.height * ds.width;
  Normalization norm;
  norm.mean.resize(channels);
  norm.std.resize(channels);
  for (int64_t c = 0; c < channels; ++c) {
    // Integer sums are exact, so the result is the same on any thread count and needs no compensated
    // summation (60000 * 784 * 255^2 is far below 2^64).
    uint64_t sum = 0, sum_sq = 0;
#pragma omp parallel for schedule(static) reduction(+ : sum, sum_sq)
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* p = ds.images.data() + (i * channels + c) * plane;
      uint64_t s = 0, s2 = 0;
      for (int64_t j = 0; j < plane; ++j) {
        const uint64_t v = p[j];
        s += v;
        s2 += v * v;
      }
      sum += s;
      sum_sq += s2;
    }
    const double count = static_cast<double>(n) * static_cast<double>(plane);
    const double mean = static_cast<double>(sum) / count / 255.0;
    const double var = std::max(0.0, static_cast<double>(sum_sq) / count / (255.0 * 255.0) - mean * mean);
    norm.mean[c] = static_cast<float>(mean);
    // A constant channel would divide by zero when normalising; leave it unscaled instead.
    norm.std[c] = var > 0.0 ? static_cast<float>(std::sqrt(var)) : 1.0f;
  }
  return norm;
}

}  // namespace trainer
