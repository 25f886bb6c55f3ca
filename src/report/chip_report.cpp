#include "report/chip_report.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <functional>
#include <vector>

#include "core/error.hpp"

namespace trainer {

namespace {

const char* kBufferNames[kNumBuffers] = {"weights", "activations", "gradients"};

// One CSV/JSON column: its name (with unit) and how to read it from a cost.
struct Column {
  std::string name;
  std::function<double(const OpCost&)> value;
};

std::vector<Column> numeric_columns(const ChipSpec& spec) {
  std::vector<Column> c;
  c.push_back({"calls", [](const OpCost& o) { return static_cast<double>(o.calls); }});
  c.push_back({"dense_MACs", [](const OpCost& o) { return o.dense_macs; }});
  c.push_back({"effectual_MACs", [](const OpCost& o) { return o.effectual_macs; }});
  c.push_back({"skipped_dead_output_MACs", [](const OpCost& o) { return o.skipped_dead_output_macs; }});
  c.push_back({"mac_slots", [](const OpCost& o) { return o.events.mac_slots; }});
  c.push_back({"cycles", [](const OpCost& o) { return o.cycles; }});
  c.push_back({"compute_cycles", [](const OpCost& o) { return o.compute_cycles; }});
  c.push_back({"stall_cycles", [](const OpCost& o) { return o.stall_cycles; }});
  c.push_back({"time_us", [&spec](const OpCost& o) { return seconds(o, spec) * 1e6; }});
  c.push_back({"pe_utilization", [](const OpCost& o) { return o.pe_utilization(); }});
  c.push_back({"effectual_utilization", [](const OpCost& o) { return o.effectual_utilization(); }});
  c.push_back({"dram_read_bytes", [](const OpCost& o) { return o.events.dram_read_bits / 8; }});
  c.push_back({"dram_write_bytes", [](const OpCost& o) { return o.events.dram_write_bits / 8; }});
  for (int b = 0; b < kNumBuffers; ++b) {
    c.push_back({fmt::format("sram_{}_read_bytes", kBufferNames[b]),
                 [b](const OpCost& o) { return o.events.sram_read_bits[b] / 8; }});
    c.push_back({fmt::format("sram_{}_write_bytes", kBufferNames[b]),
                 [b](const OpCost& o) { return o.events.sram_write_bits[b] / 8; }});
  }
  c.push_back({"register_bytes", [](const OpCost& o) {
                 return (o.events.register_read_bits + o.events.register_write_bits) / 8;
               }});
  c.push_back({"metadata_events", [](const OpCost& o) { return o.events.metadata_events; }});
  c.push_back({"vector_ops", [](const OpCost& o) { return o.events.vector_ops; }});
  c.push_back({"energy_mac_pJ", [](const OpCost& o) { return o.energy.mac; }});
  c.push_back({"energy_register_pJ", [](const OpCost& o) { return o.energy.register_file; }});
  for (int b = 0; b < kNumBuffers; ++b)
    c.push_back({fmt::format("energy_sram_{}_pJ", kBufferNames[b]),
                 [b](const OpCost& o) { return o.energy.sram[b]; }});
  c.push_back({"energy_dram_pJ", [](const OpCost& o) { return o.energy.dram; }});
  c.push_back({"energy_metadata_pJ", [](const OpCost& o) { return o.energy.metadata; }});
  c.push_back({"energy_vector_pJ", [](const OpCost& o) { return o.energy.vector; }});
  c.push_back({"energy_leakage_pJ", [](const OpCost& o) { return o.energy.leakage; }});
  c.push_back({"energy_total_pJ", [](const OpCost& o) { return o.energy.total(); }});
  c.push_back({"dense_TFLOPS", [&spec](const OpCost& o) { return dense_tflops(o, spec); }});
  c.push_back({"TFLOPS_per_W", [](const OpCost& o) { return tflops_per_watt(o); }});
  return c;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char ch : s) out += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return out + "\"";
}

nlohmann::ordered_json cost_json(const OpCost& o, const std::vector<Column>& cols) {
  nlohmann::ordered_json j;
  j["layer"] = o.layer;
  j["layer_name"] = o.layer_name;
  j["kind"] = o.kind;
  j["phase"] = phase_name(o.phase);
  j["unit"] = o.unit;
  j["compressed_operand"] = o.compressed;
  j["regroup"] = o.regroup;
  for (const Column& c : cols) j[c.name] = c.value(o);
  return j;
}

void write_atomically(const std::string& path, const std::string& text, const char* what) {
  const std::string partial = path + ".partial";
  std::FILE* f = std::fopen(partial.c_str(), "wb");
  TRAINER_CHECK(f != nullptr, "{} report '{}': cannot create the file", what, path);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(partial.c_str(), path.c_str()) != 0) {
    std::remove(partial.c_str());
    fail("{} report '{}': cannot write the file", what, path);
  }
}

}  // namespace

