// `trainer calibrate`: times oneDNN and the sparse convolution kernels on this machine, fits the cost
// model that chooses between them per layer and phase (kernels/conv_choice.hpp), prints what it
// measured and the break-even densities the fit implies, and writes the model as JSON.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "kernels/conv_choice.hpp"
#include "nn/models.hpp"
#include "train/config.hpp"

namespace trainer::cli {

namespace {

struct CalibrateArgs {
  std::string out = "calibration.json";
  int threads = 2;
  int batch = 64;
  int repeats = 10;
  bool quick = false;
  std::string model;              // its convolutions get entries of their own
  int64_t width = 0;              // the model's first-stage channels (0: its usual width)
  std::string input = "1x28x28";  // one image, CxHxW
};

void check_range(int v, int lo, int hi, const char* option) {
  if (v < lo || v > hi)
    throw UsageError(fmt::format("option {}: expected an integer in [{}, {}], got {}", option, lo, hi, v));
}

std::string percent(double d) { return fmt::format("{:.0f}%", 100 * d); }

// Where the measured sparse time meets the dense one, interpolated linearly between measured densities.
std::string measured_break_even(double dense_ns, const std::vector<std::pair<double, double>>& sparse) {
  // sparse: (density, ns), density descending.
  if (sparse.empty()) return "-";
  if (sparse.front().second < dense_ns) return ">=" + percent(sparse.front().first);
  for (size_t i = 1; i < sparse.size(); ++i) {
    const auto [d0, t0] = sparse[i - 1];
    const auto [d1, t1] = sparse[i];
    if (t1 < dense_ns) return percent(d1 + (d0 - d1) * (dense_ns - t1) / (t0 - t1));
  }
  return "<" + percent(sparse.back().first);
}

void print_tables(const CalibrationData& data, const ConvCostModel& m) {
  const char* titles[3] = {"ff (forward: y from x)", "bp (backward: dx from dy)", "wg (weight gradient)"};
  for (ConvPhase p : {ConvPhase::ff, ConvPhase::bp, ConvPhase::wg}) {
    fmt::print("\n{}: ms per call; sparse at weight density", titles[static_cast<int>(p)]);
    fmt::print(
        "; break-even density: measured and model (no reorder), model when the activations are held "
        "in nChw16c (sparse pays the reorder) / in NCHW16n (dense pays it)\n");
    std::string head = fmt::format("  {:<22} {:>8}", "shape", "dense");
    for (double d : data.densities) head += fmt::format(" {:>7}", percent(d));
    head += fmt::format("  {:>8} {:>6} {:>6} {:>6}", "measured", "model", "16c", "16n");
    fmt::print("{}\n", head);
    std::vector<std::string> order;
    for (const CalibrationSample& s : data.samples)
      if (std::find(order.begin(), order.end(), s.shape) == order.end()) order.push_back(s.shape);
    for (const std::string& shape : order) {
      double dense_ns = NAN;
      ConvGeom g;
      std::vector<std::pair<double, double>> sparse;
      for (const CalibrationSample& s : data.samples) {
        if (s.shape != shape || s.phase != p) continue;
        g = s.geom;
        if (s.kernel == ConvKernel::dense)
          dense_ns = s.ns;
        else
          sparse.emplace_back(s.weight_density, s.ns);
      }
      std::sort(sparse.begin(), sparse.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      std::string line = fmt::format("  {:<22} {:>8.3f}", shape, dense_ns * 1e-6);
      for (double d : data.densities) {
        const auto it =
            std::find_if(sparse.begin(), sparse.end(), [&](const auto& e) { return e.first == d; });
        line += it == sparse.end() ? fmt::format(" {:>7}", "-") : fmt::format(" {:>7.3f}", it->second * 1e-6);
      }
      line +=
          fmt::format("  {:>8} {:>6} {:>6} {:>6}", measured_break_even(dense_ns, sparse),
                      percent(m.kernel_break_even_density(p, g)), percent(m.break_even_density(p, g, false)),
                      percent(m.break_even_density(p, g, true)));
      fmt::print("{}\n", line);
    }
  }
}

// The 1-minute load average, or a negative number where it cannot be read.
double load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return -1;
  double load = -1;
  if (std::fscanf(f, "%lf", &load) != 1) load = -1;
  std::fclose(f);
  return load;
}

}  // namespace

Command add_calibrate_command(CLI::App& root) {
  CLI::App* app = root.add_subcommand(
      "calibrate",
      "Time oneDNN and the sparse conv kernels here and fit the model that chooses between them");
  app->footer(
      "Measures each phase (ff, bp, wg) of ResNet-20-style 3x3 and 1x1 convolutions with oneDNN (nChw16c) "
      "and "
      "the sparse kernels (NCHW16n) at weight densities 100% to 5%, and the layout reorders; fits "
      "time = per call + per multiply x multiplies + per element x activation elements per phase and kernel; "
      "writes the coefficients as JSON (docs/sparse-training.md). With --model, the model's own convolution "
      "shapes are measured too and each gets coefficients of its own (dense: its measured time; sparse: a "
      "line fitted on its densities), which the choice then uses for layers of that shape. Run it on an "
      "otherwise idle machine.");
  auto args = std::make_shared<CalibrateArgs>();
  app->add_option("--out", args->out, "Where to write the fitted model (JSON) (default: calibration.json)")
      ->type_name("FILE");
  app->add_option("--threads", args->threads,
                  "OpenMP threads to calibrate with; use the count you train with (default: 2)")
      ->type_name("N");
  app->add_option("--batch", args->batch, "Batch size of the timed convolutions (default: 64)")
      ->type_name("N");
  app->add_option("--repeats", args->repeats,
                  "Timed passes over all the points; the fastest run of each counts (default: 10)")
      ->type_name("N");
  app->add_flag("--quick", args->quick,
                "2 shapes and 3 densities instead of 7 and 6 (a rough fit, for tests)");
  app->add_option("--model", args->model,
                  "Also measure this model's convolutions and give each shape coefficients of its own, "
                  "which then serve every layer of that shape (any batch); e.g. resnet18")
      ->type_name("NAME");
  CLI::Option* widthopt = app->add_option("--width", args->width,
                                          "With --model: its first-stage channels (default: its usual width)")
                              ->type_name("N");
  CLI::Option* inputopt = app->add_option("--input", args->input,
                                          "With --model: one image's shape (default: 1x28x28, Fashion-MNIST)")
                              ->type_name("CxHxW");
  return {app, [args, widthopt, inputopt] {
            check_range(args->threads, 1, 1024, "--threads");
            check_range(args->batch, 1, 4096, "--batch");
            check_range(args->repeats, 1, 1000, "--repeats");
            if (args->out.empty()) throw UsageError("option --out: expected a file name");
            CalibrationOptions o;
            o.threads = args->threads;
            o.batch = args->batch;
            o.repeats = args->repeats;
            o.quick = args->quick;
            if (args->model.empty() && (widthopt->count() > 0 || inputopt->count() > 0))
              throw UsageError("options --width and --input describe the model of --model; give --model too");
            if (!args->model.empty()) {
              if (args->width < 0 || args->width > 4096)
                throw UsageError(
                    fmt::format("option --width: expected an integer in [0, 4096], got {}", args->width));
              ModelOptions mo;
              mo.width = args->width;
              Shape image;
              try {
                image = parse_image_shape(args->input, "option --input");
              } catch (const Error& e) {
                throw UsageError(e.what());
              }
              o.own_shapes = conv_shapes(*build_model(args->model, image, 10, mo), image);
              fmt::print("{}: {} distinct convolution shapes for {} images, each fitted on its own\n",
                         args->model, o.own_shapes.size(), args->input);
            }
            if (const double load = load_average(); load > 1.0)
              fmt::print(stderr,
                         "warning: load average {:.2f}: other processes are running, so the times (and the "
                         "model) will be distorted; calibrate on an otherwise idle machine\n",
                         load);
            CalibrationData data;
            ConvCostModel m = calibrate(o, stdout, &data);
            print_tables(data, m);
            m.save(args->out);
            fmt::print("\nwrote {}\n", args->out);
            std::fflush(stdout);
            return 0;
          }};
}

}  // namespace trainer::cli
