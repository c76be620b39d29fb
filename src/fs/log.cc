#include "log.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace bucketfs::fs {

void log_line(const std::string& message) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  std::tm utc{};
  ::gmtime_r(&seconds, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &utc);
  std::string line = std::string(stamp) + " bucketfs[" + std::to_string(::getpid()) + "]: " + message + "\n";
  [[maybe_unused]] auto written = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace bucketfs::fs
