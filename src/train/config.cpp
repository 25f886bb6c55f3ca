#include "train/config.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "core/error.hpp"

namespace trainer {

namespace {

[[noreturn]] void expected(const std::string& where, const std::string& what, const std::string& text) {
  fail("{}: expected {}, got '{}'", where, what, text);
}

int64_t parse_int(const std::string& text, const std::string& where, const std::string& what, int64_t lo,
                  int64_t hi) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end || v < lo || v > hi) expected(where, what, text);
  return v;
}

double parse_double(const std::string& text, const std::string& where, const std::string& what,
                    const std::function<bool(double)>& ok) {
  double v = 0.0;
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || p != end || !std::isfinite(v) || !ok(v)) expected(where, what, text);
  return v;
}

bool parse_bool(const std::string& text, const std::string& where) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "yes" || t == "on" || t == "1") return true;
  if (t == "false" || t == "no" || t == "off" || t == "0") return false;
  expected(where, "true or false", text);
}

std::string parse_choice(const std::string& text, const std::string& where,
                         const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), text) != choices.end()) return text;
  std::string list;
  for (size_t i = 0; i < choices.size(); ++i)
    list += (i ? (i + 1 == choices.size() ? " or " : ", ") : "") + choices[i];
  expected(where, "one of " + list, text);
}

std::string fmt_double(double v) { return fmt::format("{}", v); }

constexpr int64_t kMaxInt = int64_t{1} << 40;

struct Entry {
  ConfigKey info;
  std::function<void(RunConfig&, const std::string&, const std::string&)> set;
  std::function<std::string(const RunConfig&)> get;
};

