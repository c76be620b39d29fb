#pragma once
// Errors of the Hub and CAS clients, as values.
//
// A HubError says what went wrong in terms a caller can act on (kind), and carries a one-line
// message naming the bucket and, where there is one, the path or hash. Messages are built from
// the request's route (http::Error::describe(): no query string, no headers) and the server's
// error text, with every token the client holds scrubbed out: a HubError never contains a Hub
// token or a CAS token, and is safe to print and log.

#include <expected>
#include <optional>
#include <string>
#include <string_view>

#include "bucketfs/http/http.h"

namespace bucketfs::hub {

enum class HubErrorKind {
  bucket_not_found,       // 404 on a bucket route (X-Error-Code RepoNotFound), or a private bucket
  entry_not_found,        // 404 for a path inside an existing bucket (EntryNotFound), or a CAS file
  unauthorized,           // 401: no token, a bad token, or a CAS token that refreshing did not fix
  forbidden,              // 403: the token may not do this (e.g. a read token writing)
  already_exists,         // 409 on create_bucket (unless exist_ok)
  conflict,               // any other 409
  invalid,                // 400 / 422 / a name the Hub would refuse (checked before sending)
  range_not_satisfiable,  // 416: a reconstruction range starting at or past the end of the file
  url_expired,            // 403 on a pre-signed xorb URL: fetch the reconstruction again
  server,                 // 5xx after the transport's retries, or another unexpected status
  network,                // network error or timeout after the transport's retries
  cancelled,              // the CancellationToken fired
  bad_response,           // the server's answer does not follow the API (bad JSON, short body...)
};

std::string_view to_string(HubErrorKind kind);

struct HubError {
  HubErrorKind kind = HubErrorKind::server;
  int status = 0;       // the HTTP status when there was one, else 0
  std::string message;  // one line, token-free (see the top of this file)

  // "<kind>: <message>", one line, safe to log.
  std::string describe() const;
};

template <typename T>
using HubResult = std::expected<T, HubError>;

inline std::unexpected<HubError> make_hub_error(HubErrorKind kind, std::string message, int status = 0) {
  return std::unexpected<HubError>(HubError{kind, status, std::move(message)});
}

}  // namespace bucketfs::hub
