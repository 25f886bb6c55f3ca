#include "train/trainer.hpp"

#include <fmt/format.h>
#include <omp.h>

#include <array>
#include <cmath>
#include <map>
#include <optional>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/timer.hpp"
#include "data/dataset.hpp"
#include "nn/layers/conv2d.hpp"
#include "nn/layers/linear.hpp"
#include "nn/loss.hpp"
#include "nn/models.hpp"
#include "ops/op_stream.hpp"
#include "sparsity/policy.hpp"
#include "train/checkpoint.hpp"
#include "train/metrics.hpp"
#include "train/optimizer.hpp"
#include "train/schedule.hpp"

namespace trainer {

namespace {

// The synthetic set does not change with --seed, so that runs with different seeds see the same data.
constexpr uint64_t kSyntheticDataSeed = 0;
constexpr int64_t kSyntheticClasses = 10;

struct Data {
  Dataset train, test;
};

// For a calibration with per-shape entries: how many of this model's convolution shapes have one (the
// others use the generic coefficients), so that a file calibrated for another model or input size shows.
std::string cost_model_shapes_note(const ConvCostModel& m, const Graph& graph, const Shape& image) {
  if (m.shapes.empty()) return "";
  const std::vector<ConvShape> shapes = conv_shapes(graph, image);
  int64_t matched = 0;
  for (const ConvShape& s : shapes)
    for (const ShapeCosts& e : m.shapes) matched += e.shape == s;
  return fmt::format(", with entries for {} of this model's {} convolution shapes", matched, shapes.size());
}

Data load_data(const RunConfig& cfg) {
  Data d;
  if (cfg.data == "fashion-mnist") {
    d.train = load_fashion_mnist(cfg.data_dir, true);
    d.test = load_fashion_mnist(cfg.data_dir, false);
  } else if (cfg.data == "cifar10") {
    d.train = load_cifar10(cfg.data_dir, true);
    d.test = load_cifar10(cfg.data_dir, false);
  } else if (cfg.data == "synthetic") {
    // One draw split in two, so that both halves share the class templates.
    const int64_t n_train = cfg.synthetic_size, n_test = std::max<int64_t>(1, cfg.synthetic_size / 4);
    const Shape& s = cfg.synthetic_shape;
    Dataset all =
        make_synthetic(n_train + n_test, s.at(0), s.at(1), s.at(2), kSyntheticClasses, kSyntheticDataSeed);
    d.train = take_first(all, n_train);
    d.train.name = "synthetic/train";
    d.test = d.train;
    const int64_t image = all.channels * all.height * all.width;
    d.test.name = "synthetic/test";
    d.test.images.assign(all.images.begin() + n_train * image, all.images.end());
    d.test.labels.assign(all.labels.begin() + n_train, all.labels.end());
  } else {
    fail("config: unknown data set '{}'; expected fashion-mnist, cifar10 or synthetic", cfg.data);
  }
  if (cfg.subset > 0) d.train = take_first(d.train, cfg.subset);
  TRAINER_CHECK(d.train.size() > 0, "data set '{}' has no training images", d.train.name);
  TRAINER_CHECK(d.test.size() > 0, "data set '{}' has no test images", d.test.name);
  TRAINER_CHECK(d.train.image_shape() == d.test.image_shape() && d.train.num_classes == d.test.num_classes,
                "data: the training images {} and test images {} differ in shape or classes",
                shape_str(d.train.image_shape()), shape_str(d.test.image_shape()));
  return d;
}

bool all_finite(const std::vector<Param*>& params) {
  for (const Param* p : params) {
    const float* v = p->value.data();
    const int64_t n = p->value.numel();
    bool ok = true;
#pragma omp parallel for simd schedule(static) reduction(&& : ok)
    for (int64_t i = 0; i < n; ++i) ok = ok && std::isfinite(v[i]);
    if (!ok) return false;
  }
  return true;
}

struct Eval {
  double loss = 0.0, acc = 0.0;
};

// Test set in order, no augmentation, batch-norm running statistics (training = false).
Eval evaluate(Graph& graph, Loader& loader, SoftmaxCrossEntropy& ce, Tensor& x,
              std::vector<int32_t>& labels) {
  loader.start_epoch(0);
  double loss_sum = 0.0;
  int64_t correct = 0, seen = 0;
  for (int64_t b = 0; b < loader.num_batches(); ++b) {
    loader.batch(b, x, labels);
    const Tensor& logits = graph.forward(x, /*training=*/false);
    const float loss = ce.ff(logits, labels);
    const int64_t n = static_cast<int64_t>(labels.size());
    loss_sum += static_cast<double>(loss) * static_cast<double>(n);
    correct += ce.correct();
    seen += n;
  }
  return {loss_sum / static_cast<double>(seen), static_cast<double>(correct) / static_cast<double>(seen)};
}

std::string divergence_message(const char* what, double value, int64_t step, int64_t epoch, int64_t epochs,
                               int64_t batch, int64_t batches, double lr, const RunConfig& cfg,
                               int64_t saved_epoch) {
  std::string saved;
  if (cfg.checkpoint.empty())
    saved = "No checkpoint was being written (--checkpoint FILE keeps one per epoch).";
  else if (saved_epoch > 0)
    saved = fmt::format("The checkpoint '{}' of epoch {} is intact (continue with --resume {}).",
                        cfg.checkpoint, saved_epoch, cfg.checkpoint);
  else
    saved = fmt::format("No epoch had finished, so '{}' holds no checkpoint of this run.", cfg.checkpoint);
  const char* shown = std::isnan(value) ? "NaN" : (value > 0 ? "+Inf" : "-Inf");
  return fmt::format(
      "training diverged: {} is {} at step {} (epoch {}/{}, batch {}/{}) with learning rate {:.6g}. {} Try a "
      "lower "
      "--lr (e.g. {:.3g}), a warm-up (--warmup-epochs 1, or --schedule onecycle), or a larger --batch-size.",
      what, shown, step, epoch, epochs, batch, batches, lr, saved, cfg.lr / 10.0);
}

// The pruner's view of the model: conv and linear weights in model order (so the first conv and the last
// linear are the first and last tensors), with their SGD momentum buffers.
std::vector<PrunableTensor> prunable_tensors(Graph& graph, Sgd& sgd, const std::vector<Param*>& params) {
  std::vector<PrunableTensor> out;
  auto momentum_of = [&](const Param* p) -> Tensor* {
    auto& bufs = sgd.momentum_buffers();
    for (size_t i = 0; i < params.size() && i < bufs.size(); ++i)
      if (params[i] == p) return bufs[i].empty() ? nullptr : &bufs[i];
    return nullptr;
  };
  for (size_t i = 0; i < graph.size(); ++i) {
    Param* w = nullptr;
    if (auto* conv = dynamic_cast<Conv2d*>(&graph.layer(static_cast<int>(i)))) w = &conv->weight();
    if (auto* fc = dynamic_cast<Linear*>(&graph.layer(static_cast<int>(i)))) w = &fc->weight();
    if (w) out.push_back({w->name, &w->value, &w->grad, momentum_of(w), false});
  }
  return out;
}

PruningOptions pruning_options(const RunConfig& cfg, int64_t total_steps) {
  PruningOptions po;
  po.sparsity = cfg.sparsity;
  po.initial_sparsity = cfg.initial_sparsity;
  po.distribution = cfg.prune_distribution;
  // The run's defaults for these two (RunConfig: ERK's power, DNS's interval) are the library's 1 where
  // they do not apply.
  po.erk_power = cfg.prune_distribution == "erk" ? cfg.prune_erk_power : 1.0;
  po.total_steps = total_steps;
  po.update_every = cfg.prune_every;
  const auto at = [&](double fraction) {
    return static_cast<int64_t>(std::llround(fraction * static_cast<double>(total_steps)));
  };
  if (cfg.prune_begin >= 0.0) po.begin_step = at(cfg.prune_begin);
  if (cfg.prune_end >= 0.0) po.end_step = at(cfg.prune_end);
  po.rigl_alpha = cfg.rigl_alpha;
  po.dns_surgery_after_end = cfg.dns_surgery == "always";
  po.dns_dense_every = cfg.prune == "dns" ? cfg.dns_dense_every : 1;
  po.dns_dense_scale = cfg.dns_dense_scale;
  po.keep_first_last_dense = !cfg.prune_first_last;
  po.seed = cfg.seed;
  return po;
}

// Points every convolution at its mask (nullptr for the dense ones) and the run's context; called when
// the masks moved, since a policy may replace a mask's storage.
void connect_masks(Graph& graph, const PruningPolicy* policy, const SparsityContext* ctx) {
  for (size_t i = 0; i < graph.size(); ++i) {
    auto* conv = dynamic_cast<Conv2d*>(&graph.layer(static_cast<int>(i)));
    if (!conv) continue;
    const uint8_t* keep = nullptr;
    if (policy) {
      for (size_t t = 0; t < policy->size(); ++t)
        if (policy->tensor(t).weight == &conv->weight().value && policy->is_prunable(t))
          keep = policy->mask(t).data();
    }
    conv->set_sparsity(keep, ctx);
  }
}

// Work counters of a span of steps, per phase (ff, bp, wg) and per (layer, phase), for the metrics file.
using WorkByPhase = std::array<OpTotals, 3>;

// Per (layer, phase) of the layers with multiplies, in execution order of first appearance.
using LayerWork = std::vector<std::pair<Phase, OpTotals>>;

void add_layer_work(LayerWork& rows, std::map<std::pair<int32_t, Phase>, size_t>& index,
                    const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    if (op.dense_macs == 0 || static_cast<int>(op.phase) > 2) continue;
    auto [it, fresh] = index.emplace(std::make_pair(op.layer, op.phase), rows.size());
    if (fresh) rows.emplace_back(op.phase, OpTotals{});
    rows[it->second].second.add(op);
  }
}

nlohmann::json phase_work_json(const OpTotals& p) {
  return {{"dense_macs", p.dense_macs},
          {"executed_macs", p.executed_macs},
          {"skipped_pruned", p.skipped_pruned},
          {"skipped_zero_activation", p.skipped_zero_activation},
          {"skipped_zero_error", p.skipped_zero_error},
          {"skipped_masked_output", p.skipped_masked_output},
          {"seconds", static_cast<double>(p.time_ns) * 1e-9}};
}

nlohmann::json layer_work_json(const LayerWork& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [phase, t] : rows) {
    nlohmann::json j = phase_work_json(t);
    j["layer"] = t.layer_name;
    j["phase"] = phase_name(phase);
    j["kernels"] = t.kernel_calls;
    out.push_back(std::move(j));
  }
  return out;
}