const std::vector<Entry>& entries() {
  using C = RunConfig;
  using S = const std::string&;
  auto pos_int = [](int64_t C::*field, int64_t lo, std::string what) {
    return [field, lo, what](C& c, S t, S w) { c.*field = parse_int(t, w, what, lo, kMaxInt); };
  };
  auto get_int = [](int64_t C::*field) { return [field](const C& c) { return std::to_string(c.*field); }; };
  auto get_double = [](double C::*field) { return [field](const C& c) { return fmt_double(c.*field); }; };
  auto get_bool = [](bool C::*field) {
    return [field](const C& c) { return std::string(c.*field ? "on" : "off"); };
  };
  auto set_bool = [](bool C::*field) { return [field](C& c, S t, S w) { c.*field = parse_bool(t, w); }; };
  auto get_str = [](std::string C::*field) { return [field](const C& c) { return c.*field; }; };
  auto set_path = [](std::string C::*field) {
    return [field](C& c, S t, S w) {
      if (t.empty()) expected(w, "a file name", t);
      c.*field = t;
    };
  };

  static const std::vector<Entry> table = {
      {{"model", "model", "NAME", "model to train (see `trainer models`)"},
       [](C& c, S t, S w) {
         if (t.empty()) expected(w, "a model name", t);
         c.model = t;
       },
       get_str(&C::model)},
      {{"width", "width", "N", "channels of the first stage (ResNet, VGG); 0 = the model's usual width"},
       pos_int(&C::width, 0, "an integer >= 0"),
       get_int(&C::width)},
      {{"data", "data", "NAME", "data set: fashion-mnist, cifar10 or synthetic"},
       [](C& c, S t, S w) {
         c.data = parse_choice(t, w, {"fashion-mnist", "cifar10", "synthetic"});
       },
       get_str(&C::data)},
      {{"data_dir", "data-dir", "DIR",
        "folder of the data set's files (IDX files for fashion-mnist, the binary batches for cifar10)"},
       set_path(&C::data_dir),
       get_str(&C::data_dir)},
      {{"synthetic_size", "synthetic-size", "N",
        "training images of the synthetic data set (its test set has a quarter as many)"},
       pos_int(&C::synthetic_size, 1, "an integer >= 1"),
       get_int(&C::synthetic_size)},
      {{"synthetic_shape", "synthetic-shape", "CxHxW", "image shape of the synthetic data set"},
       [](C& c, S t, S w) { c.synthetic_shape = parse_image_shape(t, w); },
       [](const C& c) {
         return fmt::format("{}x{}x{}", c.synthetic_shape.at(0), c.synthetic_shape.at(1),
                            c.synthetic_shape.at(2));
       }},
      {{"epochs", "epochs", "N", "epochs to train (the schedule spans them all)"},
       pos_int(&C::epochs, 1, "an integer >= 1"),
       get_int(&C::epochs)},
      {{"batch_size", "batch-size", "N", "images per training step"},
       pos_int(&C::batch_size, 1, "an integer >= 1"),
       get_int(&C::batch_size)},
      {{"lr", "lr", "FLOAT", "learning rate (the peak for onecycle)"},
       [](C& c, S t, S w) { c.lr = parse_double(t, w, "a positive number", [](double v) { return v > 0; }); },
       get_double(&C::lr)},
      {{"momentum", "momentum", "FLOAT", "SGD momentum, in [0, 1)"},
       [](C& c, S t, S w) {
         c.momentum = parse_double(t, w, "a number in [0, 1)", [](double v) { return v >= 0 && v < 1; });
       },
       get_double(&C::momentum)},
      {{"nesterov", "nesterov", "", "use Nesterov momentum"}, set_bool(&C::nesterov), get_bool(&C::nesterov)},
      {{"weight_decay", "weight-decay", "FLOAT",
        "L2 weight decay (biases and batch-norm parameters are exempt)"},
       [](C& c, S t, S w) {
         c.weight_decay = parse_double(t, w, "a number >= 0", [](double v) { return v >= 0; });
       },
       get_double(&C::weight_decay)},
      {{"init", "init", "NAME",
        "parameter initialisation: pytorch (PyTorch's defaults, for like-for-like comparisons) or kaiming "
        "(He et al. 2015 for ReLU nets; trains faster from scratch)"},
       [](C& c, S t, S w) {
         c.init = parse_choice(t, w, {"pytorch", "kaiming"});
       },
       get_str(&C::init)},
      {{"schedule", "schedule", "NAME", "learning-rate schedule: constant, step, cosine or onecycle"},
       [](C& c, S t, S w) {
         c.schedule = parse_choice(t, w, {"constant", "step", "cosine", "onecycle"});
       },
       get_str(&C::schedule)},
      {{"warmup_epochs", "warmup-epochs", "FLOAT",
        "linear learning-rate warm-up, in epochs (may be fractional; not with onecycle)"},
       [](C& c, S t, S w) {
         c.warmup_epochs = parse_double(t, w, "a number >= 0", [](double v) { return v >= 0; });
       },
       get_double(&C::warmup_epochs)},
      {{"warmup_steps", "warmup-steps", "N",
        "linear learning-rate warm-up, in steps (instead of --warmup-epochs)"},
       pos_int(&C::warmup_steps, 0, "an integer >= 0"),
       get_int(&C::warmup_steps)},
      {{"lr_step_epochs", "lr-step-epochs", "N",
        "step schedule: multiply the learning rate by --lr-gamma every N epochs; 0 = every third of the run"},
       pos_int(&C::lr_step_epochs, 0, "an integer >= 0"),
       get_int(&C::lr_step_epochs)},
      {{"lr_gamma", "lr-gamma", "FLOAT", "step schedule: decay factor"},
       [](C& c, S t, S w) {
         c.lr_gamma = parse_double(t, w, "a number in (0, 1]", [](double v) { return v > 0 && v <= 1; });
       },
       get_double(&C::lr_gamma)},
      {{"cycle_momentum", "cycle-momentum", "",
        "onecycle: cycle momentum 0.95 -> 0.85 -> 0.95 against the learning rate, as PyTorch's default does"},
       set_bool(&C::cycle_momentum),
       get_bool(&C::cycle_momentum)},
      {{"seed", "seed", "N", "seed of weight initialisation, data order and augmentation"},
       [](C& c, S t, S w) {
         uint64_t v = 0;
         const char* end = t.data() + t.size();
         auto [p, ec] = std::from_chars(t.data(), end, v);
         if (ec != std::errc() || p != end) expected(w, "an integer >= 0", t);
         c.seed = v;
       },
       [](const C& c) { return std::to_string(c.seed); }},
      {{"threads", "threads", "N", "OpenMP threads (results are reproducible for a given thread count)"},
       [](C& c, S t, S w) { c.threads = parse_int(t, w, "an integer in [1, 1024]", 1, 1024); },
       get_int(&C::threads)},
      {{"subset", "subset", "N", "train on the first N training images only; 0 = all"},
       pos_int(&C::subset, 0, "an integer >= 0"),
       get_int(&C::subset)},
      {{"augment_crop", "augment-crop", "N",
        "augmentation: random crop after zero-padding N pixels per side"},
       [](C& c, S t, S w) { c.augment_crop = parse_int(t, w, "an integer in [0, 64]", 0, 64); },
       get_int(&C::augment_crop)},
      {{"augment_flip", "augment-flip", "", "augmentation: random horizontal flip"},
       set_bool(&C::augment_flip),
       get_bool(&C::augment_flip)},
      {{"metrics", "metrics", "FILE", "write one JSON line per epoch to FILE (appended to when resuming)"},
       set_path(&C::metrics),
       get_str(&C::metrics)},
      {{"checkpoint", "checkpoint", "FILE", "save a checkpoint to FILE at the end of every epoch"},
       set_path(&C::checkpoint),
       get_str(&C::checkpoint)},
      {{"resume", "resume", "FILE", "continue the run saved in checkpoint FILE, from its next epoch"},
       set_path(&C::resume),
       get_str(&C::resume)},
      {{"eval_every", "eval-every", "N", "evaluate on the test set every N epochs (and after the last)"},
       pos_int(&C::eval_every, 1, "an integer >= 1"),
       get_int(&C::eval_every)},
      {{"stop_after", "stop-after", "N",
        "stop after epoch N although the schedule spans --epochs (to split a run; resume it later); 0 = no"},
       pos_int(&C::stop_after, 0, "an integer >= 0"),
       get_int(&C::stop_after)},
      {{"max_steps", "max-steps", "N",
        "stop each epoch after N steps, for throughput measurements (the schedule still spans full epochs); "
        "0 = all"},
       pos_int(&C::max_steps, 0, "an integer >= 0"),
       get_int(&C::max_steps)},
      {{"progress", "progress", "auto|on|off",
        "progress bar: auto = on a terminal, periodic lines otherwise; on; off (epoch lines only)"},
       [](C& c, S t, S w) {
         c.progress = parse_choice(t, w, {"auto", "on", "off"});
       },
       get_str(&C::progress)},
      {{"prune", "prune", "NAME",
        "dynamic weight pruning policy: none (dense training), magnitude (gradual, Zhu & Gupta), dns "
        "(Dynamic "
        "Network Surgery) or rigl (RigL); a pruned run executes only the unpruned weights' work"},
       [](C& c, S t, S w) {
         c.prune = parse_choice(t, w, {"none", "magnitude", "dns", "rigl"});
       },
       get_str(&C::prune)},
      {{"sparsity", "sparsity", "FLOAT",
        "final weight sparsity of the pruned tensors, in [0, 1) (with --prune)"},
       [](C& c, S t, S w) {
         c.sparsity = parse_double(t, w, "a number in [0, 1)", [](double v) { return v >= 0.0 && v < 1.0; });
       },
       get_double(&C::sparsity)},
      {{"initial_sparsity", "initial-sparsity", "FLOAT",
        "magnitude, dns: sparsity at the start of the cubic schedule, in [0, sparsity]"},
       [](C& c, S t, S w) {
         c.initial_sparsity =
             parse_double(t, w, "a number in [0, 1)", [](double v) { return v >= 0.0 && v < 1.0; });
       },
       get_double(&C::initial_sparsity)},
      {{"prune_distribution", "prune-distribution", "NAME",
        "how the sparsity is spread over layers: uniform, erk (Erdos-Renyi-kernel) or global (one magnitude "
        "threshold)"},
       [](C& c, S t, S w) {
         c.prune_distribution = parse_choice(t, w, {"uniform", "erk", "global"});
       },
       get_str(&C::prune_distribution)},
      {{"prune_erk_power", "prune-erk-power", "FLOAT",
        "erk: density proportional to the ERK score to this power, >= 0 (1 = ERK as published, 0 = "
        "uniform; between, a milder tilt toward small layers)"},
       [](C& c, S t, S w) {
         c.prune_erk_power = parse_double(t, w, "a finite number >= 0",
                                          [](double v) { return std::isfinite(v) && v >= 0.0; });
       },
       get_double(&C::prune_erk_power)},
      {{"prune_every", "prune-every", "N", "steps between mask updates (delta T)"},
       pos_int(&C::prune_every, 1, "an integer >= 1"),
       get_int(&C::prune_every)},
      {{"prune_begin", "prune-begin", "FLOAT",
        "fraction of the run at which pruning starts; -1 = the policy's default (magnitude, dns 0.1; rigl "
        "0)"},
       [](C& c, S t, S w) {
         c.prune_begin = parse_double(t, w, "a fraction in [0, 1], or -1 for the default",
                                      [](double v) { return v == -1.0 || (v >= 0.0 && v <= 1.0); });
       },
       get_double(&C::prune_begin)},
      {{"prune_end", "prune-end", "FLOAT",
        "fraction of the run at which the sparsity schedule ends (rigl: stops updating); -1 = default 0.75"},
       [](C& c, S t, S w) {
         c.prune_end = parse_double(t, w, "a fraction in [0, 1], or -1 for the default",
                                    [](double v) { return v == -1.0 || (v >= 0.0 && v <= 1.0); });
       },
       get_double(&C::prune_end)},
      {{"rigl_alpha", "rigl-alpha", "FLOAT", "rigl: initial fraction of active weights dropped at an update"},
       [](C& c, S t, S w) {
         c.rigl_alpha =
             parse_double(t, w, "a number in (0, 1]", [](double v) { return v > 0.0 && v <= 1.0; });
       },
       get_double(&C::rigl_alpha)},
      {{"dns_surgery", "dns-surgery", "NAME",
        "dns: always (prune and splice to the last step, as in the paper) or schedule (fix the mask where "
        "the sparsity schedule ends; no dense WG from then on)"},
       [](C& c, S t, S w) {
         c.dns_surgery = parse_choice(t, w, {"always", "schedule"});
       },
       get_str(&C::dns_surgery)},
      {{"dns_dense_every", "dns-dense-every", "N",
        "dns: the dense WG (the gradient of the pruned weights) on every N-th step only (1 = every step, as "
        "in the paper; the kept weights get theirs every step)"},
       pos_int(&C::dns_dense_every, 1, "an integer >= 1"),
       get_int(&C::dns_dense_every)},
      {{"dns_dense_scale", "dns-dense-scale", "FLOAT",
        "dns: the pruned weights' gradient on a dense-WG step times this, > 0 (1 by default; N of "
        "--dns-dense-every makes it an unbiased but noisy estimate of every step's)"},
       [](C& c, S t, S w) {
         c.dns_dense_scale =
             parse_double(t, w, "a finite number > 0", [](double v) { return std::isfinite(v) && v > 0.0; });
       },
       get_double(&C::dns_dense_scale)},
      {{"prune_first_last", "prune-first-last", "",
        "also prune the first convolution and the last linear layer"},
       set_bool(&C::prune_first_last),
       get_bool(&C::prune_first_last)},
      {{"kernels", "kernels", "NAME",
        "convolution kernels of a pruned run: auto (per layer and phase, the faster by the calibrated cost "
        "model), sparse (always the sparse kernels) or dense (always oneDNN, multiplying pruned zeros)"},
       [](C& c, S t, S w) {
         c.kernels = parse_choice(t, w, {"auto", "dense", "sparse"});
       },
       get_str(&C::kernels)},
      {{"calibration", "calibration", "FILE",
        "kernel cost model written by `trainer calibrate`; none = the built-in defaults"},
       set_path(&C::calibration),
       get_str(&C::calibration)},
      {{"bn_sums_in_epilogue", "bn-sums-in-epilogue", "",
        "take each batch norm's gradient sums in the epilogue of the sparse BP that writes its gradient "
        "last, not in a pass of their own (slower on the machines measured; docs/sparse-training.md)"},
       set_bool(&C::bn_sums_in_epilogue),
       get_bool(&C::bn_sums_in_epilogue)},
      {{"ops_summary", "no-ops-summary", "", "do not print the per-layer table of MACs and times at the end",
        /*negated=*/true},
       set_bool(&C::ops_summary),
       get_bool(&C::ops_summary)},
  };
  return table;
}

