#pragma once
// Shared by the hub/ sources; not part of the public surface.

#include <initializer_list>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "bucketfs/http/http.h"
#include "bucketfs/hub/error.h"
#include "bucketfs/hub/hub_client.h"

namespace bucketfs::hub::detail {

// `text` with every occurrence of each non-empty secret replaced by "[redacted]", and CR/LF
// turned into spaces (messages are one line).
std::string scrub(std::string text, std::initializer_list<std::string_view> secrets);

// The kind a status maps to on a Hub or CAS route when nothing more specific applies.
HubErrorKind kind_of_status(int status);

// A HubError from a transport error: `subject` names what was asked ("bucket alice/b",
// "tree of alice/b under 'x'"), the http error's describe() follows. Secrets are scrubbed.
HubError from_http(const http::Error& error, std::string_view subject,
                   std::initializer_list<std::string_view> secrets);

HubError bad_response(std::string_view subject, std::string_view detail);

// A JSON body, or nullopt when it does not parse.
std::optional<nlohmann::json> parse_json(std::string_view text);

// One item of a tree listing or paths-info answer. nullopt: an item of a type this client does not
// know (skipped). A bad_response error (one line, naming `subject`) when the item is not an object,
// lacks a string 'type' or 'path', or is a file without a non-negative integer 'size' and a
// 64-hex-digit 'xetHash'. 'mtime' and 'uploadedAt' are kept only when they parse
// (parse_iso8601_ms).
HubResult<std::optional<TreeEntry>> parse_tree_entry(const nlohmann::json& item, std::string_view subject);

}  // namespace bucketfs::hub::detail
