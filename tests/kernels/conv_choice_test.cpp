// The conv kernel cost model (kernels/conv_choice.hpp): the built-in model's choices, break-even
// densities, the JSON file (round trip, and errors naming the file and key), the non-negative fitter on
// synthetic points with known coefficients, and a smoke run of the measurement and of `trainer
// calibrate`. Nothing here asserts on measured times: timings on a shared machine are not a test.
#include "kernels/conv_choice.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "kernels/sparse_conv.hpp"

namespace trainer {
namespace {

namespace fs = std::filesystem;

constexpr ConvPhase kPhases[3] = {ConvPhase::ff, ConvPhase::bp, ConvPhase::wg};

ConvGeom geom(int64_t N, int64_t C, int64_t H, int64_t K, int64_t R, int64_t stride, int64_t pad) {
  ConvGeom g;
  g.N = N, g.C = C, g.H = H, g.W = H, g.K = K, g.R = R, g.S = R, g.stride = stride, g.pad = pad;
  return g;
}

// A 3x3 32->32 layer at 14x14, batch 64 (ResNet-20's second stage).
const ConvGeom kMid = geom(64, 32, 14, 32, 3, 1, 1);

class ConvChoiceFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("trainer_conv_choice_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

std::string load_error(const std::string& p) {
  try {
    ConvCostModel::load(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---------------------------------------------------------------------------------------------------
// The built-in model

const char* const kBackends[4] = {"avx512", "avx512-amd", "avx2", "portable"};

TEST(ConvChoice, DefaultsAreThoseOfTheBackendThisBuildRuns) {
  const ConvCostModel m = ConvCostModel::defaults();
  const std::string set = ConvCostModel::builtin_set();
  EXPECT_EQ(m.source, "built-in defaults (" + set + ")");
  EXPECT_TRUE(m.same_coefficients(ConvCostModel::defaults_for(set)));
  // The set is the backend's, AVX-512 on AMD aside.
  if (set == "avx512-amd")
    EXPECT_EQ(std::string(sparse_conv_backend()), "avx512");
  else
    EXPECT_EQ(set, sparse_conv_backend());
  // The sets differ: an AVX2 machine's oneDNN and sparse kernels are not AVX-512's, nor AMD's Intel's.
  for (size_t i = 0; i < std::size(kBackends); ++i)
    for (size_t j = i + 1; j < std::size(kBackends); ++j)
      EXPECT_FALSE(ConvCostModel::defaults_for(kBackends[i])
                       .same_coefficients(ConvCostModel::defaults_for(kBackends[j])))
          << kBackends[i] << " and " << kBackends[j];
  try {
    ConvCostModel::defaults_for("neon");
    ADD_FAILURE() << "an unknown backend was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'neon'"), std::string::npos) << e.what();
  }
}

TEST(ConvChoice, DefaultsPickSparseAtLowDensityAndDenseAtFull) {
  for (const char* backend : kBackends) {
    SCOPED_TRACE(backend);
    const ConvCostModel m = ConvCostModel::defaults_for(backend);
    EXPECT_EQ(m.threads, 2);
    // The portable kernels (no SIMD beyond the baseline) pay only at a few percent.
    const double low = std::string(backend) == "portable" ? 0.02 : 0.05;
    for (const ConvGeom& g : {kMid, geom(64, 16, 28, 16, 3, 1, 1), geom(64, 64, 7, 64, 3, 1, 1)})
      for (ConvPhase p : kPhases) {
        SCOPED_TRACE(conv_phase_name(p));
        // Each kernel on its own layout.
        EXPECT_LT(m.estimate_ns(p, ConvKernel::sparse, g, low, false),
                  m.estimate_ns(p, ConvKernel::dense, g, 1, false));
        EXPECT_GT(m.estimate_ns(p, ConvKernel::sparse, g, 1.0, false),
                  m.estimate_ns(p, ConvKernel::dense, g, 1, false));
        // Activations already in the favoured layout of the kernel that should win.
        EXPECT_EQ(m.choose(p, g, low, /*activations_nchw16n=*/true), ConvKernel::sparse);
        EXPECT_EQ(m.choose(p, g, 1.0, /*activations_nchw16n=*/false), ConvKernel::dense);
        EXPECT_EQ(m.choose(p, g, 0.0, true), ConvKernel::sparse);
      }
  }
}

TEST(ConvChoice, EstimatesAreNonNegativeAndSparseGrowsWithDensity) {
  for (const char* backend : kBackends) {
    SCOPED_TRACE(backend);
    const ConvCostModel m = ConvCostModel::defaults_for(backend);
    for (ConvPhase p : kPhases) {
      double prev = -1;
      for (double d = 0; d <= 1.0001; d += 0.05) {
        const double t = m.estimate_ns(p, ConvKernel::sparse, kMid, d, false);
        EXPECT_GT(t, prev);
        prev = t;
      }
      // Densities outside [0, 1] are clamped; NaN counts as all weights kept; dense ignores density.
      EXPECT_EQ(m.estimate_ns(p, ConvKernel::sparse, kMid, 2.0, false),
                m.estimate_ns(p, ConvKernel::sparse, kMid, 1.0, false));
      EXPECT_EQ(m.estimate_ns(p, ConvKernel::sparse, kMid, -1.0, false),
                m.estimate_ns(p, ConvKernel::sparse, kMid, 0.0, false));
      EXPECT_EQ(m.estimate_ns(p, ConvKernel::sparse, kMid, NAN, false),
                m.estimate_ns(p, ConvKernel::sparse, kMid, 1.0, false));
      EXPECT_EQ(m.estimate_ns(p, ConvKernel::dense, kMid, 0.1, false),
                m.estimate_ns(p, ConvKernel::dense, kMid, 1.0, false));
      // The reorder costs something.
      EXPECT_GT(m.estimate_ns(p, ConvKernel::dense, kMid, 1, true),
                m.estimate_ns(p, ConvKernel::dense, kMid, 1, false));
    }
  }
}

TEST(ConvChoice, BreakEvenDensityIsWhereTheChoiceFlips) {
  for (const char* backend : kBackends) {
    SCOPED_TRACE(backend);
    const ConvCostModel m = ConvCostModel::defaults_for(backend);
    for (ConvPhase p : kPhases)
      for (bool held16n : {false, true}) {
        SCOPED_TRACE(std::string(conv_phase_name(p)) + (held16n ? " held NCHW16n" : " held nChw16c"));
        const double be = m.break_even_density(p, kMid, held16n);
        ASSERT_GE(be, 0.0);
        ASSERT_LE(be, 1.0);
        if (be > 0.01) {
          EXPECT_EQ(m.choose(p, kMid, be - 0.01, held16n), ConvKernel::sparse);
        }
        if (be < 0.99) {
          EXPECT_EQ(m.choose(p, kMid, be + 0.01, held16n), ConvKernel::dense);
        }
      }
    for (ConvPhase p : kPhases) {
      // Holding the activations in the sparse kernel's layout can only favour it; with neither kernel
      // paying a reorder the break-even lies between the two.
      EXPECT_LE(m.break_even_density(p, kMid, false), m.break_even_density(p, kMid, true));
      EXPECT_LE(m.break_even_density(p, kMid, false), m.kernel_break_even_density(p, kMid));
      EXPECT_LE(m.kernel_break_even_density(p, kMid), m.break_even_density(p, kMid, true));
      // Held in NCHW16n (no reorder for sparse), sparse pays at some density in (0, 1).
      const double be = m.break_even_density(p, kMid, true);
      EXPECT_GT(be, 0.0);
      EXPECT_LT(be, 1.0);
    }
  }
}

TEST(ConvChoice, BreakEvenEdgeCases) {
  ConvCostModel m;
  EXPECT_EQ(m.sparse_margin, ConvCostModel::kDefaultSparseMargin);
  m.sparse_margin = 0.0;  // the margin's own case is at the end
  m.at(ConvPhase::ff, ConvKernel::dense) = {1000, 1e-3, 0};
  // Sparse free per multiply but dearer per call: never; cheaper per call: always.
  m.at(ConvPhase::ff, ConvKernel::sparse) = {1e12, 0, 0};
  EXPECT_EQ(m.break_even_density(ConvPhase::ff, kMid, true), 0.0);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, 0.0, true), ConvKernel::dense);
  m.at(ConvPhase::ff, ConvKernel::sparse) = {0, 0, 0};
  EXPECT_EQ(m.break_even_density(ConvPhase::ff, kMid, true), 1.0);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, 1.0, true), ConvKernel::sparse);
  // A known crossing: dense 1000 + 1e-3 M, sparse 500 + 2e-3 M d  ->  d = (500 + 1e-3 M) / (2e-3 M).
  m.at(ConvPhase::ff, ConvKernel::sparse) = {500, 2e-3, 0};
  const double M = static_cast<double>(kMid.macs());
  EXPECT_NEAR(m.break_even_density(ConvPhase::ff, kMid, true), (500 + 1e-3 * M) / (2e-3 * M), 1e-12);
  // Reorders: r ns per activation element on the kernel whose layout the activations are not in; each
  // kernel on its own layout pays none.
  m.reorder_ns_per_elem = 0.005;
  const double E = conv_activation_elems(ConvPhase::ff, kMid);
  EXPECT_NEAR(m.kernel_break_even_density(ConvPhase::ff, kMid), (500 + 1e-3 * M) / (2e-3 * M), 1e-12);
  EXPECT_NEAR(m.break_even_density(ConvPhase::ff, kMid, true), (500 + 1e-3 * M + 0.005 * E) / (2e-3 * M),
              1e-12);
  EXPECT_NEAR(m.break_even_density(ConvPhase::ff, kMid, false), (500 + 1e-3 * M - 0.005 * E) / (2e-3 * M),
              1e-12);
  // The margin: the kernel on the activations' own layout keeps the call unless the other is estimated
  // faster by it. Activations in nChw16c (or each kernel on its own layout): oneDNN holds it, and sparse
  // must come in under (1 - margin) times dense.
  m.reorder_ns_per_elem = 0.0;
  m.sparse_margin = 0.1;
  const double be = (0.9 * (1000 + 1e-3 * M) - 500) / (2e-3 * M);
  EXPECT_NEAR(m.kernel_break_even_density(ConvPhase::ff, kMid), be, 1e-12);
  EXPECT_NEAR(m.break_even_density(ConvPhase::ff, kMid, false), be, 1e-12);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, be - 0.005, false), ConvKernel::sparse);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, be + 0.005, false), ConvKernel::dense);
  // Between that and where the estimates meet, sparse is estimated faster, but not by the margin: dense.
  const double tie = (500 + 1e-3 * M) / (2e-3 * M);
  ASSERT_GT(tie - be, 0.02);
  EXPECT_LT(m.estimate_ns(ConvPhase::ff, ConvKernel::sparse, kMid, tie - 0.01, false),
            m.estimate_ns(ConvPhase::ff, ConvKernel::dense, kMid, 1.0, false));
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, tie - 0.01, false), ConvKernel::dense);
  // Activations in NCHW16n (a pruned run): the sparse kernel holds the call, and oneDNN must come in under
  // (1 - margin) times sparse; past the tie, sparse is estimated slower, but not by the margin: sparse.
  const double be16n = ((1000 + 1e-3 * M) / 0.9 - 500) / (2e-3 * M);
  EXPECT_NEAR(m.break_even_density(ConvPhase::ff, kMid, true), be16n, 1e-12);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, be16n - 0.005, true), ConvKernel::sparse);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, be16n + 0.005, true), ConvKernel::dense);
  ASSERT_GT(be16n - tie, 0.02);
  EXPECT_GT(m.estimate_ns(ConvPhase::ff, ConvKernel::sparse, kMid, tie + 0.01, false),
            m.estimate_ns(ConvPhase::ff, ConvKernel::dense, kMid, 1.0, false));
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, tie + 0.01, true), ConvKernel::sparse);
}

