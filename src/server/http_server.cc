// HTTP layer; see http_server.h
#include "http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <random>
#include <thread>

namespace bucketfs::server {
namespace {

constexpr std::size_t kPooledBodyMin = std::size_t{1} << 20;  // smaller bodies use plain strings
// A pooled buffer is reserved with at least a quarter of this to spare, rounded up to a whole
// step, so the next body of about the same size (xorbs of one client differ by a few KiB) fits it:
// a new 64 MiB buffer costs about 0.15 s of fresh pages here (PERF-NOTES trap 1).
constexpr std::size_t kPooledBodyStep = std::size_t{4} << 20;
constexpr std::size_t kSendBlock = std::size_t{256} << 10;   // buffer of callback-made bodies
// A chunked body over its limit is read and dropped (to answer 413 on a healthy connection) only
// up to this much past the limit; then the connection is closed.
constexpr std::uint64_t kMaxDiscard = std::uint64_t{64} << 20;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string content_range(const ByteRange& range, std::uint64_t file_size) {
  return "bytes " + std::to_string(range.offset) + "-" + std::to_string(range.offset + range.length - 1) + "/" +
         std::to_string(file_size);
}

std::string random_boundary() {
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string boundary = "bucketfs-";
  for (int word = 0; word < 2; ++word) {
    std::uint64_t bits = generator();
    for (int i = 0; i < 16; ++i, bits >>= 4) boundary += kDigits[bits & 15];
  }
  return boundary;
}

// The framing of a multipart/byteranges body: text pieces around file ranges, in order.
struct MultipartPiece {
  std::string text;      // when non-empty, this piece is text
  ByteRange file_range;  // otherwise bytes of the file
};

std::vector<MultipartPiece> multipart_pieces(const MultipartFileBody& body, std::uint64_t file_size) {
  std::vector<MultipartPiece> pieces;
  pieces.reserve(body.parts.size() * 2 + 1);
  for (std::size_t i = 0; i < body.parts.size(); ++i) {
    std::string head = i == 0 ? "--" : "\r\n--";
    head += body.boundary;
    head += "\r\nContent-Type: ";
    head += body.content_type;
    head += "\r\nContent-Range: ";
    head += content_range(body.parts[i], file_size);
    head += "\r\n\r\n";
    pieces.push_back({std::move(head), {}});
    pieces.push_back({std::string(), body.parts[i]});
  }
  pieces.push_back({"\r\n--" + body.boundary + "--\r\n", {}});
  return pieces;
}

std::uint64_t piece_length(const MultipartPiece& piece) {
  return piece.text.empty() ? piece.file_range.length : piece.text.size();
}

std::uint64_t pieces_length(const std::vector<MultipartPiece>& pieces) {
  std::uint64_t total = 0;
  for (const auto& piece : pieces) total += piece_length(piece);
  return total;
}

std::string format_peer(const sockaddr* address) {
  if (address == nullptr) return {};
  char text[INET6_ADDRSTRLEN] = {};
  if (address->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(address);
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
    return std::string(text) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (address->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
    return "[" + std::string(text) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return {};
}

// Reads a file descriptor's bytes for multipart bodies (pread: no shared file position).
class MultipartReader {
 public:
  MultipartReader(int fd, std::vector<MultipartPiece> pieces) : fd_(fd), pieces_(std::move(pieces)) {
    starts_.reserve(pieces_.size());
    std::uint64_t start = 0;
    for (const auto& piece : pieces_) {
      starts_.push_back(start);
      start += piece_length(piece);
    }
  }
  ~MultipartReader() { ::close(fd_); }
  MultipartReader(const MultipartReader&) = delete;
  MultipartReader& operator=(const MultipartReader&) = delete;

  ssize_t read(std::uint64_t position, char* out, std::size_t max) {
    if (pieces_.empty() || position >= starts_.back() + piece_length(pieces_.back())) {
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    auto it = std::upper_bound(starts_.begin(), starts_.end(), position);
    if (it == starts_.begin()) return MHD_CONTENT_READER_END_WITH_ERROR;
    std::size_t index = static_cast<std::size_t>(it - starts_.begin()) - 1;
    std::size_t written = 0;
    while (written < max && index < pieces_.size()) {
      const auto& piece = pieces_[index];
      const std::uint64_t within = position - starts_[index];
      if (!piece.text.empty()) {
        const std::size_t n = std::min<std::size_t>(max - written, piece.text.size() - within);
        std::memcpy(out + written, piece.text.data() + within, n);
        written += n;
        position += n;
      } else {
        const std::uint64_t left = piece.file_range.length - within;
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(max - written, left));
        const ssize_t got = ::pread(fd_, out + written, want, static_cast<off_t>(piece.file_range.offset + within));
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return MHD_CONTENT_READER_END_WITH_ERROR;  // error, or the file shrank
        written += static_cast<std::size_t>(got);
        position += static_cast<std::uint64_t>(got);
        if (static_cast<std::size_t>(got) < want) continue;  // short read: try again at the new spot
      }
      if (index + 1 < starts_.size() && position >= starts_[index + 1]) ++index;
    }
    return written == 0 ? MHD_CONTENT_READER_END_WITH_ERROR : static_cast<ssize_t>(written);
  }

 private:
  int fd_;
  std::vector<MultipartPiece> pieces_;
  std::vector<std::uint64_t> starts_;
};

// Buffers of large request bodies, kept for the next large body (PERF-NOTES trap 1).
class BodyPool {
 public:
  explicit BodyPool(std::size_t limit) : limit_(limit) {}

  // A cleared string that can hold `expected` bytes (0: unknown length).
  std::string take(std::size_t expected) {
    std::string buffer;
    if (limit_ > 0 && (expected == 0 || expected >= kPooledBodyMin)) {
      std::lock_guard lock(mutex_);
      // The smallest idle buffer that fits; for an unknown length the largest.
      auto best = idle_.end();
      for (auto it = idle_.begin(); it != idle_.end(); ++it) {
        if (expected == 0) {
          if (best == idle_.end() || it->capacity() > best->capacity()) best = it;
        } else if (it->capacity() >= expected && (best == idle_.end() || it->capacity() < best->capacity())) {
          best = it;
        }
      }
      if (best != idle_.end()) {
        buffer = std::move(*best);
        idle_.erase(best);
        bytes_ -= buffer.capacity();
        buffer.clear();
      }
    }
    if (expected > buffer.capacity()) {
      const std::size_t wanted = expected + kPooledBodyStep / 4;
      buffer.reserve(expected >= kPooledBodyMin ? (wanted + kPooledBodyStep - 1) / kPooledBodyStep * kPooledBodyStep
                                                : expected);
    }
    return buffer;
  }

  void give(std::string&& buffer) {
    const std::size_t capacity = buffer.capacity();
    if (limit_ == 0 || capacity < kPooledBodyMin) return;
    std::lock_guard lock(mutex_);
    if (bytes_ + capacity > limit_) return;  // dropped: freed by the caller's string
    bytes_ += capacity;
    idle_.push_back(std::move(buffer));
  }

 private:
  const std::size_t limit_;
  std::mutex mutex_;
  std::vector<std::string> idle_;  // GUARDED_BY(mutex_)
  std::size_t bytes_ = 0;          // GUARDED_BY(mutex_): sum of idle_ capacities
};

struct ListenSocket {
  int fd = -1;
  std::string error;
};

ListenSocket open_listener(const std::string& address, std::uint16_t port) {
  std::string host = address;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string where = address + ":" + std::to_string(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found); rc != 0) {
    return {-1, "cannot listen on " + where + ": " + ::gai_strerror(rc)};
  }
  std::string error = "cannot listen on " + where + ": no address";
  int fd = -1;
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      error = "cannot listen on " + where + ": " + std::strerror(errno);
      continue;
    }
    const int on = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (ai->ai_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 1024) == 0) break;
    error = "cannot listen on " + where + ": " + std::strerror(errno);
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(found);
  if (fd < 0) return {-1, error};
  return {fd, {}};
}

std::uint16_t socket_port(int fd) {
  sockaddr_storage storage{};
  socklen_t length = sizeof storage;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) return 0;
  if (storage.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  if (storage.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port);
  return 0;
}

}  // namespace

