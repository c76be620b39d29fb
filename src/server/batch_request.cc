#include "batch_request.h"

#include <nlohmann/json.hpp>

#include "bucketfs/naming/naming.h"

namespace bucketfs::server {
namespace {

using nlohmann::json;

// A member that must be a string when present: its text, `fallback` when absent, nullopt when it
// has another type. (json::value() would throw on the wrong type.)
std::optional<std::string> optional_string(const json& object, const char* key, std::string fallback) {
  auto it = object.find(key);
  if (it == object.end()) return fallback;
  if (!it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

// One non-blank line: an operation, a failure (when `failures` got one) or the error message.
std::expected<std::optional<BatchOperation>, std::string> parse_line(std::string_view line, const std::string& where,
                                                                     std::vector<BatchFailure>& failures) {
  const json value = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded() || !value.is_object()) return std::unexpected(where + ": not a JSON object");
  const auto type = optional_string(value, "type", "");
  if (!type) return std::unexpected(where + ": 'type' must be a string");
  const auto path = value.find("path");
  if (path == value.end() || !path->is_string()) return std::unexpected(where + ": 'path' must be a string");
  BatchOperation op;
  op.path = path->get<std::string>();
  if (*type == "deleteFile") {
    op.kind = BatchOperation::Kind::kDelete;
    return op;
  }
  if (*type != "addFile" && *type != "copyFile") {
    return std::unexpected(where + ": unknown operation type '" + *type + "'");
  }
  op.kind = *type == "addFile" ? BatchOperation::Kind::kAdd : BatchOperation::Kind::kCopy;
  const auto hash_text = value.find("xetHash");
  std::optional<xet::Hash> hash;
  if (hash_text != value.end() && hash_text->is_string()) {
    if (auto parsed = xet::Hash::from_string(hash_text->get_ref<const std::string&>())) hash = *parsed;
  }
  if (!hash) return std::unexpected(where + ": 'xetHash' must be a 64-digit hex string");
  op.xet_hash = *hash;
  if (const auto mtime = value.find("mtime"); mtime != value.end()) {
    if (!mtime->is_number_integer()) return std::unexpected(where + ": 'mtime' must be integer milliseconds");
    // An unsigned value past INT64_MAX would wrap when read as signed: test it as unsigned.
    const bool in_range = mtime->is_number_unsigned()
                              ? mtime->get<std::uint64_t>() <= static_cast<std::uint64_t>(kMaxMtimeMs)
                              : mtime->get<std::int64_t>() >= kMinMtimeMs && mtime->get<std::int64_t>() <= kMaxMtimeMs;
    if (!in_range) return std::unexpected(where + ": 'mtime' must be Unix milliseconds within years 0001 to 9999");
    op.mtime_ms = mtime->get<std::int64_t>();
  }
  if (const auto content_type = value.find("contentType"); content_type != value.end()) {
    if (!content_type->is_string()) return std::unexpected(where + ": 'contentType' must be a string");
    op.content_type = content_type->get<std::string>();
  }
  if (op.kind == BatchOperation::Kind::kCopy) {
    const auto source_type = optional_string(value, "sourceRepoType", "bucket");
    if (!source_type) return std::unexpected(where + ": 'sourceRepoType' must be a string");
    const auto source = optional_string(value, "sourceRepoId", "");
    if (*source_type != "bucket") {
      failures.push_back({op.path, "copyFile from a " + *source_type + " is not supported by bucketfs-server"});
      return std::optional<BatchOperation>{};
    }
    if (!source || !naming::parse_bucket_id(*source)) return std::unexpected(where + ": 'sourceRepoId' must be ns/name");
    op.source_bucket = *source;
  }
  return op;
}

}  // namespace

std::expected<ParsedBatch, std::string> parse_batch_request(std::string_view body) {
  ParsedBatch batch;
  std::size_t line_number = 0;
  std::size_t start = 0;
  while (start <= body.size()) {
    std::size_t end = body.find('\n', start);
    if (end == std::string_view::npos) end = body.size();
    std::string_view line = body.substr(start, end - start);
    start = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    auto op = parse_line(line, "line " + std::to_string(line_number), batch.failures);
    if (!op) return std::unexpected(std::move(op.error()));
    if (*op) batch.operations.push_back(std::move(**op));
  }
  return batch;
}

}  // namespace bucketfs::server
