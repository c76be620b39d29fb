#pragma once
// Retries with exponential backoff and full jitter, honouring the server's Retry-After and the
// Hub's RateLimit header (reference/BUCKET_API.md section 2.3).
//
// What is retried: Error::retryable() (network errors, timeouts and stalls, HTTP 408 429 500 502
// 503 504). Never other 4xx, cancellation, invalid requests, size caps or a refusing sink.
// A request with a sink that already received bytes is retried only if it has an on_retry hook
// (called before the next attempt), otherwise the sink would see duplicate bytes.
//
// Delay before attempt n+1 (n failures so far): a uniformly random duration in
// [0, min(max_backoff, initial_backoff * 2^(n-1))] ("full jitter"). When the server named a wait
// (Error::retry_after), the delay is that wait plus a jitter of at most min(that base, 1 s), so
// many clients do not all return at the reset instant. A server wait longer than max_server_wait
// ends the retries at once (the returned error carries retry_after for the caller to decide).
// Backoff sleeps are cut short by the CancellationToken.

#include <chrono>
#include <functional>
#include <optional>
#include <string_view>

#include "bucketfs/http/http.h"

namespace bucketfs::http {

struct RetryPolicy {
  int max_attempts = 5;  // including the first; 1 disables retries
  std::chrono::milliseconds initial_backoff{200};
  std::chrono::milliseconds max_backoff{10'000};
  std::chrono::milliseconds max_server_wait{60'000};
  // Called before each backoff sleep with the failure, the attempt that failed (1-based) and the
  // delay chosen. For logging: Error::describe() is safe to log. May be empty.
  std::function<void(const Error& error, int attempt, std::chrono::milliseconds delay)> on_retry;
};

// The delay before the next attempt after `failures` (>= 1) failed attempts. `unit` is a uniform
// random number in [0, 1) (the jitter); `server_wait` is Error::retry_after.
std::chrono::milliseconds backoff_delay(const RetryPolicy& policy, int failures,
                                        std::optional<std::chrono::milliseconds> server_wait, double unit);

// Retry-After: delta-seconds ("120") or an HTTP-date ("Wed, 21 Oct 2015 07:28:00 GMT") relative to
// `now` (a past date gives 0). nullopt when unparsable.
std::optional<std::chrono::milliseconds> parse_retry_after(
    std::string_view value, std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

// The IETF RateLimit header as the Hub sends it: `"api";r=0;t=55` (one or more comma-separated
// policies; r = requests remaining, t = seconds until reset). The longest t among exhausted
// policies (r=0); nullopt when none is exhausted or the value is unparsable.
std::optional<std::chrono::milliseconds> parse_rate_limit(std::string_view value);

// The server's requested wait from a response's headers: Retry-After, else RateLimit (exhausted),
// else nullopt.
std::optional<std::chrono::milliseconds> server_wait(const Headers& headers);

class RetryingTransport : public ForwardingTransport {
 public:
  RetryingTransport(Transport& target, RetryPolicy policy) : ForwardingTransport(target), policy_(std::move(policy)) {}

  // Response::attempts / Error::attempts tell how many attempts were made.
  Result<Response> perform(const Request& request, const CancellationToken* cancel) override;

  const RetryPolicy& policy() const { return policy_; }

 private:
  RetryPolicy policy_;
};

}  // namespace bucketfs::http
