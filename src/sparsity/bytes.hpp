// Little-endian byte streams for the pruning state that the trainer's checkpoint embeds. Header-only and
// private to src/sparsity: the format is owned by Mask::to_bytes and PruningPolicy::save_state.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.hpp"

namespace trainer::bytes {

static_assert(std::endian::native == std::endian::little, "pruning state is written little-endian");

class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : out_(out) {}
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put_raw(&v, sizeof(T));
  }
  // resize + memcpy rather than insert: GCC 12 warns (stringop-overflow) on insert into an empty vector.
  void put_raw(const void* p, size_t n) {
    if (n == 0) return;
    const size_t at = out_.size();
    out_.resize(at + n);
    std::memcpy(out_.data() + at, p, n);
  }
  void put_string(const std::string& s) {
    put<uint32_t>(static_cast<uint32_t>(s.size()));
    put_raw(s.data(), s.size());
  }
  void put_blob(const std::vector<uint8_t>& b) {
    put<uint64_t>(b.size());
    put_raw(b.data(), b.size());
  }

 private:
  std::vector<uint8_t>& out_;
};

// Every read is bounds-checked: a truncated or foreign state throws trainer::Error naming `what`.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size, std::string what)
      : p_(data), end_(data + size), what_(std::move(what)) {}
  template <typename T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    need(sizeof(T));
    std::memcpy(&v, p_, sizeof(T));
    p_ += sizeof(T);
    return v;
  }
  void get_raw(void* dst, size_t n) {
    need(n);
    if (n) std::memcpy(dst, p_, n);
    p_ += n;
  }
  std::string get_string() {
    const uint32_t n = get<uint32_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }
  std::vector<uint8_t> get_blob() {
    const uint64_t n = get<uint64_t>();
    need(n);
    std::vector<uint8_t> b(p_, p_ + n);
    p_ += n;
    return b;
  }
  bool at_end() const { return p_ == end_; }
  const std::string& what() const { return what_; }

 private:
  void need(uint64_t n) const {
    TRAINER_CHECK(static_cast<uint64_t>(end_ - p_) >= n, "{}: truncated (needed {} more bytes, {} left)",
                  what_, n, end_ - p_);
  }
  const uint8_t* p_;
  const uint8_t* end_;
  std::string what_;
};

}  // namespace trainer::bytes
