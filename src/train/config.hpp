// RunConfig: everything `trainer train` needs, from defaults, a YAML recipe and command-line options
// (in that order of precedence, lowest first).
//
// Recipe files use the long option names in snake_case (`batch_size: 64` for `--batch-size 64`);
// flags are booleans (`nesterov: true`; `ops_summary: false` for `--no-ops-summary`). A dashed key,
// an unknown key, a value of the wrong type or out of range is a trainer::Error naming the file, the
// line, the key and what was expected.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace trainer {

struct RunConfig {
  std::string model = "lenet5";
  int64_t width = 0;                   // 0: the model's usual width
  std::string data = "fashion-mnist";  // fashion-mnist | cifar10 | synthetic
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int64_t synthetic_size = 2048;        // training images of the synthetic set (test set: a quarter)
  Shape synthetic_shape = {1, 28, 28};  // [C, H, W] of a synthetic image
  int64_t epochs = 10;
  int64_t batch_size = 128;
  double lr = 0.05;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 5e-4;
  std::string init = "pytorch";       // parameter initialisation: pytorch | kaiming (see nn/layer.hpp)
  std::string schedule = "onecycle";  // constant | step | cosine | onecycle
  double warmup_epochs = 0.0;         // may be fractional
  int64_t warmup_steps = 0;
  int64_t lr_step_epochs = 0;  // step schedule: decay every this many epochs; 0 = a third of the run
  double lr_gamma = 0.1;
  bool cycle_momentum = false;
  uint64_t seed = 1;
  int64_t threads = 2;
  int64_t subset = 0;  // first N training images; 0 = all
  int64_t augment_crop = 0;
  bool augment_flip = false;
  std::string metrics;     // JSON lines file, one line per epoch
  std::string checkpoint;  // written at the end of every epoch
  std::string resume;      // checkpoint to continue from
  int64_t eval_every = 1;  // epochs between evaluations (the last epoch is always evaluated)
  int64_t stop_after = 0;
  int64_t max_steps = 0;  // stop each epoch after this many steps (throughput runs only); 0 = all         //
                          // stop after this epoch (the schedule still spans `epochs`); 0 = run all
  std::string progress = "auto";  // auto | on | off
  bool ops_summary = true;

  // Sparse training (dynamic weight pruning; docs/sparse-training.md).
  std::string prune = "none";              // none | magnitude | dns | rigl
  double sparsity = 0.9;                   // final weight sparsity over the pruned tensors, [0, 1)
  double initial_sparsity = 0.0;           // magnitude, dns: start of the cubic schedule
  std::string prune_distribution = "erk";  // uniform | erk | global
  double prune_erk_power = 0.75;  // erk: density ~ score^power (1 ERK as published, 0 uniform; 0.75 the
                                  // engine's default, docs/sparse-training.md "Defaults")
  int64_t prune_every = 100;               // ΔT: steps between mask updates
  double prune_begin = -1.0;  // fraction of the run where pruning starts; < 0: the policy's default
  double prune_end = -1.0;    // fraction of the run where the schedule ends / rigl stops; < 0: default
  double rigl_alpha = 0.3;    // rigl: initial drop fraction
  std::string dns_surgery = "always";  // dns: always (prune and splice to the last step) | schedule
  int64_t dns_dense_every = 40;        // dns: a dense WG every N steps (1: every step, the paper's; 40 the
                                       // engine's default, docs/sparse-training.md "Defaults")
  double dns_dense_scale = 1.0;        // dns: pruned positions' gradient on a dense-WG step times this
  bool prune_first_last = false;       // also prune the first conv and the last linear (kept dense otherwise)
  std::string kernels = "auto";        // auto | dense | sparse: which conv kernels a sparse run may use
  std::string calibration;             // cost model from `trainer calibrate`; empty: built-in defaults
  // Batch-norm gradient sums taken in the epilogue of the sparse BP that writes the gradient last
  // (GradSums), instead of a pass of their own. Off: on the Zen 4 it cost 0-7% images/s in each of 11
  // pairs of runs (the BP kernels are bound by their vector work; docs/benchmarks.md).
  bool bn_sums_in_epilogue = false;
};

// One configuration key: its recipe key, command-line option and documentation.
struct ConfigKey {
  std::string key;         // snake_case, as in a recipe file
  std::string option;      // long option without dashes ("batch-size", "no-ops-summary")
  std::string value_name;  // "N", "FLOAT", "FILE", ...; empty for a flag
  std::string help;
  bool negated = false;  // the flag sets the key to false (--no-ops-summary)
};
const std::vector<ConfigKey>& config_keys();

// Sets `key` from text. `where` names the source for errors: "run.yaml:3: key 'lr'", "option --lr".
void set_config_value(RunConfig& cfg, const std::string& key, const std::string& text,
                      const std::string& where);
// The value of a key as text (how --help shows defaults; "" for an unset path).
std::string config_value(const RunConfig& cfg, const std::string& key);

// "CxHxW" (or "C,H,W"), each size in [1, 4096]: one image's shape. A trainer::Error naming `where`
// ("option --synthetic-shape") and the text otherwise.
Shape parse_image_shape(const std::string& text, const std::string& where);

// Applies the keys of a YAML recipe file over cfg.
void load_config_file(const std::string& path, RunConfig& cfg);
// Checks that hold between keys (Nesterov needs momentum, warm-up vs onecycle, ...).
void validate(const RunConfig& cfg);

// Steps of linear warm-up for this config and run length.
int64_t warmup_steps_for(const RunConfig& cfg, int64_t steps_per_epoch);

// Every key and value (what a run was asked to do).
nlohmann::json to_json(const RunConfig& cfg);
// The keys that decide a run's numbers (model, data, recipe, seed, threads), without paths or display
// options: what a checkpoint records and a resumed run is compared against.
nlohmann::json recipe_json(const RunConfig& cfg);

}  // namespace trainer
