#include "metrics.h"

namespace bucketfs::server {

void Metrics::count_request(const std::string& route, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{route, status}];
}

void Metrics::count_fault(const std::string& kind) {
  std::lock_guard lock(mutex_);
  ++faults_[kind];
}

std::string Metrics::render(std::uint64_t stored_count, std::uint64_t stored_bytes) const {
  std::string out;
  auto counter = [&](const char* name, const char* help, std::uint64_t value, const char* type = "counter") {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " +
           std::to_string(value) + "\n";
  };
  counter("bucketfs_xorb_bytes_received_total", "Serialized xorb bytes accepted by xorb uploads, new or not.",
          xorb_bytes_received.load());
  counter("bucketfs_xorb_bytes_stored", "Bytes of distinct xorbs on disk.", stored_bytes, "gauge");
  counter("bucketfs_xorbs_stored", "Distinct xorbs on disk.", stored_count, "gauge");
  counter("bucketfs_file_bytes_committed_total", "Logical bytes of files added by batch (addFile, copyFile).",
          file_bytes_committed.load());
  counter("bucketfs_xorb_bytes_served_total", "Xorb bytes sent through signed range URLs.", xorb_bytes_served.load());
  counter("bucketfs_shards_accepted_total", "Upload shards accepted.", shards_accepted.load());
  out += "# HELP bucketfs_http_requests_total HTTP requests by route and status.\n";
  out += "# TYPE bucketfs_http_requests_total counter\n";
  std::lock_guard lock(mutex_);
  for (const auto& [key, value] : requests_) {
    out += "bucketfs_http_requests_total{route=\"" + key.first + "\",status=\"" + std::to_string(key.second) +
           "\"} " + std::to_string(value) + "\n";
  }
  if (!faults_.empty()) {
    out += "# HELP bucketfs_injected_faults_total Faults injected by --inject-faults, by kind.\n";
    out += "# TYPE bucketfs_injected_faults_total counter\n";
    for (const auto& [kind, value] : faults_) {
      out += "bucketfs_injected_faults_total{kind=\"" + kind + "\"} " + std::to_string(value) + "\n";
    }
  }
  return out;
}

}  // namespace bucketfs::server
