#include "ops/trace.hpp"

#include <zlib.h>

#include <bit>
#include <cstdio>
#include <cstring>
#include <exception>
#include <unordered_map>

#include "core/error.hpp"

namespace trainer {

static_assert(std::endian::native == std::endian::little, "the trace format is little-endian");

namespace {

constexpr char kMagic[8] = {'T', 'R', 'A', 'I', 'N', 'T', 'R', 'C'};
constexpr uint64_t kMaxPayload = uint64_t{1} << 40;

uint32_t crc_of(const void* data, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  // zlib's crc32 takes a uInt length; feed large buffers in pieces.
  while (n > 0) {
    const uInt piece = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    c = crc32(c, p, piece);
    p += piece;
    n -= piece;
  }
  return static_cast<uint32_t>(c);
}

class Writer {
 public:
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    s_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put_str(const std::string& v) {
    put<uint32_t>(static_cast<uint32_t>(v.size()));
    s_.append(v);
  }
  void put_bytes(const void* p, size_t n) { s_.append(static_cast<const char*>(p), n); }
  std::string& str() { return s_; }

 private:
  std::string s_;
};

class Reader {
 public:
  Reader(const std::string& s, std::string where) : s_(s), where_(std::move(where)) {}
  template <typename T>
  T get() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, s_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::string get_str() {
    const uint32_t n = get<uint32_t>();
    need(n);
    std::string v = s_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  const char* bytes(size_t n) {
    need(n);
    const char* p = s_.data() + pos_;
    pos_ += n;
    return p;
  }
  void done() const {
    TRAINER_CHECK(pos_ == s_.size(), "{}: {} bytes left over after the record's fields", where_,
                  s_.size() - pos_);
  }

 private:
  void need(size_t n) const {
    TRAINER_CHECK(s_.size() - pos_ >= n,
                  "{}: the record is shorter than its fields ({} bytes, needed {} more)", where_, s_.size(),
                  n - (s_.size() - pos_));
  }
  const std::string& s_;
  std::string where_;
  size_t pos_ = 0;
};

void put_bitmap(Writer& w, const Bitmap& b) {
  w.put<uint32_t>(static_cast<uint32_t>(b.shape().size()));
  for (int64_t d : b.shape()) w.put<int64_t>(d);
  const auto& words = b.words();
  const uLong raw = static_cast<uLong>(words.size() * sizeof(uint64_t));
  uLongf packed = compressBound(raw);
  std::string buf(packed, '\0');
  const int rc = compress2(reinterpret_cast<Bytef*>(buf.data()), &packed,
                           reinterpret_cast<const Bytef*>(words.data()), raw, 1);
  TRAINER_CHECK(rc == Z_OK, "trace: zlib could not compress a nonzero map (code {})", rc);
  w.put<uint64_t>(packed);
  w.put_bytes(buf.data(), packed);
}

std::shared_ptr<const Bitmap> get_bitmap(Reader& r, const std::string& where) {
  const uint32_t rank = r.get<uint32_t>();
  TRAINER_CHECK(rank <= 8, "{}: a nonzero map of rank {} (expected at most 8)", where, rank);
  Shape shape(rank);
  int64_t size = rank ? 1 : 0;
  for (auto& d : shape) {
    d = r.get<int64_t>();
    TRAINER_CHECK(d >= 0 && d < (int64_t{1} << 40), "{}: a nonzero map dimension of {}", where, d);
    size *= d;
    TRAINER_CHECK(size < (int64_t{1} << 42), "{}: a nonzero map of more than 2^42 elements", where);
  }
  auto b = std::make_shared<Bitmap>(shape);
  const uint64_t packed = r.get<uint64_t>();
  const char* p = r.bytes(packed);
  auto& words = b->words();
  uLongf raw = static_cast<uLongf>(words.size() * sizeof(uint64_t));
  const uLongf expected = raw;
  const int rc = uncompress(reinterpret_cast<Bytef*>(words.data()), &raw, reinterpret_cast<const Bytef*>(p),
                            static_cast<uLong>(packed));
  TRAINER_CHECK(rc == Z_OK && raw == expected,
                "{}: a nonzero map does not decompress to its {} bytes (zlib code {})", where, expected, rc);
  return b;
}

std::string encode_op(const Op& op) {
  Writer w;
  w.put<int32_t>(op.layer);
  w.put_str(op.layer_name);
  w.put_str(op.kind);
  w.put<uint8_t>(static_cast<uint8_t>(op.phase));
  for (const auto* s : {&op.x_shape, &op.w_shape, &op.y_shape})
    for (int64_t d : *s) w.put<int64_t>(d);
  for (int32_t v : op.stride) w.put<int32_t>(v);
  for (int32_t v : op.pad) w.put<int32_t>(v);
  w.put<uint64_t>(op.dense_macs);
  w.put<uint64_t>(op.time_ns);
  w.put_str(op.kernel);
  w.put_str(op.number_format);
  for (uint64_t v : {op.executed_macs, op.skipped_pruned, op.skipped_zero_activation, op.skipped_zero_error,
                     op.skipped_masked_output})
    w.put<uint64_t>(v);
  const uint8_t present = (op.x_nz ? 1 : 0) | (op.w_nz ? 2 : 0) | (op.dy_nz ? 4 : 0);
  w.put<uint8_t>(present);
  if (op.x_nz) put_bitmap(w, *op.x_nz);
  if (op.w_nz) put_bitmap(w, *op.w_nz);
  if (op.dy_nz) put_bitmap(w, *op.dy_nz);
  return std::move(w.str());
}

Op decode_op(const std::string& payload, const std::string& where) {
  Reader r(payload, where);
  Op op;
  op.layer = r.get<int32_t>();
  op.layer_name = r.get_str();
  op.kind = r.get_str();
  const uint8_t phase = r.get<uint8_t>();
  TRAINER_CHECK(phase < kNumPhases, "{}: phase code {} (expected 0..{})", where, phase, kNumPhases - 1);
  op.phase = static_cast<Phase>(phase);
  for (auto* s : {&op.x_shape, &op.w_shape, &op.y_shape})
    for (int64_t& d : *s) d = r.get<int64_t>();
  for (int32_t& v : op.stride) v = r.get<int32_t>();
  for (int32_t& v : op.pad) v = r.get<int32_t>();
  op.dense_macs = r.get<uint64_t>();
  op.time_ns = r.get<uint64_t>();
  op.kernel = r.get_str();
  op.number_format = r.get_str();
  for (uint64_t* v : {&op.executed_macs, &op.skipped_pruned, &op.skipped_zero_activation,
                      &op.skipped_zero_error, &op.skipped_masked_output})
    *v = r.get<uint64_t>();
  const uint8_t present = r.get<uint8_t>();
  TRAINER_CHECK(present < 8, "{}: unknown nonzero-map flags {}", where, present);
  if (present & 1) op.x_nz = get_bitmap(r, where);
  if (present & 2) op.w_nz = get_bitmap(r, where);
  if (present & 4) op.dy_nz = get_bitmap(r, where);
  r.done();
  return op;
}

}  // namespace

// ---- writer ----

TraceWriter::TraceWriter(std::string path)
    : path_(std::move(path)), partial_(path_ + ".partial"), uncaught_(std::uncaught_exceptions()) {
  f_ = std::fopen(partial_.c_str(), "wb");
  TRAINER_CHECK(f_ != nullptr, "trace '{}': cannot create '{}'", path_, partial_);
  Writer h;
  h.put_bytes(kMagic, sizeof kMagic);
  h.put<uint32_t>(kTraceVersion);
  h.put<uint32_t>(0);
  const uint32_t crc = crc_of(h.str().data(), h.str().size());
  h.put<uint32_t>(crc);
  if (std::fwrite(h.str().data(), 1, h.str().size(), f_) != h.str().size()) {
    std::fclose(f_);
    f_ = nullptr;
    std::remove(partial_.c_str());
    fail("trace '{}': cannot write the header", path_);
  }
}

TraceWriter::~TraceWriter() {
  if (!f_) return;
  if (std::uncaught_exceptions() > uncaught_) {
    std::fclose(f_);
    f_ = nullptr;
    std::remove(partial_.c_str());
    return;
  }
  try {
    finish();
  } catch (...) {
    if (f_) std::fclose(f_);
    f_ = nullptr;
    std::remove(partial_.c_str());
  }
}

void TraceWriter::write_record(const char tag[4], const std::string& payload) {
  TRAINER_CHECK(f_ != nullptr, "trace '{}': already finished", path_);
  Writer h;
  h.put_bytes(tag, 4);
  h.put<uint64_t>(payload.size());
  const uint32_t crc = crc_of(payload.data(), payload.size());
  bool ok = std::fwrite(h.str().data(), 1, h.str().size(), f_) == h.str().size();
  ok = ok && std::fwrite(payload.data(), 1, payload.size(), f_) == payload.size();
  ok = ok && std::fwrite(&crc, 1, sizeof crc, f_) == sizeof crc;
  TRAINER_CHECK(ok, "trace '{}': write failed (disk full?)", partial_);
}

void TraceWriter::write_step(uint64_t step, const std::vector<Op>& ops) {
  Writer s;
  s.put<uint64_t>(step);
  s.put<uint64_t>(ops.size());
  write_record("STEP", s.str());
  for (const Op& op : ops) write_record("OPRC", encode_op(op));
  ++steps_;
}

void TraceWriter::finish() {
  if (!f_) return;
  Writer e;
  e.put<uint64_t>(steps_);
  write_record("END.", e.str());
  const bool ok = std::fflush(f_) == 0;
  std::fclose(f_);
  f_ = nullptr;
  if (!ok || std::rename(partial_.c_str(), path_.c_str()) != 0) {
    std::remove(partial_.c_str());
    fail("trace '{}': cannot complete the file", path_);
  }
}

// ---- reader ----

TraceReader::TraceReader(std::string path) : path_(std::move(path)) {
  f_ = std::fopen(path_.c_str(), "rb");
  TRAINER_CHECK(f_ != nullptr, "trace '{}': cannot open the file", path_);
  char h[20];
  const size_t n = std::fread(h, 1, sizeof h, f_);
  if (n < sizeof kMagic || std::memcmp(h, kMagic, sizeof kMagic) != 0) {
    std::fclose(f_);
    f_ = nullptr;
    fail("trace '{}': not a trainer trace file (it does not start with \"TRAINTRC\")", path_);
  }
  if (n < sizeof h) {
    std::fclose(f_);
    f_ = nullptr;
    fail("trace '{}': truncated inside the header ({} of 20 bytes)", path_, n);
  }
  uint32_t version, crc;
  std::memcpy(&version, h + 8, 4);
  std::memcpy(&crc, h + 16, 4);
  if (crc != crc_of(h, 16)) {
    std::fclose(f_);
    f_ = nullptr;
    fail("trace '{}': the header's checksum does not match (damaged file)", path_);
  }
  if (version != kTraceVersion) {
    std::fclose(f_);
    f_ = nullptr;
    const char* why = version == 1 ? " (version 1 traces lack the kernel and skip counters of each Op; "
                                     "record the run again with `trainer train --trace`)"
                      : version > kTraceVersion ? " (written by a newer trainer?)"
                                                : "";
    fail("trace '{}': format version {}, this program reads version {}{}", path_, version, kTraceVersion,
         why);
  }
}

TraceReader::~TraceReader() {
  if (f_) std::fclose(f_);
}

bool TraceReader::read_record(std::string& tag, std::string& payload) {
  char h[12];
  const size_t n = std::fread(h, 1, sizeof h, f_);
  TRAINER_CHECK(n == sizeof h,
                "trace '{}': truncated: the file ends after {} complete records without its END record{}",
                path_, records_, n ? fmt::format(" (and {} bytes of a record header)", n) : "");
  tag.assign(h, 4);
  uint64_t len;
  std::memcpy(&len, h + 4, 8);
  TRAINER_CHECK(len < kMaxPayload, "trace '{}': record {} claims {} bytes (damaged file)", path_,
                records_ + 1, len);
  payload.resize(len);
  const size_t got = std::fread(payload.data(), 1, len, f_);
  uint32_t crc = 0;
  const size_t got_crc = got == len ? std::fread(&crc, 1, sizeof crc, f_) : 0;
  TRAINER_CHECK(got == len && got_crc == sizeof crc,
                "trace '{}': truncated: record {} ('{}') needs {} bytes, the file ends after {}", path_,
                records_ + 1, tag, len + 4, got + got_crc);
  TRAINER_CHECK(crc == crc_of(payload.data(), payload.size()),
                "trace '{}': checksum mismatch in record {} ('{}'): the file is damaged", path_, records_ + 1,
                tag);
  ++records_;
  return true;
}

bool TraceReader::next(TraceStep& step) {
  if (ended_) return false;
  std::string tag, payload;
  read_record(tag, payload);
  if (tag == "END.") {
    Reader r(payload, fmt::format("trace '{}', END record", path_));
    const uint64_t steps = r.get<uint64_t>();
    TRAINER_CHECK(steps == steps_, "trace '{}': the END record counts {} steps, the file holds {}", path_,
                  steps, steps_);
    ended_ = true;
    return false;
  }
  TRAINER_CHECK(tag == "STEP", "trace '{}': record {} is '{}', expected a STEP or END record", path_,
                records_, tag);
  Reader r(payload, fmt::format("trace '{}', record {}", path_, records_));
  step.step = r.get<uint64_t>();
  const uint64_t n = r.get<uint64_t>();
  r.done();
  step.ops.clear();
  step.ops.reserve(static_cast<size_t>(std::min<uint64_t>(n, 1u << 20)));
  for (uint64_t i = 0; i < n; ++i) {
    read_record(tag, payload);
    TRAINER_CHECK(tag == "OPRC", "trace '{}': record {} is '{}', expected Op {} of {} of step {}", path_,
                  records_, tag, i + 1, n, step.step);
    step.ops.push_back(decode_op(payload, fmt::format("trace '{}', record {}", path_, records_)));
  }
  // The live engine hands several Ops one map (a layer's ff and wg share x; bp and wg share dy); the file
  // stores each Op's copy. Equal maps are shared again, so that the chip model's per-map work is shared
  // as it is live (and the step holds one copy in memory).
  std::unordered_map<uint64_t, std::vector<std::shared_ptr<const Bitmap>>> seen;
  auto share = [&](std::shared_ptr<const Bitmap>& m) {
    if (!m) return;
    auto& same_hash = seen[m->content_hash()];
    for (const auto& other : same_hash)
      if (*other == *m) {
        m = other;
        return;
      }
    same_hash.push_back(m);
  };
  for (Op& op : step.ops) share(op.x_nz), share(op.w_nz), share(op.dy_nz);
  ++steps_;
  return true;
}

void write_trace(const std::string& path, const std::vector<TraceStep>& steps) {
  TraceWriter w(path);
  for (const auto& s : steps) w.write_step(s.step, s.ops);
  w.finish();
}

std::vector<TraceStep> read_trace(const std::string& path) {
  TraceReader r(path);
  std::vector<TraceStep> out;
  TraceStep s;
  while (r.next(s)) out.push_back(std::move(s));
  return out;
}

}  // namespace trainer
