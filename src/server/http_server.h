#pragma once
// The HTTP/1.1 layer of bucketfs-server, on libmicrohttpd. It knows nothing of buckets: it turns
// connections into HttpRequest values, asks the application twice (once when the headers are in,
// once when the body is complete) and sends the HttpResponse it gets back.
//
// Threading: by default every connection has its own thread (libmicrohttpd's
// MHD_USE_THREAD_PER_CONNECTION). `decide`, `handle` and the reader of a `stream` body run on that
// thread, so they may block (LMDB, fsync, decompression) without stalling other connections. They
// are called concurrently from many threads and must be thread-safe. One connection carries one
// request at a time (HTTP/1.1 without pipelining), so the calls for one request never overlap.
//
// Nothing here logs request headers or bodies (they carry tokens).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace bucketfs::server {

// ---- Helpers the router and the tests share ------------------------------------------------------

// Decodes %XX escapes (either case of hex digit). Returns nullopt when a '%' is not followed by two
// hex digits. '+' is kept as is (it means a space only in query strings). The result may hold any
// byte, including '/' (from %2F) and NUL (from %00): callers that build names check them.
std::optional<std::string> percent_decode(std::string_view text);

// Name=value pairs of a query string, decoded, in the order received; repeated names are kept
// (`expand[]=a&expand[]=b`).
using QueryParams = std::vector<std::pair<std::string, std::string>>;

// Parses `a=1&b=x%20y&flag` (no leading '?'): '+' is a space, then %XX escapes are decoded; a piece
// without '=' has an empty value; empty pieces (`a=1&&b=2`) are skipped. nullopt on a bad escape.
std::optional<QueryParams> parse_query(std::string_view query);

// The first value of `name` in `params`, or nullopt. The view points into `params`.
std::optional<std::string_view> query_value(const QueryParams& params, std::string_view name);

// `text` as a JSON string literal, quotes included (control characters escaped; other bytes kept).
std::string json_quote(std::string_view text);

// ---- Headers ---------------------------------------------------------------------------------------

// HTTP header fields: names compare case-insensitively, insertion order is kept (responses send
// them in that order) and a name may occur more than once. Small: lookups are linear.
class Headers {
 public:
  using Field = std::pair<std::string, std::string>;

  // The first value of `name`. The view is valid until this object is next modified.
  std::optional<std::string_view> get(std::string_view name) const;
  // Every value of `name`, in order. Same validity as get().
  std::vector<std::string_view> get_all(std::string_view name) const;
  bool contains(std::string_view name) const { return get(name).has_value(); }

  // Appends a field, keeping any earlier ones of the same name.
  void add(std::string name, std::string value);
  // Replaces every field of `name` by one (at the position of the first, else at the end).
  void set(std::string name, std::string value);
  // Removes every field of `name`; returns how many were removed.
  std::size_t erase(std::string_view name);

  std::size_t size() const { return fields_.size(); }
  bool empty() const { return fields_.empty(); }
  std::vector<Field>::const_iterator begin() const { return fields_.begin(); }
  std::vector<Field>::const_iterator end() const { return fields_.end(); }

 private:
  std::vector<Field> fields_;
};

// Case-insensitive ASCII comparison, as header names need.
bool iequals(std::string_view a, std::string_view b);

// ---- Requests ----------------------------------------------------------------------------------------

struct HttpRequest {
  std::string method;    // "GET", "HEAD", "POST", ... as sent (case-sensitive per RFC 9110)
  std::string raw_path;  // the request target's path exactly as received: no decoding, no query
  std::string path;      // raw_path percent-decoded; "%2F" became '/', so segment boundaries are
                         // lost: routes that take a name with '/' inside split raw_path instead
  std::string raw_query;  // after '?', undecoded ("" when absent); e.g. for signature checks
  QueryParams query;      // raw_query decoded by parse_query()
  Headers headers;        // as received
  std::string body;       // complete; empty in decide()
  std::string peer;       // "127.0.0.1:53122" or "[::1]:53122"

  // The first query parameter `name`; the view points into `query`.
  std::optional<std::string_view> query_param(std::string_view name) const { return query_value(query, name); }
};

// ---- Responses ---------------------------------------------------------------------------------------

