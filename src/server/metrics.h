#pragma once
// Counters behind GET /metrics (Prometheus text format 0.0.4). Tests and benchmarks read
// dedup and traffic from them. Thread-safe.

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace bucketfs::server {

class Metrics {
 public:
  // Serialized xorb bytes accepted by POST /v1/xorbs, new or not.
  std::atomic<std::uint64_t> xorb_bytes_received{0};
  // Logical bytes of files added (addFile and copyFile) by successful batches.
  std::atomic<std::uint64_t> file_bytes_committed{0};
  // Xorb bytes served to clients through signed range URLs.
  std::atomic<std::uint64_t> xorb_bytes_served{0};
  std::atomic<std::uint64_t> shards_accepted{0};

  void count_request(const std::string& route, int status);
  // A fault injected by --inject-faults, by kind ("status", "reset", "stall", "truncate", "flip").
  void count_fault(const std::string& kind);

  // The exposition text; `stored_count` / `stored_bytes` are the distinct xorbs on disk.
  std::string render(std::uint64_t stored_count, std::uint64_t stored_bytes) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, std::uint64_t> requests_;  // GUARDED_BY(mutex_)
  std::map<std::string, std::uint64_t> faults_;                     // GUARDED_BY(mutex_)
};

}  // namespace bucketfs::server
