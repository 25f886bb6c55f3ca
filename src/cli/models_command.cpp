// `trainer models`: the model zoo's names, one a line.
#include <fmt/format.h>

#include "cli/commands.hpp"
#include "nn/models.hpp"

namespace trainer::cli {

Command add_models_command(CLI::App& root) {
  CLI::App* app = root.add_subcommand("models", "List the models `trainer train --model` accepts");
  return {app, [] {
            for (const std::string& name : model_names()) fmt::print("{}\n", name);
            return 0;
          }};
}

}  // namespace trainer::cli
