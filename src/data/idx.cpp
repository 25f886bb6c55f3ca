// IDX readers (the MNIST / Fashion-MNIST format). zlib's gz* functions read gzip'd and plain files
// alike (a file without the gzip magic is passed through), so one path serves both.
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "data/dataset.hpp"

namespace trainer {
namespace {

constexpr uint32_t kImagesMagic = 0x00000803;  // u8 elements (0x08), 3 dims
constexpr uint32_t kLabelsMagic = 0x00000801;  // u8 elements (0x08), 1 dim
// A corrupt header can promise any size; refuse sizes no real image set has before allocating.
constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 36;

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

class IdxReader {
 public:
  IdxReader(const std::string& path, const char* kind) : path_(path), kind_(kind) {
    std::error_code ec;
    TRAINER_CHECK(std::filesystem::is_regular_file(path, ec), "{} file '{}': no such file", kind_, path_);
    file_.reset(gzopen(path.c_str(), "rb"));
    TRAINER_CHECK(file_ != nullptr, "{} file '{}': cannot open", kind_, path_);
    // The default 8 KiB buffer makes inflate run in small steps; 1 MiB roughly halves the read time.
    gzbuffer(file_.get(), 1 << 20);
  }

  // Reads exactly n bytes into dst. For the error message: `what` is what the header promised, which
  // is `total` bytes of which `before` were already read.
  void read_exact(uint8_t* dst, uint64_t n, const std::string& what, uint64_t before = 0,
                  uint64_t total = 0) {
    if (total == 0) total = n;
    uint64_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(n - done, uint64_t{1} << 30));
      const int got = gzread(file_.get(), dst + done, chunk);
      if (got < 0) {
        int errnum = 0;
        const char* msg = gzerror(file_.get(), &errnum);
        fail("{} file '{}': read error ({}) while reading {}", kind_, path_, msg ? msg : "?", what);
      }
      done += static_cast<uint64_t>(got);
      if (static_cast<unsigned>(got) < chunk) break;
    }
    if (done < n) {
      int errnum = 0;
      const char* msg = gzerror(file_.get(), &errnum);
      const bool gz_damaged = errnum != Z_OK && msg != nullptr && *msg != '\0';
      fail("{} file '{}': truncated: expected {} ({} bytes) but only {} bytes follow{}", kind_, path_, what,
           total, before + done, gz_damaged ? fmt::format(" (zlib: {})", msg) : std::string());
    }
  }

  // Reads the n-byte payload into out. It grows in steps so that a corrupt header promising far more
  // than the file holds fails as truncated instead of allocating the promised size up front.
  void read_payload(std::vector<uint8_t>& out, uint64_t n, const std::string& what) {
    constexpr uint64_t kStep = uint64_t{256} << 20;
    out.clear();
    out.reserve(std::min(n, kStep));
    uint64_t done = 0;
    while (done < n) {
      const uint64_t chunk = std::min(n - done, kStep);
      out.resize(done + chunk);
      read_exact(out.data() + done, chunk, what, done, n);
      done += chunk;
    }
  }

  uint32_t read_u32_be(const char* field) {
    std::array<uint8_t, 4> b{};
    read_exact(b.data(), 4, fmt::format("the header's {}", field));
    return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | uint32_t{b[3]};
  }

  void expect_magic(uint32_t expected, const char* meaning) {
    const uint32_t magic = read_u32_be("magic number");
    TRAINER_CHECK(magic == expected,
                  "{} file '{}': wrong magic number 0x{:08x} ({}), expected 0x{:08x} ({}) for {}", kind_,
                  path_, magic, magic, expected, expected, meaning);
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const char* kind_;
  GzFile file_;
};

struct IdxImages {
  int64_t count = 0, rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // [count, rows, cols]
};

IdxImages read_images(const std::string& path) {
  IdxReader in(path, "IDX images");
  in.expect_magic(kImagesMagic, "u8 images with 3 dims");
  IdxImages out;
  out.count = in.read_u32_be("image count");
  out.rows = in.read_u32_be("row count");
  out.cols = in.read_u32_be("column count");
  TRAINER_CHECK(out.rows > 0 && out.cols > 0, "IDX images file '{}': image size {}x{} is empty", path,
                out.rows, out.cols);
  // Each dim is below 2^32, so the per-image product fits; the total is checked before multiplying.
  const uint64_t image_bytes = static_cast<uint64_t>(out.rows) * static_cast<uint64_t>(out.cols);
  TRAINER_CHECK(static_cast<uint64_t>(out.count) <= kMaxPayloadBytes / image_bytes,
                "IDX images file '{}': header promises {} images of {}x{}, too large", path, out.count,
                out.rows, out.cols);
  const uint64_t bytes = static_cast<uint64_t>(out.count) * image_bytes;
  in.read_payload(out.pixels, bytes, fmt::format("{} images of {}x{}", out.count, out.rows, out.cols));
  return out;
}

std::vector<uint8_t> read_labels(const std::string& path) {
  IdxReader in(path, "IDX labels");
  in.expect_magic(kLabelsMagic, "u8 labels with 1 dim");
  const uint64_t count = in.read_u32_be("label count");
  std::vector<uint8_t> labels;
  in.read_payload(labels, count, fmt::format("{} labels", count));
  return labels;
}

// The archive names end in .gz; an unpacked copy has the same name without it.
std::string find_idx_file(const std::string& dir, const std::string& stem) {
  const std::filesystem::path gz = std::filesystem::path(dir) / (stem + ".gz");
  const std::filesystem::path plain = std::filesystem::path(dir) / stem;
  std::error_code ec;
  if (std::filesystem::is_regular_file(gz, ec)) return gz.string();
  if (std::filesystem::is_regular_file(plain, ec)) return plain.string();
  fail("Fashion-MNIST: no such file '{}' (nor '{}')", gz.string(), plain.string());
}

}  // namespace

Dataset load_idx(const std::string& images_path, const std::string& labels_path, int64_t num_classes) {
  TRAINER_CHECK(num_classes > 0 && num_classes <= 256,
                "load_idx('{}'): num_classes must be in 1..256, got {}", images_path, num_classes);
  IdxImages images = read_images(images_path);
  const std::vector<uint8_t> raw_labels = read_labels(labels_path);
  TRAINER_CHECK(static_cast<int64_t>(raw_labels.size()) == images.count,
                "IDX labels file '{}' holds {} labels but images file '{}' holds {} images", labels_path,
                raw_labels.size(), images_path, images.count);

  Dataset ds;
  ds.name = "idx";
  ds.channels = 1;
  ds.height = images.rows;
  ds.width = images.cols;
  ds.num_classes = num_classes;
  ds.images = std::move(images.pixels);
  ds.labels.resize(raw_labels.size());
  for (size_t i = 0; i < raw_labels.size(); ++i) {
    TRAINER_CHECK(raw_labels[i] < num_classes,
                  "IDX labels file '{}': label {} of example {} is out of range 0..{}", labels_path,
                  raw_labels[i], i, num_classes - 1);
    ds.labels[i] = raw_labels[i];
  }
  return ds;
}

Dataset load_fashion_mnist(const std::string& dir, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images = find_idx_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels = find_idx_file(dir, prefix + "-labels-idx1-ubyte");
  Dataset ds = load_idx(images, labels, 10);
  ds.name = train ? "fashion-mnist/train" : "fashion-mnist/test";
  return ds;
}

}  // namespace trainer
