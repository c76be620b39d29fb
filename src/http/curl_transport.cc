// CurlTransport: libcurl easy handles, each driven by its own multi handle, pooled for reuse.
#include "bucketfs/http/curl_transport.h"

#include <curl/curl.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstring>
#include <mutex>
#include <vector>

#include "bucketfs/http/retry.h"
#include "error_text.h"

#ifndef BUCKETFS_VERSION
#define BUCKETFS_VERSION "dev"
#endif

namespace bucketfs::http {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// ---- RAII owners of the C handles ----------------------------------------------------------------------

struct EasyDeleter {
  void operator()(CURL* handle) const { curl_easy_cleanup(handle); }
};
struct MultiDeleter {
  void operator()(CURLM* handle) const { curl_multi_cleanup(handle); }
};
struct ShareDeleter {
  void operator()(CURLSH* handle) const { curl_share_cleanup(handle); }
};
struct SlistDeleter {
  void operator()(curl_slist* list) const { curl_slist_free_all(list); }
};
using EasyHandle = std::unique_ptr<CURL, EasyDeleter>;
using MultiHandle = std::unique_ptr<CURLM, MultiDeleter>;
using ShareHandle = std::unique_ptr<CURLSH, ShareDeleter>;
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;

// curl_global_init is thread-safe since 7.84 but must precede any other call; run it once.
bool global_init() {
  static const bool ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
  return ok;
}

constexpr std::size_t kMinPooledBuffer = std::size_t{64} << 10;
constexpr std::size_t kMaxErrorBody = std::size_t{64} << 10;

// ---- Reusable response buffers ---------------------------------------------------------------------

class BufferPool final : public BodyRecycler {
 public:
  explicit BufferPool(std::size_t max_bytes) : max_bytes_(max_bytes) {}

  // A cleared buffer with capacity >= `size` if one is idle (the smallest such), else an empty one.
  std::string acquire(std::size_t size) {
    std::lock_guard lock(mutex_);
    auto best = idle_.end();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->capacity() >= size && (best == idle_.end() || it->capacity() < best->capacity())) best = it;
    }
    if (best == idle_.end()) return {};
    std::string buffer = std::move(*best);
    idle_.erase(best);
    idle_bytes_ -= buffer.capacity();
    return buffer;
  }

  void recycle(std::string&& storage) noexcept override {
    const std::size_t capacity = storage.capacity();
    if (capacity < kMinPooledBuffer) return;
    std::string buffer = std::move(storage);
    buffer.clear();
    std::lock_guard lock(mutex_);
    if (idle_bytes_ + capacity > max_bytes_) return;  // `buffer` is freed on the way out
    try {
      idle_.push_back(std::move(buffer));
      idle_bytes_ += capacity;
    } catch (...) {
      // Out of memory for the vector: the buffer is simply freed.
    }
  }

  std::size_t idle_bytes() const {
    std::lock_guard lock(mutex_);
    return idle_bytes_;
  }

 private:
  const std::size_t max_bytes_;
  mutable std::mutex mutex_;
  std::vector<std::string> idle_;  // GUARDED_BY(mutex_)
  std::size_t idle_bytes_ = 0;     // GUARDED_BY(mutex_)
};

// ---- One transfer's state, seen by the libcurl callbacks -------------------------------------------------

enum class Abort { none, body_too_large, sink_refused, cancelled, bad_range };
enum class BodyMode { undecided, buffer, sink, error, discard };

struct Transfer {
  Transfer(const Request& request_in, const CancellationToken* cancel_in, BufferPool& pool_in, CURL* easy_in)
      : request(request_in), cancel(cancel_in), pool(pool_in), easy(easy_in) {}

  const Request& request;
  const CancellationToken* cancel;
  BufferPool& pool;
  CURL* easy;

