#pragma once
// The HTTP vocabulary every part above http/ speaks: requests, responses, errors as values, a
// cancellation token, and the Transport interface that CurlTransport (curl_transport.h) implements
// and that RetryingTransport (retry.h) and test fault injectors wrap (ForwardingTransport).
//
// Secrets: request headers (Authorization) are never logged, printed or copied into errors, and an
// Error names the URL's route with its query string removed (signed URLs carry their signature
// there). Nothing in http/ writes to stdout/stderr.
//
// Threads: a Transport's perform() may be called from many threads at once. Request, Response and
// Error are plain values owned by one thread at a time. CancellationToken is thread-safe.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bucketfs::http {

// ---- Errors ------------------------------------------------------------------------------------------

enum class ErrorKind {
  network,          // could not connect, reset, TLS handshake failure, short body... (retryable)
  timeout,          // connect or total timeout, or the transfer stalled (retryable)
  cancelled,        // the CancellationToken fired
  http_status,      // the server answered >= 400; see Error::status (retryable: 408 429 500 502 503 504)
  invalid_request,  // bad URL, method or header (CR/LF), unsupported scheme; nothing was sent
  body_too_large,   // a buffered response body exceeded Request::max_body
  sink_refused,     // Request::sink returned false
  bad_response,     // the server's answer breaks the protocol (e.g. 200 to a Range not at offset 0)
  tls,              // certificate verification failed (not retryable)
};

std::string_view to_string(ErrorKind kind);

struct Error {
  ErrorKind kind = ErrorKind::network;
  int status = 0;     // the HTTP status for http_status, else 0
  std::string route;  // "GET http://host:port/path": no query, fragment or user info
  std::string message;  // one line: the server's error text (X-Error-Message, JSON "error") or curl's
  // How long the server asked us to wait (Retry-After, or RateLimit t= when exhausted).
  std::optional<std::chrono::milliseconds> retry_after;
  int attempts = 1;  // attempts made, set by RetryingTransport

  // network, timeout, and http_status with 408 429 500 502 503 504.
  bool retryable() const;
  // "GET http://127.0.0.1:8080/api/buckets/ns/b: HTTP 404: Bucket not found (after 3 attempts)".
  // Safe to log: carries no header and no query string.
  std::string describe() const;
};

template <typename T>
using Result = std::expected<T, Error>;

// "METHOD scheme://host[:port]/path" of `url`, dropping user info, query and fragment.
std::string route_of(std::string_view method, std::string_view url);

// ---- Headers -----------------------------------------------------------------------------------------

// Header fields: names compare case-insensitively, order is kept, a name may repeat. Linear lookups.
class Headers {
 public:
  using Field = std::pair<std::string, std::string>;

  Headers() = default;
  Headers(std::initializer_list<Field> fields) : fields_(fields) {}

  // The first value of `name`; the view is valid until this object is next modified.
  std::optional<std::string_view> get(std::string_view name) const;
  std::vector<std::string_view> get_all(std::string_view name) const;
  bool contains(std::string_view name) const { return get(name).has_value(); }
  void add(std::string name, std::string value);
  // Replaces every field of `name` by one.
  void set(std::string name, std::string value);
  std::size_t erase(std::string_view name);
  void clear() { fields_.clear(); }

  std::size_t size() const { return fields_.size(); }
  bool empty() const { return fields_.empty(); }
  std::vector<Field>::const_iterator begin() const { return fields_.begin(); }
  std::vector<Field>::const_iterator end() const { return fields_.end(); }

 private:
  std::vector<Field> fields_;
};

bool iequals(std::string_view a, std::string_view b);

// ---- Cancellation --------------------------------------------------------------------------------------

// A one-shot flag shared by the requester and whoever may cancel. Not copyable or movable: hand
// out pointers; the token must outlive the requests and registrations that use it.
class CancellationToken {
 public:
  // RAII registration of a callback run once when the token is cancelled (or at once, in
  // on_cancel(), when it already is). The destructor unregisters and, if the callback is running
  // on another thread, waits for it to return. Move-only.
  class Registration {
   public:
    Registration() = default;
    Registration(Registration&& other) noexcept
        : token_(std::exchange(other.token_, nullptr)), id_(other.id_) {}
    Registration& operator=(Registration&& other) noexcept;
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;
    ~Registration() { reset(); }
    void reset();

   private:
    friend class CancellationToken;
    Registration(const CancellationToken* token, std::uint64_t id) : token_(token), id_(id) {}
    const CancellationToken* token_ = nullptr;
    std::uint64_t id_ = 0;
  };

  CancellationToken() = default;
  CancellationToken(const CancellationToken&) = delete;
  CancellationToken& operator=(const CancellationToken&) = delete;

  // Sets the flag, wakes sleepers and runs the registered callbacks (on this thread, under the
  // token's lock: callbacks must be quick and must not touch this token). Idempotent.
  void cancel();
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