void add_work(WorkByPhase& w, const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    if (op.dense_macs == 0 || static_cast<int>(op.phase) > 2) continue;
    w[static_cast<int>(op.phase)].add(op);
  }
}

// Adds, per conv (layer, phase), the cost model's time for the dense kernel on nChw16c activations (what
// the dense engine runs) for this step's calls.
void add_dense_estimates(std::map<std::pair<int32_t, Phase>, double>& into, const ConvCostModel& cost,
                         const std::vector<Op>& ops) {
  for (const Op& op : ops) {
    if (op.kind != "conv2d" || static_cast<int>(op.phase) > 2) continue;
    const ConvGeom g{op.x_shape[0], op.x_shape[1], op.x_shape[2], op.x_shape[3], op.w_shape[0],
                     op.w_shape[2], op.w_shape[3], op.stride[0],  op.pad[0]};
    into[{op.layer, op.phase}] +=
        cost.estimate_ns(static_cast<ConvPhase>(op.phase), ConvKernel::dense, g, 1.0, /*reorder=*/false);
  }
}

nlohmann::json work_json(const WorkByPhase& w) {
  nlohmann::json j = nlohmann::json::object();
  const char* names[3] = {"ff", "bp", "wg"};
  for (int i = 0; i < 3; ++i) j[names[i]] = phase_work_json(w[i]);
  return j;
}

}  // namespace

