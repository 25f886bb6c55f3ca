// Chip specs: the shipped configs load; bad files are refused with messages naming the file and key.
#include "chip/spec.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "chip_test_util.hpp"
#include "core/error.hpp"

namespace trainer {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << "fixture text '" << from << "' not found";
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

// The error message parse_chip_spec gives for a text, or "" if it is accepted.
std::string error_of(const std::string& text) {
  try {
    parse_chip_spec(text, "bad.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ChipSpec, ShippedConfigsLoad) {
  const ChipSpec t = load_chip_spec(testing::config_path("trainer-28nm.yaml"));
  EXPECT_EQ(t.name, "trainer-28nm");
  EXPECT_EQ(t.pes, 256);
  EXPECT_EQ(t.precision, Precision::fp8);
  EXPECT_EQ(t.regroupings.size(), 4u);
  EXPECT_EQ(t.regroupings[1].name(), "4x8x8");
  EXPECT_TRUE(t.features.zero_skipping && t.features.adaptive_dataflow && t.features.pe_regrouping &&
              t.features.reformulated_bn && t.features.speculation);
  EXPECT_DOUBLE_EQ(t.buffers[kActivationBuffer].size_kib, 256);
  EXPECT_DOUBLE_EQ(t.mac_pj[1], 0.246);

  const ChipSpec d = load_chip_spec(testing::config_path("dense-baseline.yaml"));
  EXPECT_FALSE(d.features.zero_skipping || d.features.adaptive_dataflow || d.features.pe_regrouping ||
               d.features.reformulated_bn || d.features.speculation);
  const ChipSpec z = load_chip_spec(testing::config_path("zero-skip-baseline.yaml"));
  EXPECT_TRUE(z.features.zero_skipping);
  EXPECT_FALSE(z.features.adaptive_dataflow || z.features.pe_regrouping || z.features.reformulated_bn ||
               z.features.speculation);
  // The baselines differ from Trainer only in name and features.
  EXPECT_EQ(d.mac_pj, t.mac_pj);
  EXPECT_EQ(z.dram_pj_per_bit, t.dram_pj_per_bit);
}

TEST(ChipSpec, MissingKeyIsNamed) {
  const std::string good = read_text(testing::config_path("trainer-28nm.yaml"));
  const std::string msg = error_of(replace_once(good, "  clock_mhz: 200", "  # no clock"));
  EXPECT_NE(msg.find("bad.yaml"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing key 'technology.clock_mhz'"), std::string::npos) << msg;
}

TEST(ChipSpec, WrongTypeIsNamedWithLine) {
  const std::string good = read_text(testing::config_path("trainer-28nm.yaml"));
  const std::string msg =
      error_of(replace_once(good, "size_kib: 256, banks: 16", "size_kib: lots, banks: 16"));
  EXPECT_NE(msg.find("key 'buffers.activations.size_kib'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(line "), std::string::npos) << msg;
  EXPECT_NE(msg.find("got 'lots'"), std::string::npos) << msg;
}

TEST(ChipSpec, NegativeAndZeroAreRefused) {
  const std::string good = read_text(testing::config_path("trainer-28nm.yaml"));
  std::string msg = error_of(replace_once(good, "pj_per_bit: 10", "pj_per_bit: -1"));
  EXPECT_NE(msg.find("key 'dram.pj_per_bit'"), std::string::npos) << msg;
  msg = error_of(replace_once(good, "pes: 256", "pes: 0"));
  EXPECT_NE(msg.find("key 'pe_array.pes'"), std::string::npos) << msg;
}

TEST(ChipSpec, UnknownKeyIsRefused) {
  const std::string good = read_text(testing::config_path("trainer-28nm.yaml"));
  const std::string msg =
      error_of(replace_once(good, "  vector_lanes: 16", "  vector_lanes: 16\n  colums: 16"));
  EXPECT_NE(msg.find("unknown key 'pe_array.colums'"), std::string::npos) << msg;
}

TEST(ChipSpec, RegroupingMustCoverTheArray) {
  const std::string good = read_text(testing::config_path("trainer-28nm.yaml"));
  const std::string msg =
      error_of(replace_once(good, "{groups: 4, rows: 8, cols: 8}", "{groups: 2, rows: 8, cols: 8}"));
  EXPECT_NE(msg.find("key 'pe_array.regroupings[1]'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("= 128, expected pe_array.pes = 256"), std::string::npos) << msg;
}

TEST(ChipSpec, ChoicesAreChecked) {
  const std::string good = read_text(testing::config_path("trainer-28nm.yaml"));
  std::string msg = error_of(replace_once(good, "precision: fp8", "precision: fp4"));
  EXPECT_NE(msg.find("key 'precision'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("fp16 | fp8"), std::string::npos) << msg;
  msg = error_of(replace_once(good, "  zero_skipping: true", "  zero_skipping: maybe"));
  EXPECT_NE(msg.find("key 'features.zero_skipping'"), std::string::npos) << msg;
  msg = error_of(replace_once(good, "  zero_skipping: true", "  zero_skipping: false"));
  EXPECT_NE(msg.find("features.adaptive_dataflow"), std::string::npos) << msg;
}

TEST(ChipSpec, NotYamlAndMissingFile) {
  EXPECT_NE(error_of("name: [unclosed").find("not valid YAML"), std::string::npos);
  EXPECT_NE(error_of("- a list\n- at the top").find("expected a mapping"), std::string::npos);
  try {
    load_chip_spec("/nonexistent/chip.yaml");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/chip.yaml"), std::string::npos);
  }
}

}  // namespace
}  // namespace trainer
