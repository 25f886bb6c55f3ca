#include "ops/op_stream.hpp"

#include <fmt/format.h>

#include <array>

namespace trainer {

const char* nonzero_capture_name(NonzeroCapture c) {
  switch (c) {
    case NonzeroCapture::none:
      return "none";
    case NonzeroCapture::pe_array:
      return "pe_array";
    default:
      return "all";
  }
}

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

void OpTotals::add(const Op& op) {
  if (calls == 0) {
    layer_name = op.layer_name;
    kind = op.kind;
  }
  calls += 1;
  dense_macs += op.dense_macs;
  time_ns += op.time_ns;
  executed_macs += op.executed_macs;
  skipped_pruned += op.skipped_pruned;
  skipped_zero_activation += op.skipped_zero_activation;
  skipped_zero_error += op.skipped_zero_error;
  skipped_masked_output += op.skipped_masked_output;
  if (!op.kernel.empty()) kernel_calls[op.kernel] += 1;
}

void OpTotals::add(const OpTotals& o) {
  calls += o.calls;
  dense_macs += o.dense_macs;
  time_ns += o.time_ns;
  executed_macs += o.executed_macs;
  skipped_pruned += o.skipped_pruned;
  skipped_zero_activation += o.skipped_zero_activation;
  skipped_zero_error += o.skipped_zero_error;
  skipped_masked_output += o.skipped_masked_output;
  for (const auto& [k, n] : o.kernel_calls) kernel_calls[k] += n;
}

void OpStream::fold(const Op& op, std::map<std::pair<int32_t, Phase>, OpTotals>& into) const {
  into[{op.layer, op.phase}].add(op);
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

std::string format_sparse_summary(const OpStream& ops, uint64_t images,
                                  const std::map<std::pair<int32_t, Phase>, double>* dense_ns) {
  const double per_image = images ? 1.0 / static_cast<double>(images) : 0.0;
  std::string out = fmt::format("{:<28} {:<5} {:<17} {:>8} {:>6} {:>7} {:>7} {:>8} {:>7} {:>8} {:>7}{}\n", "layer",
                                "phase", "kernel", "MMAC/im", "exec%", "pruned%", "zero-x%", "zero-dy%", "masked%",
                                "ms", "GMAC/s", dense_ns ? "  x dense*" : "");
  auto pct = [](uint64_t part, uint64_t whole) { return whole ? 100.0 * part / whole : 0.0; };
  auto line = [&](const std::string& name, const std::string& phase, const std::string& kernel, const OpTotals& t,
                  double est_ns) {
    std::string speed;
    if (dense_ns) speed = est_ns > 0 && t.time_ns ? fmt::format("  {:>8.2f}", est_ns / t.time_ns) : "         -";
    return fmt::format("{:<28} {:<5} {:<17} {:>8.3f} {:>6.1f} {:>7.1f} {:>7.1f} {:>8.1f} {:>7.1f} {:>8.1f} {:>7.1f}{}\n",
                       name, phase, kernel, t.dense_macs * per_image * 1e-6, pct(t.executed_macs, t.dense_macs),
                       pct(t.skipped_pruned, t.dense_macs), pct(t.skipped_zero_activation, t.dense_macs),
                       pct(t.skipped_zero_error, t.dense_macs), pct(t.skipped_masked_output, t.dense_macs),
                       t.time_ns * 1e-6, t.time_ns ? static_cast<double>(t.dense_macs) / t.time_ns : 0.0, speed);
  };
  std::array<OpTotals, 3> phase_total{};
  std::array<double, 3> phase_est{};
  for (const auto& [key, t] : ops.totals()) {
    const int p = static_cast<int>(key.second);
    if (p > 2 || t.dense_macs == 0) continue;
    std::string kernel;
    for (const auto& [name, calls] : t.kernel_calls)
      kernel += (kernel.empty() ? "" : "+") + (calls == t.calls ? name : fmt::format("{}x{}", name, calls));
    if (kernel.empty()) kernel = "dense";
    double est = 0.0;
    if (dense_ns) {
      const auto it = dense_ns->find(key);
      est = it == dense_ns->end() ? 0.0 : it->second;
      phase_est[p] += est;
    }
    out += line(t.layer_name, phase_name(key.second), kernel, t, est);
    phase_total[p].add(t);
  }
  for (int p = 0; p < 3; ++p)
    out += line("total", phase_name(static_cast<Phase>(p)), "", phase_total[p], phase_est[p]);
  return out;
}

}  // namespace trainer
