// Deterministic random numbers: the same seed gives the same stream on every machine and thread count
// (std::*_distribution are implementation-defined, so we draw our own).
#pragma once

#include <cmath>
#include <cstdint>

namespace trainer {

// SplitMix64: small state (one word, trivially checkpointed), good statistical quality.
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : state_(seed) {}
  // A stream derived from a seed and up to two stream ids (e.g. epoch, batch), independent of others.
  static Rng derive(uint64_t seed, uint64_t a, uint64_t b = 0) {
    Rng r(seed ^ 0x9e3779b97f4a7c15ULL);
    r.state_ ^= r.next() + a * 0xbf58476d1ce4e5b9ULL;
    r.state_ ^= r.next() + b * 0x94d049bb133111ebULL;
    return r;
  }
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  // Standard normal (Box-Muller).
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  uint64_t state_;
};

}  // namespace trainer