const Entry* find_entry(const std::string& key) {
  for (const Entry& e : entries())
    if (e.info.key == key) return &e;
  return nullptr;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string unknown_key_hint(const std::string& key) {
  std::string snake = key;
  std::replace(snake.begin(), snake.end(), '-', '_');
  if (snake != key && find_entry(snake))
    return fmt::format(" (recipe keys are snake_case: did you mean '{}'?)", snake);
  if (snake.rfind("no_", 0) == 0 && find_entry(snake.substr(3)))
    return fmt::format(" (did you mean '{}: false'?)", snake.substr(3));
  const Entry* best = nullptr;
  size_t best_d = 4;
  for (const Entry& e : entries()) {
    const size_t d = edit_distance(snake, e.info.key);
    if (d < best_d) best_d = d, best = &e;
  }
  if (best) return fmt::format(" (did you mean '{}'?)", best->info.key);
  return " (see `trainer train --help` for the keys)";
}

const char* node_kind(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a map";
    default:
      return "a value";
  }
}

}  // namespace

Shape parse_image_shape(const std::string& text, const std::string& where) {
  const std::string what = "an image shape CxHxW of positive sizes (e.g. 3x32x32)";
  Shape out;
  std::string part;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == 'x' || text[i] == ',') {
      int64_t v = 0;
      auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
      if (part.empty() || ec != std::errc() || p != part.data() + part.size() || v <= 0 || v > 4096)
        expected(where, what, text);
      out.push_back(v);
      part.clear();
    } else {
      part += text[i];
    }
  }
  if (out.size() != 3) expected(where, what, text);
  return out;
}

