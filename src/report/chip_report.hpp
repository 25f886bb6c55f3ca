// Reports of a chip run: JSON (the whole picture, machine-readable), CSV (one row per layer x phase, units
// in the column names, then per-phase and overall totals) and a text table for the terminal.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "chip/model.hpp"
#include "chip/spec.hpp"

namespace trainer {

nlohmann::ordered_json chip_report_json(const ChipRun& run, const ChipSpec& spec, CostMode mode);
// Both write `path`.partial and rename, so no half-written report is left behind.
void write_chip_json(const std::string& path, const ChipRun& run, const ChipSpec& spec, CostMode mode);
void write_chip_csv(const std::string& path, const ChipRun& run, const ChipSpec& spec);
std::string chip_report_csv(const ChipRun& run, const ChipSpec& spec);
// Per layer x phase: cycles, utilization, DRAM traffic, energy, TFLOPS/W; then per-phase totals.
std::string format_chip_summary(const ChipRun& run, const ChipSpec& spec);

}  // namespace trainer
