// The `trainer` subcommands. Each adds itself to the root app and returns what to run once the
// command line has been parsed; main() turns errors into messages and exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "core/error.hpp"

namespace trainer::cli {

struct Command {
  CLI::App* app;
  std::function<int()> run;  // the process exit code
};

// A bad command-line value found after parsing (exit code 2, like CLI11's own usage errors).
class UsageError : public Error {
 public:
  using Error::Error;
};

Command add_train_command(CLI::App& root);
Command add_models_command(CLI::App& root);
Command add_calibrate_command(CLI::App& root);
Command add_validate_command(CLI::App& root);

}  // namespace trainer::cli
