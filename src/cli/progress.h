#pragma once
// A one-line progress bar on standard error for long copies: shown only when stderr is a
// terminal (nothing when piped or redirected), redrawn at most 10 times a second, cleared at the
// end. Thread-safe: transfer threads may call advance() concurrently.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

namespace bucketfs::cli {

class Progress {
 public:
  // `label` is what is being copied; `total` its size in bytes (0 when unknown).
  Progress(std::string label, std::uint64_t total);
  ~Progress() { finish(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(std::uint64_t bytes);
  // Clears the line. Idempotent.
  void finish();

  bool visible() const { return visible_; }
  // "12.3 MiB", for summaries.
  static std::string human(double bytes);

 private:
  void draw(bool force);

  std::string label_;
  std::uint64_t total_;
  bool visible_;
  std::atomic<std::uint64_t> done_{0};
  std::mutex mutex_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;  // GUARDED_BY(mutex_)
  bool finished_ = false;                             // GUARDED_BY(mutex_)
};

}  // namespace bucketfs::cli
