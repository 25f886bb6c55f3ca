// The trace file: the Op records of a run (some or all of its steps), with their nonzero maps, so that a
// run can be costed again on another chip without training again.
//
// Format (version 2, little-endian):
//   header   "TRAINTRC" (8 bytes), u32 version, u32 flags (0), u32 crc32 of the 16 bytes before it
//   records  u32 tag, u64 payload bytes, payload, u32 crc32 of the payload
//            tag "STEP": u64 step index, u64 number of Ops; followed by that many "OPRC" records
//            tag "OPRC": one Op (below)
//            tag "END.": u64 number of steps (the file is complete only with this record)
//   Op payload: i32 layer, str layer_name, str kind, u8 phase, 12 x i64 (x, w, y shapes), 2 x i32 stride,
//            2 x i32 pad, u64 dense_macs, u64 time_ns, str kernel, str number_format, u64 executed_macs,
//            u64 skipped_pruned,
//            u64 skipped_zero_activation, u64 skipped_zero_error, u64 skipped_masked_output, u8 maps present
//            (bit 0 x, 1 w, 2 dy), then for each present map: u32 rank, rank x i64 shape, u64 zlib-compressed
//            bytes, the compressed words.
//   str: u32 length + bytes.
// Versions: 1 had no kernel, number format and skip counters (the fields from `str kernel` to
// skipped_masked_output);
// 2 has them. A reader reads only its own version.
// A reader refuses, naming the file and what is wrong: a foreign file (bad magic), another version (an
// older one with the advice to record the run again), a checksum mismatch, and a file that ends early
// (truncated: no END record).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "ops/op.hpp"

namespace trainer {

constexpr uint32_t kTraceVersion = 2;

struct TraceStep {
  uint64_t step = 0;
  std::vector<Op> ops;
};

// Writes to `path`.partial and renames it to `path` on finish(), so a reader never sees half a file
// under the final name. Destroyed without finish(): finishes, unless an exception is unwinding, in
// which case the partial file is removed.
class TraceWriter {
 public:
  explicit TraceWriter(std::string path);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  void write_step(uint64_t step, const std::vector<Op>& ops);
  void finish();
  uint64_t steps_written() const { return steps_; }

 private:
  void write_record(const char tag[4], const std::string& payload);
  std::string path_, partial_;
  std::FILE* f_ = nullptr;
  uint64_t steps_ = 0;
  int uncaught_ = 0;
};

class TraceReader {
 public:
  explicit TraceReader(std::string path);  // reads and checks the header
  ~TraceReader();
  TraceReader(const TraceReader&) = delete;
  TraceReader& operator=(const TraceReader&) = delete;

  // The next step; false after the END record. Throws trainer::Error on a damaged or truncated file.
  bool next(TraceStep& step);

 private:
  bool read_record(std::string& tag, std::string& payload);
  std::string path_;
  std::FILE* f_ = nullptr;
  uint64_t records_ = 0;
  uint64_t steps_ = 0;
  bool ended_ = false;
};

// Whole-file helpers.
void write_trace(const std::string& path, const std::vector<TraceStep>& steps);
std::vector<TraceStep> read_trace(const std::string& path);

}  // namespace trainer