  // Sleeps for `duration` unless cancelled first. True when the full time passed.
  bool sleep_for(std::chrono::nanoseconds duration) const;

  // Runs `callback` on cancellation (see Registration). The callback must not throw.
  Registration on_cancel(std::function<void()> callback) const;

 private:
  std::atomic<bool> cancelled_{false};
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  mutable std::uint64_t next_id_ = 1;                                      // GUARDED_BY(mutex_)
  mutable std::vector<std::pair<std::uint64_t, std::function<void()>>> callbacks_;  // GUARDED_BY(mutex_)
};

// ---- Requests ------------------------------------------------------------------------------------------

// Inclusive byte range, sent as "Range: bytes=first-last". REQUIRES: first <= last.
struct Range {
  std::uint64_t first = 0;
  std::uint64_t last = 0;
  std::uint64_t length() const { return last - first + 1; }
};

struct Timeouts {
  std::chrono::milliseconds connect{10'000};
  std::chrono::milliseconds total{0};       // whole transfer, including the body; 0: no limit
  std::chrono::milliseconds stall{30'000};  // no byte moved either way for this long; 0: no limit
};

// Receives the response body in order, in pieces; the span is valid only during the call. Return
// false to abort (the request fails with sink_refused). Called on the thread running perform().
using BodySink = std::function<bool(std::span<const std::byte>)>;

struct Request {
  std::string method = "GET";
  std::string url;
  // Sent as given; never logged. Content-Type defaults to application/octet-stream when a body is
  // sent. "Expect: 100-continue" is never used.
  Headers headers;
  // The request body. A view: the bytes must stay valid and unchanged until perform() returns
  // (also across retries). Not copied.
  std::span<const std::byte> body;
  std::optional<Range> range;
  Timeouts timeouts;
  // Where a 2xx body goes. Empty: the body is buffered in Response::body, at most max_body bytes.
  // Error bodies (>= 400) never reach the sink.
  BodySink sink;
  std::size_t max_body = std::size_t{64} << 20;
  // Called by RetryingTransport before it sends the request again, so a sink can drop what it got
  // from the failed attempt. Without it, a request whose sink already received bytes is not retried.
  std::function<void()> on_retry;
  bool follow_redirects = false;  // else a 3xx comes back as a Response
};

// ---- Responses -----------------------------------------------------------------------------------------

// Takes back the storage of a Body when it is destroyed (see CurlTransport's buffer pool).
class BodyRecycler {
 public:
  virtual ~BodyRecycler() = default;
  virtual void recycle(std::string&& storage) noexcept = 0;
};

// A response body. Its storage may come from a pool and go back to it on destruction, so large
// bodies do not cost fresh pages on every request (PERF-NOTES trap 1). Move-only.
class Body {
 public:
  Body() = default;
  explicit Body(std::string data, std::shared_ptr<BodyRecycler> recycler = nullptr)
      : data_(std::move(data)), recycler_(std::move(recycler)) {}
  Body(Body&& other) noexcept = default;
  Body& operator=(Body&& other) noexcept;
  Body(const Body&) = delete;
  Body& operator=(const Body&) = delete;
  ~Body();

  // Views valid while this Body lives and is not modified.
  std::string_view text() const { return data_; }
  std::span<const std::byte> bytes() const {
    return {reinterpret_cast<const std::byte*>(data_.data()), data_.size()};
  }
  std::size_t size() const { return data_.size(); }
  bool empty() const { return data_.empty(); }
  // Takes the bytes out; they no longer return to the pool.
  std::string release() && { return std::move(data_); }

  // For transports that fill it.
  std::string& storage() { return data_; }

 private:
  std::string data_;
  std::shared_ptr<BodyRecycler> recycler_;
};

struct Response {
  int status = 0;       // 2xx, or 3xx when not following redirects
  Headers headers;      // of the final response
  Body body;            // empty for HEAD and when a sink was used
  std::uint64_t body_bytes = 0;  // body bytes received (also those given to a sink)
  bool new_connection = false;   // this transfer opened a connection (false: a kept-alive one)
  int attempts = 1;              // set by RetryingTransport
};

// ---- Transports ----------------------------------------------------------------------------------------

class Transport {
 public:
  virtual ~Transport() = default;
  // Sends `request` and waits for the answer. `cancel` may be null. A status >= 400 is an Error of
  // kind http_status. Thread-safe: may be called from many threads at once.
  virtual Result<Response> perform(const Request& request, const CancellationToken* cancel) = 0;
};

// Forwards every call to another transport; derive and override to inject faults or observe
// (like leveldb's EnvWrapper). `target` must outlive this object.
class ForwardingTransport : public Transport {
 public:
  explicit ForwardingTransport(Transport& target) : target_(target) {}
  Result<Response> perform(const Request& request, const CancellationToken* cancel) override {
    return target_.perform(request, cancel);
  }
  Transport& target() const { return target_; }

 private:
  Transport& target_;
};

}  // namespace bucketfs::http
