// OpStream: the Ops of the current training step, and a running per-(layer, phase) summary over a run.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "ops/op.hpp"

namespace trainer {

struct OpTotals {
  std::string layer_name;
  std::string kind;
  uint64_t calls = 0;
  uint64_t dense_macs = 0;
  uint64_t time_ns = 0;
  uint64_t executed_macs = 0;
  uint64_t skipped_pruned = 0, skipped_zero_activation = 0, skipped_zero_error = 0, skipped_masked_output = 0;
  std::map<std::string, uint64_t> kernel_calls;  // how often each kernel ran ("dense", "sparse", ...)

  // Counts op in (calls, MACs by reason, time, kernel; the labels of the first op counted).
  void add(const Op& op);
  // Sums another record's numbers in (its labels are not taken).
  void add(const OpTotals& o);
};

// Which Op records carry operand nonzero maps (Op::x_nz, w_nz, dy_nz). Each map costs a pass over its
// tensor, and most of a network's tensors are read only by element-wise layers, whose cost on a chip
// needs just their count of nonzeros:
//   none: no maps; pe_array: the operands of conv2d and linear Ops (what a PE array's cycles depend on);
//   all: every operand of every Op.
enum class NonzeroCapture : uint8_t { none = 0, pe_array = 1, all = 2 };
const char* nonzero_capture_name(NonzeroCapture c);

class OpStream {
 public:
  // Which records the engine attaches operand nonzero maps to (see NonzeroCapture).
  void capture_nonzeros(NonzeroCapture c) { capture_ = c; }
  NonzeroCapture nonzero_capture() const { return capture_; }
  // Whether an Op of this kind gets maps under the current setting.
  bool captures_nonzeros_of(const std::string& kind) const {
    return capture_ == NonzeroCapture::all ||
           (capture_ == NonzeroCapture::pe_array && (kind == "conv2d" || kind == "linear"));
  }

  // Starts a new step: the previous step's records are folded into the run totals and cleared.
  void begin_step();
  void record(Op op) { step_.push_back(std::move(op)); }
  const std::vector<Op>& step_ops() const { return step_; }

  // Totals over every step so far (including the current one), keyed by (layer, phase).
  std::map<std::pair<int32_t, Phase>, OpTotals> totals() const;
  void clear();

 private:
  void fold(const Op& op, std::map<std::pair<int32_t, Phase>, OpTotals>& into) const;
  NonzeroCapture capture_ = NonzeroCapture::none;
  std::vector<Op> step_;
  std::map<std::pair<int32_t, Phase>, OpTotals> run_;
};

// A table (one row per layer, columns per phase: GMACs and ms) for the end-of-run summary.
std::string format_op_summary(const OpStream& ops, uint64_t images);

// The sparse-work table: one row per (layer, phase) with multiplies (conv, linear): the kernels that
// ran, dense-equivalent MMAC per image, the share executed and skipped by reason, time, and the
// dense-equivalent rate (dense MACs / time: comparing it with a dense run's gives each phase's speed-up);
// then one total row per phase.
// dense_ns (optional): per (layer, phase), an estimate of what the dense kernel would have taken for the
// same calls; adds a column with the speed-up over it.
std::string format_sparse_summary(const OpStream& ops, uint64_t images,
                                  const std::map<std::pair<int32_t, Phase>, double>* dense_ns = nullptr);

}  // namespace trainer