const std::vector<ConfigKey>& config_keys() {
  static const std::vector<ConfigKey> keys = [] {
    std::vector<ConfigKey> out;
    for (const Entry& e : entries()) out.push_back(e.info);
    return out;
  }();
  return keys;
}

void set_config_value(RunConfig& cfg, const std::string& key, const std::string& text,
                      const std::string& where) {
  const Entry* e = find_entry(key);
  TRAINER_CHECK(e != nullptr, "{}: unknown key '{}'{}", where, key, unknown_key_hint(key));
  e->set(cfg, text, where);
}

std::string config_value(const RunConfig& cfg, const std::string& key) {
  const Entry* e = find_entry(key);
  TRAINER_CHECK(e != nullptr, "unknown configuration key '{}'", key);
  return e->get(cfg);
}

void load_config_file(const std::string& path, RunConfig& cfg) {
  std::ifstream in(path, std::ios::binary);
  TRAINER_CHECK(in.good(), "config file '{}': cannot open it ({})", path, std::strerror(errno));
  std::stringstream content;
  content << in.rdbuf();
  YAML::Node root;
  try {
    root = YAML::Load(content.str());
  } catch (const YAML::Exception& e) {
    fail("config file '{}': line {}, column {}: not valid YAML: {}", path, e.mark.line + 1, e.mark.column + 1,
         e.msg);
  }
  if (root.IsNull()) return;  // an empty recipe changes nothing
  TRAINER_CHECK(root.IsMap(), "config file '{}': expected a map of `key: value` lines, got {}", path,
                node_kind(root));
  std::map<std::string, int> seen;  // key -> line
  for (const auto& kv : root) {
    const int line = kv.first.Mark().line + 1;
    TRAINER_CHECK(kv.first.IsScalar(), "{}:{}: expected a key name, got {}", path, line, node_kind(kv.first));
    const std::string key = kv.first.Scalar();
    const std::string where = fmt::format("{}:{}: key '{}'", path, line, key);
    TRAINER_CHECK(find_entry(key) != nullptr, "{}:{}: unknown key '{}'{}", path, line, key,
                  unknown_key_hint(key));
    auto [it, fresh] = seen.emplace(key, line);
    TRAINER_CHECK(fresh, "{}: given twice (lines {} and {})", where, it->second, line);
    const YAML::Node& v = kv.second;
    std::string text;
    if (v.IsNull()) {
      text.clear();  // `key:` with no value; the key's parser says what it expected
    } else if (v.IsScalar()) {
      text = v.Scalar();
    } else if (v.IsSequence() && key == "synthetic_shape") {
      for (const auto& d : v) {
        TRAINER_CHECK(d.IsScalar(), "{}: expected a list of three sizes, got a nested {}", where,
                      node_kind(d));
        text += (text.empty() ? "" : "x") + d.Scalar();
      }
    } else {
      fail("{}: expected a single value, got {}", where, node_kind(v));
    }
    set_config_value(cfg, key, text, where);
  }
}

