// `trainer train`: every RunConfig key is a long option; --config FILE reads a YAML recipe with the
// same keys in snake_case, and options given on the command line override it. The chip model and trace
// options (--chip, --chip-mode, --chip-every, --chip-out, --trace, --trace-every; cli/train_hooks.hpp)
// are command line only and reach the run through TrainHooks.
#include <fmt/format.h>

#include <map>
#include <memory>

#include "cli/commands.hpp"
#include "cli/train_hooks.hpp"
#include "train/config.hpp"
#include "train/trainer.hpp"

namespace trainer::cli {

namespace {

struct TrainArgs {
  std::string config;
  // Keyed by config key. Values stay text so that one parser (config.cpp) validates both sources.
  std::map<std::string, std::string> values;
  std::map<std::string, bool> flags;
  std::map<std::string, CLI::Option*> options;
  ChipTraceOptions chip_trace;  // command line only
};

}  // namespace

Command add_train_command(CLI::App& root) {
  CLI::App* app =
      root.add_subcommand("train", "Train a model with SGD (options, or a YAML recipe with --config)");
  app->footer(
      "A recipe file (--config) takes the long options above as keys in snake_case (batch_size: 64); flags "
      "are "
      "booleans (nesterov: true, ops_summary: false). Options given on the command line override the "
      "recipe. The chip and trace options (--chip ... --trace-every) are command line only.");
  auto args = std::make_shared<TrainArgs>();
  app->add_option("--config", args->config,
                  "YAML recipe to start from (keys: the options below in snake_case) (default: none)")
      ->type_name("FILE");

  const RunConfig defaults;
  for (const ConfigKey& k : config_keys()) {
    const std::string name = "--" + k.option;
    CLI::Option* opt = nullptr;
    if (k.value_name.empty()) {
      const std::string help =
          k.help +
          (k.negated ? " (default: printed)" : fmt::format(" (default: {})", config_value(defaults, k.key)));
      opt = app->add_flag(name, args->flags[k.key], help);
    } else {
      const std::string def = config_value(defaults, k.key);
      const std::string help = k.help + fmt::format(" (default: {})", def.empty() ? "none" : def);
      opt = app->add_option(name, args->values[k.key], help)->type_name(k.value_name);
    }
    args->options[k.key] = opt;
  }
  // A bare --progress asks for the bar.
  args->options.at("progress")->expected(0, 1);
  add_chip_trace_options(app, args->chip_trace);

  return {app, [args] {
            RunConfig cfg;
            if (!args->config.empty()) load_config_file(args->config, cfg);
            try {
              for (const ConfigKey& k : config_keys()) {
                const CLI::Option* opt = args->options.at(k.key);
                if (opt->count() == 0) continue;
                std::string text;
                if (k.value_name.empty()) {
                  text = (args->flags.at(k.key) != k.negated) ? "true" : "false";
                } else {
                  text = args->values.at(k.key);
                  if (k.key == "progress" && text.empty()) text = "on";
                }
                set_config_value(cfg, k.key, text, "option --" + k.option);
              }
            } catch (const Error& e) {
              throw UsageError(e.what());
            }
            // Loads the chip specs and opens the trace before training, so bad ones fail at once.
            ChipTraceHooks extra(args->chip_trace);
            train(cfg, stdout, extra.hooks());
            return 0;
          }};
}

}  // namespace trainer::cli