nlohmann::ordered_json chip_report_json(const ChipRun& run, const ChipSpec& spec, CostMode mode) {
  const auto cols = numeric_columns(spec);
  nlohmann::ordered_json j;
  nlohmann::ordered_json chip;
  chip["name"] = spec.name;
  chip["source"] = spec.source;
  chip["precision"] = precision_name(spec.precision);
  chip["clock_MHz"] = spec.clock_mhz;
  chip["pes"] = spec.pes;
  chip["peak_MACs_per_cycle"] = spec.peak_macs_per_cycle();
  chip["features"] = {{"zero_skipping", spec.features.zero_skipping},
                      {"speculation", spec.features.speculation},
                      {"adaptive_dataflow", spec.features.adaptive_dataflow},
                      {"pe_regrouping", spec.features.pe_regrouping},
                      {"reformulated_bn", spec.features.reformulated_bn}};
  j["chip"] = chip;
  j["mode"] = cost_mode_name(mode);
  j["steps"] = run.steps();
  j["rows"] = nlohmann::ordered_json::array();
  for (const OpCost& r : run.rows()) j["rows"].push_back(cost_json(r, cols));
  nlohmann::ordered_json phases;
  for (Phase p : {Phase::ff, Phase::bp, Phase::wg, Phase::loss, Phase::update})
    phases[phase_name(p)] = cost_json(run.phase_total(p), cols);
  j["phases"] = phases;
  j["total"] = cost_json(run.total(), cols);
  j["total"]["phase"] = "all";
  return j;
}

void write_chip_json(const std::string& path, const ChipRun& run, const ChipSpec& spec, CostMode mode) {
  write_atomically(path, chip_report_json(run, spec, mode).dump(2) + "\n", "JSON");
}

std::string chip_report_csv(const ChipRun& run, const ChipSpec& spec) {
  const auto cols = numeric_columns(spec);
  std::string out = "layer,layer_name,kind,phase,unit,compressed_operand,regroup";
  for (const Column& c : cols) out += "," + c.name;
  out += "\n";
  auto row = [&](const OpCost& o, const char* phase) {
    out += fmt::format("{},{},{},{},{},{},{}", o.layer, csv_field(o.layer_name), csv_field(o.kind), phase,
                       o.unit, o.compressed, o.regroup);
    for (const Column& c : cols) out += fmt::format(",{:.10g}", c.value(o));
    out += "\n";
  };
  for (const OpCost& r : run.rows()) row(r, phase_name(r.phase));
  for (Phase p : {Phase::ff, Phase::bp, Phase::wg, Phase::loss, Phase::update}) {
    OpCost t = run.phase_total(p);
    t.layer_name = fmt::format("total {}", phase_name(p));
    t.kind = "total";
    row(t, phase_name(p));
  }
  OpCost t = run.total();
  t.kind = "total";
  row(t, "all");
  return out;
}

void write_chip_csv(const std::string& path, const ChipRun& run, const ChipSpec& spec) {
  write_atomically(path, chip_report_csv(run, spec), "CSV");
}

std::string format_chip_summary(const ChipRun& run, const ChipSpec& spec) {
  std::string out = fmt::format("chip {} ({}, {} MHz, {} PEs), {} step(s)\n", spec.name,
                                precision_name(spec.precision), spec.clock_mhz, spec.pes, run.steps());
  out +=
      fmt::format("{:<28} {:<6} {:>5} {:>9} {:>12} {:>6} {:>6} {:>10} {:>11} {:>9} {:>9}\n", "layer", "phase",
                  "data", "split", "cycles", "eutil", "stall", "DRAM MB", "energy uJ", "TFLOPS", "TFLOPS/W");
  // eutil: effectual MACs over cycles x peak; stall: share of the cycles spent waiting on memory.
  auto line = [&](const std::string& name, const char* phase, const OpCost& o) {
    return fmt::format(
        "{:<28} {:<6} {:>5} {:>9} {:>12.0f} {:>6.3f} {:>6.3f} {:>10.3f} {:>11.3f} {:>9.3f} {:>9.2f}\n",
        name.substr(0, 28), phase, o.compressed.substr(0, 5), o.regroup.substr(0, 9), o.cycles,
        o.effectual_utilization(), o.cycles > 0 ? o.stall_cycles / o.cycles : 0.0,
        (o.events.dram_read_bits + o.events.dram_write_bits) / 8e6, o.energy.total() * 1e-6,
        dense_tflops(o, spec), tflops_per_watt(o));
  };
  for (const OpCost& r : run.rows()) out += line(r.layer_name, phase_name(r.phase), r);
  for (Phase p : {Phase::ff, Phase::bp, Phase::wg, Phase::loss, Phase::update}) {
    const OpCost t = run.phase_total(p);
    if (t.calls) out += line(fmt::format("total {}", phase_name(p)), phase_name(p), t);
  }
  const OpCost t = run.total();
  out += line("total", "all", t);
  const EnergyBreakdown& e = t.energy;
  const double tot = e.total() > 0 ? e.total() : 1.0;
  out += fmt::format(
      "energy: mac {:.1f}%, registers {:.1f}%, SRAM weights {:.1f}% activations {:.1f}% gradients {:.1f}%, "
      "DRAM {:.1f}%, metadata {:.1f}%, element-wise {:.1f}%, leakage {:.1f}%\n",
      100 * e.mac / tot, 100 * e.register_file / tot, 100 * e.sram[0] / tot, 100 * e.sram[1] / tot,
      100 * e.sram[2] / tot, 100 * e.dram / tot, 100 * e.metadata / tot, 100 * e.vector / tot,
      100 * e.leakage / tot);
  return out;
}

}  // namespace trainer