RunResult train(const RunConfig& cfg, std::FILE* out, const TrainHooks& hooks) {
  validate(cfg);
  omp_set_num_threads(static_cast<int>(cfg.threads));

  const Data data = load_data(cfg);
  const Shape image = data.train.image_shape();
  const int64_t classes = data.train.num_classes;
  const Normalization norm = channel_stats(data.train);
  Loader train_loader(data.train, cfg.batch_size, norm, /*shuffle=*/true,
                      Augmentation{cfg.augment_crop, cfg.augment_flip}, cfg.seed);
  Loader test_loader(data.test, cfg.batch_size, norm, /*shuffle=*/false, Augmentation{}, cfg.seed);
  const int64_t steps_per_epoch = train_loader.num_batches();
  // Steps actually taken per epoch (--max-steps cuts epochs short for throughput runs; the schedule still
  // spans full epochs, as bench/pytorch_train.py's does).
  const int64_t steps_taken = cfg.max_steps > 0 ? std::min(cfg.max_steps, steps_per_epoch) : steps_per_epoch;

  std::unique_ptr<Graph> graph = build_model(cfg.model, image, classes, ModelOptions{cfg.width});
  // ReLUs after a batch norm or an add run inside it (one pass over memory less each way, same numbers),
  // and a batch norm's only reader applies it (one tensor written and read back less).
  graph->fuse_relus();
  graph->fuse_affine_inputs();
  graph->set_fuse_grad_sums(cfg.bn_sums_in_epilogue);
  // Sparse training: the network runs in the sparse kernels' layout (NCHW16n) end to end unless the run
  // asked for oneDNN only.
  const bool pruned_run = cfg.prune != "none";
  const bool sparse_layout = pruned_run ? cfg.kernels != "dense" : cfg.kernels == "sparse";
  if (sparse_layout) graph->set_input_layout(Layout::NCHW16n);
  const Shape out_shape = graph->check({cfg.batch_size, image[0], image[1], image[2]});
  TRAINER_CHECK(out_shape == Shape({cfg.batch_size, classes}),
                "model '{}' produces {} for a batch of {}, expected logits [{}, {}]", cfg.model,
                shape_str(out_shape), cfg.batch_size, cfg.batch_size, classes);
  Rng init_rng(cfg.seed);
  graph->init(init_rng, cfg.init == "kaiming" ? InitScheme::kaiming : InitScheme::pytorch);
  const std::vector<Param*> params = graph->params();
  Sgd sgd(params,
          SgdOptions{static_cast<float>(cfg.momentum), cfg.nesterov, static_cast<float>(cfg.weight_decay)});

  ScheduleOptions so;
  so.kind = parse_schedule(cfg.schedule);
  so.lr = cfg.lr;
  so.steps_per_epoch = steps_per_epoch;
  so.epochs = cfg.epochs;
  so.warmup_steps = warmup_steps_for(cfg, steps_per_epoch);
  so.step_epochs = cfg.lr_step_epochs > 0 ? cfg.lr_step_epochs : std::max<int64_t>(1, (cfg.epochs + 2) / 3);
  so.gamma = cfg.lr_gamma;
  so.cycle_momentum = cfg.cycle_momentum;
  const LrSchedule schedule(so);

  CheckpointInfo info;
  info.model = cfg.model;
  info.width = cfg.width;
  info.input = image;
  info.classes = classes;
  info.recipe = recipe_json(cfg);

  ConvCostModel cost_model =
      cfg.calibration.empty() ? ConvCostModel::defaults() : ConvCostModel::load(cfg.calibration);
  if (!cfg.calibration.empty() && cost_model.threads > 0 && cost_model.threads != cfg.threads)
    fmt::print(stderr,
               "warning: the kernel cost model '{}' was calibrated with {} threads and this run uses {}; the "
               "kernel choice may be off (run `trainer calibrate --threads {}`)\n",
               cost_model.source, cost_model.threads, cfg.threads, cfg.threads);
  SparsityContext sctx;
  sctx.mode = parse_kernel_mode(cfg.kernels);
  sctx.cost = &cost_model;
  std::unique_ptr<PruningPolicy> policy;
  const PruningOptions prune_opts = pruning_options(cfg, cfg.epochs * steps_taken);
  if (pruned_run) policy = make_policy(cfg.prune, prune_opts);

  int64_t start_epoch = 0, global_step = 0;
  std::optional<Checkpoint> resumed;
  if (!cfg.resume.empty()) {
    resumed = read_checkpoint(cfg.resume);
    const Checkpoint& ck = *resumed;
    restore_checkpoint(ck, cfg.resume, *graph, &sgd);
    const auto blob = ck.blobs.find("pruning");
    TRAINER_CHECK(pruned_run || blob == ck.blobs.end(),
                  "checkpoint '{}' was written by a pruned run (prune '{}'); resume it with the same --prune",
                  cfg.resume, ck.info.recipe.value("prune", std::string("?")));
    TRAINER_CHECK(!pruned_run || blob != ck.blobs.end(),
                  "checkpoint '{}' holds no pruning state (it was written by a dense run); resume it without "
                  "--prune, or start the pruned run afresh",
                  cfg.resume);
    TRAINER_CHECK(ck.info.global_step == ck.info.epoch * steps_taken,
                  "checkpoint '{}' is at step {} after {} epochs, but this run takes {} steps per epoch (did "
                  "--batch-size, --subset, --max-steps or the data change?)",
                  cfg.resume, ck.info.global_step, ck.info.epoch, steps_taken);
    for (const auto& [key, value] : ck.info.recipe.items()) {
      const auto now = info.recipe.find(key);
      if (now == info.recipe.end() || *now != value)
        fmt::print(stderr,
                   "warning: resuming with {} = {} (the checkpoint has {}); the run will not match an "
                   "uninterrupted one\n",
                   key, now == info.recipe.end() ? "nothing" : now->dump(), value.dump());
    }
    start_epoch = ck.info.epoch;
    global_step = ck.info.global_step;
  }
  const int64_t last_epoch = cfg.stop_after > 0 ? cfg.stop_after : cfg.epochs;
  if (policy) {
    std::vector<PrunableTensor> tensors = prunable_tensors(*graph, sgd, params);
    if (resumed)
      policy->attach(std::move(tensors), resumed->blobs.at("pruning"));
    else
      policy->attach(std::move(tensors));
    sctx.mask_generation = policy->generation();
  }
  resumed.reset();
  if (sparse_layout) connect_masks(*graph, policy.get(), &sctx);

  fmt::print(out, "model {} ({} parameters) on {}: {} training / {} test images {}, {} classes\n", cfg.model,
             graph->num_parameters(), cfg.data, data.train.size(), data.test.size(), shape_str(image),
             classes);
  fmt::print(out,
             "{} epochs x {} steps of {} images; sgd lr {} momentum {}{} weight decay {}; schedule {}; "
             "threads {}; seed {}\n",
             cfg.epochs, steps_per_epoch, cfg.batch_size, cfg.lr, cfg.momentum,
             cfg.nesterov ? " (nesterov)" : "", cfg.weight_decay, cfg.schedule, cfg.threads, cfg.seed);
  if (policy)
    fmt::print(
        out,
        "pruning: {} to {:.0f}% weight sparsity ({} distribution, mask updates every {} steps from step {} "
        "to {}{}); kernels {} ({}, cost model: {})\n",
        cfg.prune, 100.0 * cfg.sparsity,
        // What the policy was given (pruning_options), not the run's defaults where they do not apply.
        prune_opts.erk_power == 1.0
            ? cfg.prune_distribution
            : fmt::format("{} (power {})", cfg.prune_distribution, prune_opts.erk_power),
        cfg.prune_every, policy->begin_step(), policy->end_step(),
        prune_opts.dns_dense_every > 1 || prune_opts.dns_dense_scale != 1.0
            ? fmt::format("; dense WG every {} steps, pruned gradient x{}", prune_opts.dns_dense_every,
                          prune_opts.dns_dense_scale)
            : "",
        cfg.kernels, sparse_layout ? "NCHW16n activations" : "oneDNN on nChw16c",
        cost_model.source + cost_model_shapes_note(cost_model, *graph, image));
  if (start_epoch > 0) fmt::print(out, "resumed from '{}' after epoch {}\n", cfg.resume, start_epoch);
  std::fflush(out);

  MetricsWriter metrics(cfg.metrics, /*append=*/!cfg.resume.empty());
  Progress progress(progress_style(cfg.progress));
  SoftmaxCrossEntropy ce;
  OpStream ops;
  std::map<std::pair<int32_t, Phase>, double> dense_estimate;  // what oneDNN would have taken (cost model)
  Tensor x, dlogits;
  std::vector<int32_t> labels;
  const int32_t loss_layer =
      static_cast<int32_t>(graph->size());  // the loss as a pseudo-layer after the last

  RunResult result;
  result.epochs_completed = start_epoch;
  result.steps = global_step;
  int64_t saved_epoch = start_epoch;
  double lr = schedule.lr(global_step);
  std::optional<Eval> last_eval;

  for (int64_t epoch = start_epoch; epoch < last_epoch; ++epoch) {
    const uint64_t epoch_t0 = now_ns();
    train_loader.start_epoch(epoch);
    progress.start_epoch(epoch + 1, cfg.epochs, steps_taken);
    double loss_sum = 0.0;
    int64_t correct = 0, seen = 0;
    WorkByPhase epoch_work{};
    LayerWork epoch_layers;
    std::map<std::pair<int32_t, Phase>, size_t> epoch_layer_index;
    for (int64_t b = 0; b < steps_taken; ++b) {
      ops.begin_step();
      ops.capture_nonzeros(hooks.wants_nonzeros ? hooks.wants_nonzeros(global_step) : NonzeroCapture::none);
      train_loader.batch(b, x, labels);
      sctx.dense_wg = policy && policy->needs_dense_wg(global_step);
      const Tensor& logits = graph->forward(x, /*training=*/true, &ops);

      const uint64_t loss_t0 = now_ns();
      const float loss = ce.ff(logits, labels);
      lr = schedule.lr(global_step);
      if (!std::isfinite(loss))
        throw Error(divergence_message("the training loss", loss, global_step + 1, epoch + 1, cfg.epochs,
                                       b + 1, steps_taken, lr, cfg, saved_epoch));
      ce.bp(dlogits);
      Op loss_op;
      loss_op.layer = loss_layer;
      loss_op.layer_name = "loss";
      loss_op.kind = "softmax_ce";
      loss_op.phase = Phase::loss;
      loss_op.x_shape = {logits.dim(0), logits.dim(1), 1, 1};
      loss_op.y_shape = {1, 1, 1, 1};
      loss_op.time_ns = now_ns() - loss_t0;
      ops.record(std::move(loss_op));

      graph->backward(dlogits, &ops);
      uint64_t prune_ns = 0;
      if (policy) {
        const uint64_t t0 = now_ns();
        policy->before_update(global_step);
        prune_ns += now_ns() - t0;
      }
      sgd.step(static_cast<float>(lr), &ops, static_cast<float>(schedule.momentum(global_step)));
      if (policy) {
        const uint64_t t0 = now_ns();
        policy->after_update(global_step);
        if (policy->generation() != sctx.mask_generation) {
          sctx.mask_generation = policy->generation();
          connect_masks(*graph, policy.get(), &sctx);
        }
        prune_ns += now_ns() - t0;
        Op prune_op;
        prune_op.layer = -2;
        prune_op.layer_name = "pruner";
        prune_op.kind = "prune";
        prune_op.phase = Phase::update;
        prune_op.time_ns = prune_ns;
        ops.record(std::move(prune_op));
      }
      add_work(epoch_work, ops.step_ops());
      add_layer_work(epoch_layers, epoch_layer_index, ops.step_ops());
      if (sparse_layout) add_dense_estimates(dense_estimate, cost_model, ops.step_ops());
      if (hooks.on_step) hooks.on_step(global_step, ops.step_ops());
      ++global_step;

      const int64_t n = static_cast<int64_t>(labels.size());
      loss_sum += static_cast<double>(loss) * static_cast<double>(n);
      correct += ce.correct();
      seen += n;
      const double elapsed = static_cast<double>(now_ns() - epoch_t0) * 1e-9;
      progress.update(b + 1, loss_sum / static_cast<double>(seen), static_cast<double>(correct) / seen,
                      static_cast<double>(seen) / std::max(elapsed, 1e-9));
    }
    const double train_s = static_cast<double>(now_ns() - epoch_t0) * 1e-9;
    progress.finish_epoch();
    // Weights that went non-finite in the last update must not reach the checkpoint.
    if (!all_finite(params))
      throw Error(divergence_message("a weight", NAN, global_step, epoch + 1, cfg.epochs, steps_taken,
                                     steps_taken, lr, cfg, saved_epoch));

    result.train_loss = loss_sum / static_cast<double>(seen);
    result.train_acc = static_cast<double>(correct) / static_cast<double>(seen);
    result.images += seen;
    result.train_seconds += train_s;

    const bool eval_now = (epoch + 1) % cfg.eval_every == 0 || epoch + 1 == last_epoch;
    nlohmann::json line;
    line["epoch"] = epoch + 1;
    line["step"] = global_step;
    line["train_loss"] = result.train_loss;
    line["train_acc"] = result.train_acc;
    if (eval_now) {
      last_eval = evaluate(*graph, test_loader, ce, x, labels);
      TRAINER_CHECK(std::isfinite(last_eval->loss), "{}",
                    divergence_message("the test loss", last_eval->loss, global_step, epoch + 1, cfg.epochs,
                                       steps_taken, steps_taken, lr, cfg, saved_epoch));
      line["test_loss"] = last_eval->loss;
      line["test_acc"] = last_eval->acc;
    } else {
      line["test_loss"] = nullptr;
      line["test_acc"] = nullptr;
    }
    const double seconds = static_cast<double>(now_ns() - epoch_t0) * 1e-9;
    line["lr"] = lr;
    line["images_per_s"] = static_cast<double>(seen) / train_s;
    line["seconds"] = seconds;
    line["work"] = work_json(epoch_work);
    line["layers"] = layer_work_json(epoch_layers);
    if (policy) {
      line["sparsity"] = policy->sparsity();
      line["overall_sparsity"] = policy->overall_sparsity();
      line["scheduled_sparsity"] = policy->scheduled_sparsity(global_step - 1);
      line["mask_updates"] = policy->stats().mask_updates;
      line["dense_wg_steps"] = policy->stats().dense_wg_steps;
      line["total_pruned"] = policy->stats().total_pruned;  // mask churn: kept -> pruned, whole run
      line["total_grown"] = policy->stats().total_grown;    // pruned -> kept (dns splice, rigl grow)
    }
    metrics.write(line);

    std::string test_part =
        eval_now ? fmt::format("test loss {:.4f} acc {:6.2f}%", last_eval->loss, 100.0 * last_eval->acc)
                 : std::string("test -");
    const std::string sparsity_part =
        policy ? fmt::format("  sparsity {:.1f}%", 100.0 * policy->sparsity()) : std::string();
    fmt::print(out,
               "epoch {:>3}/{}  train loss {:.4f} acc {:6.2f}%  {}  lr {:.4g}{}  {:.0f} img/s  {:.1f} s\n",
               epoch + 1, cfg.epochs, result.train_loss, 100.0 * result.train_acc, test_part, lr,
               sparsity_part, static_cast<double>(seen) / train_s, seconds);
    std::fflush(out);

    if (!cfg.checkpoint.empty()) {
      info.epoch = epoch + 1;
      info.global_step = global_step;
      Checkpoint ck = capture_checkpoint(*graph, &sgd, info);
      if (policy) ck.blobs["pruning"] = policy->save_state();
      write_checkpoint(cfg.checkpoint, ck);
      saved_epoch = epoch + 1;
    }
    result.epochs_completed = epoch + 1;
    result.steps = global_step;
  }

  if (!last_eval) {
    // Nothing trained (a checkpoint already at the end): still report where the model stands.
    fmt::print(out, "the checkpoint is at epoch {}; nothing left to train\n", start_epoch);
    last_eval = evaluate(*graph, test_loader, ce, x, labels);
  }
  if (hooks.on_finish) hooks.on_finish(out);
  result.test_loss = last_eval->loss;
  result.test_acc = last_eval->acc;
  result.images_per_s =
      result.train_seconds > 0 ? static_cast<double>(result.images) / result.train_seconds : 0.0;
  fmt::print(out,
             "test accuracy {:.2f}% (loss {:.4f}) after {} of {} epochs; training throughput {:.0f} images/s "
             "({} images in {:.1f} s)\n",
             100.0 * result.test_acc, result.test_loss, result.epochs_completed, cfg.epochs,
             result.images_per_s, result.images, result.train_seconds);
  if (cfg.ops_summary && result.images > 0)
    fmt::print(out, "\nper-layer work and time over the run's training steps:\n{}",
               format_op_summary(ops, static_cast<uint64_t>(result.images)));
  if (cfg.ops_summary && result.images > 0 && sparse_layout)
    fmt::print(out,
               "\nsparse work per layer and phase (shares of the dense multiplies; GMAC/s = dense-equivalent "
               "rate):\n{}",
               format_sparse_summary(ops, static_cast<uint64_t>(result.images), &dense_estimate));
  if (cfg.ops_summary && result.images > 0 && sparse_layout)
    fmt::print(out,
               "* x dense: the oneDNN time of the same calls on nChw16c activations estimated by the cost "
               "model ({}), over the measured time\n",
               cost_model.source);
  std::fflush(out);
  return result;
}

}  // namespace trainer
