// Loader: batch counts, order, normalisation and augmentation, and that all of them are functions of
// (seed, epoch) only.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <set>
#include <vector>

#include "core/error.hpp"
#include "data/dataset.hpp"

using namespace trainer;

namespace {

// Example i's first two pixels encode i, so a batch says which examples it holds; the rest vary.
Dataset numbered(int64_t size, int64_t channels = 1, int64_t height = 5, int64_t width = 6) {
  Dataset ds;
  ds.name = "numbered";
  ds.channels = channels;
  ds.height = height;
  ds.width = width;
  ds.num_classes = 10;
  const int64_t image_size = channels * height * width;
  ds.images.resize(size * image_size);
  for (int64_t i = 0; i < size; ++i) {
    for (int64_t j = 0; j < image_size; ++j)
      ds.images[i * image_size + j] = static_cast<uint8_t>((i * 31 + j * 7) % 251);
    ds.images[i * image_size] = static_cast<uint8_t>(i % 256);
    ds.images[i * image_size + 1] = static_cast<uint8_t>(i / 256);
    ds.labels.push_back(static_cast<int32_t>(i % 10));
  }
  return ds;
}

const Normalization kIdentity{{0.0f}, {1.0f}};

// Example ids of a batch from an unaugmented identity-normalised loader.
std::vector<int64_t> ids_of(const Tensor& x) {
  const int64_t image_size = x.dim(1) * x.dim(2) * x.dim(3);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < x.dim(0); ++i) {
    const float* p = x.data() + i * image_size;
    ids.push_back(std::lround(p[0] * 255.0f) + 256 * std::lround(p[1] * 255.0f));
  }
  return ids;
}

std::vector<int64_t> epoch_ids(Loader& loader, int64_t epoch) {
  loader.start_epoch(epoch);
  std::vector<int64_t> all;
  Tensor x;
  std::vector<int32_t> labels;
  for (int64_t b = 0; b < loader.num_batches(); ++b) {
    loader.batch(b, x, labels);
    const std::vector<int64_t> ids = ids_of(x);
    for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(labels[i], ids[i] % 10);
    all.insert(all.end(), ids.begin(), ids.end());
  }
  return all;
}

std::vector<float> flat(const Tensor& x) { return std::vector<float>(x.data(), x.data() + x.numel()); }

}  // namespace

TEST(Loader, CountsBatchesAndRejectsOutOfRange) {
  const Dataset ds = numbered(10);
  Loader keep(ds, 4, kIdentity, false, {}, 1);
  Loader drop(ds, 4, kIdentity, false, {}, 1, true);
  EXPECT_EQ(keep.num_batches(), 3);
  EXPECT_EQ(drop.num_batches(), 2);
  Tensor x;
  std::vector<int32_t> labels;
  keep.batch(2, x, labels);
  EXPECT_EQ(x.shape(), (Shape{2, 1, 5, 6}));
  EXPECT_EQ(x.layout(), Layout::plain);
  EXPECT_EQ(labels.size(), 2u);
  EXPECT_EQ(ids_of(x), (std::vector<int64_t>{8, 9}));
  keep.batch(0, x, labels);
  EXPECT_EQ(x.shape(), (Shape{4, 1, 5, 6}));
  EXPECT_THROW(keep.batch(3, x, labels), Error);
  EXPECT_THROW(keep.batch(-1, x, labels), Error);
  EXPECT_THROW(drop.batch(2, x, labels), Error);
  EXPECT_EQ(Loader(numbered(8), 4, kIdentity, false, {}, 1, true).num_batches(), 2);
  EXPECT_THROW(Loader(ds, 0, kIdentity, false, {}, 1), Error);
  EXPECT_THROW(Loader(ds, 4, Normalization{{0.f, 0.f}, {1.f, 1.f}}, false, {}, 1), Error);
  EXPECT_THROW(Loader(ds, 4, Normalization{{0.f}, {0.f}}, false, {}, 1), Error);
}

TEST(Loader, ShuffleIsAFunctionOfSeedAndEpoch) {
  const Dataset ds = numbered(103);
  Loader a(ds, 16, kIdentity, true, {}, 99);
  Loader b(ds, 16, kIdentity, true, {}, 99);
  const std::vector<int64_t> a0 = epoch_ids(a, 0), a1 = epoch_ids(a, 1);
  // Every example exactly once per epoch.
  for (const auto& ids : {a0, a1}) {
    ASSERT_EQ(ids.size(), 103u);
    const std::set<int64_t> unique(ids.begin(), ids.end());
    EXPECT_EQ(unique.size(), 103u);
    EXPECT_EQ(*unique.begin(), 0);
    EXPECT_EQ(*unique.rbegin(), 102);
  }
  EXPECT_NE(a0, a1);
  // A loader jumping straight to epoch 1 (a resumed run) sees what the first saw.
  EXPECT_EQ(epoch_ids(b, 1), a1);
  EXPECT_EQ(epoch_ids(b, 0), a0);
  // Another seed, another order; no shuffle, the identity.
  Loader c(ds, 16, kIdentity, true, {}, 100);
  EXPECT_NE(epoch_ids(c, 0), a0);
  Loader d(ds, 16, kIdentity, false, {}, 99);
  std::vector<int64_t> identity(103);
  for (int64_t i = 0; i < 103; ++i) identity[i] = i;
  EXPECT_EQ(epoch_ids(d, 5), identity);
}