void validate(const RunConfig& c) {
  TRAINER_CHECK(!c.nesterov || c.momentum > 0.0, "config: 'nesterov' needs 'momentum' > 0 (it is {})",
                c.momentum);
  TRAINER_CHECK(c.warmup_epochs == 0.0 || c.warmup_steps == 0,
                "config: give the warm-up as 'warmup_epochs' or as 'warmup_steps', not both");
  TRAINER_CHECK(
      c.schedule != "onecycle" || (c.warmup_epochs == 0.0 && c.warmup_steps == 0),
      "config: schedule 'onecycle' has its own warm-up; set 'warmup_epochs'/'warmup_steps' to 0 or choose "
      "another schedule");
  TRAINER_CHECK(c.warmup_epochs < static_cast<double>(c.epochs),
                "config: 'warmup_epochs' ({}) must be shorter than the run ('epochs' = {})", c.warmup_epochs,
                c.epochs);
  TRAINER_CHECK(c.stop_after <= c.epochs, "config: 'stop_after' ({}) is past the last epoch ('epochs' = {})",
                c.stop_after, c.epochs);
  TRAINER_CHECK(!c.cycle_momentum || c.schedule == "onecycle",
                "config: 'cycle_momentum' applies to schedule 'onecycle' only (schedule is '{}')",
                c.schedule);
  TRAINER_CHECK(!c.cycle_momentum || c.momentum > 0.0, "config: 'cycle_momentum' needs 'momentum' > 0");
  TRAINER_CHECK(
      c.data != "cifar10" || c.data_dir != RunConfig{}.data_dir,
      "config: data 'cifar10' needs 'data_dir', the folder of data_batch_1.bin .. test_batch.bin (the "
      "default is Fashion-MNIST's folder)");
  TRAINER_CHECK(c.synthetic_shape.size() == 3, "config: 'synthetic_shape' must be CxHxW");
  TRAINER_CHECK(c.initial_sparsity <= c.sparsity,
                "config: 'initial_sparsity' ({}) must not exceed 'sparsity' ({})", c.initial_sparsity,
                c.sparsity);
  // The two keys below have defaults that apply to one distribution / policy only; any other value given
  // with another one is a mistake worth naming.
  TRAINER_CHECK(c.prune_erk_power == RunConfig{}.prune_erk_power || c.prune_distribution == "erk",
                "config: 'prune_erk_power' ({}) applies to prune_distribution 'erk' only (it is '{}')",
                c.prune_erk_power, c.prune_distribution);
  TRAINER_CHECK(c.dns_dense_every == RunConfig{}.dns_dense_every || c.prune == "dns",
                "config: 'dns_dense_every' ({}) applies to prune 'dns' only (it is '{}')", c.dns_dense_every,
                c.prune);
  TRAINER_CHECK(c.dns_dense_scale == 1.0 || c.prune == "dns",
                "config: 'dns_dense_scale' ({}) applies to prune 'dns' only (it is '{}')", c.dns_dense_scale,
                c.prune);
  TRAINER_CHECK(c.prune_begin < 0.0 || c.prune_end < 0.0 || c.prune_begin <= c.prune_end,
                "config: 'prune_begin' ({}) is after 'prune_end' ({})", c.prune_begin, c.prune_end);
}

