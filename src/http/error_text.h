#pragma once
// Private to http/: turning server answers and curl messages into the one-line, secret-free text of
// Error::message.

#include <optional>
#include <string>
#include <string_view>

#include "bucketfs/http/http.h"

namespace bucketfs::http::detail {

// The value of the top-level-looking `"key": "..."` string member of a JSON text, unescaped;
// nullopt when there is none or it is not a string. Lenient: a tiny scanner, not a validator.
std::optional<std::string> json_string_field(std::string_view json, std::string_view key);

// The server's explanation of an error answer: X-Error-Message, else JSON "error" (or "message"),
// else the first line of a plain-text body; "" when none.
std::string error_message(const Headers& headers, std::string_view body);

// `text` made safe to show: the request's secrets (credential headers, query string and its
// values) replaced by "***", control characters by spaces, cut to 300 bytes.
std::string scrub(std::string text, const Request& request);

}  // namespace bucketfs::http::detail