  int status = 0;
  Headers headers;
  BodyMode mode = BodyMode::undecided;
  std::string body;
  std::string error_body;
  std::uint64_t body_bytes = 0;
  Abort abort = Abort::none;
  std::string abort_detail;
};

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r' || text.back() == '\n')) {
    text.remove_suffix(1);
  }
  return text;
}

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto& transfer = *static_cast<Transfer*>(user);
  const size_t total = size * count;
  const std::string_view line = trim(std::string_view(data, total));
  if (line.starts_with("HTTP/")) {
    // A new response (1xx, redirect hop or the final one): start over.
    transfer.headers.clear();
    transfer.mode = BodyMode::undecided;
    int status = 0;
    if (auto space = line.find(' '); space != std::string_view::npos) {
      const auto code = line.substr(space + 1, 3);
      std::from_chars(code.data(), code.data() + code.size(), status);
    }
    transfer.status = status;
    return total;
  }
  if (line.empty()) return total;
  if ((data[0] == ' ' || data[0] == '\t') && !transfer.headers.empty()) {
    return total;  // obsolete line folding: ignored
  }
  if (auto colon = line.find(':'); colon != std::string_view::npos) {
    transfer.headers.add(std::string(trim(line.substr(0, colon))), std::string(trim(line.substr(colon + 1))));
  }
  return total;
}

// "bytes 100-199/1000" -> 100.
std::optional<std::uint64_t> content_range_start(std::string_view value) {
  value = trim(value);
  if (!value.starts_with("bytes ")) return std::nullopt;
  value.remove_prefix(6);
  value = trim(value);
  std::uint64_t start = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), start);
  if (ec != std::errc() || end == value.data() + value.size() || *end != '-') return std::nullopt;
  return start;
}

// Picks where the body of the current response goes; false aborts the transfer.
bool decide_body_mode(Transfer& transfer) {
  const Request& request = transfer.request;
  if (transfer.status >= 400) {
    transfer.mode = BodyMode::error;
    return true;
  }
  if (transfer.status >= 300 && transfer.status < 400 && request.follow_redirects) {
    transfer.mode = BodyMode::discard;
    return true;
  }
  if (request.range && transfer.status >= 200 && transfer.status < 300) {
    if (transfer.status == 200 && request.range->first > 0) {
      transfer.abort = Abort::bad_range;
      transfer.abort_detail = "the server ignored the Range header (status 200)";
      return false;
    }
    if (transfer.status == 206) {
      if (auto value = transfer.headers.get("Content-Range")) {
        auto start = content_range_start(*value);
        if (!start || *start != request.range->first) {
          transfer.abort = Abort::bad_range;
          transfer.abort_detail = "Content-Range does not start at the requested offset";
          return false;
        }
      }
    }
  }
  if (request.sink && transfer.status < 300) {
    transfer.mode = BodyMode::sink;
    return true;
  }
  transfer.mode = BodyMode::buffer;
  curl_off_t length = -1;
  curl_easy_getinfo(transfer.easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
  if (length > 0) {
    const auto size = static_cast<std::uint64_t>(length);
    if (size > request.max_body) {
      transfer.abort = Abort::body_too_large;
      return false;
    }
    if (size >= kMinPooledBuffer) transfer.body = transfer.pool.acquire(size);
    transfer.body.reserve(size);
  }
  return true;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto& transfer = *static_cast<Transfer*>(user);
  const size_t total = size * count;
  if (transfer.cancel != nullptr && transfer.cancel->cancelled()) {
    transfer.abort = Abort::cancelled;
    return 0;
  }
  if (transfer.mode == BodyMode::undecided && !decide_body_mode(transfer)) return 0;
  switch (transfer.mode) {
    case BodyMode::error: {
      const size_t room = kMaxErrorBody - std::min(kMaxErrorBody, transfer.error_body.size());
      transfer.error_body.append(data, std::min(room, total));
      return total;
    }
    case BodyMode::discard:
    case BodyMode::undecided:
      return total;
    case BodyMode::sink: {
      transfer.body_bytes += total;
      bool accepted = false;
      try {
        accepted = transfer.request.sink(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), total));
      } catch (...) {
        accepted = false;
      }
      if (!accepted) {
        transfer.abort = Abort::sink_refused;
        return 0;
      }
      return total;
    }
    case BodyMode::buffer:
      if (transfer.body.size() + total > transfer.request.max_body) {
        transfer.abort = Abort::body_too_large;
        return 0;
      }
      transfer.body_bytes += total;
      transfer.body.append(data, total);
      return total;
  }
  return total;
}

// ---- Request validation ---------------------------------------------------------------------------------

bool valid_token(std::string_view text) {
  if (text.empty()) return false;
  return std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
  });
}