// ---------------------------------------------------------------------------------------------------
// Per-shape entries

TEST(ConvChoiceShapes, ShapeNamesAndGeometry) {
  EXPECT_EQ(ConvShape::of(kMid).name(), "32->32 3x3 @14x14");
  EXPECT_EQ(ConvShape::of(geom(64, 32, 14, 64, 3, 2, 1)).name(), "32->64 3x3 s2 @14x14");
  EXPECT_EQ(ConvShape::of(geom(64, 16, 28, 32, 1, 2, 0)).name(), "16->32 1x1 s2 @28x28");
  EXPECT_EQ(ConvShape::of(geom(64, 16, 28, 16, 3, 1, 0)).name(), "16->16 3x3 p0 @28x28");
  ConvGeom g = geom(7, 3, 32, 64, 3, 1, 1);
  g.W = 30;
  const ConvGeom back = ConvShape::of(g).geom(7);
  EXPECT_EQ(back.N, 7);
  EXPECT_EQ(back.macs(), g.macs());
  EXPECT_TRUE(ConvShape::of(back) == ConvShape::of(g));
  EXPECT_EQ(ConvShape::of(g).name(), "3->64 3x3 @32x30");
}

// A model whose entry for kMid's shape differs from its generic coefficients in every term.
ConvCostModel with_mid_entry() {
  ConvCostModel m = ConvCostModel::defaults();
  ShapeCosts e;
  e.shape = ConvShape::of(kMid);
  for (ConvPhase p : kPhases) {
    e.coeffs[static_cast<int>(p)][0] = {0.0, 0.004 + 0.001 * static_cast<int>(p), 0.0};  // dense
    e.coeffs[static_cast<int>(p)][1] = {3000.0, 0.02, 0.0};                              // sparse
  }
  m.shapes.push_back(e);
  return m;
}

