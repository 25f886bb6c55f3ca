// The metrics file (JSON lines, appended when resuming) and the progress display's two styles.
#include "train/metrics.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.hpp"

namespace trainer {
namespace {

namespace fs = std::filesystem;

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(Metrics, WritesOneJsonObjectPerLineAndAppendsOnResume) {
  const fs::path dir = fs::temp_directory_path() / ("trainer_metrics_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string path = (dir / "sub" / "m.jsonl").string();  // parent folders are created
  {
    MetricsWriter w(path, /*append=*/false);
    w.write({{"epoch", 1}, {"test_acc", 0.5}});
    // Each line is on disk as soon as it is written.
    ASSERT_EQ(read_lines(path).size(), 1u);
    w.write({{"epoch", 2}, {"test_acc", nullptr}});
  }
  {
    MetricsWriter w(path, /*append=*/true);
    w.write({{"epoch", 3}});
  }
  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["epoch"], 1);
  EXPECT_EQ(lines[0]["test_acc"], 0.5);
  EXPECT_TRUE(lines[1]["test_acc"].is_null());
  EXPECT_EQ(lines[2]["epoch"], 3);
  { MetricsWriter w(path, /*append=*/false); }
  EXPECT_TRUE(read_lines(path).empty());
  fs::remove_all(dir);
}

TEST(Metrics, UnwritableFileIsNamed) {
  try {
    MetricsWriter w("/proc/trainer-cannot-write-here/m.jsonl", false);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/proc/trainer-cannot-write-here/m.jsonl"), std::string::npos)
        << e.what();
  }
  MetricsWriter none("", false);
  EXPECT_FALSE(none.enabled());
  none.write({{"epoch", 1}});  // no file, no effect
}

std::string run_progress(ProgressStyle style, double interval) {
  std::FILE* f = std::tmpfile();
  {
    Progress p(style, f, interval);
    p.start_epoch(1, 2, 3);
    for (int s = 1; s <= 3; ++s) p.update(s, 0.5, 0.25, 100.0);
    p.finish_epoch();
  }
  std::rewind(f);
  std::string out;
  for (int c; (c = std::fgetc(f)) != EOF;) out += static_cast<char>(c);
  std::fclose(f);
  return out;
}

TEST(Progress, StylesWriteWhatTheySay) {
  EXPECT_EQ(run_progress(ProgressStyle::off, 0.0), "");
  const std::string lines = run_progress(ProgressStyle::lines, 0.0);
  EXPECT_NE(lines.find("epoch 1/2 step 1/3  loss 0.5000  acc 25.0%"), std::string::npos) << lines;
  EXPECT_EQ(lines.find('\r'), std::string::npos);
  const std::string bar = run_progress(ProgressStyle::bar, 0.0);
  EXPECT_NE(bar.find("3/3"), std::string::npos) << bar;  // the last step always draws
  EXPECT_NE(bar.find('\r'), std::string::npos);
  EXPECT_EQ(progress_style("off"), ProgressStyle::off);
  EXPECT_EQ(progress_style("on"), ProgressStyle::bar);
  EXPECT_THROW(progress_style("sometimes"), Error);
}

}  // namespace
}  // namespace trainer
