// `trainer simulate`: costs a trace end to end through the real binary, and refuses bad input with a
// message and exit code 1.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "chip_test_util.hpp"
#include "ops/trace.hpp"

namespace trainer {
namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(::getpid()))).string();
}

struct CliRun {
  int code = -1;
  std::string output;
};

// Runs the trainer binary with arguments, capturing stdout and stderr.
CliRun run_trainer(const std::string& args) {
  const std::string out = temp_path("simulate.out");
  const std::string cmd = std::string(TRAINER_BINARY) + " " + args + " > " + out + " 2>&1";
  const int status = std::system(cmd.c_str());
  CliRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream f(out);
  r.output.assign(std::istreambuf_iterator<char>(f), {});
  std::filesystem::remove(out);
  return r;
}

TEST(SimulateCli, CostsATraceAndWritesReports) {
  const std::string trace = temp_path("cli.trace"), json = temp_path("cli.json"), csv = temp_path("cli.csv");
  write_trace(trace, {{3, testing::synthetic_resnet18_step(2, 0.5, 0.2, 0.5, 1)}});
  const CliRun r =
      run_trainer("simulate --trace " + trace + " --chip " + testing::config_path("trainer-28nm.yaml") +
                  " --mode statistical --json " + json + " --csv " + csv);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("stage4.block1.conv2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("costed 1 step(s)"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(json));
  EXPECT_TRUE(std::filesystem::exists(csv));
  for (const auto& p : {trace, json, csv}) std::filesystem::remove(p);
}

TEST(SimulateCli, RefusesBadInputWithAMessage) {
  const std::string trace = temp_path("cli2.trace"), cut = temp_path("cli2-cut.trace"),
                    chip = temp_path("bad.yaml");
  write_trace(trace, {{0, testing::synthetic_resnet18_step(1, 0.5, 0.2, 0.5, 2)}});
  {
    std::ifstream in(trace, std::ios::binary);
    std::string bytes(std::istreambuf_iterator<char>(in), {});
    std::ofstream out(cut, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  CliRun r = run_trainer("simulate --trace " + cut + " --chip " + testing::config_path("trainer-28nm.yaml"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;

  {
    std::ofstream out(chip);
    out << "name: broken\n";
  }
  r = run_trainer("simulate --trace " + trace + " --chip " + chip);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("missing key 'technology'"), std::string::npos) << r.output;

  r = run_trainer("simulate --trace " + trace + " --chip " + testing::config_path("trainer-28nm.yaml") +
                  " --mode approximate");
  EXPECT_EQ(r.code, 2) << r.output;
  for (const auto& p : {trace, cut, chip}) std::filesystem::remove(p);
}

}  // namespace
}  // namespace trainer
