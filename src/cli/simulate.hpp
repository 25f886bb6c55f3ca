// `trainer simulate --trace FILE --chip FILE [--mode exact|statistical] [--json FILE] [--csv FILE]`:
// costs a recorded trace on a chip spec without training again.
#pragma once

#include <CLI/CLI.hpp>

namespace trainer {

// Registers the `simulate` subcommand on the app (main.cpp calls this once).
void add_simulate_command(CLI::App& app);

}  // namespace trainer
