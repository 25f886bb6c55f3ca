#include "train/metrics.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/error.hpp"
#include "core/timer.hpp"

namespace trainer {

MetricsWriter::MetricsWriter(const std::string& path, bool append) : path_(path) {
  if (path.empty()) return;
  std::error_code ec;  // a failure shows up as the open error below
  if (const auto parent = std::filesystem::path(path).parent_path(); !parent.empty())
    std::filesystem::create_directories(parent, ec);
  file_.reset(std::fopen(path.c_str(), append ? "a" : "w"));
  TRAINER_CHECK(file_ != nullptr, "metrics file '{}': cannot open it for writing ({})", path,
                std::strerror(errno));
}

void MetricsWriter::write(const nlohmann::json& line) {
  if (!file_) return;
  const std::string text = line.dump() + "\n";
  const bool ok =
      std::fwrite(text.data(), 1, text.size(), file_.get()) == text.size() && std::fflush(file_.get()) == 0;
  TRAINER_CHECK(ok, "metrics file '{}': write failed ({})", path_, std::strerror(errno));
}

ProgressStyle progress_style(const std::string& mode) {
  if (mode == "off") return ProgressStyle::off;
  if (mode == "on") return ProgressStyle::bar;
  TRAINER_CHECK(mode == "auto", "progress: expected auto, on or off, got '{}'", mode);
  return ::isatty(STDERR_FILENO) ? ProgressStyle::bar : ProgressStyle::lines;
}

Progress::Progress(ProgressStyle style, std::FILE* out, double line_interval_s)
    : style_(style), out_(out), line_interval_s_(line_interval_s) {}

void Progress::start_epoch(int64_t epoch, int64_t epochs, int64_t steps) {
  epoch_ = epoch;
  epochs_ = epochs;
  steps_ = steps;
  last_draw_ns_ = now_ns();
  drawn_ = false;
}

void Progress::update(int64_t step, double loss, double accuracy, double images_per_s) {
  if (style_ == ProgressStyle::off) return;
  const uint64_t now = now_ns();
  const double since = static_cast<double>(now - last_draw_ns_) * 1e-9;
  if (style_ == ProgressStyle::bar) {
    if (since < 0.1 && step != steps_) return;
    constexpr int kWidth = 30;
    const int filled = steps_ ? static_cast<int>(kWidth * step / steps_) : kWidth;
    const std::string bar = std::string(filled, '#') + std::string(kWidth - filled, '.');
    fmt::print(out_, "\r\033[2Kepoch {}/{} [{}] {}/{}  loss {:.4f}  acc {:5.1f}%  {:.0f} img/s", epoch_,
               epochs_, bar, step, steps_, loss, 100.0 * accuracy, images_per_s);
    std::fflush(out_);
    drawn_ = true;
  } else {
    if (since < line_interval_s_ || step == steps_) return;
    fmt::print(out_, "epoch {}/{} step {}/{}  loss {:.4f}  acc {:.1f}%  {:.0f} img/s\n", epoch_, epochs_,
               step, steps_, loss, 100.0 * accuracy, images_per_s);
    std::fflush(out_);
  }
  last_draw_ns_ = now;
}

void Progress::finish_epoch() {
  if (style_ == ProgressStyle::bar && drawn_) {
    fmt::print(out_, "\r\033[2K");
    std::fflush(out_);
  }
  drawn_ = false;
}

}  // namespace trainer
