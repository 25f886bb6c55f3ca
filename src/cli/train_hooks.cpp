#include "cli/train_hooks.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "chip/spec.hpp"
#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/timer.hpp"
#include "report/chip_report.hpp"

namespace trainer::cli {

namespace {

// `path`.partial, then rename: no half-written report under the final name.
void write_text_atomically(const std::string& path, const std::string& text) {
  const std::string partial = path + ".partial";
  std::FILE* f = std::fopen(partial.c_str(), "wb");
  TRAINER_CHECK(f != nullptr, "chip report '{}': cannot create the file", path);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed || std::rename(partial.c_str(), path.c_str()) != 0) {
    std::remove(partial.c_str());
    fail("chip report '{}': cannot write the file", path);
  }
}

}  // namespace

void add_chip_trace_options(CLI::App* app, ChipTraceOptions& o) {
  app->add_option("--chip", o.chips,
                  "cost the run's steps on this chip spec (YAML, e.g. configs/chips/trainer-28nm.yaml); "
                  "repeat for several chips; command line only (default: none)")
      ->type_name("FILE");
  app->add_option(
         "--chip-mode", o.chip_mode,
         "chip model: exact (from the nonzero maps) or statistical (densities only) (default: exact)")
      ->type_name("MODE");
  app->add_option("--chip-every", o.chip_every,
                  "cost every Nth training step (0, N, 2N, ...); totals are over the costed steps "
                  "(default: 1)")
      ->type_name("N");
  app->add_option("--chip-out", o.chip_out,
                  "write the chip report to PREFIX.json and PREFIX.csv (several chips: "
                  "PREFIX.<spec file name>.json/.csv) (default: none)")
      ->type_name("PREFIX");
  app->add_option("--trace", o.trace,
                  "record steps' Op records with their nonzero maps to FILE, for `trainer simulate` "
                  "(default: none)")
      ->type_name("FILE");
  app->add_option("--chip-maps", o.chip_maps,
                  "which Op records carry nonzero maps on costed or traced steps: all, or pe_array (conv and "
                  "linear only; element-wise Ops are then costed as if their operands were dense; a cheaper "
                  "capture) (default: all)")
      ->type_name("WHICH");
  app->add_option("--trace-every", o.trace_every,
                  "record every Nth training step (0, N, 2N, ...) in the trace (default: 50)")
      ->type_name("N");
}

ChipTraceHooks::ChipTraceHooks(const ChipTraceOptions& o) : opts_(o) {
  if (o.chips.empty()) {
    if (!o.chip_out.empty()) throw UsageError("option --chip-out needs --chip");
    if (o.chip_every != 1) throw UsageError("option --chip-every needs --chip");
    if (o.chip_mode != "exact") throw UsageError("option --chip-mode needs --chip");
  }
  if (o.trace.empty() && o.trace_every != 50) throw UsageError("option --trace-every needs --trace");
  if (o.chips.empty() && o.trace.empty() && o.chip_maps != "all")
    throw UsageError("option --chip-maps needs --chip or --trace");
  capture_ = o.chip_maps == "pe_array" ? NonzeroCapture::pe_array : NonzeroCapture::all;
  if (o.chip_maps != "all" && o.chip_maps != "pe_array")
    throw UsageError(fmt::format("option --chip-maps: expected all or pe_array, got '{}'", o.chip_maps));
  if (o.chip_every < 1)
    throw UsageError(fmt::format("option --chip-every: expected an integer >= 1, got '{}'", o.chip_every));
  if (o.trace_every < 1)
    throw UsageError(fmt::format("option --trace-every: expected an integer >= 1, got '{}'", o.trace_every));

  CostMode mode;
  try {
    mode = parse_cost_mode(o.chip_mode);
  } catch (const Error& e) {
    throw UsageError(fmt::format("option --chip-mode: {}", e.what()));
  }
  std::set<std::string> prefixes;
  for (const std::string& path : o.chips) {
    Chip c;
    c.spec_path = path;
    if (!o.chip_out.empty()) {
      c.out_prefix = o.chips.size() == 1
                         ? o.chip_out
                         : fmt::format("{}.{}", o.chip_out, std::filesystem::path(path).stem().string());
      if (!prefixes.insert(c.out_prefix).second)
        throw UsageError(fmt::format(
            "option --chip-out: two --chip specs named '{}' would write the same report '{}.json'",
            std::filesystem::path(path).stem().string(), c.out_prefix));
    }
    c.model = std::make_unique<ChipModel>(load_chip_spec(path), mode);
    chips_.push_back(std::move(c));
  }
  if (!o.trace.empty()) trace_ = std::make_unique<TraceWriter>(o.trace);
}

