// RetryingTransport and the parsing of the server's wait hints.
#include "bucketfs/http/retry.h"

#include <curl/curl.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <random>
#include <string>
#include <thread>

namespace bucketfs::http {
namespace {

using std::chrono::milliseconds;

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// A non-negative decimal integer filling all of `text`.
std::optional<std::uint64_t> parse_uint(std::string_view text) {
  std::uint64_t value = 0;
  if (text.empty()) return std::nullopt;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Seconds to milliseconds, capped at a day so that no arithmetic overflows later.
milliseconds seconds_capped(std::uint64_t seconds) {
  return milliseconds(static_cast<std::int64_t>(std::min<std::uint64_t>(seconds, 86'400)) * 1000);
}

double random_unit() {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(engine);
}

}  // namespace

milliseconds backoff_delay(const RetryPolicy& policy, int failures, std::optional<milliseconds> server_wait,
                           double unit) {
  unit = std::clamp(unit, 0.0, 1.0);
  const int exponent = std::clamp(failures - 1, 0, 30);
  const double grown = static_cast<double>(policy.initial_backoff.count()) * std::ldexp(1.0, exponent);
  const double base = std::min(grown, static_cast<double>(policy.max_backoff.count()));
  if (server_wait) {
    const double spread = std::min(base, 1000.0);
    return *server_wait + milliseconds(static_cast<std::int64_t>(unit * spread));
  }
  return milliseconds(static_cast<std::int64_t>(unit * base));
}

std::optional<milliseconds> parse_retry_after(std::string_view value, std::chrono::system_clock::time_point now) {
  value = trim(value);
  if (value.empty()) return std::nullopt;
  if (auto seconds = parse_uint(value)) return seconds_capped(*seconds);
  const std::string text(value);
  const time_t when = curl_getdate(text.c_str(), nullptr);
  if (when == -1) return std::nullopt;
  const auto delta = std::chrono::system_clock::from_time_t(when) - now;
  if (delta <= std::chrono::system_clock::duration::zero()) return milliseconds(0);
  return std::min(std::chrono::duration_cast<milliseconds>(delta), seconds_capped(86'400));
}

std::optional<milliseconds> parse_rate_limit(std::string_view value) {
  std::optional<milliseconds> longest;
  while (!value.empty()) {
    const auto comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
    // `"policy";r=0;t=55`: skip the policy name, then read the parameters.
    std::optional<std::uint64_t> remaining;
    std::optional<std::uint64_t> reset;
    auto semicolon = item.find(';');
    while (semicolon != std::string_view::npos) {
      item.remove_prefix(semicolon + 1);
      semicolon = item.find(';');
      const std::string_view param = trim(item.substr(0, semicolon));
      const auto eq = param.find('=');
      if (eq == std::string_view::npos) continue;
      const std::string_view name = trim(param.substr(0, eq));
      const auto number = parse_uint(trim(param.substr(eq + 1)));
      if (name == "r") remaining = number;
      if (name == "t") reset = number;
    }
    if (remaining && *remaining == 0 && reset) {
      const milliseconds wait = seconds_capped(*reset);
      if (!longest || wait > *longest) longest = wait;
    }
  }
  return longest;
}

std::optional<milliseconds> server_wait(const Headers& headers) {
  if (auto value = headers.get("Retry-After")) {
    if (auto wait = parse_retry_after(*value)) return wait;
  }
  if (auto value = headers.get("RateLimit")) return parse_rate_limit(*value);
  return std::nullopt;
}

Result<Response> RetryingTransport::perform(const Request& request, const CancellationToken* cancel) {
  // With a sink, count what each attempt delivered: a retry would repeat those bytes.
  std::uint64_t delivered = 0;
  std::optional<Request> counted;
  if (request.sink) {
    counted.emplace(request);
    counted->sink = [&delivered, &sink = request.sink](std::span<const std::byte> piece) {
      delivered += piece.size();
      return sink(piece);
    };
  }
  const Request& sent = counted ? *counted : request;
  const int max_attempts = std::max(policy_.max_attempts, 1);

  for (int attempt = 1;; ++attempt) {
    delivered = 0;
    Result<Response> result = target().perform(sent, cancel);
    if (result) {
      result->attempts = attempt;
      return result;
    }
    Error& error = result.error();
    error.attempts = attempt;
    if (!error.retryable() || attempt >= max_attempts) return result;
    if (error.retry_after && *error.retry_after > policy_.max_server_wait) return result;
    if (delivered > 0 && !request.on_retry) return result;

    const milliseconds delay = backoff_delay(policy_, attempt, error.retry_after, random_unit());
    if (policy_.on_retry) policy_.on_retry(error, attempt, delay);
    if (cancel != nullptr) {
      if (!cancel->sleep_for(delay)) {
        Error cancelled;
        cancelled.kind = ErrorKind::cancelled;
        cancelled.route = error.route;
        cancelled.message = "cancelled while waiting to retry after: " + error.describe();
        cancelled.attempts = attempt;
        return std::unexpected(std::move(cancelled));
      }
    } else {
      std::this_thread::sleep_for(delay);
    }
    if (request.on_retry) request.on_retry();
  }
}

}  // namespace bucketfs::http
