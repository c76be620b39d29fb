#pragma once
// The body of POST /api/buckets/{id}/batch (NDJSON, one operation per line), parsed into the
// operations bucketfs-server applies. Pure: no I/O, no shared state, safe from any thread; never
// throws on any input.

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>
#include <vector>

#include "metadata_store.h"

namespace bucketfs::server {

// The mtimes a batch may carry: years 0001 to 9999, what ISO-8601 with a four-digit year (the
// clients' date parsers) can represent.
constexpr std::int64_t kMinMtimeMs = -62135596800000;  // 0001-01-01T00:00:00.000Z
constexpr std::int64_t kMaxMtimeMs = 253402300799999;   // 9999-12-31T23:59:59.999Z

struct ParsedBatch {
  std::vector<BatchOperation> operations;  // in line order
  // Well-formed lines refused without refusing the request: a copyFile from a repository type
  // other than "bucket" (the Hub copies from models and datasets; this server has none). The
  // request then fails as a whole with these as its per-path failures (422).
  std::vector<BatchFailure> failures;
};

// Splits `body` at '\n', drops one trailing '\r' per line and skips lines of only spaces and tabs
// (so an empty body is an empty batch). Every other line must be a JSON object:
//   {"type": "addFile" | "copyFile", "path": string, "xetHash": 64 hex digits,
//    "mtime"?: integer Unix ms within [kMinMtimeMs, kMaxMtimeMs], "contentType"?: string,
//    copyFile only: "sourceRepoType"?: string ("bucket" when absent), "sourceRepoId": "ns/name"}
//   {"type": "deleteFile", "path": string}
// Unknown extra fields are ignored. The error is the first malformed line, as the 400 message:
// "line N: " (N counts from 1, blank lines included) and what is wrong, naming the field, e.g.
// "line 3: 'xetHash' must be a 64-digit hex string".
// Promises on success: every operation's kind matches its type; adds and copies carry a parsed
// hash and an mtime (if any) inside the range above; copies name a source bucket that
// naming::parse_bucket_id accepts. Paths are any JSON string here: the store judges them
// (naming::object_key_problem) and reports bad ones as per-path failures, as the Hub does.
std::expected<ParsedBatch, std::string> parse_batch_request(std::string_view body);

}  // namespace bucketfs::server
