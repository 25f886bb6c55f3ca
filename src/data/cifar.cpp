// CIFAR-10, binary version: each file is a run of 3073-byte records, one label byte (0..9) followed by
// a 32x32 colour image stored channel by channel (R plane, G plane, B plane), i.e. already CHW.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "data/dataset.hpp"

namespace trainer {
namespace {

constexpr int64_t kChannels = 3, kSide = 32, kClasses = 10;
constexpr int64_t kImageBytes = kChannels * kSide * kSide;
constexpr int64_t kRecordBytes = 1 + kImageBytes;

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

// Appends the records of one batch file to ds.
void append_batch_file(const std::string& path, Dataset& ds) {
  std::error_code ec;
  TRAINER_CHECK(std::filesystem::is_regular_file(path, ec), "CIFAR-10 file '{}': no such file", path);
  const uintmax_t bytes = std::filesystem::file_size(path, ec);
  TRAINER_CHECK(!ec, "CIFAR-10 file '{}': cannot read its size ({})", path, ec.message());
  TRAINER_CHECK(bytes > 0 && bytes % kRecordBytes == 0,
                "CIFAR-10 file '{}': size {} bytes is not a positive multiple of the {}-byte record "
                "(1 label byte + 3x32x32 pixels)",
                path, bytes, kRecordBytes);
  const int64_t records = static_cast<int64_t>(bytes / kRecordBytes);

  std::vector<uint8_t> raw(bytes);
  std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  TRAINER_CHECK(f != nullptr, "CIFAR-10 file '{}': cannot open ({})", path, std::strerror(errno));
  const size_t got = std::fread(raw.data(), 1, raw.size(), f.get());
  TRAINER_CHECK(got == raw.size(), "CIFAR-10 file '{}': truncated: read {} of {} bytes", path, got,
                raw.size());

  const int64_t first = ds.size();
  ds.labels.resize(first + records);
  ds.images.resize((first + records) * kImageBytes);
  for (int64_t r = 0; r < records; ++r) {
    const uint8_t* rec = raw.data() + r * kRecordBytes;
    TRAINER_CHECK(rec[0] < kClasses, "CIFAR-10 file '{}': record {} has label {}, expected 0..{}", path, r,
                  rec[0], kClasses - 1);
    ds.labels[first + r] = rec[0];
    std::memcpy(ds.images.data() + (first + r) * kImageBytes, rec + 1, kImageBytes);
  }
}

}  // namespace

Dataset load_cifar10(const std::string& dir, bool train) {
  Dataset ds;
  ds.name = train ? "cifar10/train" : "cifar10/test";
  ds.channels = kChannels;
  ds.height = kSide;
  ds.width = kSide;
  ds.num_classes = kClasses;
  const std::filesystem::path root(dir);
  if (train) {
    for (int i = 1; i <= 5; ++i) append_batch_file((root / fmt::format("data_batch_{}.bin", i)).string(), ds);
  } else {
    append_batch_file((root / "test_batch.bin").string(), ds);
  }
  return ds;
}

}  // namespace trainer