TEST(ConvChoiceShapes, AnEntryServesItsShapeAtAnyBatchAndNoOtherShape) {
  const ConvCostModel m = with_mid_entry();
  const ConvCostModel generic = ConvCostModel::defaults();
  for (int64_t N : {64, 128, 5}) {
    ConvGeom g = kMid;
    g.N = N;
    const double M = static_cast<double>(g.macs());
    ASSERT_NE(m.entry_for(g), nullptr);
    for (ConvPhase p : kPhases) {
      const double dense_per_mac = 0.004 + 0.001 * static_cast<int>(p);
      EXPECT_DOUBLE_EQ(m.estimate_ns(p, ConvKernel::dense, g, 1.0, false), dense_per_mac * M);
      EXPECT_DOUBLE_EQ(m.estimate_ns(p, ConvKernel::sparse, g, 0.25, false), 3000.0 + 0.02 * 0.25 * M);
      // The reorder stays the model's own, per element.
      EXPECT_DOUBLE_EQ(m.estimate_ns(p, ConvKernel::dense, g, 1.0, true),
                       dense_per_mac * M + m.reorder_ns_per_elem * conv_activation_elems(p, g));
      const double keep = 1.0 - m.sparse_margin;
      EXPECT_NEAR(m.kernel_break_even_density(p, g),
                  std::clamp((keep * dense_per_mac * M - 3000.0) / (0.02 * M), 0.0, 1.0), 1e-12);
    }
  }
  // Another shape (here only the stride differs) keeps the generic coefficients.
  const ConvGeom other = geom(64, 32, 14, 32, 3, 2, 1);
  EXPECT_EQ(m.entry_for(other), nullptr);
  for (ConvPhase p : kPhases)
    for (ConvKernel k : {ConvKernel::dense, ConvKernel::sparse}) {
      EXPECT_EQ(m.estimate_ns(p, k, other, 0.3, false), generic.estimate_ns(p, k, other, 0.3, false));
      EXPECT_TRUE(m.coeffs_for(p, k, other) == generic.at(p, k));
    }
  // The choice follows the entry's numbers: in a pruned run (activations in NCHW16n, dense pays the
  // reorder; the sparse kernel holds the call) sparse stays below
  // ((0.004 M + reorder) / (1 - margin) - 3000) / (0.02 M).
  const double M = static_cast<double>(kMid.macs());
  const double flip = ((0.004 * M + m.reorder_ns_per_elem * conv_activation_elems(ConvPhase::ff, kMid)) /
                           (1.0 - m.sparse_margin) -
                       3000.0) /
                      (0.02 * M);
  ASSERT_GT(flip, 0.05);
  ASSERT_LT(flip, 0.95);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, flip + 0.01, true), ConvKernel::dense);
  EXPECT_EQ(m.choose(ConvPhase::ff, kMid, flip - 0.01, true), ConvKernel::sparse);
  EXPECT_NEAR(m.break_even_density(ConvPhase::ff, kMid, true), flip, 1e-12);
}

