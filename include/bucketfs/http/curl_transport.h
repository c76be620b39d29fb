#pragma once
// The real Transport, on libcurl.
//
// Reuse model: a pool of "slots", each an easy handle with its own multi handle. A perform() takes
// an idle slot (the most recently used first, so a thread doing sequential requests keeps its warm
// connection), runs the transfer and puts the slot back. Connections live in the slot's multi
// handle and stay open between requests (HTTP/1.1 keep-alive, HTTP/2 where TLS ALPN offers it), so
// N threads in steady state use N connections per host. DNS answers and TLS sessions are shared
// by all slots through one CURLSH with locks. The connection pool itself is deliberately not
// shared through CURLSH: libcurl documents a shared connection cache as unsafe across concurrent
// threads (KNOWN_BUGS "A shared connection cache is not thread-safe", curl issue 4915).
//
// Each transfer runs a curl_multi_poll loop on the calling thread: that is how cancellation is
// prompt (the token wakes the poll) and how stalls are detected with millisecond resolution
// (Timeouts::stall), independently of the total timeout.
//
// Buffered response bodies come from a pool of reusable buffers (see Body), returned when the Body
// is destroyed; fresh pages cost ~10 us each on our VMs (PERF-NOTES trap 1).

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "bucketfs/http/http.h"

namespace bucketfs::http {

struct CurlTransportOptions {
  std::string user_agent = "bucketfs";
  std::size_t max_idle_slots = 32;  // idle easy handles (and their connections) kept
  // Idle response buffers of >= 64 KiB kept for reuse, in total bytes of capacity.
  std::size_t buffer_pool_bytes = std::size_t{256} << 20;
  long max_redirects = 5;
  // Certificate bundle for https (empty: the system default). For tests and on-premises servers.
  std::string ca_file;
  // When non-zero, replaces Request::timeouts.stall of every request (the CLI sets it from
  // $BUCKETFS_HTTP_STALL_TIMEOUT_MS, for tests of stalling servers and very slow links).
  std::chrono::milliseconds stall_timeout{0};
};

class CurlTransport final : public Transport {
 public:
  explicit CurlTransport(CurlTransportOptions options = {});
  ~CurlTransport() override;
  CurlTransport(const CurlTransport&) = delete;
  CurlTransport& operator=(const CurlTransport&) = delete;

  Result<Response> perform(const Request& request, const CancellationToken* cancel) override;

  // For tests and metrics.
  std::size_t idle_slots() const;
  std::size_t pooled_buffer_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bucketfs::http
