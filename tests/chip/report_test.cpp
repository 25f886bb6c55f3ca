// Reports and the trace -> chip pipeline: a recorded step costed from its trace equals the same step
// costed live; the CSV has one row per layer x phase with units in its column names; the JSON totals add up.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "chip/model.hpp"
#include "chip_test_util.hpp"
#include "ops/trace.hpp"
#include "report/chip_report.hpp"

namespace trainer {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()))).string();
}

std::vector<Op> small_step() {
  std::vector<Op> step = testing::synthetic_resnet18_step(2, 0.5, 0.2, 0.5, 7);
  return step;
}

TEST(ChipReport, TraceCostsLikeLive) {
  const std::vector<Op> step = small_step();
  const std::string path = temp_path("chip.trace");
  write_trace(path, {{0, step}, {1, step}});
  for (CostMode mode : {CostMode::exact, CostMode::statistical}) {
    const ChipModel model(load_chip_spec(testing::config_path("trainer-28nm.yaml")), mode);
    ChipRun live;
    live.add_step(model.cost_step(step));
    live.add_step(model.cost_step(step));
    const ChipRun replay = cost_trace(path, model);
    ASSERT_EQ(replay.rows().size(), live.rows().size());
    EXPECT_EQ(replay.steps(), 2u);
    for (size_t i = 0; i < live.rows().size(); ++i) {
      EXPECT_EQ(replay.rows()[i].cycles, live.rows()[i].cycles) << live.rows()[i].layer_name;
      EXPECT_EQ(replay.rows()[i].energy.total(), live.rows()[i].energy.total()) << live.rows()[i].layer_name;
    }
  }
  std::filesystem::remove(path);
}

TEST(ChipReport, CsvAndJson) {
  const ChipSpec spec = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  const ChipModel model(spec, CostMode::exact);
  ChipRun run;
  run.add_step(model.cost_step(small_step()));
  const std::string csv_path = temp_path("chip.csv"), json_path = temp_path("chip.json");
  write_chip_csv(csv_path, run, spec);
  write_chip_json(json_path, run, spec, CostMode::exact);
  EXPECT_FALSE(std::filesystem::exists(csv_path + ".partial"));

  std::ifstream csv(csv_path);
  std::string header, line;
  std::getline(csv, header);
  for (const char* col : {"layer_name", "phase", "cycles", "time_us", "dram_read_bytes", "energy_total_pJ",
                          "energy_sram_activations_pJ", "TFLOPS_per_W", "pe_utilization"})
    EXPECT_NE(header.find(col), std::string::npos) << col;
  const size_t columns = static_cast<size_t>(std::count(header.begin(), header.end(), ',')) + 1;
  size_t rows = 0, totals = 0;
  while (std::getline(csv, line)) {
    EXPECT_EQ(static_cast<size_t>(std::count(line.begin(), line.end(), ',')) + 1, columns) << line;
    ++rows;
    totals += line.find(",total,") != std::string::npos;
  }
  EXPECT_EQ(rows, run.rows().size() + 6);  // + totals of the 5 phases and the overall total
  EXPECT_EQ(totals, 6u);

  std::ifstream jf(json_path);
  const nlohmann::json j = nlohmann::json::parse(jf);
  EXPECT_EQ(j["mode"], "exact");
  EXPECT_EQ(j["chip"]["name"], "trainer-28nm");
  ASSERT_EQ(j["rows"].size(), run.rows().size());
  double energy = 0, cycles = 0;
  for (const auto& r : j["rows"])
    energy += r["energy_total_pJ"].get<double>(), cycles += r["cycles"].get<double>();
  EXPECT_NEAR(j["total"]["energy_total_pJ"].get<double>(), energy, 1e-9 * energy);
  EXPECT_NEAR(j["total"]["cycles"].get<double>(), cycles, 1e-9 * cycles);
  double phases = 0;
  for (const char* p : {"ff", "bp", "wg", "loss", "update"})
    phases += j["phases"][p]["energy_total_pJ"].get<double>();
  EXPECT_NEAR(phases, energy, 1e-9 * energy);
  // The components of the total add up to it.
  const auto& t = j["total"];
  double parts = 0;
  for (const char* k : {"energy_mac_pJ", "energy_register_pJ", "energy_sram_weights_pJ",
                        "energy_sram_activations_pJ", "energy_sram_gradients_pJ", "energy_dram_pJ",
                        "energy_metadata_pJ", "energy_vector_pJ", "energy_leakage_pJ"})
    parts += t[k].get<double>();
  EXPECT_NEAR(parts, t["energy_total_pJ"].get<double>(), 1e-9 * parts);

  const std::string summary = format_chip_summary(run, spec);
  EXPECT_NE(summary.find("stage1.block0.conv1"), std::string::npos);
  EXPECT_NE(summary.find("total"), std::string::npos);
  std::filesystem::remove(csv_path);
  std::filesystem::remove(json_path);
}

TEST(ChipReport, TrainerBeatsItsBaselines) {
  // On a sparse step, Trainer's features must not make it slower or costlier than the zero-skip
  // baseline, which must not lose to the dense one (same hardware, same step).
  const std::vector<Op> step = testing::synthetic_resnet18_step(4, 0.4, 0.1, 0.5, 3);
  double cycles[3], energy[3];
  int i = 0;
  for (const char* file : {"trainer-28nm.yaml", "zero-skip-baseline.yaml", "dense-baseline.yaml"}) {
    const ChipModel model(load_chip_spec(testing::config_path(file)), CostMode::exact);
    ChipRun run;
    run.add_step(model.cost_step(step));
    cycles[i] = run.total().cycles, energy[i] = run.total().energy.total();
    ++i;
  }
  EXPECT_LT(cycles[0], cycles[1]);
  EXPECT_LT(cycles[1], cycles[2]);
  EXPECT_LT(energy[0], energy[1]);
  EXPECT_LT(energy[1], energy[2]);
}

}  // namespace
}  // namespace trainer