// ---- helpers ---------------------------------------------------------------------------------------------

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size()) return std::nullopt;
    const int high = hex_value(text[i + 1]);
    const int low = hex_value(text[i + 2]);
    if (high < 0 || low < 0) return std::nullopt;
    out += static_cast<char>(high * 16 + low);
    i += 2;
  }
  return out;
}

std::optional<QueryParams> parse_query(std::string_view query) {
  QueryParams params;
  std::string scratch;
  auto decode = [&scratch](std::string_view part) {
    scratch.assign(part);
    std::replace(scratch.begin(), scratch.end(), '+', ' ');
    return percent_decode(scratch);
  };
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view piece = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (piece.empty()) continue;
    const std::size_t eq = piece.find('=');
    auto key = decode(piece.substr(0, eq));
    if (!key) return std::nullopt;
    auto value = eq == std::string_view::npos ? std::optional<std::string>(std::string()) : decode(piece.substr(eq + 1));
    if (!value) return std::nullopt;
    params.emplace_back(std::move(*key), std::move(*value));
  }
  return params;
}

std::optional<std::string_view> query_value(const QueryParams& params, std::string_view name) {
  for (const auto& [key, value] : params) {
    if (key == name) return std::string_view(value);
  }
  return std::nullopt;
}

std::string json_quote(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static constexpr char kDigits[] = "0123456789abcdef";
          out += "\\u00";
          out += kDigits[(c >> 4) & 15];
          out += kDigits[c & 15];
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

// ---- Headers ---------------------------------------------------------------------------------------------

std::optional<std::string_view> Headers::get(std::string_view name) const {
  for (const auto& [key, value] : fields_) {
    if (iequals(key, name)) return std::string_view(value);
  }
  return std::nullopt;
}

std::vector<std::string_view> Headers::get_all(std::string_view name) const {
  std::vector<std::string_view> values;
  for (const auto& [key, value] : fields_) {
    if (iequals(key, name)) values.emplace_back(value);
  }
  return values;
}

void Headers::add(std::string name, std::string value) { fields_.emplace_back(std::move(name), std::move(value)); }

void Headers::set(std::string name, std::string value) {
  auto first = std::find_if(fields_.begin(), fields_.end(), [&](const Field& f) { return iequals(f.first, name); });
  if (first == fields_.end()) {
    fields_.emplace_back(std::move(name), std::move(value));
    return;
  }
  first->second = std::move(value);
  first->first = std::move(name);
  fields_.erase(std::remove_if(first + 1, fields_.end(), [&](const Field& f) { return iequals(f.first, first->first); }),
                fields_.end());
}

std::size_t Headers::erase(std::string_view name) {
  const std::size_t before = fields_.size();
  std::erase_if(fields_, [&](const Field& f) { return iequals(f.first, name); });
  return before - fields_.size();
}

// ---- Responses -------------------------------------------------------------------------------------------

FileHandle::~FileHandle() {
  if (fd_ >= 0) ::close(fd_);
}

std::uint64_t HttpResponse::body_length() const {
  struct Length {
    std::uint64_t operator()(const std::monostate&) const { return 0; }
    std::uint64_t operator()(const std::string& text) const { return text.size(); }
    std::uint64_t operator()(const FileBody& file) const { return file.range.length; }
    std::uint64_t operator()(const MultipartFileBody& multipart) const {
      return pieces_length(multipart_pieces(multipart, multipart.file_size));
    }
    std::uint64_t operator()(const StreamBody& stream) const { return stream.length; }
  };
  return std::visit(Length{}, body);
}

HttpResponse HttpResponse::json(int status, std::string text) {
  HttpResponse response;
  response.status = status;
  response.headers.set("Content-Type", "application/json");
  response.body = std::move(text);
  return response;
}

HttpResponse HttpResponse::error(int status, std::string_view message) {
  return json(status, "{\"error\": " + json_quote(message) + "}");
}

HttpResponse HttpResponse::bytes(int status, std::string data) {
  HttpResponse response;
  response.status = status;
  response.headers.set("Content-Type", "application/octet-stream");
  response.body = std::move(data);
  return response;
}

HttpResponse HttpResponse::stream(int status, std::uint64_t length, StreamReader read) {
  HttpResponse response;
  response.status = status;
  response.body = StreamBody{length, std::move(read)};
  return response;
}

HttpResponse HttpResponse::file(int status, std::string path, std::uint64_t offset, std::uint64_t length) {
  HttpResponse response;
  response.status = status;
  response.body = FileBody{nullptr, std::move(path), {offset, length}};
  return response;
}

HttpResponse HttpResponse::file(int status, std::shared_ptr<const FileHandle> fd, std::uint64_t offset,
                                std::uint64_t length) {
  HttpResponse response;
  response.status = status;
  response.body = FileBody{std::move(fd), std::string(), {offset, length}};
  return response;
}

HttpResponse HttpResponse::multipart_file(int status, std::string path, std::uint64_t file_size,
                                          const std::vector<std::pair<std::uint64_t, std::uint64_t>>& parts,
                                          std::string content_type) {
  MultipartFileBody body;
  body.path = std::move(path);
  body.file_size = file_size;
  body.parts.reserve(parts.size());
  for (const auto& [offset, length] : parts) body.parts.push_back({offset, length});
  body.content_type = std::move(content_type);
  body.boundary = random_boundary();
  HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  return response;
}

// ---- The server ------------------------------------------------------------------------------------------

namespace {

// One request, from its request line (URI log callback) to its completion notice.
struct RequestState {
  std::string raw_uri;
  HttpRequest request;
  std::size_t max_body = 0;
  bool decided = false;   // the first call of the access handler is done
  bool answered = false;  // a response is queued
  bool too_large = false;  // the body is being dropped; 413 once it ends
  std::uint64_t dropped = 0;
  std::chrono::milliseconds answer_delay{0};  // RouteDecision::delay_answer
};

}  // namespace

struct HttpServer::Impl {
  HttpServerOptions options;
  DecideFn decide;
  HandleFn handle;
  BodyPool pool;

  std::mutex stop_mutex;  // serializes start() and stop()
  MHD_Daemon* daemon = nullptr;  // GUARDED_BY(stop_mutex)
  int listen_fd = -1;            // GUARDED_BY(stop_mutex); owned, closed after MHD_stop_daemon
  std::atomic<std::uint16_t> bound_port{0};
  std::atomic<bool> stopping{false};

  mutable std::mutex flight_mutex;
  std::condition_variable flight_done;
  std::size_t in_flight = 0;  // GUARDED_BY(flight_mutex)

  Impl(HttpServerOptions o, DecideFn d, HandleFn h)
      : options(std::move(o)), decide(std::move(d)), handle(std::move(h)), pool(options.body_pool_bytes) {}

  void log(std::string_view message) const {
    if (options.log) {
      options.log(message);
    } else {
      std::fprintf(stderr, "bucketfs-server: http: %.*s\n", static_cast<int>(message.size()), message.data());
    }
  }

  // ---- libmicrohttpd callbacks (C; nothing may throw through them) ----

  static void on_log(void* cls, const char* format, va_list args) {
    char text[512];
    std::vsnprintf(text, sizeof text, format, args);
    std::string_view message(text);
    while (!message.empty() && (message.back() == '\n' || message.back() == '\r')) message.remove_suffix(1);
    try {
      static_cast<Impl*>(cls)->log(message);
    } catch (...) {
    }
  }

  static void* on_uri(void* cls, const char* uri, MHD_Connection*) {
    auto* self = static_cast<Impl*>(cls);
    try {
      auto* state = new RequestState;
      state->raw_uri = uri != nullptr ? uri : "";
      std::lock_guard lock(self->flight_mutex);
      ++self->in_flight;
      return state;
    } catch (...) {
      return nullptr;
    }
  }

  static void on_completed(void* cls, MHD_Connection*, void** request_cls, MHD_RequestTerminationCode) {
    auto* self = static_cast<Impl*>(cls);
    auto* state = static_cast<RequestState*>(*request_cls);
    *request_cls = nullptr;
    if (state == nullptr) return;
    self->pool.give(std::move(state->request.body));
    delete state;
    std::lock_guard lock(self->flight_mutex);
    --self->in_flight;
    self->flight_done.notify_all();
  }

  static MHD_Result on_request(void* cls, MHD_Connection* connection, const char* /*url*/, const char* method,
                               const char* /*version*/, const char* upload_data, std::size_t* upload_size,
                               void** request_cls) {
    auto* self = static_cast<Impl*>(cls);
    auto* state = static_cast<RequestState*>(*request_cls);
    if (state == nullptr) return MHD_NO;  // out of memory in on_uri
    try {
      if (!state->decided) {
        state->decided = true;
        return self->begin(connection, *state, method);
      }
      if (*upload_size != 0) {
        const std::size_t size = *upload_size;
        *upload_size = 0;
        return self->receive(*state, upload_data, size);
      }
      if (state->answered) return MHD_YES;
      if (state->too_large) return self->refuse_body(connection, *state);
      return self->finish(connection, *state);
    } catch (const std::exception& e) {
      self->log(std::string("internal error: ") + e.what());
    } catch (...) {
      self->log("internal error");
    }
    return MHD_NO;  // closes the connection
  }

  // ---- the phases ----

  MHD_Result begin(MHD_Connection* connection, RequestState& state, const char* method) {
    HttpRequest& request = state.request;
    request.method = method != nullptr ? method : "";
    std::string_view target = state.raw_uri;
    // Absolute form (`GET http://host/path`): keep the path.
    if (target.starts_with("http://") || target.starts_with("https://")) {
      const std::size_t authority = target.find("://") + 3;
      const std::size_t slash = target.find('/', authority);
      target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    }
    const std::size_t question = target.find('?');
    request.raw_path = std::string(target.substr(0, question));
    if (question != std::string_view::npos) request.raw_query = std::string(target.substr(question + 1));
    MHD_get_connection_values_n(
        connection, MHD_HEADER_KIND,
        [](void* headers, MHD_ValueKind, const char* key, std::size_t key_size, const char* value,
           std::size_t value_size) -> MHD_Result {
          static_cast<Headers*>(headers)->add(std::string(key, key_size),
                                              value != nullptr ? std::string(value, value_size) : std::string());
          return MHD_YES;
        },
        &request.headers);
    if (const auto* info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS)) {
      request.peer = format_peer(info->client_addr);
    }

    auto path = percent_decode(request.raw_path);
    if (!path) return answer(connection, state, HttpResponse::error(400, "malformed percent-encoding in the path"));
    request.path = std::move(*path);
    auto query = parse_query(request.raw_query);
    if (!query) return answer(connection, state, HttpResponse::error(400, "malformed percent-encoding in the query"));
    request.query = std::move(*query);

    std::optional<std::size_t> limit;
    if (decide) {
      RouteDecision decision = RouteDecision::accept();
      try {
        decision = decide(request);
      } catch (const std::exception& e) {
        return answer(connection, state, handler_failed(request, e.what()));
      } catch (...) {
        return answer(connection, state, handler_failed(request, "unknown exception"));
      }
      if (decision.closes()) return MHD_NO;  // libmicrohttpd closes the connection, no answer
      if (auto& response = decision.response()) return answer(connection, state, std::move(*response));
      limit = decision.max_body();
      state.answer_delay = decision.answer_delay();
    }
    state.max_body = limit.value_or(options.default_max_body);

    std::size_t expected = 0;
    if (auto length = request.headers.get("Content-Length")) {
      std::uint64_t value = 0;
      const auto [end, ec] = std::from_chars(length->data(), length->data() + length->size(), value);
      if (ec != std::errc() || end != length->data() + length->size()) {
        return answer(connection, state, HttpResponse::error(400, "malformed Content-Length"));
      }
      if (value > state.max_body) return answer(connection, state, too_large(state.max_body));
      expected = static_cast<std::size_t>(value);
    }
    const bool chunked = request.headers.get("Transfer-Encoding").has_value();
    if (expected > 0 || chunked) request.body = pool.take(expected);
    return MHD_YES;
  }

  MHD_Result receive(RequestState& state, const char* data, std::size_t size) {
    if (state.answered) return MHD_YES;  // answered early; libmicrohttpd drops the rest
    if (state.too_large) {
      state.dropped += size;
      return state.dropped > kMaxDiscard ? MHD_NO : MHD_YES;
    }
    std::string& body = state.request.body;
    if (size > state.max_body - body.size()) {
      // Chunked: stop storing. libmicrohttpd 0.9.75 refuses MHD_queue_response in the middle of
      // a body, so the rest is read and dropped and 413 goes out when the body ends; past
      // kMaxDiscard the connection is closed instead.
      pool.give(std::move(body));
      body = std::string();
      state.too_large = true;
      state.dropped = size;
      return MHD_YES;
    }
    body.append(data, size);
    return MHD_YES;
  }

  MHD_Result refuse_body(MHD_Connection* connection, RequestState& state) {
    return answer(connection, state, too_large(state.max_body));
  }

  MHD_Result finish(MHD_Connection* connection, RequestState& state) {
    HttpResponse response;
    try {
      response = handle(std::move(state.request));
    } catch (const std::exception& e) {
      response = handler_failed(state.request, e.what());
    } catch (...) {
      response = handler_failed(state.request, "unknown exception");
    }
    if (state.answer_delay.count() > 0) std::this_thread::sleep_for(state.answer_delay);
    return answer(connection, state, std::move(response));
  }

  static HttpResponse too_large(std::size_t limit) {
    return HttpResponse::error(413, "request body is larger than " + std::to_string(limit) + " bytes");
  }

  HttpResponse handler_failed(const HttpRequest& request, std::string_view what) {
    // The method and path only: the query may carry signatures and the headers tokens.
    log("handler failed on " + request.method + " " + request.raw_path + ": " + std::string(what));
    return HttpResponse::error(500, "internal error: " + std::string(what));
  }

  // ---- sending ----

  MHD_Result answer(MHD_Connection* connection, RequestState& state, HttpResponse response) {
    if (response.status < 100 || response.status > 599) {
      response = handler_failed(state.request, "invalid status " + std::to_string(response.status));
    }
    MHD_Response* prepared = prepare(response, state.request);
    if (prepared == nullptr) return MHD_NO;
    const MHD_Result queued = MHD_queue_response(connection, static_cast<unsigned>(response.status), prepared);
    MHD_destroy_response(prepared);
    state.answered = queued == MHD_YES;
    return queued;
  }

  // Turns `response` into a libmicrohttpd response; may replace it by an error answer (a file that
  // cannot be opened, a range outside the file). nullptr when out of memory.
  MHD_Response* prepare(HttpResponse& response, const HttpRequest& request) {
    if (response.truncate_body_at || response.flip_body_byte_at) {
      if (!tamper(response, request)) return prepare(response, request);  // replaced by an error answer
    }
    MHD_Response* made = nullptr;
    std::string content_type;  // set for multipart bodies
    if (std::holds_alternative<std::monostate>(response.body)) {
      made = MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
    } else if (auto* text = std::get_if<std::string>(&response.body)) {
      // Hand the string to libmicrohttpd instead of copying it.
      auto* owned = new std::string(std::move(*text));
      made = MHD_create_response_from_buffer_with_free_callback_cls(
          owned->size(), owned->data(), [](void* p) { delete static_cast<std::string*>(p); }, owned);
      if (made == nullptr) delete owned;
    } else if (auto* file = std::get_if<FileBody>(&response.body)) {
      auto opened = open_range(file->fd, file->path, {file->range}, /*allow_empty=*/true, request);
      if (!opened) {
        response = std::move(opened.error());
        return prepare(response, request);
      }
      if (file->range.length == 0) {
        ::close(opened->first);
        made = MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
      } else {
        // sendfile(2) from this descriptor: the bytes go from the page cache to the socket.
        made = MHD_create_response_from_fd_at_offset64(file->range.length, opened->first, file->range.offset);
        if (made == nullptr) ::close(opened->first);
      }
    } else if (auto* multipart = std::get_if<MultipartFileBody>(&response.body)) {
      if (multipart->parts.empty()) {
        response = handler_failed(request, "multipart body without parts");
        return prepare(response, request);
      }
      auto opened = open_range(multipart->fd, multipart->path, multipart->parts, /*allow_empty=*/false, request);
      if (!opened) {
        response = std::move(opened.error());
        return prepare(response, request);
      }
      const std::uint64_t file_size = multipart->file_size != 0 ? multipart->file_size : opened->second;
      if (multipart->boundary.empty()) multipart->boundary = random_boundary();
      auto pieces = multipart_pieces(*multipart, file_size);
      const std::uint64_t total = pieces_length(pieces);
      auto* reader = new MultipartReader(opened->first, std::move(pieces));
      made = MHD_create_response_from_callback(
          total, kSendBlock,
          [](void* cls, std::uint64_t position, char* out, std::size_t max) -> ssize_t {
            return static_cast<MultipartReader*>(cls)->read(position, out, max);
          },
          reader, [](void* cls) { delete static_cast<MultipartReader*>(cls); });
      if (made == nullptr) delete reader;
      content_type = "multipart/byteranges; boundary=" + multipart->boundary;
    } else if (auto* stream = std::get_if<StreamBody>(&response.body)) {
      if (stream->length == 0) {
        made = MHD_create_response_from_buffer(0, nullptr, MHD_RESPMEM_PERSISTENT);
      } else {
        auto* reader = new StreamReader(std::move(stream->read));
        made = MHD_create_response_from_callback(
            stream->length, kSendBlock,
            [](void* cls, std::uint64_t position, char* out, std::size_t max) -> ssize_t {
              try {
                const std::int64_t n = (*static_cast<StreamReader*>(cls))(position, out, max);
                if (n <= 0 || static_cast<std::uint64_t>(n) > max) return MHD_CONTENT_READER_END_WITH_ERROR;
                return static_cast<ssize_t>(n);
              } catch (...) {
                return MHD_CONTENT_READER_END_WITH_ERROR;
              }
            },
            reader, [](void* cls) { delete static_cast<StreamReader*>(cls); });
        if (made == nullptr) delete reader;
      }
    }
    if (made == nullptr) return nullptr;

    for (const auto& [name, value] : response.headers) {
      if (iequals(name, "Content-Length") || iequals(name, "Transfer-Encoding")) continue;
      if (!content_type.empty() && iequals(name, "Content-Type")) continue;
      if (MHD_add_response_header(made, name.c_str(), value.c_str()) != MHD_YES) {
        log("dropped an invalid response header: " + name);  // never the value
      }
    }
    if (!content_type.empty()) MHD_add_response_header(made, "Content-Type", content_type.c_str());
    if (stopping.load(std::memory_order_relaxed)) MHD_add_response_header(made, "Connection", "close");
    return made;
  }

  // Fault injection: turns a string, file or stream body into a stream body that flips one byte
  // and/or fails after `truncate_body_at` bytes (the connection is then closed mid-body). Returns
  // false when `response` was replaced by an error answer (a file that cannot be opened).
  bool tamper(HttpResponse& response, const HttpRequest& request) {
    const auto truncate = response.truncate_body_at;
    const auto flip = response.flip_body_byte_at;
    response.truncate_body_at.reset();
    response.flip_body_byte_at.reset();
    StreamReader source;
    std::uint64_t length = 0;
    if (auto* text = std::get_if<std::string>(&response.body)) {
      auto owned = std::make_shared<const std::string>(std::move(*text));
      length = owned->size();
      source = [owned](std::uint64_t position, char* out, std::size_t size) -> std::int64_t {
        const std::size_t n = std::min<std::size_t>(size, owned->size() - static_cast<std::size_t>(position));
        std::memcpy(out, owned->data() + position, n);
        return static_cast<std::int64_t>(n);
      };
    } else if (auto* file = std::get_if<FileBody>(&response.body)) {
      auto opened = open_range(file->fd, file->path, {file->range}, /*allow_empty=*/true, request);
      if (!opened) {
        response = std::move(opened.error());
        return false;
      }
      auto fd = std::make_shared<const FileHandle>(opened->first);
      const std::uint64_t offset = file->range.offset;
      length = file->range.length;
      source = [fd, offset, length](std::uint64_t position, char* out, std::size_t size) -> std::int64_t {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(size, length - position));
        const ssize_t got = ::pread(fd->fd(), out, n, static_cast<off_t>(offset + position));
        return got > 0 ? static_cast<std::int64_t>(got) : -1;
      };
    } else if (auto* stream = std::get_if<StreamBody>(&response.body)) {
      length = stream->length;
      source = std::move(stream->read);
    } else {
      return true;  // empty or multipart: sent unchanged
    }
    response.body = StreamBody{
        length, [source = std::move(source), truncate, flip](std::uint64_t position, char* out,
                                                            std::size_t size) -> std::int64_t {
          if (truncate) {
            if (position >= *truncate) return -1;  // closes the connection: a short body
            size = static_cast<std::size_t>(std::min<std::uint64_t>(size, *truncate - position));
          }
          const std::int64_t n = source(position, out, size);
          if (n > 0 && flip && *flip >= position && *flip < position + static_cast<std::uint64_t>(n)) {
            out[*flip - position] = static_cast<char>(~out[*flip - position]);
          }
          return n;
        }};
    return true;
  }

  // Opens the file of a file body (a dup of `fd`, or `path`) and checks that `ranges` lie inside it
  // (and are non-empty unless `allow_empty`).
  // Returns the descriptor (owned by the caller) and the file's size, or the error answer.
  std::expected<std::pair<int, std::uint64_t>, HttpResponse> open_range(
      const std::shared_ptr<const FileHandle>& handle, const std::string& path, const std::vector<ByteRange>& ranges,
      bool allow_empty, const HttpRequest& request) {
    int fd = -1;
    if (handle != nullptr) {
      fd = ::fcntl(handle->fd(), F_DUPFD_CLOEXEC, 0);
      if (fd < 0) return std::unexpected(handler_failed(request, std::string("dup: ") + std::strerror(errno)));
    } else {
      fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        if (errno == ENOENT) return std::unexpected(HttpResponse::error(404, "not found"));
        return std::unexpected(handler_failed(request, "cannot open " + path + ": " + std::strerror(errno)));
      }
    }
    struct stat info{};
    if (::fstat(fd, &info) != 0) {
      const int error = errno;
      ::close(fd);
      return std::unexpected(handler_failed(request, std::string("fstat: ") + std::strerror(error)));
    }
    const auto size = static_cast<std::uint64_t>(info.st_size);
    for (const auto& range : ranges) {
      if (range.offset > size || range.length > size - range.offset || (!allow_empty && range.length == 0)) {
        ::close(fd);
        return std::unexpected(handler_failed(request, "response range " + std::to_string(range.offset) + "+" +
                                                           std::to_string(range.length) + " is empty or outside a file of " +
                                                           std::to_string(size) + " bytes"));
      }
    }
    return std::pair<int, std::uint64_t>{fd, size};
  }
};

