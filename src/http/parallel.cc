// perform_each / perform_all: a fixed set of worker threads pulling request indexes.
#include "bucketfs/http/parallel.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <thread>

namespace bucketfs::http {

void perform_each(Transport& transport, std::span<const Request> requests, ParallelOptions options,
                  const CancellationToken* cancel,
                  const std::function<void(std::size_t index, Result<Response> result)>& on_done) {
  CancellationToken inner;  // cancels our own transfers: on external cancel or stop_on_error
  CancellationToken::Registration link;  // declared after `inner`: unregistered before it dies
  if (cancel != nullptr) link = cancel->on_cancel([&inner] { inner.cancel(); });

  std::atomic<std::size_t> next{0};
  std::mutex done_mutex;  // serializes on_done
  auto worker = [&] {
    for (;;) {
      const std::size_t index = next.fetch_add(1);
      if (index >= requests.size()) return;
      const Request& request = requests[index];
      Result<Response> result;
      if (inner.cancelled()) {
        Error error;
        error.kind = ErrorKind::cancelled;
        error.route = route_of(request.method, request.url);
        error.message = "not started";
        result = std::unexpected(std::move(error));
      } else {
        result = transport.perform(request, &inner);
        if (!result && options.stop_on_error) inner.cancel();
      }
      std::lock_guard lock(done_mutex);
      on_done(index, std::move(result));
    }
  };
  const std::size_t workers = std::clamp<std::size_t>(options.max_parallel, 1, std::max<std::size_t>(requests.size(), 1));
  std::vector<std::jthread> threads;
  threads.reserve(workers - 1);
  for (std::size_t i = 1; i < workers; ++i) threads.emplace_back(worker);
  worker();  // the calling thread is one of the workers
}

std::vector<Result<Response>> perform_all(Transport& transport, std::span<const Request> requests,
                                          ParallelOptions options, const CancellationToken* cancel) {
  std::vector<std::optional<Result<Response>>> slots(requests.size());
  perform_each(transport, requests, options, cancel,
               [&slots](std::size_t index, Result<Response> result) { slots[index].emplace(std::move(result)); });
  std::vector<Result<Response>> results;
  results.reserve(requests.size());
  for (auto& slot : slots) results.push_back(std::move(*slot));
  return results;
}

}  // namespace bucketfs::http