bool valid_header_value(std::string_view text) {
  return std::none_of(text.begin(), text.end(), [](char c) { return c == '\r' || c == '\n' || c == '\0'; });
}

std::optional<std::string> validate(const Request& request) {
  if (!valid_token(request.method)) return "method is not an HTTP token";
  if (request.url.empty()) return "empty URL";
  if (!valid_header_value(request.url) || request.url.find(' ') != std::string::npos) {
    return "URL contains spaces or control characters";
  }
  for (const auto& [name, value] : request.headers) {
    if (!valid_token(name)) return "a header name is not an HTTP token";
    if (!valid_header_value(value)) return "header " + name + " has a CR, LF or NUL in its value";
  }
  if (request.range && request.range->first > request.range->last) return "range first > last";
  if (!request.body.empty() && (request.method == "GET" || request.method == "HEAD")) {
    return "a " + request.method + " request cannot carry a body";
  }
  return std::nullopt;
}

ErrorKind kind_of(CURLcode code) {
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return ErrorKind::timeout;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_NOT_BUILT_IN:
      return ErrorKind::invalid_request;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_ISSUER_ERROR:
      return ErrorKind::tls;
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_WEIRD_SERVER_REPLY:
      return ErrorKind::bad_response;
    case CURLE_ABORTED_BY_CALLBACK:
      return ErrorKind::cancelled;
    default:
      return ErrorKind::network;
  }
}

}  // namespace

// ---- The pool of slots ------------------------------------------------------------------------------------

namespace {
struct Slot {
  MultiHandle multi;  // owns the connection cache of this slot
  EasyHandle easy;    // declared after: destroyed first
  std::array<char, CURL_ERROR_SIZE> error_buffer{};
};
}  // namespace

struct CurlTransport::Impl {
  CurlTransportOptions options;
  std::string user_agent;
  std::shared_ptr<BufferPool> pool;
  std::array<std::mutex, CURL_LOCK_DATA_LAST> share_locks;
  ShareHandle share;  // after share_locks: destroyed before them

  mutable std::mutex slots_mutex;
  std::vector<std::unique_ptr<Slot>> idle_slots;  // GUARDED_BY(slots_mutex); destroyed before `share`

  static void lock(CURL*, curl_lock_data data, curl_lock_access, void* user) {
    static_cast<Impl*>(user)->share_locks[static_cast<std::size_t>(data) % CURL_LOCK_DATA_LAST].lock();
  }
  static void unlock(CURL*, curl_lock_data data, void* user) {
    static_cast<Impl*>(user)->share_locks[static_cast<std::size_t>(data) % CURL_LOCK_DATA_LAST].unlock();
  }

  std::unique_ptr<Slot> acquire_slot() {
    {
      std::lock_guard lock(slots_mutex);
      if (!idle_slots.empty()) {
        auto slot = std::move(idle_slots.back());
        idle_slots.pop_back();
        return slot;
      }
    }
    auto slot = std::make_unique<Slot>();
    slot->multi.reset(curl_multi_init());
    slot->easy.reset(curl_easy_init());
    if (!slot->multi || !slot->easy) return nullptr;
    return slot;
  }

  void release_slot(std::unique_ptr<Slot> slot) {
    std::lock_guard lock(slots_mutex);
    if (idle_slots.size() < options.max_idle_slots) idle_slots.push_back(std::move(slot));
  }

  Result<Response> perform(const Request& request, const CancellationToken* cancel);
};

CurlTransport::CurlTransport(CurlTransportOptions options) : impl_(std::make_unique<Impl>()) {
  global_init();
  impl_->options = std::move(options);
  impl_->user_agent =
      impl_->options.user_agent.empty() ? std::string("bucketfs/") + BUCKETFS_VERSION : impl_->options.user_agent;
  impl_->pool = std::make_shared<BufferPool>(impl_->options.buffer_pool_bytes);
  impl_->share.reset(curl_share_init());
  if (impl_->share) {
    CURLSH* share = impl_->share.get();
    curl_share_setopt(share, CURLSHOPT_LOCKFUNC, &Impl::lock);
    curl_share_setopt(share, CURLSHOPT_UNLOCKFUNC, &Impl::unlock);
    curl_share_setopt(share, CURLSHOPT_USERDATA, impl_.get());
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  }
}