HttpServer::HttpServer(HttpServerOptions options, DecideFn decide, HandleFn handle)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(decide), std::move(handle))) {}

HttpServer::~HttpServer() { stop(); }

std::expected<void, std::string> HttpServer::start() {
  Impl& s = *impl_;
  std::lock_guard lock(s.stop_mutex);
  const std::string where = s.options.address + ":" + std::to_string(s.options.port);
  if (s.daemon != nullptr || s.stopping) return std::unexpected("server on " + where + " was already started");
  ListenSocket listener = open_listener(s.options.address, s.options.port);
  if (listener.fd < 0) return std::unexpected(listener.error);

  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
  flags |= s.options.thread_per_connection ? (MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL) : MHD_USE_EPOLL;
  const auto timeout = static_cast<unsigned>(std::max<std::chrono::seconds::rep>(0, s.options.connection_timeout.count()));
  using LogFn = void (*)(void*, const char*, va_list);
  using UriFn = void* (*)(void*, const char*, MHD_Connection*);
  using CompletedFn = void (*)(void*, MHD_Connection*, void**, MHD_RequestTerminationCode);
  auto item = [](MHD_OPTION option, std::intptr_t value, void* pointer = nullptr) {
    return MHD_OptionItem{option, value, pointer};
  };
  // The logger first, so that libmicrohttpd's messages about later options reach it.
  std::vector<MHD_OptionItem> items = {
      item(MHD_OPTION_EXTERNAL_LOGGER, reinterpret_cast<std::intptr_t>(static_cast<LogFn>(&Impl::on_log)), &s),
      item(MHD_OPTION_LISTEN_SOCKET, listener.fd),
      item(MHD_OPTION_URI_LOG_CALLBACK, reinterpret_cast<std::intptr_t>(static_cast<UriFn>(&Impl::on_uri)), &s),
      item(MHD_OPTION_NOTIFY_COMPLETED, reinterpret_cast<std::intptr_t>(static_cast<CompletedFn>(&Impl::on_completed)),
           &s),
      item(MHD_OPTION_CONNECTION_LIMIT, static_cast<std::intptr_t>(s.options.max_connections)),
      item(MHD_OPTION_CONNECTION_TIMEOUT, static_cast<std::intptr_t>(timeout)),
      item(MHD_OPTION_CONNECTION_MEMORY_LIMIT, static_cast<std::intptr_t>(s.options.connection_memory)),
  };
  if (!s.options.thread_per_connection && s.options.threads > 1) {
    items.push_back(item(MHD_OPTION_THREAD_POOL_SIZE, static_cast<std::intptr_t>(s.options.threads)));
  }
  items.push_back(item(MHD_OPTION_END, 0));
  s.daemon = MHD_start_daemon(flags, 0, nullptr, nullptr, &Impl::on_request, &s, MHD_OPTION_ARRAY, items.data(),
                              MHD_OPTION_END);
  if (s.daemon == nullptr) {
    ::close(listener.fd);
    return std::unexpected("cannot serve on " + where + ": libmicrohttpd failed to start (see its log above)");
  }
  s.listen_fd = listener.fd;
  std::uint16_t port = 0;
  if (const auto* info = MHD_get_daemon_info(s.daemon, MHD_DAEMON_INFO_BIND_PORT)) port = info->port;
  if (port == 0) port = socket_port(listener.fd);
  s.bound_port = port;
  return {};
}

std::uint16_t HttpServer::port() const { return impl_ ? impl_->bound_port.load() : 0; }

std::size_t HttpServer::in_flight() const {
  std::lock_guard lock(impl_->flight_mutex);
  return impl_->in_flight;
}

void HttpServer::stop() {
  if (!impl_) return;
  Impl& s = *impl_;
  std::lock_guard lock(s.stop_mutex);
  if (s.daemon == nullptr) return;
  s.stopping = true;
  // Stop accepting: libmicrohttpd forgets the listen socket; shutting it down makes the kernel
  // refuse new connections at once (it is closed after MHD_stop_daemon, as libmicrohttpd asks).
  const MHD_socket quiesced = MHD_quiesce_daemon(s.daemon);
  if (quiesced != MHD_INVALID_SOCKET) ::shutdown(quiesced, SHUT_RDWR);
  {
    std::unique_lock flight(s.flight_mutex);
    s.flight_done.wait_for(flight, s.options.stop_timeout, [&] { return s.in_flight == 0; });
  }
  MHD_stop_daemon(s.daemon);  // closes every connection and joins the threads
  s.daemon = nullptr;
  if (s.listen_fd >= 0) ::close(s.listen_fd);
  s.listen_fd = -1;
}

}  // namespace bucketfs::server
