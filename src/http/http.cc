// Values of the HTTP vocabulary: errors, routes, headers, cancellation, bodies.
#include "bucketfs/http/http.h"

#include <algorithm>

namespace bucketfs::http {

std::string_view to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::network: return "network error";
    case ErrorKind::timeout: return "timeout";
    case ErrorKind::cancelled: return "cancelled";
    case ErrorKind::http_status: return "HTTP error";
    case ErrorKind::invalid_request: return "invalid request";
    case ErrorKind::body_too_large: return "response body too large";
    case ErrorKind::sink_refused: return "body sink refused the data";
    case ErrorKind::bad_response: return "bad response";
    case ErrorKind::tls: return "TLS error";
  }
  return "error";
}

bool Error::retryable() const {
  switch (kind) {
    case ErrorKind::network:
    case ErrorKind::timeout:
      return true;
    case ErrorKind::http_status:
      return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
    default:
      return false;
  }
}

std::string Error::describe() const {
  std::string text = route.empty() ? std::string("request") : route;
  text += ": ";
  if (kind == ErrorKind::http_status) {
    text += "HTTP " + std::to_string(status);
  } else {
    text += to_string(kind);
  }
  if (!message.empty()) {
    text += ": ";
    text += message;
  }
  if (attempts > 1) text += " (after " + std::to_string(attempts) + " attempts)";
  return text;
}

std::string route_of(std::string_view method, std::string_view url) {
  // Cut the fragment and the query first: whatever follows '?' or '#' never appears.
  url = url.substr(0, std::min(url.find('?'), url.find('#')));
  std::string_view scheme;
  if (auto sep = url.find("://"); sep != std::string_view::npos) {
    scheme = url.substr(0, sep + 3);
    url.remove_prefix(sep + 3);
  }
  const auto authority_end = std::min(url.find('/'), url.size());
  std::string_view authority = url.substr(0, authority_end);
  std::string_view path = url.substr(authority_end);
  if (auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  std::string route;
  route.reserve(method.size() + 1 + scheme.size() + authority.size() + path.size());
  route += method;
  route += ' ';
  route += scheme;
  route += authority;
  route += path.empty() ? std::string_view("/") : path;
  return route;
}

// ---- Headers ---------------------------------------------------------------------------------------

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
           return lower(x) == lower(y);
         });
}

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
  auto rest = std::remove_if(first + 1, fields_.end(), [&](const Field& f) { return iequals(f.first, first->first); });
  fields_.erase(rest, fields_.end());
}

std::size_t Headers::erase(std::string_view name) {
  return std::erase_if(fields_, [&](const Field& f) { return iequals(f.first, name); });
}

// ---- CancellationToken --------------------------------------------------------------------------------

void CancellationToken::cancel() {
  std::lock_guard lock(mutex_);
  if (cancelled_.exchange(true, std::memory_order_acq_rel)) return;
  cv_.notify_all();
  // Run under the lock: a Registration being destroyed on another thread waits for us, so a
  // callback never runs after its registration is gone.
  for (auto& [id, callback] : callbacks_) callback();
  callbacks_.clear();
}

bool CancellationToken::sleep_for(std::chrono::nanoseconds duration) const {
  std::unique_lock lock(mutex_);
  return !cv_.wait_for(lock, duration, [this] { return cancelled_.load(std::memory_order_acquire); });
}

CancellationToken::Registration CancellationToken::on_cancel(std::function<void()> callback) const {
  std::unique_lock lock(mutex_);
  if (cancelled_.load(std::memory_order_acquire)) {
    lock.unlock();
    callback();
    return Registration();
  }
  const auto id = next_id_++;
  callbacks_.emplace_back(id, std::move(callback));
  return Registration(this, id);
}

CancellationToken::Registration& CancellationToken::Registration::operator=(Registration&& other) noexcept {
  if (this != &other) {
    reset();
    token_ = std::exchange(other.token_, nullptr);
    id_ = other.id_;
  }
  return *this;
}

void CancellationToken::Registration::reset() {
  if (token_ == nullptr) return;
  std::lock_guard lock(token_->mutex_);
  std::erase_if(token_->callbacks_, [this](const auto& entry) { return entry.first == id_; });
  token_ = nullptr;
}

// ---- Body ----------------------------------------------------------------------------------------------

Body& Body::operator=(Body&& other) noexcept {
  if (this != &other) {
    if (recycler_) recycler_->recycle(std::move(data_));
    data_ = std::move(other.data_);
    recycler_ = std::move(other.recycler_);
  }
  return *this;
}

Body::~Body() {
  if (recycler_) recycler_->recycle(std::move(data_));
}

}  // namespace bucketfs::http