// An open file descriptor, closed when the last owner lets go. Shared so that HttpResponse stays
// copyable; the server sends a dup() of it, so one FileHandle may serve many responses.
class FileHandle {
 public:
  explicit FileHandle(int fd) : fd_(fd) {}
  ~FileHandle();
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

// [offset, offset + length) of a file.
struct ByteRange {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  bool operator==(const ByteRange&) const = default;
};

// A byte range of a file on disk, sent with sendfile(2): the bytes never pass through user space.
// Exactly one of `fd` and `path` is used (fd first). The server checks that the range lies inside
// the file when it sends the response and answers 500 if not (404 if `path` does not exist).
struct FileBody {
  std::shared_ptr<const FileHandle> fd;
  std::string path;
  ByteRange range;
};

// Several ranges of one file as `multipart/byteranges` (RFC 9110 section 14.6 / RFC 7233 appendix
// A). The server sets `Content-Type: multipart/byteranges; boundary=<boundary>` itself; each part
// carries `content_type` and `Content-Range: bytes first-last/file_size`. Parts must be non-empty
// and inside the file. The bytes are read with pread into libmicrohttpd's send buffer (one copy).
struct MultipartFileBody {
  std::shared_ptr<const FileHandle> fd;
  std::string path;
  std::uint64_t file_size = 0;  // for Content-Range; 0: the file's current size
  std::vector<ByteRange> parts;
  std::string content_type;
  std::string boundary;  // set by HttpResponse::multipart_file (random)
};

// Writes up to `size` bytes at `position` of the body into `out`; returns how many (> 0), or a
// negative value on error (the connection is then closed: the client sees a short body). Called
// with increasing positions on the connection's thread; may block; exceptions count as errors.
using StreamReader = std::function<std::int64_t(std::uint64_t position, char* out, std::size_t size)>;

// A body of known length produced on demand.
struct StreamBody {
  std::uint64_t length = 0;
  StreamReader read;
};

struct HttpResponse {
  int status = 200;
  // Sent in order. Content-Length and Transfer-Encoding are ignored: the server always sends the
  // body's length as Content-Length (also for HEAD, where the body itself is not sent).
  Headers headers;
  std::variant<std::monostate, std::string, FileBody, MultipartFileBody, StreamBody> body;
  // Fault injection (bucketfs-server --inject-faults), for testing clients. When either is set the
  // body is sent through user space (no sendfile); multipart bodies ignore both.
  // Send Content-Length as usual, then only this many body bytes, then close the connection.
  std::optional<std::uint64_t> truncate_body_at;
  // Invert the body byte at this position (every bit), keeping the length.
  std::optional<std::uint64_t> flip_body_byte_at;

  // The number of body bytes (what Content-Length says); for a multipart body, the framed length.
  // For a file body with `path`, the range's length (the file is not opened here).
  std::uint64_t body_length() const;

  // Body `text` with Content-Type application/json.
  static HttpResponse json(int status, std::string text);
  // `{"error": message}` with Content-Type application/json.
  static HttpResponse error(int status, std::string_view message);
  // Body `data` with Content-Type application/octet-stream.
  static HttpResponse bytes(int status, std::string data);
  // A body of `length` bytes produced by `read` (see StreamReader). For HEAD, `read` is not called,
  // so a reader that fails is how to answer HEAD with a Content-Length and no body.
  static HttpResponse stream(int status, std::uint64_t length, StreamReader read);
  // [offset, offset + length) of the file at `path`, sent with sendfile. The handler sets
  // Content-Range (for 206) and Content-Type.
  static HttpResponse file(int status, std::string path, std::uint64_t offset, std::uint64_t length);
  static HttpResponse file(int status, std::shared_ptr<const FileHandle> fd, std::uint64_t offset,
                           std::uint64_t length);
  // Several ranges of the file at `path` (offset, length pairs) as multipart/byteranges.
  static HttpResponse multipart_file(int status, std::string path, std::uint64_t file_size,
                                     const std::vector<std::pair<std::uint64_t, std::uint64_t>>& parts,
                                     std::string content_type);
};

// The answer of the first phase.
class RouteDecision {
 public:
  // Read a body of at most `max_body` bytes, then call handle(). A larger body (by Content-Length,
  // or counted as it arrives when chunked) is answered 413 without being stored and handle() is
  // not called.
  static RouteDecision accept(std::size_t max_body) { return RouteDecision(max_body, std::nullopt); }
  // Accept with HttpServerOptions::default_max_body.
  static RouteDecision accept() { return RouteDecision(std::nullopt, std::nullopt); }
  // Answer now (401, 404, 413...) without reading the body; handle() is not called.
  static RouteDecision respond(HttpResponse response) { return RouteDecision(std::nullopt, std::move(response)); }
  // Close the connection without answering (fault injection: the client sees a reset).
  static RouteDecision close_connection() {
    RouteDecision decision(std::nullopt, std::nullopt);
    decision.close_ = true;
    return decision;
  }
  bool closes() const { return close_; }
  // Fault injection: handle the request as usual, then hold the answer back this long (the client
  // gives up waiting although the request took effect).
  RouteDecision& delay_answer(std::chrono::milliseconds delay) {
    answer_delay_ = delay;
    return *this;
  }
  std::chrono::milliseconds answer_delay() const { return answer_delay_; }