CurlTransport::~CurlTransport() = default;

std::size_t CurlTransport::idle_slots() const {
  std::lock_guard lock(impl_->slots_mutex);
  return impl_->idle_slots.size();
}

std::size_t CurlTransport::pooled_buffer_bytes() const { return impl_->pool->idle_bytes(); }

Result<Response> CurlTransport::perform(const Request& request, const CancellationToken* cancel) {
  return impl_->perform(request, cancel);
}

Result<Response> CurlTransport::Impl::perform(const Request& request, const CancellationToken* cancel) {
  const std::string route = route_of(request.method, request.url);
  auto fail = [&](ErrorKind kind, std::string message) {
    Error error;
    error.kind = kind;
    error.route = route;
    error.message = detail::scrub(std::move(message), request);
    return std::unexpected(std::move(error));
  };
  if (auto problem = validate(request)) return fail(ErrorKind::invalid_request, *problem);
  if (cancel != nullptr && cancel->cancelled()) return fail(ErrorKind::cancelled, "cancelled before sending");
  if (!global_init()) return fail(ErrorKind::network, "curl_global_init failed");

  std::unique_ptr<Slot> slot = acquire_slot();
  if (!slot) return fail(ErrorKind::network, "cannot create a curl handle");
  CURL* easy = slot->easy.get();
  CURLM* multi = slot->multi.get();
  curl_easy_reset(easy);
  slot->error_buffer[0] = '\0';

  Transfer transfer(request, cancel, *pool, easy);

  // Headers: the caller's, then ours. The list holds the token; it is freed when we return.
  Slist header_list;
  auto append = [&](const std::string& line) {
    curl_slist* next = curl_slist_append(header_list.get(), line.c_str());
    if (next != nullptr) {
      (void)header_list.release();
      header_list.reset(next);
    }
    return next != nullptr;
  };
  bool headers_ok = true;
  for (const auto& [name, value] : request.headers) {
    // "Name;" is libcurl's way to send a header with an empty value.
    headers_ok &= append(value.empty() ? name + ";" : name + ": " + value);
  }
  const bool has_body = !request.body.empty() || (request.method != "GET" && request.method != "HEAD" &&
                                                  request.method != "DELETE" && request.method != "OPTIONS");
  if (has_body) {
    headers_ok &= append("Expect:");  // no 100-continue round trip before each upload
    if (!request.headers.contains("Content-Type")) headers_ok &= append("Content-Type: application/octet-stream");
  }
  if (request.range) {
    headers_ok &= append("Range: bytes=" + std::to_string(request.range->first) + "-" +
                         std::to_string(request.range->last));
  }
  if (!headers_ok) return fail(ErrorKind::network, "out of memory building the header list");

  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, slot->error_buffer.data());
  if (share) curl_easy_setopt(easy, CURLOPT_SHARE, share.get());
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPIDLE, 30L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPINTVL, 15L);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, user_agent.c_str());
  if (!options.ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, options.ca_file.c_str());
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(request.timeouts.connect.count()));
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(request.timeouts.total.count()));
  if (request.follow_redirects) {
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(easy, CURLOPT_MAXREDIRS, options.max_redirects);
    curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  }
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, header_list.get());
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &on_header);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &transfer);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &on_body);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &transfer);

  if (request.method == "HEAD") {
    curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  } else if (has_body) {
    // POSTFIELDS does not copy: the span stays the caller's until we return.
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(request.body.size()));
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS,
                     request.body.empty() ? "" : reinterpret_cast<const char*>(request.body.data()));
    if (request.method != "POST") curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  } else if (request.method != "GET") {
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
  }

  // ---- Drive the transfer -------------------------------------------------------------------------------
  if (curl_multi_add_handle(multi, easy) != CURLM_OK) return fail(ErrorKind::network, "curl_multi_add_handle failed");
  CancellationToken::Registration wake;
  if (cancel != nullptr) wake = cancel->on_cancel([multi] { curl_multi_wakeup(multi); });

  const auto stall = options.stall_timeout.count() > 0 ? options.stall_timeout : request.timeouts.stall;
  auto last_progress = Clock::now();
  curl_off_t last_count = -1;
  bool cancelled = false;
  bool stalled = false;
  std::optional<std::string> multi_failure;
  for (;;) {
    int running = 0;
    if (CURLMcode mc = curl_multi_perform(multi, &running); mc != CURLM_OK) {
      multi_failure = curl_multi_strerror(mc);
      break;
    }
    if (running == 0) break;
    if (cancel != nullptr && cancel->cancelled()) {
      cancelled = true;
      break;
    }
    int wait_ms = 100;
    if (stall.count() > 0) {
      curl_off_t down = 0;
      curl_off_t up = 0;
      long header_bytes = 0;
      curl_easy_getinfo(easy, CURLINFO_SIZE_DOWNLOAD_T, &down);
      curl_easy_getinfo(easy, CURLINFO_SIZE_UPLOAD_T, &up);
      curl_easy_getinfo(easy, CURLINFO_HEADER_SIZE, &header_bytes);
      const curl_off_t count = down + up + header_bytes;
      const auto now = Clock::now();
      if (count != last_count) {
        last_count = count;
        last_progress = now;
      } else if (now - last_progress >= stall) {
        stalled = true;
        break;
      }
      const auto left = std::chrono::duration_cast<milliseconds>(stall - (now - last_progress)).count() + 1;
      wait_ms = static_cast<int>(std::clamp<long long>(left, 1, wait_ms));
    }
    if (CURLMcode mc = curl_multi_poll(multi, nullptr, 0, wait_ms, nullptr); mc != CURLM_OK) {
      multi_failure = curl_multi_strerror(mc);
      break;
    }
  }
  CURLcode code = CURLE_OK;
  bool done = false;
  int queued = 0;
  while (CURLMsg* message = curl_multi_info_read(multi, &queued)) {
    if (message->msg == CURLMSG_DONE && message->easy_handle == easy) {
      code = message->data.result;
      done = true;
    }
  }
  wake.reset();  // before the multi handle can be reused by another perform()
  long new_connections = 0;
  long status = 0;
  curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  // Removing an unfinished transfer closes its connection; a finished one stays in the cache.
  curl_multi_remove_handle(multi, easy);
  const std::string curl_message = slot->error_buffer[0] != '\0' ? std::string(slot->error_buffer.data()) : "";
  release_slot(std::move(slot));  // `easy` belongs to the pool again: no more calls on it

  // ---- Outcome --------------------------------------------------------------------------------------------
  if (cancelled || transfer.abort == Abort::cancelled) return fail(ErrorKind::cancelled, "cancelled during the transfer");
  if (stalled) {
    return fail(ErrorKind::timeout, "stalled: no data for " + std::to_string(stall.count()) + " ms");
  }
  if (multi_failure) return fail(ErrorKind::network, *multi_failure);
  switch (transfer.abort) {
    case Abort::body_too_large:
      return fail(ErrorKind::body_too_large, "the body exceeds " + std::to_string(request.max_body) + " bytes");
    case Abort::sink_refused:
      return fail(ErrorKind::sink_refused, "the body sink refused the data");
    case Abort::bad_range:
      return fail(ErrorKind::bad_response, transfer.abort_detail);
    case Abort::cancelled:
    case Abort::none:
      break;
  }
  if (!done) return fail(ErrorKind::network, "the transfer ended without a result");
  if (code != CURLE_OK) {
    return fail(kind_of(code), curl_message.empty() ? std::string(curl_easy_strerror(code)) : curl_message);
  }
  if (status >= 400) {
    Error error;
    error.kind = ErrorKind::http_status;
    error.status = static_cast<int>(status);
    error.route = route;
    error.message = detail::scrub(detail::error_message(transfer.headers, transfer.error_body), request);
    error.retry_after = server_wait(transfer.headers);
    return std::unexpected(std::move(error));
  }
  if (request.range && status == 200 && request.range->first > 0) {
    return fail(ErrorKind::bad_response, "the server ignored the Range header (status 200)");
  }

  Response response;
  response.status = static_cast<int>(status);
  response.headers = std::move(transfer.headers);
  response.body_bytes = transfer.body_bytes;
  response.new_connection = new_connections > 0;
  response.body = Body(std::move(transfer.body), pool);
  return response;
}

}  // namespace bucketfs::http