// ---------------------------------------------------------------------------------------------------
// The file

TEST_F(ConvChoiceFile, SaveLoadRoundTrip) {
  ConvCostModel m = ConvCostModel::defaults();
  m.at(ConvPhase::bp, ConvKernel::sparse).ns_per_elem = 1.0 / 3.0;
  m.at(ConvPhase::wg, ConvKernel::dense).ns_per_call = 1e-300;
  m.reorder_ns_per_elem = 0.1 + 0.2;
  m.threads = 7;
  m.sparse_margin = 0.123;
  m.save(path("c.json"));
  EXPECT_FALSE(fs::exists(path("c.json.tmp")));
  const ConvCostModel back = ConvCostModel::load(path("c.json"));
  EXPECT_TRUE(back.same_coefficients(m));
  EXPECT_EQ(back.source, path("c.json"));
  // Saving over an existing file replaces it.
  ConvCostModel::defaults().save(path("c.json"));
  EXPECT_TRUE(ConvCostModel::load(path("c.json")).same_coefficients(ConvCostModel::defaults()));
}

TEST_F(ConvChoiceFile, LoadRejectsBadFilesNamingFileAndKey) {
  ConvCostModel::defaults().save(path("good.json"));
  const std::string text = slurp(path("good.json"));
  const nlohmann::json good = nlohmann::json::parse(text);

  EXPECT_NE(load_error(path("absent.json")).find("calibration '" + path("absent.json") + "': cannot open"),
            std::string::npos);

  spit(path("truncated.json"), text.substr(0, text.size() / 2));
  const std::string trunc = load_error(path("truncated.json"));
  EXPECT_NE(trunc.find("calibration '" + path("truncated.json") + "'"), std::string::npos) << trunc;
  EXPECT_NE(trunc.find("not valid JSON"), std::string::npos) << trunc;

  nlohmann::json j = good;
  j["ff"]["sparse"].erase("ns_per_mac");
  spit(path("missing.json"), j.dump());
  EXPECT_NE(load_error(path("missing.json"))
                .find("calibration '" + path("missing.json") + "': key 'ff.sparse.ns_per_mac' missing"),
            std::string::npos)
      << load_error(path("missing.json"));

  j = good;
  j["bp"]["dense"]["ns_per_call"] = -1.5;
  spit(path("negative.json"), j.dump());
  const std::string neg = load_error(path("negative.json"));
  EXPECT_NE(neg.find("key 'bp.dense.ns_per_call' must be a non-negative number"), std::string::npos) << neg;
  EXPECT_NE(neg.find(path("negative.json")), std::string::npos) << neg;

  j = good;
  j["wg"]["sparse"]["ns_per_elem"] = "fast";
  spit(path("string.json"), j.dump());
  EXPECT_NE(load_error(path("string.json")).find("key 'wg.sparse.ns_per_elem' must be a non-negative number"),
            std::string::npos);

  j = good;
  j.erase("wg");
  spit(path("nophase.json"), j.dump());
  EXPECT_NE(load_error(path("nophase.json")).find("key 'wg' missing"), std::string::npos);

  j = good;
  j.erase("reorder_ns_per_elem");
  spit(path("noreorder.json"), j.dump());
  EXPECT_NE(load_error(path("noreorder.json")).find("key 'reorder_ns_per_elem' missing"), std::string::npos);

  j = good;
  j["sparse_margin"] = 0.5;
  spit(path("margin.json"), j.dump());
  EXPECT_NE(load_error(path("margin.json")).find("key 'sparse_margin' must be below 0.5"), std::string::npos)
      << load_error(path("margin.json"));
  j["sparse_margin"] = -0.01;
  spit(path("margin.json"), j.dump());
  EXPECT_NE(load_error(path("margin.json")).find("key 'sparse_margin' must be a non-negative number"),
            std::string::npos);
  // Files written before the margin existed have none: the default.
  j = good;
  j.erase("sparse_margin");
  spit(path("nomargin.json"), j.dump());
  EXPECT_EQ(ConvCostModel::load(path("nomargin.json")).sparse_margin, ConvCostModel::kDefaultSparseMargin);

  j = good;
  j["version"] = 99;
  spit(path("version.json"), j.dump());
  EXPECT_NE(load_error(path("version.json")).find("key 'version' must be 1"), std::string::npos);
}