TEST(Loader, NormalisesPerChannel) {
  Dataset ds = numbered(3, 2, 2, 2);
  ds.images[3] = 255;
  ds.images[4] = 51;
  const Normalization norm{{0.5f, 0.25f}, {0.5f, 2.0f}};
  Loader loader(ds, 3, norm, false, {}, 0);
  Tensor x;
  std::vector<int32_t> labels;
  loader.batch(0, x, labels);
  ASSERT_EQ(x.shape(), (Shape{3, 2, 2, 2}));
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t c = 0; c < 2; ++c)
      for (int64_t j = 0; j < 4; ++j) {
        const float p = ds.images[(n * 2 + c) * 4 + j];
        ASSERT_NEAR(x.at(n, c, j / 2, j % 2), (p / 255.0f - norm.mean[c]) / norm.std[c], 1e-6f);
      }
  EXPECT_NEAR(x.at(0, 0, 1, 1), 1.0f, 1e-6f);     // (255/255 - 0.5) / 0.5
  EXPECT_NEAR(x.at(0, 1, 0, 0), -0.025f, 1e-6f);  // (51/255 - 0.25) / 2
}

TEST(Loader, AugmentationKeepsShapeAndIsDeterministic) {
  const Dataset ds = make_synthetic(64, 3, 8, 8, 4, 5);
  const Normalization norm = channel_stats(ds);
  const Augmentation aug{2, true};
  Loader a(ds, 24, norm, true, aug, 11), b(ds, 24, norm, true, aug, 11);
  Loader plain(ds, 24, norm, true, {}, 11);
  Tensor xa, xb, xp;
  std::vector<int32_t> la, lb, lp;
  for (int64_t epoch : {0, 3}) {
    a.start_epoch(epoch);
    b.start_epoch(epoch);
    plain.start_epoch(epoch);
    for (int64_t i = 0; i < a.num_batches(); ++i) {
      a.batch(i, xa, la);
      b.batch(i, xb, lb);
      plain.batch(i, xp, lp);
      EXPECT_EQ(xa.shape(), xp.shape());
      EXPECT_EQ(flat(xa), flat(xb));
      EXPECT_EQ(la, lb);
      // Augmentation changes pixels, not which examples are in the batch.
      EXPECT_EQ(la, lp);
      EXPECT_NE(flat(xa), flat(xp));
    }
  }
  // Another epoch draws other crops and flips for the same positions.
  a.start_epoch(0);
  a.batch(0, xa, la);
  a.start_epoch(1);
  a.batch(0, xb, lb);
  EXPECT_NE(flat(xa), flat(xb));
}

TEST(Loader, BatchesDoNotDependOnThreadCount) {
  const Dataset ds = make_synthetic(50, 3, 8, 8, 4, 5);
  Loader loader(ds, 50, channel_stats(ds), true, Augmentation{3, true}, 21);
  loader.start_epoch(2);
  Tensor x1, x2;
  std::vector<int32_t> l1, l2;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  loader.batch(0, x1, l1);
  omp_set_num_threads(2);
  loader.batch(0, x2, l2);
  omp_set_num_threads(threads);
  EXPECT_EQ(flat(x1), flat(x2));
  EXPECT_EQ(l1, l2);
}

// Each augmented image is the source shifted by at most crop_padding (padding reads as pixel 0) and
// possibly mirrored; over many examples both shifts and flips occur.
TEST(Loader, CropsPadWithZeroPixelsAndFlipsMirror) {
  const int64_t size = 40, h = 5, w = 6, pad = 2;
  const Dataset ds = numbered(size, 1, h, w);
  const Normalization norm{{0.2f}, {0.5f}};
  const float zero_pixel = (0.0f - 0.2f) / 0.5f;
  Loader loader(ds, size, norm, false, Augmentation{pad, true}, 3);
  Tensor x;
  std::vector<int32_t> labels;
  loader.batch(0, x, labels);
  int flipped = 0, shifted = 0;
  for (int64_t n = 0; n < size; ++n) {
    bool found = false;
    for (int flip = 0; flip < 2 && !found; ++flip)
      for (int64_t dy = -pad; dy <= pad && !found; ++dy)
        for (int64_t dx = -pad; dx <= pad && !found; ++dx) {
          bool match = true;
          for (int64_t y = 0; y < h && match; ++y)
            for (int64_t xx = 0; xx < w && match; ++xx) {
              const int64_t cx = flip ? w - 1 - xx : xx;
              const int64_t sy = y + dy, sx = cx + dx;
              const float expected = (sy < 0 || sy >= h || sx < 0 || sx >= w)
                                         ? zero_pixel
                                         : (ds.images[(n * h + sy) * w + sx] / 255.0f - 0.2f) / 0.5f;
              match = std::abs(x.at(n, 0, y, xx) - expected) < 1e-6f;
            }
          if (match) {
            found = true;
            flipped += flip;
            shifted += dy != 0 || dx != 0;
          }
        }
    EXPECT_TRUE(found) << "example " << n << " is not a shifted, possibly mirrored copy";
  }
  EXPECT_GT(flipped, 5);
  EXPECT_LT(flipped, size - 5);
  EXPECT_GT(shifted, size / 2);
}
