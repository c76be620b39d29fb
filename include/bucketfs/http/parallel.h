#pragma once
// Runs many requests with at most N in flight.
//
// Why threads and not curl_multi: the helper works on any Transport, so requests go through the
// same retry and fault-injection layers as single calls (a curl_multi loop would bypass them), and
// a blocking Transport is simple to reason about. Each worker runs perform() on its own thread and
// so keeps its own warm connection (see curl_transport.h). With N around 4-16 the threads cost
// little next to the transfers; on our 2-core machines more parallelism than that does not pay
// (PERF-NOTES: 4 parallel connections on loopback are slower than one).

#include <cstddef>
#include <functional>
#include <span>
#include <vector>

#include "bucketfs/http/http.h"

namespace bucketfs::http {

struct ParallelOptions {
  std::size_t max_parallel = 4;  // >= 1
  // Cancel requests in flight and skip the rest (they fail with kind cancelled) after the first
  // failure.
  bool stop_on_error = false;
};

// Performs every request of `requests` and calls `on_done(index, result)` for each, from the worker
// threads (serialized: never two at once) in completion order. Returns when all are done. `cancel`
// (may be null) cancels everything in flight and what has not started. `requests` and everything
// they point to (bodies, sinks) must stay valid until the call returns; a request's sink runs on
// a worker thread.
void perform_each(Transport& transport, std::span<const Request> requests, ParallelOptions options,
                  const CancellationToken* cancel,
                  const std::function<void(std::size_t index, Result<Response> result)>& on_done);

// The results of perform_each, in the order of `requests`.
std::vector<Result<Response>> perform_all(Transport& transport, std::span<const Request> requests,
                                          ParallelOptions options, const CancellationToken* cancel);

}  // namespace bucketfs::http