ChipTraceHooks::~ChipTraceHooks() = default;

bool ChipTraceHooks::costs(int64_t step) const { return !chips_.empty() && step % opts_.chip_every == 0; }

bool ChipTraceHooks::traces(int64_t step) const { return trace_ && step % opts_.trace_every == 0; }

TrainHooks ChipTraceHooks::hooks() {
  TrainHooks h;
  if (chips_.empty() && !trace_) return h;
  h.wants_nonzeros = [this](int64_t step) {
    return costs(step) || traces(step) ? capture_ : NonzeroCapture::none;
  };
  h.on_step = [this](int64_t step, const std::vector<Op>& ops) { on_step(step, ops); };
  h.on_finish = [this](std::FILE* out) { on_finish(out); };
  return h;
}

void ChipTraceHooks::on_step(int64_t step, const std::vector<Op>& ops) {
  ++steps_seen_;
  if (costs(step))
    for (Chip& c : chips_) {
      const uint64_t t0 = now_ns();
      c.run.add_step(c.model->cost_step(ops));
      c.seconds += static_cast<double>(now_ns() - t0) * 1e-9;
    }
  if (traces(step)) {
    const uint64_t t0 = now_ns();
    trace_->write_step(static_cast<uint64_t>(step), ops);
    trace_seconds_ += static_cast<double>(now_ns() - t0) * 1e-9;
  }
}

void ChipTraceHooks::on_finish(std::FILE* out) {
  // The trace first: a report that cannot be written must not cost the run its trace.
  uint64_t traced = 0;
  if (trace_) {
    traced = trace_->steps_written();
    trace_->finish();
  }
  for (Chip& c : chips_) {
    const ChipSpec& spec = c.model->spec();
    const CostMode mode = c.model->mode();
    fmt::print(out, "\n{}", format_chip_summary(c.run, spec));
    const uint64_t costed = c.run.steps();
    fmt::print(out,
               "chip model ({}, {} mode, {} maps): costed {} of this run's {} training steps (--chip-every {}) "
               "in {:.3f} s ({:.3f} s per step); totals are over the costed steps\n",
               c.spec_path, cost_mode_name(mode), nonzero_capture_name(capture_), costed, steps_seen_,
               opts_.chip_every, c.seconds,
               costed ? c.seconds / static_cast<double>(costed) : 0.0);
    if (!c.out_prefix.empty()) {
      nlohmann::ordered_json j = chip_report_json(c.run, spec, mode);
      j["sampling"] = {{"spec_file", c.spec_path},
                       {"chip_every", opts_.chip_every},
                       {"nonzero_maps", nonzero_capture_name(capture_)},
                       {"costed_steps", costed},
                       {"training_steps", steps_seen_},
                       {"costing_seconds", c.seconds}};
      write_text_atomically(c.out_prefix + ".json", j.dump(2) + "\n");
      write_chip_csv(c.out_prefix + ".csv", c.run, spec);
      fmt::print(out, "chip report: {0}.json, {0}.csv\n", c.out_prefix);
    }
  }
  if (trace_)
    fmt::print(out,
               "trace: {} of this run's {} training steps (--trace-every {}) written to '{}' in {:.3f} s\n",
               traced, steps_seen_, opts_.trace_every, opts_.trace, trace_seconds_);
  std::fflush(out);
}

}  // namespace trainer::cli