TEST_F(ConvChoiceFile, ShapeEntriesRoundTripAndBadOnesAreNamed) {
  ConvCostModel m = with_mid_entry();
  ShapeCosts second = m.shapes[0];
  second.shape = ConvShape::of(geom(64, 16, 28, 32, 1, 2, 0));
  second.coeffs[2][1].ns_per_mac = 1.0 / 7.0;
  m.shapes.push_back(second);
  m.save(path("s.json"));
  const ConvCostModel back = ConvCostModel::load(path("s.json"));
  EXPECT_TRUE(back.same_coefficients(m));
  ASSERT_EQ(back.shapes.size(), 2u);
  EXPECT_TRUE(back.shapes[1].shape == second.shape);
  // A model without entries writes no "shapes" key, and loads without one.
  ConvCostModel::defaults().save(path("plain.json"));
  EXPECT_EQ(nlohmann::json::parse(slurp(path("plain.json"))).count("shapes"), 0u);
  EXPECT_TRUE(ConvCostModel::load(path("plain.json")).shapes.empty());

  const nlohmann::json good = nlohmann::json::parse(slurp(path("s.json")));
  auto error_with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = good;
    edit(j);
    spit(path("bad.json"), j.dump());
    return load_error(path("bad.json"));
  };
  std::string e = error_with([](nlohmann::json& j) { j["shapes"] = 3; });
  EXPECT_NE(e.find("calibration '" + path("bad.json") + "': key 'shapes' must be an array"),
            std::string::npos)
      << e;
  e = error_with([](nlohmann::json& j) { j["shapes"][1]["stride"] = 0; });
  EXPECT_NE(e.find("key 'shapes[1].stride' must be an integer in [1,"), std::string::npos) << e;
  e = error_with([](nlohmann::json& j) { j["shapes"][0]["C"] = 2.5; });
  EXPECT_NE(e.find("key 'shapes[0].C' must be an integer"), std::string::npos) << e;
  e = error_with([](nlohmann::json& j) { j["shapes"][1]["bp"]["sparse"].erase("ns_per_mac"); });
  EXPECT_NE(e.find("key 'shapes[1].bp.sparse.ns_per_mac' missing"), std::string::npos) << e;
  e = error_with([](nlohmann::json& j) { j["shapes"][0]["wg"]["dense"]["ns_per_mac"] = -1; });
  EXPECT_NE(e.find("key 'shapes[0].wg.dense.ns_per_mac' must be a non-negative number"), std::string::npos)
      << e;
  e = error_with([](nlohmann::json& j) { j["shapes"][1] = j["shapes"][0]; });
  EXPECT_NE(e.find("key 'shapes[1]' repeats the shape of shapes[0] (32->32 3x3 @14x14)"), std::string::npos)
      << e;
  e = error_with([](nlohmann::json& j) { j["shapes"][0]["R"] = 17; });
  EXPECT_NE(e.find("key 'shapes[0]' is 32->32 17x3"), std::string::npos) << e;
  EXPECT_NE(e.find("larger than the padded input"), std::string::npos) << e;
}

