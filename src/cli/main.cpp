// trainer: the command-line entry point. Errors become "error: <message>" on stderr with exit code 1
// (2 for command-line usage errors); nothing the user types may crash it.
#include <fmt/format.h>

#include <exception>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/simulate.hpp"

int main(int argc, char** argv) {
  using namespace trainer::cli;
  CLI::App app{"trainer: a CPU engine for (sparse) CNN training, and a model of the Trainer processor",
               "trainer"};
  app.require_subcommand(1);
  std::vector<Command> commands;
  try {
    commands.push_back(add_train_command(app));
    commands.push_back(add_models_command(app));
    commands.push_back(add_calibrate_command(app));
    commands.push_back(add_validate_command(app));
    // Subcommands that run from their CLI11 callback, during parse(); their errors land in the catch below.
    trainer::add_simulate_command(app);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::string where = "trainer";
    for (const Command& c : commands)
      if (c.app->parsed()) where += " " + c.app->get_name();
    fmt::print(stderr, "error: {}\nRun '{} --help' for the options.\n", e.what(), where);
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (...) {
    fmt::print(stderr, "error: unexpected failure\n");
    return 1;
  }
  try {
    for (const Command& c : commands)
      if (c.app->parsed()) return c.run();
    return 0;
  } catch (const UsageError& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (...) {
    fmt::print(stderr, "error: unexpected failure\n");
    return 1;
  }
}
