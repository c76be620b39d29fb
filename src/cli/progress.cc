#include "progress.h"

#include <unistd.h>

#include <cstdio>

namespace bucketfs::cli {

Progress::Progress(std::string label, std::uint64_t total)
    : label_(std::move(label)),
      total_(total),
      visible_(::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

std::string Progress::human(double bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", bytes, kUnits[unit]);
  return text;
}

void Progress::advance(std::uint64_t bytes) {
  done_.fetch_add(bytes, std::memory_order_relaxed);
  if (visible_) draw(false);
}

void Progress::draw(bool force) {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  const double done = static_cast<double>(done_.load(std::memory_order_relaxed));
  const double rate = seconds > 0 ? done / seconds : 0;
  constexpr int kWidth = 24;
  std::string bar;
  if (total_ > 0) {
    const double fraction = std::min(1.0, done / static_cast<double>(total_));
    const int filled = static_cast<int>(fraction * kWidth);
    bar = "[" + std::string(static_cast<std::size_t>(filled), '#') + std::string(static_cast<std::size_t>(kWidth - filled), ' ') + "] ";
    char percent[8];
    std::snprintf(percent, sizeof percent, "%3d%% ", static_cast<int>(fraction * 100));
    bar += percent;
  }
  std::fprintf(stderr, "\r%s %s%s%s%s  %s/s\x1b[K", label_.c_str(), bar.c_str(), human(done).c_str(),
               total_ > 0 ? " / " : "", total_ > 0 ? human(static_cast<double>(total_)).c_str() : "",
               human(rate).c_str());
  std::fflush(stderr);
}

void Progress::finish() {
  if (!visible_) return;
  std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  std::fprintf(stderr, "\r\x1b[K");
  std::fflush(stderr);
}

}  // namespace bucketfs::cli
