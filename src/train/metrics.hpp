// What a run reports while it runs: a JSON-lines metrics file (one object per epoch), and a progress
// display on stderr (a redrawn bar on a terminal, periodic plain lines in a log).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace trainer {

// Appends one JSON object per line and flushes it, so a crashed or diverged run keeps every finished
// epoch's line and a reader can follow the file while it grows.
class MetricsWriter {
 public:
  MetricsWriter() = default;
  // Empty path: writes nothing. append = false truncates the file. Throws trainer::Error naming the file.
  MetricsWriter(const std::string& path, bool append);
  MetricsWriter(MetricsWriter&&) noexcept = default;
  MetricsWriter& operator=(MetricsWriter&&) noexcept = default;
  void write(const nlohmann::json& line);
  bool enabled() const { return file_ != nullptr; }

 private:
  struct Close {
    void operator()(std::FILE* f) const { std::fclose(f); }
  };
  std::string path_;
  std::unique_ptr<std::FILE, Close> file_;
};

enum class ProgressStyle { bar, lines, off };
// mode: "auto" (bar when stderr is a terminal, lines otherwise), "on" (bar), "off".
ProgressStyle progress_style(const std::string& mode);

// Progress within an epoch. update() is cheap to call every step: it redraws at most ~10 times a
// second (bar) or prints a line every `line_interval_s` seconds (lines).
class Progress {
 public:
  Progress(ProgressStyle style, std::FILE* out = stderr, double line_interval_s = 10.0);
  void start_epoch(int64_t epoch, int64_t epochs, int64_t steps);
  // step: steps done in this epoch; loss: running mean training loss; images_per_s: so far this epoch.
  void update(int64_t step, double loss, double accuracy, double images_per_s);
  // Clears the bar (so the epoch line prints on a clean line).
  void finish_epoch();

 private:
  ProgressStyle style_;
  std::FILE* out_;
  double line_interval_s_;
  int64_t epoch_ = 0, epochs_ = 0, steps_ = 0;
  uint64_t last_draw_ns_ = 0;
  bool drawn_ = false;
};

}  // namespace trainer