TEST(ConvChoice, SaveToAnImpossiblePathNamesIt) {
  try {
    ConvCostModel::defaults().save("/nonexistent-dir/c.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("calibration '/nonexistent-dir/c.json'"), std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------------------------------------------
// The fitter, on synthetic points

std::vector<FitPoint> synthetic(const KernelCoeffs& c, double noise_seed = 0) {
  std::vector<FitPoint> pts;
  int i = 0;
  for (double macs : {1e5, 3e6, 2e7, 1e8})
    for (double elems : {2e4, 3e5, 1e6}) {
      double t = c.ns_per_call + c.ns_per_mac * macs + c.ns_per_elem * elems;
      if (noise_seed != 0) t *= 1.0 + 0.01 * std::sin(noise_seed * ++i);  // +-1%, deterministic
      pts.push_back({macs, elems, t});
    }
  return pts;
}

TEST(ConvChoiceFit, RecoversKnownCoefficients) {
  const KernelCoeffs truth{20000, 0.012, 0.35};
  const FitResult r = fit_kernel_coeffs(synthetic(truth));
  EXPECT_EQ(r.points, 12);
  EXPECT_NEAR(r.coeffs.ns_per_call, truth.ns_per_call, 1e-6 * truth.ns_per_call);
  EXPECT_NEAR(r.coeffs.ns_per_mac, truth.ns_per_mac, 1e-6 * truth.ns_per_mac);
  EXPECT_NEAR(r.coeffs.ns_per_elem, truth.ns_per_elem, 1e-6 * truth.ns_per_elem);
  EXPECT_LT(r.max_rel_error, 1e-9);

  const FitResult noisy = fit_kernel_coeffs(synthetic(truth, 1.7));
  EXPECT_NEAR(noisy.coeffs.ns_per_mac, truth.ns_per_mac, 0.05 * truth.ns_per_mac);
  EXPECT_GT(noisy.max_rel_error, 0.0);
  EXPECT_LT(noisy.max_rel_error, 0.03);
}

TEST(ConvChoiceFit, CoefficientsStayNonNegative) {
  // Time falls with elems: unconstrained least squares would give ns_per_elem < 0.
  std::vector<FitPoint> pts;
  for (double e = 0; e <= 5000; e += 500) pts.push_back({1e6, e, 3000 - 0.2 * e});
  const FitResult r = fit_kernel_coeffs(pts);
  EXPECT_GE(r.coeffs.ns_per_call, 0.0);
  EXPECT_GE(r.coeffs.ns_per_mac, 0.0);
  EXPECT_EQ(r.coeffs.ns_per_elem, 0.0);
  EXPECT_GT(r.coeffs.ns_per_call + r.coeffs.ns_per_mac * 1e6, 2000.0);
  EXPECT_LT(r.coeffs.ns_per_call + r.coeffs.ns_per_mac * 1e6, 3000.0);

  // A true zero stays zero: t = 0.01 ns per multiply only.
  std::vector<FitPoint> mac_only;
  for (double macs : {1e5, 1e6, 1e7}) mac_only.push_back({macs, macs / 10, 0.01 * macs});
  const FitResult m = fit_kernel_coeffs(mac_only);
  EXPECT_NEAR(m.coeffs.ns_per_call + m.coeffs.ns_per_mac * 1e6 + m.coeffs.ns_per_elem * 1e5, 1e4, 1e-3);
  EXPECT_LT(m.max_rel_error, 1e-9);
}

TEST(ConvChoiceFit, FewerPointsThanUnknownsAndNone) {
  const FitResult none = fit_kernel_coeffs({});
  EXPECT_EQ(none.points, 0);
  EXPECT_EQ(none.coeffs, KernelCoeffs{});
  // Two points, three unknowns: an exact non-negative fit.
  const FitResult two = fit_kernel_coeffs({{1e6, 1e4, 2000}, {4e6, 2e4, 5000}});
  EXPECT_GE(two.coeffs.ns_per_call, 0.0);
  EXPECT_GE(two.coeffs.ns_per_mac, 0.0);
  EXPECT_GE(two.coeffs.ns_per_elem, 0.0);
  EXPECT_LT(two.max_rel_error, 1e-9);
  EXPECT_THROW(fit_kernel_coeffs({{1e6, 1e4, 0.0}}), Error);
}

// Samples of one shape as `from` predicts them: dense, then sparse at each of data.densities, per phase.
void add_samples(CalibrationData& data, const ConvGeom& g, const ConvCostModel& from, bool generic,
                 bool own) {
  for (ConvPhase p : kPhases) {
    CalibrationSample s;
    s.geom = g;
    s.phase = p;
    s.generic = generic;
    s.own_entry = own;
    s.activation_elems = conv_activation_elems(p, g);
    s.kernel = ConvKernel::dense;
    s.executed_macs = static_cast<double>(g.macs());
    s.ns = from.estimate_ns(p, ConvKernel::dense, g, 1.0, false);
    data.samples.push_back(s);
    for (double d : data.densities) {
      s.kernel = ConvKernel::sparse;
      s.weight_density = d;
      s.executed_macs = d * static_cast<double>(g.macs());
      s.ns = from.estimate_ns(p, ConvKernel::sparse, g, d, false);
      data.samples.push_back(s);
    }
  }
}

TEST(ConvChoiceFit, FitCostModelRecoversAModelFromItsOwnPredictions) {
  const ConvCostModel truth = ConvCostModel::defaults();
  CalibrationData data;
  data.threads = 3;
  data.batch = 64;
  data.densities = {1.0, 0.5, 0.1};
  for (const ConvGeom& g : {kMid, geom(64, 16, 28, 16, 3, 1, 1), geom(64, 64, 7, 64, 3, 1, 1),
                            geom(64, 16, 28, 32, 1, 2, 0), geom(64, 32, 14, 64, 3, 2, 1)}) {
    add_samples(data, g, truth, /*generic=*/true, /*own=*/false);
    for (ConvPhase p : kPhases) {
      const double elems = conv_activation_elems(p, g);
      data.reorders.push_back({elems, truth.reorder_ns_per_elem * elems});
    }
  }
  const ConvCostModel fit = fit_cost_model(data, nullptr);
  EXPECT_EQ(fit.threads, 3);
  EXPECT_NEAR(fit.reorder_ns_per_elem, truth.reorder_ns_per_elem, 1e-9 * truth.reorder_ns_per_elem);
  for (ConvPhase p : kPhases)
    for (ConvKernel k : {ConvKernel::dense, ConvKernel::sparse})
      for (double d : {0.05, 0.5, 1.0})
        EXPECT_NEAR(fit.estimate_ns(p, k, kMid, d, false), truth.estimate_ns(p, k, kMid, d, false),
                    1e-6 * truth.estimate_ns(p, k, kMid, d, false));
}

TEST(ConvChoiceFit, OwnShapesGetEntriesAndLeaveTheGenericFitAlone) {
  const ConvCostModel truth = ConvCostModel::defaults();
  CalibrationData data;
  data.threads = 2;
  data.batch = 64;
  data.densities = {1.0, 0.5, 0.1};
  for (const ConvGeom& g : {geom(64, 16, 28, 16, 3, 1, 1), geom(64, 64, 7, 64, 3, 1, 1),
                            geom(64, 16, 28, 32, 1, 2, 0), geom(64, 32, 14, 64, 3, 2, 1)})
    add_samples(data, g, truth, true, false);
  add_samples(data, kMid, truth, true, true);  // a built-in shape that is also one of the model's
  // A shape only the model has, timed as the entry model says (far from the generic coefficients):
  // it must not move the generic fit.
  ConvCostModel odd = with_mid_entry();
  const ConvGeom wide = geom(64, 512, 4, 512, 3, 1, 1);
  odd.shapes[0].shape = ConvShape::of(wide);
  add_samples(data, wide, odd, false, true);

  const ConvCostModel fit = fit_cost_model(data, nullptr);
  ASSERT_EQ(fit.shapes.size(), 2u);
  EXPECT_TRUE(fit.shapes[0].shape == ConvShape::of(kMid));
  EXPECT_TRUE(fit.shapes[1].shape == ConvShape::of(wide));
  for (ConvPhase p : kPhases)
    for (ConvKernel k : {ConvKernel::dense, ConvKernel::sparse}) {
      // Generic: recovered from the built-in shapes alone.
      const ConvGeom mid_stride2 = geom(64, 32, 14, 32, 3, 2, 1);
      EXPECT_NEAR(fit.estimate_ns(p, k, mid_stride2, 0.3, false),
                  truth.estimate_ns(p, k, mid_stride2, 0.3, false),
                  1e-6 * truth.estimate_ns(p, k, mid_stride2, 0.3, false));
      for (double d : {0.05, 0.5, 1.0}) {
        EXPECT_NEAR(fit.estimate_ns(p, k, kMid, d, false), truth.estimate_ns(p, k, kMid, d, false),
                    1e-6 * truth.estimate_ns(p, k, kMid, d, false));
        for (int64_t N : {64, 128}) {
          ConvGeom w = wide;
          w.N = N;
          // At the calibrated batch the entry reproduces the timings; at another, dense scales with it.
          EXPECT_NEAR(fit.estimate_ns(p, k, w, d, false), odd.estimate_ns(p, k, w, d, false),
                      1e-6 * odd.estimate_ns(p, k, w, d, false));
        }
      }
    }
}

// ---------------------------------------------------------------------------------------------------
// Measuring: a smoke run (structure only; the times are whatever this machine gives)

TEST(ConvChoiceCalibrate, QuickRunGivesFiniteNonNegativeModel) {
  CalibrationOptions o;
  o.quick = true;
  o.repeats = 1;
  o.batch = 16;
  CalibrationData data;
  const ConvCostModel m = calibrate(o, nullptr, &data);
  EXPECT_EQ(data.densities.size(), 3u);
  EXPECT_EQ(data.samples.size(), 2u * 3u * (1u + 3u));  // shapes x phases x (dense + densities)
  EXPECT_EQ(data.reorders.size(), 2u * 4u);
  for (const CalibrationSample& s : data.samples) {
    EXPECT_GT(s.ns, 0.0);
    EXPECT_EQ(s.geom.N, 16);
    const double macs = static_cast<double>(s.geom.macs());
    if (s.kernel == ConvKernel::dense || s.weight_density == 1.0) {
      EXPECT_EQ(s.executed_macs, macs);
    }
    EXPECT_LE(s.executed_macs, macs);
  }
  EXPECT_EQ(m.threads, 2);
  for (ConvPhase p : kPhases)
    for (ConvKernel k : {ConvKernel::dense, ConvKernel::sparse}) {
      const KernelCoeffs& c = m.at(p, k);
      for (double v : {c.ns_per_call, c.ns_per_mac, c.ns_per_elem}) {
        EXPECT_TRUE(std::isfinite(v));
        EXPECT_GE(v, 0.0);
      }
      EXPECT_GT(m.estimate_ns(p, k, kMid, 1.0, false), 0.0);
    }
  EXPECT_TRUE(std::isfinite(m.reorder_ns_per_elem));
  EXPECT_GT(m.reorder_ns_per_elem, 0.0);

  CalibrationOptions bad = o;
  bad.threads = 0;
  EXPECT_THROW(calibrate(bad, nullptr), Error);
}

TEST(ConvChoiceCalibrate, OwnShapesAreMeasuredOnceAndGetEntries) {
  CalibrationOptions o;
  o.quick = true;
  o.repeats = 1;
  o.batch = 16;
  const ConvShape mid = ConvShape::of(kMid);  // one of the quick run's built-in shapes
  const ConvShape extra{8, 10, 12, 16, 3, 3, 1, 1};
  o.own_shapes = {mid, extra, mid};
  CalibrationData data;
  const ConvCostModel m = calibrate(o, nullptr, &data);
  EXPECT_EQ(data.samples.size(), 3u * 3u * (1u + 3u));  // two built-in shapes and one more
  EXPECT_EQ(data.reorders.size(), 2u * 4u);             // the reorders of the built-in shapes only
  int generic = 0, own = 0;
  for (const CalibrationSample& s : data.samples) {
    generic += s.generic;
    own += s.own_entry;
    EXPECT_EQ(s.own_entry, ConvShape::of(s.geom) == mid || ConvShape::of(s.geom) == extra) << s.shape;
  }
  EXPECT_EQ(generic, 2 * 12);
  EXPECT_EQ(own, 2 * 12);
  ASSERT_EQ(m.shapes.size(), 2u);
  EXPECT_TRUE(m.shapes[0].shape == mid);
  EXPECT_TRUE(m.shapes[1].shape == extra);
  for (ConvPhase p : kPhases) {
    const ConvGeom g = extra.geom(16);
    EXPECT_GT(m.estimate_ns(p, ConvKernel::dense, g, 1.0, false), 0.0);
    EXPECT_GT(m.estimate_ns(p, ConvKernel::sparse, g, 1.0, false), 0.0);
    // The dense entry reproduces what was measured for the shape.
    for (const CalibrationSample& s : data.samples) {
      if (s.kernel == ConvKernel::dense && s.phase == p && ConvShape::of(s.geom) == extra) {
        EXPECT_NEAR(m.estimate_ns(p, ConvKernel::dense, g, 1.0, false), s.ns, 1e-9 * s.ns);
      }
    }
  }
  CalibrationOptions bad = o;
  bad.own_shapes = {ConvShape{8, 2, 2, 16, 7, 7, 1, 1}};
  EXPECT_THROW(calibrate(bad, nullptr), Error);
}

int run(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_F(ConvChoiceFile, CalibrateCommandWritesALoadableModel) {
  const std::string out = path("cal.json"), log = path("log.txt");
  ASSERT_EQ(run(std::string(TRAINER_BINARY) + " calibrate --quick --batch 16 --repeats 1 --out " + out +
                " >" + log + " 2>&1"),
            0)
      << slurp(log);
  const ConvCostModel m = ConvCostModel::load(out);
  EXPECT_EQ(m.threads, 2);
  const std::string text = slurp(log);
  for (const char* s :
       {"ff (forward", "bp (backward", "wg (weight", "32->32 3x3 @14x14", "max relative error", "wrote"})
    EXPECT_NE(text.find(s), std::string::npos) << s << "\n" << text;

  EXPECT_EQ(run(std::string(TRAINER_BINARY) + " calibrate --threads 0 --out " + out + " >" + log + " 2>&1"),
            2);
  EXPECT_NE(slurp(log).find("--threads"), std::string::npos) << slurp(log);
}

TEST_F(ConvChoiceFile, CalibrateCommandGivesAModelsShapesTheirOwnEntries) {
  const std::string out = path("cal.json"), log = path("log.txt");
  ASSERT_EQ(run(std::string(TRAINER_BINARY) +
                " calibrate --quick --batch 8 --repeats 1 --model resnet8 --width 8 " +
                "--input 1x12x12 --out " + out + " >" + log + " 2>&1"),
            0)
      << slurp(log);
  const ConvCostModel m = ConvCostModel::load(out);
  // resnet8 at width 8 on 12x12, in the order the layers come: the stem 1->8, 8->8 @12x12, then each
  // later stage's strided 3x3, its second 3x3 and its 1x1 shortcut.
  std::vector<std::string> names;
  for (const ShapeCosts& e : m.shapes) names.push_back(e.shape.name());
  const std::vector<std::string> expected = {"1->8 3x3 @12x12", "8->8 3x3 @12x12",     "8->16 3x3 s2 @12x12",
                                             "16->16 3x3 @6x6", "8->16 1x1 s2 @12x12", "16->32 3x3 s2 @6x6",
                                             "32->32 3x3 @3x3", "16->32 1x1 s2 @6x6"};
  EXPECT_EQ(names, expected) << slurp(log);
  EXPECT_NE(slurp(log).find("resnet8: 8 distinct convolution shapes"), std::string::npos) << slurp(log);

  // A pruned run says how many of its shapes the file has entries for: all of the model calibrated, none
  // at another input size.
  const std::string train =
      std::string(TRAINER_BINARY) +
      " train --model resnet8 --width 8 --data synthetic --synthetic-size 64 --batch-size 16 "
      "--epochs 1 --max-steps 1 --prune magnitude --sparsity 0.5 --threads 2 --progress off "
      "--no-ops-summary --calibration " +
      out + " --synthetic-shape ";
  ASSERT_EQ(run(train + "1x12x12 >" + log + " 2>&1"), 0) << slurp(log);
  EXPECT_NE(
      slurp(log).find("cost model: " + out + ", with entries for 8 of this model's 8 convolution shapes"),
      std::string::npos)
      << slurp(log);
  ASSERT_EQ(run(train + "1x16x16 >" + log + " 2>&1"), 0) << slurp(log);
  EXPECT_NE(slurp(log).find("with entries for 0 of this model's 8 convolution shapes"), std::string::npos)
      << slurp(log);

  EXPECT_EQ(run(std::string(TRAINER_BINARY) + " calibrate --quick --model resnet8 --input 1x12 --out " + out +
                " >" + log + " 2>&1"),
            2);
  EXPECT_NE(slurp(log).find("option --input: expected an image shape CxHxW"), std::string::npos)
      << slurp(log);
  EXPECT_NE(run(std::string(TRAINER_BINARY) + " calibrate --quick --model nosuchnet --out " + out + " >" +
                log + " 2>&1"),
            0);
  EXPECT_NE(slurp(log).find("nosuchnet"), std::string::npos) << slurp(log);
  EXPECT_EQ(run(std::string(TRAINER_BINARY) + " calibrate --quick --input 3x32x32 --out " + out + " >" + log +
                " 2>&1"),
            2);
  EXPECT_NE(slurp(log).find("give --model too"), std::string::npos) << slurp(log);
}

}  // namespace
}  // namespace trainer
