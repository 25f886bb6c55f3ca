// The trace file: round trip, and clean refusals of truncated, damaged, foreign and other-version files.
#include "ops/trace.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace trainer {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()))).string();
}

std::shared_ptr<const Bitmap> random_bits(const Shape& shape, double density, uint64_t seed) {
  auto b = std::make_shared<Bitmap>(shape);
  Rng rng(seed);
  for (int64_t i = 0; i < b->size(); ++i)
    if (rng.uniform() < density) b->set(i);
  return b;
}

std::vector<TraceStep> sample_steps() {
  std::vector<TraceStep> steps;
  for (uint64_t s = 0; s < 3; ++s) {
    TraceStep step;
    step.step = 10 * s + 1;
    Op ff;
    ff.layer = 0;
    ff.layer_name = "stage1.block0.conv1";
    ff.kind = "conv2d";
    ff.phase = Phase::ff;
    ff.x_shape = {4, 3, 9, 9};
    ff.w_shape = {8, 3, 3, 3};
    ff.y_shape = {4, 8, 9, 9};
    ff.stride = {1, 1};
    ff.pad = {1, 1};
    ff.dense_macs = 4 * 8 * 81 * 27;
    ff.time_ns = 12345 + s;
    ff.kernel = s == 1 ? "sparse" : "dense";
    ff.number_format = s == 1 ? "fp16" : "fp32";
    ff.skipped_pruned = 1000 + s;
    ff.skipped_zero_activation = 200 + s;
    ff.skipped_zero_error = 0;
    ff.skipped_masked_output = 30 + s;
    ff.executed_macs = ff.dense_macs - ff.skipped();
    ff.x_nz = random_bits({4, 3, 9, 9}, 0.5, s);
    ff.w_nz = random_bits({8, 3, 3, 3}, 0.1, s + 100);
    Op bp = ff;
    bp.phase = Phase::bp;
    bp.x_nz = nullptr;
    bp.dy_nz = random_bits({4, 8, 9, 9}, 0.3, s + 200);
    bp.skipped_zero_error = uint64_t{1} << 40;  // wider than 32 bits
    bp.skipped_masked_output = 0;
    Op upd;
    upd.layer = -1;
    upd.layer_name = "sgd";
    upd.kind = "sgd";
    upd.phase = Phase::update;
    upd.x_shape = upd.y_shape = {216, 1, 1, 1};
    step.ops = {ff, bp, upd};
    steps.push_back(step);
  }
  return steps;
}