int64_t warmup_steps_for(const RunConfig& cfg, int64_t steps_per_epoch) {
  if (cfg.warmup_steps > 0) return cfg.warmup_steps;
  return static_cast<int64_t>(std::llround(cfg.warmup_epochs * static_cast<double>(steps_per_epoch)));
}

nlohmann::json to_json(const RunConfig& c) {
  nlohmann::json j = recipe_json(c);
  j["data_dir"] = c.data_dir;
  j["metrics"] = c.metrics;
  j["checkpoint"] = c.checkpoint;
  j["resume"] = c.resume;
  j["eval_every"] = c.eval_every;
  j["stop_after"] = c.stop_after;
  j["progress"] = c.progress;
  j["ops_summary"] = c.ops_summary;
  j["kernels"] = c.kernels;
  j["calibration"] = c.calibration;
  j["bn_sums_in_epilogue"] = c.bn_sums_in_epilogue;
  return j;
}

nlohmann::json recipe_json(const RunConfig& c) {
  nlohmann::json j;
  j["model"] = c.model;
  j["width"] = c.width;
  j["data"] = c.data;
  if (c.data == "synthetic") {
    j["synthetic_size"] = c.synthetic_size;
    j["synthetic_shape"] = c.synthetic_shape;
  }
  j["epochs"] = c.epochs;
  j["batch_size"] = c.batch_size;
  j["lr"] = c.lr;
  j["momentum"] = c.momentum;
  j["nesterov"] = c.nesterov;
  j["weight_decay"] = c.weight_decay;
  j["init"] = c.init;
  j["schedule"] = c.schedule;
  j["warmup_epochs"] = c.warmup_epochs;
  j["warmup_steps"] = c.warmup_steps;
  j["lr_step_epochs"] = c.lr_step_epochs;
  j["lr_gamma"] = c.lr_gamma;
  j["cycle_momentum"] = c.cycle_momentum;
  j["seed"] = c.seed;
  j["threads"] = c.threads;
  j["subset"] = c.subset;
  j["augment_crop"] = c.augment_crop;
  j["augment_flip"] = c.augment_flip;
  j["max_steps"] = c.max_steps;
  j["prune"] = c.prune;
  if (c.prune != "none") {
    j["sparsity"] = c.sparsity;
    j["initial_sparsity"] = c.initial_sparsity;
    j["prune_distribution"] = c.prune_distribution;
    j["prune_erk_power"] = c.prune_erk_power;
    j["prune_every"] = c.prune_every;
    j["prune_begin"] = c.prune_begin;
    j["prune_end"] = c.prune_end;
    j["rigl_alpha"] = c.rigl_alpha;
    j["dns_surgery"] = c.dns_surgery;
    j["dns_dense_every"] = c.dns_dense_every;
    j["dns_dense_scale"] = c.dns_dense_scale;
    j["prune_first_last"] = c.prune_first_last;
  }
  return j;
}

}  // namespace trainer
