#include "bucketfs/hub/error.h"

#include "internal.h"

namespace bucketfs::hub {

std::string_view to_string(HubErrorKind kind) {
  switch (kind) {
    case HubErrorKind::bucket_not_found: return "bucket not found";
    case HubErrorKind::entry_not_found: return "not found";
    case HubErrorKind::unauthorized: return "unauthorized";
    case HubErrorKind::forbidden: return "forbidden";
    case HubErrorKind::already_exists: return "already exists";
    case HubErrorKind::conflict: return "conflict";
    case HubErrorKind::invalid: return "invalid";
    case HubErrorKind::range_not_satisfiable: return "range not satisfiable";
    case HubErrorKind::url_expired: return "signed URL expired";
    case HubErrorKind::server: return "server error";
    case HubErrorKind::network: return "network error";
    case HubErrorKind::cancelled: return "cancelled";
    case HubErrorKind::bad_response: return "bad response";
  }
  return "error";
}

std::string HubError::describe() const { return std::string(to_string(kind)) + ": " + message; }

namespace detail {

std::string scrub(std::string text, std::initializer_list<std::string_view> secrets) {
  for (const auto secret : secrets) {
    if (secret.empty()) continue;
    for (auto at = text.find(secret); at != std::string::npos; at = text.find(secret, at)) {
      text.replace(at, secret.size(), "[redacted]");
      at += 10;
    }
  }
  for (auto& c : text) {
    if (c == '\r' || c == '\n') c = ' ';
  }
  return text;
}

HubErrorKind kind_of_status(int status) {
  switch (status) {
    case 400: case 422: return HubErrorKind::invalid;
    case 401: return HubErrorKind::unauthorized;
    case 403: return HubErrorKind::forbidden;
    case 404: return HubErrorKind::entry_not_found;
    case 409: return HubErrorKind::conflict;
    case 416: return HubErrorKind::range_not_satisfiable;
    default: return HubErrorKind::server;
  }
}

HubError from_http(const http::Error& error, std::string_view subject,
                   std::initializer_list<std::string_view> secrets) {
  HubError out;
  out.status = error.status;
  switch (error.kind) {
    case http::ErrorKind::http_status: out.kind = kind_of_status(error.status); break;
    case http::ErrorKind::network:
    case http::ErrorKind::timeout:
    case http::ErrorKind::tls: out.kind = HubErrorKind::network; break;
    case http::ErrorKind::cancelled:
    case http::ErrorKind::sink_refused: out.kind = HubErrorKind::cancelled; break;
    case http::ErrorKind::invalid_request: out.kind = HubErrorKind::invalid; break;
    case http::ErrorKind::body_too_large:
    case http::ErrorKind::bad_response: out.kind = HubErrorKind::bad_response; break;
  }
  out.message = scrub(std::string(subject) + ": " + error.describe(), secrets);
  return out;
}

HubError bad_response(std::string_view subject, std::string_view detail) {
  // The detail may quote the server (an entry's path): keep the message one line.
  return HubError{HubErrorKind::bad_response, 0, scrub(std::string(subject) + ": " + std::string(detail), {})};
}

std::optional<nlohmann::json> parse_json(std::string_view text) {
  auto value = nlohmann::json::parse(text, nullptr, false);
  if (value.is_discarded()) return std::nullopt;
  return value;
}

}  // namespace detail
}  // namespace bucketfs::hub