  const std::optional<std::size_t>& max_body() const { return max_body_; }
  const std::optional<HttpResponse>& response() const { return response_; }
  std::optional<HttpResponse>& response() { return response_; }

 private:
  RouteDecision(std::optional<std::size_t> max_body, std::optional<HttpResponse> response)
      : max_body_(max_body), response_(std::move(response)) {}
  std::optional<std::size_t> max_body_;
  std::optional<HttpResponse> response_;
  bool close_ = false;
  std::chrono::milliseconds answer_delay_{0};
};

// ---- The server ----------------------------------------------------------------------------------------

struct HttpServerOptions {
  std::string address = "127.0.0.1";  // IPv4 or IPv6 literal, or a host name ("localhost")
  std::uint16_t port = 0;             // 0: a free port, see HttpServer::port()
  // true: one thread per connection; handlers may block. false: `threads` polling threads share the
  // connections (epoll); a handler that blocks then stalls every connection of its thread, so use
  // it only with handlers that never block.
  bool thread_per_connection = true;
  unsigned threads = 4;  // polling threads when !thread_per_connection; ignored otherwise
  unsigned max_connections = 1024;
  std::chrono::seconds connection_timeout{120};  // an idle or stalled connection is closed after this
  std::size_t default_max_body = 1 << 20;        // for RouteDecision::accept()
  std::chrono::milliseconds stop_timeout{10000};  // how long stop() lets in-flight requests finish
  // Request bodies of 1 MiB or more are read into buffers kept for reuse (fresh pages are slow on
  // our VMs, PERF-NOTES trap 1); at most this many bytes of idle buffers are kept. 0: no reuse.
  std::size_t body_pool_bytes = std::size_t{256} << 20;
  // Per-connection memory of libmicrohttpd: request line + headers must fit; also its read buffer.
  std::size_t connection_memory = std::size_t{128} << 10;
  // Where libmicrohttpd's error messages go; default stderr. Never sees request headers.
  std::function<void(std::string_view)> log;
};

class HttpServer {
 public:
  using DecideFn = std::function<RouteDecision(const HttpRequest& headers_only)>;
  using HandleFn = std::function<HttpResponse(HttpRequest&& request)>;

  // `decide` may be empty (every request is accepted with default_max_body). Exceptions from
  // either function become a 500 `{"error": ...}` answer. `handle` may leave `request.body` in the
  // request (it is then recycled) or move it out.
  HttpServer(HttpServerOptions options, DecideFn decide, HandleFn handle);
  ~HttpServer();  // stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts serving. Errors name the address, e.g. "cannot listen on 127.0.0.1:80:
  // Permission denied". At most once.
  std::expected<void, std::string> start();
  // The bound port (useful with port 0); 0 before start().
  std::uint16_t port() const;
  // Stops accepting (the listen socket is closed at once), lets requests in flight finish for up to
  // stop_timeout, then closes every connection and joins the threads. A handler still running at
  // that point is waited for (threads cannot be cancelled); its answer is dropped. Idempotent.
  void stop();

  // Requests received and not yet completed (from the request line until the response is sent or
  // the connection fails).
  std::size_t in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bucketfs::server