void expect_same_op(const Op& a, const Op& b) {
  EXPECT_EQ(a.layer, b.layer);
  EXPECT_EQ(a.layer_name, b.layer_name);
  EXPECT_EQ(a.kind, b.kind);
  EXPECT_EQ(a.phase, b.phase);
  EXPECT_EQ(a.x_shape, b.x_shape);
  EXPECT_EQ(a.w_shape, b.w_shape);
  EXPECT_EQ(a.y_shape, b.y_shape);
  EXPECT_EQ(a.stride, b.stride);
  EXPECT_EQ(a.pad, b.pad);
  EXPECT_EQ(a.dense_macs, b.dense_macs);
  EXPECT_EQ(a.time_ns, b.time_ns);
  EXPECT_EQ(a.kernel, b.kernel);
  EXPECT_EQ(a.number_format, b.number_format);
  EXPECT_EQ(a.executed_macs, b.executed_macs);
  EXPECT_EQ(a.skipped_pruned, b.skipped_pruned);
  EXPECT_EQ(a.skipped_zero_activation, b.skipped_zero_activation);
  EXPECT_EQ(a.skipped_zero_error, b.skipped_zero_error);
  EXPECT_EQ(a.skipped_masked_output, b.skipped_masked_output);
  for (auto [x, y] : {std::pair{a.x_nz, b.x_nz}, std::pair{a.w_nz, b.w_nz}, std::pair{a.dy_nz, b.dy_nz}}) {
    ASSERT_EQ(x == nullptr, y == nullptr);
    if (x) {
      EXPECT_TRUE(*x == *y);
    }
  }
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string error_reading(const std::string& path) {
  try {
    read_trace(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Trace, RoundTripIsEqual) {
  const std::string path = temp_path("roundtrip.trace");
  const auto steps = sample_steps();
  write_trace(path, steps);
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
  const auto back = read_trace(path);
  ASSERT_EQ(back.size(), steps.size());
  for (size_t s = 0; s < steps.size(); ++s) {
    EXPECT_EQ(back[s].step, steps[s].step);
    ASSERT_EQ(back[s].ops.size(), steps[s].ops.size());
    for (size_t i = 0; i < steps[s].ops.size(); ++i) expect_same_op(back[s].ops[i], steps[s].ops[i]);
  }
  std::filesystem::remove(path);
}

// The file keeps each Op's copy of a map; reading shares equal maps again (as the engine shares them),
// and only equal ones.
TEST(Trace, EqualMapsAreSharedAgainWhenRead) {
  const std::string path = temp_path("shared.trace");
  TraceStep step;
  step.step = 7;
  Op ff;
  ff.layer = 0;
  ff.layer_name = "conv";
  ff.kind = "conv2d";
  ff.phase = Phase::ff;
  ff.x_shape = {2, 3, 5, 5};
  ff.w_shape = {4, 3, 3, 3};
  ff.y_shape = {2, 4, 5, 5};
  ff.pad = {1, 1};
  ff.x_nz = random_bits({2, 3, 5, 5}, 0.5, 1);
  ff.w_nz = random_bits({4, 3, 3, 3}, 0.5, 2);
  Op wg = ff;
  wg.phase = Phase::wg;
  wg.w_nz = nullptr;
  wg.x_nz = std::make_shared<const Bitmap>(*ff.x_nz);  // equal, not the same object
  wg.dy_nz = random_bits({2, 4, 5, 5}, 0.5, 3);
  Op bp = ff;
  bp.phase = Phase::bp;
  bp.x_nz = nullptr;
  auto other = std::make_shared<Bitmap>(*wg.dy_nz);
  other->words()[0] ^= 1;  // differs in one bit
  bp.dy_nz = other;
  step.ops = {ff, wg, bp};
  write_trace(path, {step});
  const auto back = read_trace(path);
  std::filesystem::remove(path);
  ASSERT_EQ(back.size(), 1u);
  const auto& ops = back[0].ops;
  ASSERT_EQ(ops.size(), 3u);
  for (size_t i = 0; i < 3; ++i) expect_same_op(ops[i], step.ops[i]);
  EXPECT_EQ(ops[0].x_nz, ops[1].x_nz);    // equal maps: one object
  EXPECT_NE(ops[1].dy_nz, ops[2].dy_nz);  // one bit apart: two
  EXPECT_EQ(ops[0].w_nz, ops[2].w_nz);    // ff's and bp's weights
}

TEST(Trace, StreamingWriterAndEmptyTrace) {
  const std::string path = temp_path("empty.trace");
  {
    TraceWriter w(path);
    EXPECT_FALSE(std::filesystem::exists(path));  // only the .partial exists while writing
  }                                               // destroyed without finish(): finishes
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_TRUE(read_trace(path).empty());
  std::filesystem::remove(path);
}

TEST(Trace, AbandonedOnExceptionLeavesNothing) {
  const std::string path = temp_path("abandoned.trace");
  try {
    TraceWriter w(path);
    w.write_step(0, sample_steps()[0].ops);
    throw Error("training failed");
  } catch (const Error&) {
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(std::filesystem::exists(path + ".partial"));
}

TEST(Trace, TruncatedFileIsRefusedAtEveryLength) {
  const std::string path = temp_path("full.trace"), cut = temp_path("cut.trace");
  write_trace(path, sample_steps());
  const std::string bytes = slurp(path);
  // Every prefix of the file (sampled) is refused with a message naming the file and the truncation.
  for (size_t len = 0; len < bytes.size(); len += 1 + len / 7) {
    spit(cut, bytes.substr(0, len));
    const std::string msg = error_reading(cut);
    ASSERT_FALSE(msg.empty()) << "a trace cut to " << len << " of " << bytes.size() << " bytes was accepted";
    EXPECT_NE(msg.find(cut), std::string::npos) << msg;
    if (len >= 20) {
      EXPECT_NE(msg.find("truncated"), std::string::npos) << len << ": " << msg;
    }
  }
  std::filesystem::remove(path);
  std::filesystem::remove(cut);
}

TEST(Trace, DamagedForeignAndOtherVersionsAreRefused) {
  const std::string path = temp_path("good.trace"), bad = temp_path("bad.trace");
  write_trace(path, sample_steps());
  const std::string bytes = slurp(path);

  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  spit(bad, flipped);
  EXPECT_NE(error_reading(bad).find("checksum mismatch"), std::string::npos) << error_reading(bad);

  spit(bad, "P6\n3 3\n255\nnot a trace at all, just some other file");
  EXPECT_NE(error_reading(bad).find("not a trainer trace"), std::string::npos) << error_reading(bad);

  std::string other = bytes;
  other[8] = 3;  // the version field
  spit(bad, other);
  EXPECT_NE(error_reading(bad).find("header's checksum"), std::string::npos) << error_reading(bad);
  // ...and as an older (1) or newer (3) writer would write it, with its header checksum.
  for (const uint8_t version : {1, 3}) {
    other[8] = static_cast<char>(version);
    const uint32_t crc =
        static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(other.data()), 16));
    std::memcpy(other.data() + 16, &crc, 4);
    spit(bad, other);
    const std::string msg = error_reading(bad);
    EXPECT_NE(msg.find(fmt::format("format version {}, this program reads version 2", version)),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find(version == 1 ? "record the run again" : "newer trainer"), std::string::npos) << msg;
  }

  EXPECT_NE(error_reading(temp_path("does-not-exist.trace")).find("cannot open"), std::string::npos);
  std::filesystem::remove(path);
  std::filesystem::remove(bad);
}

}  // namespace
}  // namespace trainer
