#include "ops/op_stream.hpp"

#include <fmt/format.h>

#include <array>

namespace trainer {

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::ff: return "ff";
    case Phase::bp: return "bp";
    case Phase::wg: return "wg";
    case Phase::loss: return "loss";
    case Phase::update: return "update";
  }
  return "?";
}

void OpStream::fold(const Op& op, std::map<std::pair<int32_t, Phase>, OpTotals>& into) const {
  OpTotals& t = into[{op.layer, op.phase}];
  if (t.calls == 0) {
    t.layer_name = op.layer_name;
    t.kind = op.kind;
  }
  t.calls += 1;
  t.dense_macs += op.dense_macs;
  t.time_ns += op.time_ns;
  t.executed_macs += op.executed_macs;
  t.skipped_pruned += op.skipped_pruned;
  t.skipped_zero_activation += op.skipped_zero_activation;
  t.skipped_zero_error += op.skipped_zero_error;
  t.skipped_masked_output += op.skipped_masked_output;
  if (!op.kernel.empty()) t.kernel_calls[op.kernel] += 1;
}

void OpStream::begin_step() {
  for (const Op& op : step_) fold(op, run_);
  step_.clear();
}

std::map<std::pair<int32_t, Phase>, OpTotals> OpStream::totals() const {
  auto all = run_;
  for (const Op& op : step_) fold(op, all);
  return all;
}

void OpStream::clear() {
  step_.clear();
  run_.clear();
}

std::string format_op_summary(const OpStream& ops, uint64_t images) {
  struct Row {
    std::string name, kind;
    std::array<uint64_t, kNumPhases> macs{}, ns{};
  };
  std::map<int32_t, Row> rows;
  for (const auto& [key, t] : ops.totals()) {
    Row& r = rows[key.first];
    r.name = key.first < 0 ? t.kind : t.layer_name;
    r.kind = t.kind;
    r.macs[static_cast<int>(key.second)] += t.dense_macs;
    r.ns[static_cast<int>(key.second)] += t.time_ns;
  }
  std::string out = fmt::format("{:<28} {:<16} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}\n", "layer", "kind",
                                "ff MMAC/im", "bp MMAC/im", "wg MMAC/im", "ff ms", "bp ms", "wg ms", "other ms");
  std::array<uint64_t, kNumPhases> tot_macs{}, tot_ns{};
  const double per_image = images ? 1.0 / static_cast<double>(images) : 0.0;
  auto line = [&](const std::string& name, const std::string& kind, const auto& macs, const auto& ns) {
    const uint64_t other = ns[3] + ns[4];
    return fmt::format("{:<28} {:<16} {:>10.3f} {:>10.3f} {:>10.3f} {:>9.1f} {:>9.1f} {:>9.1f} {:>9.1f}\n", name,
                       kind, macs[0] * per_image * 1e-6, macs[1] * per_image * 1e-6, macs[2] * per_image * 1e-6,
                       ns[0] * 1e-6, ns[1] * 1e-6, ns[2] * 1e-6, other * 1e-6);
  };
  for (const auto& [idx, r] : rows) {
    out += line(r.name, r.kind, r.macs, r.ns);
    for (int p = 0; p < kNumPhases; ++p) {
      tot_macs[p] += r.macs[p];
      tot_ns[p] += r.ns[p];
    }
  }
  out += line("total", "", tot_macs, tot_ns);
  return out;
}

}  // namespace trainer
