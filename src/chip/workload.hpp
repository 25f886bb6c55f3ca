// The analysis stage of the chip model: what work an Op contains, independent of any chip (no cycles,
// no energies here; Timeloop keeps the same split). For a convolution or linear layer each phase is a
// product of two operands, viewed as a GEMM whose output rows are the lines of operand a and whose
// output columns are the lines of operand b, both of dense length `reduction`:
//
//   phase  a (rows)                          b (cols)              reduction        output
//   ff     x receptive field of (n, p, q)    w[k, :, :, :]         (c, r, s)        y  [N, K, P, Q]
//   bp     dy window feeding (n, h, w)       w[:, c, :, :]         (k, r, s)        dx [N, C, H, W]
//   wg     x[:, c, shifted by r, s]          dy[:, k, :, :]        (n, p, q)        dw [K, C, R, S]
//
// Structural zeros (padding, the holes of a strided bp) are part of a line's dense length but are never
// nonzeros. Exact mode counts the nonzeros of every line from the Op's bitmaps with word-level
// operations; statistical mode keeps only each operand's density.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "ops/op.hpp"

namespace trainer {

// A convolution's geometry (linear layers are 1x1 convolutions over 1x1 maps).
// x: [N, C, H, W], w: [K, C, R, S], y: [N, K, P, Q].
struct ConvGeometry {
  int64_t N = 1, C = 1, H = 1, W = 1, K = 1, R = 1, S = 1, P = 1, Q = 1;
  int32_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
};

// True for the Ops the PE array runs: conv2d and linear in phases ff, bp, wg.
bool is_array_op(const Op& op);
// Geometry of a conv2d/linear Op; throws trainer::Error naming the layer when the shapes disagree.
ConvGeometry conv_geometry(const Op& op);

struct ConvWork {
  Phase phase = Phase::ff;
  ConvGeometry geo;
  const char* a_name = "x";  // operand names for reports: "x", "w", "dy"
  const char* b_name = "w";
  int64_t rows = 0, cols = 0, reduction = 0;  // the GEMM view
  // Distinct tensor elements of each operand and of the output, and the operands' nonzeros
  // (expected values in statistical mode).
  int64_t a_elems = 0, b_elems = 0, out_elems = 0;
  double a_nnz = 0, b_nnz = 0;
  double dense_macs = 0;      // N*K*P*Q*C*R*S, the conventional count (same for ff, bp, wg)
  double valid_macs = 0;      // products whose operands both exist (padding excluded)
  double effectual_macs = 0;  // products whose operands are both nonzero
  bool exact = false;
  // Exact mode: nonzeros of each line (rows entries for a, cols entries for b).
  std::vector<int32_t> a_line_nnz, b_line_nnz;
  // Both modes: structurally present elements of each line of a (b's lines are all `reduction` long).
  std::vector<int32_t> a_line_len;
  int64_t a_len_period = 1;
  double a_len_total = 0;  // the sum of a_line_len  // a_line_len[i] == a_line_len[i % a_len_period] (P*Q, H*W or R*S)
  // Speculation (exact mode, when the liveness map is known): which outputs training needs, as
  // out_live[row * cols + col]; empty means all. Filled by the model, not by the analysis.
  double a_density() const { return a_elems ? a_nnz / static_cast<double>(a_elems) : 0.0; }
  double b_density() const { return b_elems ? b_nnz / static_cast<double>(b_elems) : 0.0; }
};

// Reductions of a nonzero map that several Ops of one step share: a layer's ff and wg read the same x,
// its bp and wg the same dy, so the per-line sums over x (or dy) are computed once and reused. Keyed by
// the map and the geometry that reads it. Safe to share between threads (ChipModel::cost_step does).
class AnalysisCache {
 public:
  using Key = std::tuple<const void*, int, std::array<int64_t, 13>>;
  // The value under key, made by make() the first time it is asked for (once, whichever thread asks).
  template <class T, class F>
  std::shared_ptr<const T> get(const Key& key, F&& make) {
    std::shared_ptr<Entry> e;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::shared_ptr<Entry>& slot = entries_[key];
      if (!slot) slot = std::make_shared<Entry>();
      e = slot;
    }
    std::call_once(e->once, [&] { e->value = std::make_shared<const T>(make()); });
    return std::static_pointer_cast<const T>(e->value);
  }

 private:
  struct Entry {
    std::once_flag once;
    std::shared_ptr<const void> value;
  };
  std::mutex mu_;
  std::map<Key, std::shared_ptr<Entry>> entries_;
};

// A layer's weight map changes only when its mask does (kept weights are practically never exactly
// zero), so the weight lines of ff and bp are kept from step to step: keyed by phase, geometry and the
// map's content (checked word for word, not trusted to a hash). Entries unused for two steps are
// dropped. Thread-safe.
struct WeightLines {
  std::vector<int32_t> lines;  // ff: nonzeros of w[k, :, :, :] per k; bp: of w[:, c, :, :] per c
  std::vector<int32_t> cols;   // ff: per (c, r, s), summed over k; bp: per (k, r, s), summed over c
  double nnz = 0;
};
class WeightMemo {
 public:
  std::shared_ptr<const WeightLines> get(Phase phase, const ConvGeometry& g, const Bitmap& map,
                                         const std::function<WeightLines()>& make);
  void end_step();

 private:
  using Key = std::tuple<int, std::array<int64_t, 13>, uint64_t>;
  struct Entry {
    std::vector<uint64_t> words;
    std::shared_ptr<const WeightLines> value;
    uint64_t used = 0;
  };
  std::mutex mu_;
  std::map<Key, Entry> entries_;
  uint64_t step_ = 0;
};

// Exact analysis from the Op's nonzero maps (an operand without a map counts as dense). With a cache,
// the sums over maps other Ops of the step also read are shared with them; with a memo, weight lines are
// reused across steps while the weight map does not change.
ConvWork analyse_exact(const Op& op, AnalysisCache* cache = nullptr, WeightMemo* memo = nullptr);
// Statistical analysis: operands uniformly random at their densities (from the maps' counts when
// present, else dense). effectual_macs and a_nnz/b_nnz are expectations.
ConvWork analyse_statistical(const Op& op);

// Word-level bit helpers (exposed for tests).
int64_t popcount_range(const std::vector<uint64_t>& words, int64_t begin, int64_t end);
// counters[i] += bit (begin + i), i < len.
void accumulate_bits(const std::vector<uint64_t>& words, int64_t begin, int64_t len, int32_t* counters);

}  // namespace trainer
