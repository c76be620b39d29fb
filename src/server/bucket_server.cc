#include "bucket_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "bucketfs/naming/naming.h"
#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/merkle_subtree.h"
#include "bucketfs/xet/shard.h"
#include "bucketfs/xet/xorb.h"
#include "batch_request.h"

namespace bucketfs::server {
namespace {

using nlohmann::json;

constexpr std::size_t kSmallBody = 1 << 20;                 // JSON and NDJSON requests
constexpr std::size_t kBatchBody = 64 << 20;                // batches of many lines
constexpr std::size_t kXorbBody = xet::kMaxXorbSize + (8 << 20);  // chunks plus an optional footer
constexpr std::size_t kShardBody = xet::kMaxShardSize + (1 << 20);
constexpr std::size_t kListDefaultLimit = 1000;
constexpr std::size_t kListMaxLimit = 10000;
// Xorbs in one global dedup answer: the one holding the chunk and up to this many in all.
constexpr std::size_t kMaxDedupXorbs = 32;

// ---- small HTTP helpers --------------------------------------------------------------------------

std::optional<std::string> header(const HttpRequest& request, std::string_view name) {
  if (auto value = request.headers.get(name)) return std::string(*value);
  return std::nullopt;
}

std::optional<std::string> query_value(const HttpRequest& request, std::string_view name) {
  for (const auto& [key, value] : request.query) {
    if (key == name) return value;
  }
  return std::nullopt;
}

HttpResponse json_response(int status, const json& body) { return HttpResponse::json(status, body.dump()); }

HttpResponse error_response(int status, const std::string& message, std::string_view error_code = {}) {
  HttpResponse response = HttpResponse::error(status, message);
  if (!error_code.empty()) response.headers.set("X-Error-Code", std::string(error_code));
  return response;
}

HttpResponse repo_not_found(const std::string& id) {
  return error_response(404, "Bucket " + id + " not found", "RepoNotFound");
}

std::optional<std::string> bearer(const HttpRequest& request) {
  auto value = header(request, "Authorization");
  if (!value) return std::nullopt;
  std::string_view text = *value;
  if (text.size() > 7 && (text.starts_with("Bearer ") || text.starts_with("bearer "))) {
    return std::string(text.substr(7));
  }
  return std::string();  // present but not a bearer token: treated as invalid
}

std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const auto next = text.find(separator, start);
    parts.emplace_back(text.substr(start, next == std::string_view::npos ? std::string_view::npos : next - start));
    if (next == std::string_view::npos) break;
    start = next + 1;
  }
  return parts;
}

// "bytes=S-E" or "bytes=S-" (E inclusive). nullopt when absent; error text when malformed.
struct ByteRange {
  std::uint64_t first = 0;
  std::optional<std::uint64_t> last;
};
std::expected<std::optional<ByteRange>, std::string> parse_single_range(const std::optional<std::string>& value) {
  if (!value) return std::optional<ByteRange>{};
  std::string_view text = *value;
  if (!text.starts_with("bytes=")) return std::unexpected("Range must be 'bytes=START-END'");
  text.remove_prefix(6);
  const auto dash = text.find('-');
  if (dash == std::string_view::npos || dash == 0 || text.find(',') != std::string_view::npos) {
    return std::unexpected("Range must be a single 'bytes=START-END'");
  }
  ByteRange range;
  auto parse = [](std::string_view digits, std::uint64_t& out) {
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
    return ec == std::errc() && end == digits.data() + digits.size();
  };
  if (!parse(text.substr(0, dash), range.first)) return std::unexpected("bad Range start");
  if (dash + 1 < text.size()) {
    std::uint64_t last = 0;
    if (!parse(text.substr(dash + 1), last) || last < range.first) return std::unexpected("bad Range end");
    range.last = last;
  }
  return std::optional<ByteRange>{range};
}

// `ranges` ([first, end) pairs) sorted, with overlapping or touching ones merged.
template <typename Offset>
std::vector<std::pair<Offset, Offset>> merged_ranges(std::vector<std::pair<Offset, Offset>> ranges) {
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<Offset, Offset>> merged;
  for (const auto& range : ranges) {
    if (!merged.empty() && range.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, range.second);
    } else {
      merged.push_back(range);
    }
  }
  return merged;
}

// X-Range-Dirty "bytes=A-B[,C-D...]" (inclusive ends) as sorted, merged half-open ranges within a
// file of `size` bytes (ranges past its end dropped, ends clamped). Error text when the header is
// missing or malformed or no range lies within the file.
std::expected<std::vector<std::pair<std::uint64_t, std::uint64_t>>, std::string> parse_dirty_ranges(
    const std::optional<std::string>& value, std::uint64_t size) {
  if (!value) return std::unexpected("X-Range-Dirty is required: bytes=START-END[,START-END...]");
  std::string_view text = *value;
  if (!text.starts_with("bytes=")) return std::unexpected("X-Range-Dirty must be 'bytes=START-END[,START-END...]'");
  text.remove_prefix(6);
  auto number = [](std::string_view digits, std::uint64_t& out) {
    while (!digits.empty() && digits.front() == ' ') digits.remove_prefix(1);
    while (!digits.empty() && digits.back() == ' ') digits.remove_suffix(1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
    return !digits.empty() && ec == std::errc() && end == digits.data() + digits.size();
  };
  // Each range may cost a scan of the file's bytes after it; a client coalesces its edits first.
  constexpr std::size_t kMaxDirtyRanges = 1000;
  const auto parts = split(text, ',');
  if (parts.size() > kMaxDirtyRanges) {
    return std::unexpected("X-Range-Dirty has " + std::to_string(parts.size()) + " ranges; at most " +
                           std::to_string(kMaxDirtyRanges) + " are allowed");
  }
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (const auto& part : parts) {
    // START-END, START- (to the end of the file) or -LENGTH (the last LENGTH bytes).
    const auto dash = part.find('-');
    const auto before = std::string_view(part).substr(0, dash == std::string::npos ? part.size() : dash);
    const auto after = dash == std::string::npos ? std::string_view() : std::string_view(part).substr(dash + 1);
    auto blank = [](std::string_view text) { return text.find_first_not_of(' ') == std::string_view::npos; };
    std::uint64_t first = 0;
    std::uint64_t last = size == 0 ? 0 : size - 1;
    bool valid = dash != std::string::npos;
    if (valid && blank(before)) {
      std::uint64_t length = 0;
      valid = number(after, length) && length > 0;
      if (valid && length < size) first = size - length;
    } else if (valid) {
      valid = number(before, first) && (blank(after) || (number(after, last) && last >= first));
    }
    if (!valid) return std::unexpected("malformed X-Range-Dirty range '" + part.substr(0, 80) + "'");
    if (first >= size) continue;
    ranges.emplace_back(first, std::min(last, size - 1) + 1);
  }
  if (ranges.empty()) {
    return std::unexpected("no X-Range-Dirty range lies within the file (" + std::to_string(size) + " bytes)");
  }
  return merged_ranges(std::move(ranges));
}

std::optional<xet::Hash> parse_hash(std::string_view text) {
  auto hash = xet::Hash::from_string(text);
  if (!hash) return std::nullopt;
  return *hash;
}

std::string http_date(std::int64_t unix_ms) {
  const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000 - (unix_ms % 1000 < 0 ? 1 : 0));
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[64];
  std::strftime(text, sizeof text, "%a, %d %b %Y %H:%M:%S GMT", &utc);
  return text;
}

json entry_json(const EntryRecord& entry) {
  return json{{"type", "file"},
              {"path", entry.path},
              {"size", entry.size},
              {"xetHash", entry.xet_hash.to_string()},
              {"mtime", iso8601_ms(entry.mtime_ms)},
              {"uploadedAt", iso8601_ms(entry.uploaded_ms)}};
}

json bucket_json(const BucketRecord& bucket) {
  return json{{"id", bucket.id},
              {"private", bucket.is_private},
              {"createdAt", iso8601_ms(bucket.created_ms)},
              {"updatedAt", iso8601_ms(bucket.updated_ms)},
              {"size", bucket.size},
              {"totalFiles", bucket.file_count}};
}

// Percent-encodes a query value.
std::string encode_query_value(std::string_view text) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

// Percent-encodes a path, keeping '/' (each one once: "/a/b" stays "/a/b").
std::string encode_path(std::string_view text) {
  std::string out;
  bool first = true;
  for (const auto& segment : split(text, '/')) {
    if (!first) out.push_back('/');
    first = false;
    out += encode_query_value(segment);
  }
  return out;
}

}  // namespace

// ---- the handlers ----------------------------------------------------------------------------------

class Handlers {
 public:
  Handlers(BucketServer& server, HttpRequest& request) : s_(server), request_(request) {}

  std::int64_t now_ms() const { return s_.options_.now_ms(); }
  std::int64_t now_s() const { return now_ms() / 1000; }

  // The Hub token of the request: nullopt when anonymous; an error response when invalid.
  std::expected<const HubToken*, HttpResponse> hub_identity() {
    auto token = bearer(request_);
    if (!token) return nullptr;
    if (const HubToken* found = s_.tokens_.find(*token)) return found;
    return std::unexpected(error_response(401, "Invalid credentials in Authorization header"));
  }

  // The bucket if the caller may read it, else the response the Hub gives.
  std::expected<BucketRecord, HttpResponse> readable_bucket(const std::string& id, const HubToken* token) {
    auto bucket = s_.metadata_.bucket(id);
    if (!bucket) return std::unexpected(error_response(500, bucket.error().message));
    const auto ns = id.substr(0, id.find('/'));
    if (!*bucket) return std::unexpected(repo_not_found(id));
    if ((*bucket)->is_private && !(token && token->may_read(ns))) {
      if (!token) return std::unexpected(error_response(401, "Authentication required for bucket " + id, "RepoNotFound"));
      return std::unexpected(repo_not_found(id));
    }
    return **bucket;
  }

  std::expected<BucketRecord, HttpResponse> writable_bucket(const std::string& id, const HubToken* token) {
    auto bucket = readable_bucket(id, token);
    if (!bucket) return bucket;
    const auto ns = id.substr(0, id.find('/'));
    if (!token) return std::unexpected(error_response(401, "Authentication required to write to " + id));
    if (!token->may_write(ns)) return std::unexpected(error_response(403, "Token may not write to bucket " + id));
    return bucket;
  }

  // ---- Hub: buckets
  HttpResponse create_bucket(std::string ns, const std::string& name, const HubToken* token) {
    if (!token) return error_response(401, "Authentication required to create a bucket");
    if (ns == "me") ns = token->namespaces.front();
    if (auto problem = naming::name_problem(ns)) return error_response(400, "namespace '" + ns + "' " + *problem);
    if (auto problem = naming::name_problem(name)) return error_response(400, "bucket name '" + name + "' " + *problem);
    if (!token->may_write(ns)) return error_response(403, "Token may not create buckets in namespace " + ns);
    bool is_private = false;
    if (!request_.body.empty()) {
      auto body = json::parse(request_.body, nullptr, false);
      if (body.is_discarded() || !body.is_object()) return error_response(400, "body must be a JSON object");
      if (body.contains("private")) {
        if (!body["private"].is_boolean()) return error_response(400, "'private' must be a boolean");
        is_private = body["private"].get<bool>();
      }
      if (body.contains("visibility")) {
        if (!body["visibility"].is_string()) return error_response(400, "'visibility' must be a string");
        const auto visibility = body["visibility"].get<std::string>();
        if (visibility != "public" && visibility != "private" && visibility != "protected") {
          return error_response(400, "'visibility' must be public, private or protected");
        }
        is_private = visibility != "public";
      }
    }
    const std::string id = ns + "/" + name;
    const std::string url = s_.base_url_ + "/buckets/" + id;
    auto created = s_.metadata_.create_bucket(id, is_private, now_ms());
    if (!created) return error_response(500, created.error().message);
    if (!*created) return json_response(409, json{{"error", "You already created this bucket"}, {"url", url}});
    return json_response(200, json{{"url", url}, {"id", id}, {"name", id}});
  }

  HttpResponse bucket_info(const std::string& id, const HubToken* token) {
    auto bucket = readable_bucket(id, token);
    if (!bucket) return bucket.error();
    return json_response(200, bucket_json(*bucket));
  }

  HttpResponse list_buckets(std::string ns, const HubToken* token) {
    if (ns == "me") {
      if (!token) return error_response(401, "Authentication required to list your buckets");
      ns = token->namespaces.front();
    }
    if (naming::name_problem(ns)) return error_response(404, "Namespace " + ns + " not found", "RepoNotFound");
    auto buckets = s_.metadata_.buckets_of(ns);
    if (!buckets) return error_response(500, buckets.error().message);
    const auto search = query_value(request_, "search").value_or("");
    json out = json::array();
    for (const auto& bucket : *buckets) {
      if (bucket.is_private && !(token && token->may_read(ns))) continue;
      if (!search.empty() && bucket.id.find(search) == std::string::npos) continue;
      out.push_back(bucket_json(bucket));
    }
    return json_response(200, out);
  }

  HttpResponse delete_bucket(const std::string& id, const HubToken* token) {
    auto bucket = writable_bucket(id, token);
    if (!bucket) return bucket.error();
    auto removed = s_.metadata_.delete_bucket(id);
    if (!removed) return error_response(500, removed.error().message);
    if (!*removed) return repo_not_found(id);
    return json_response(200, json::object());
  }

  HttpResponse move_bucket(const HubToken* token) {
    auto body = json::parse(request_.body, nullptr, false);
    if (body.is_discarded() || !body.is_object() || !body.contains("fromRepo") || !body.contains("toRepo") ||
        !body["fromRepo"].is_string() || !body["toRepo"].is_string()) {
      return error_response(400, "body must be {\"fromRepo\": \"ns/a\", \"toRepo\": \"ns/b\", \"type\": \"bucket\"}");
    }
    if (body.value("type", std::string("bucket")) != "bucket") return error_response(400, "only type 'bucket' can be moved here");
    const auto from = body["fromRepo"].get<std::string>();
    const auto to = naming::parse_bucket_id(body["toRepo"].get<std::string>());
    if (!naming::parse_bucket_id(from)) return error_response(400, "fromRepo '" + from + "' is not a bucket id");
    if (!to) return error_response(400, "toRepo is not a valid bucket id");
    auto bucket = writable_bucket(from, token);
    if (!bucket) return bucket.error();
    if (!token->may_write(to->ns)) return error_response(403, "Token may not write to namespace " + to->ns);
    auto target = s_.metadata_.bucket(to->str());
    if (!target) return error_response(500, target.error().message);
    if (*target) return error_response(409, "Bucket " + to->str() + " already exists");
    auto moved = s_.metadata_.move_bucket(from, to->str(), now_ms());
    if (!moved) return error_response(409, moved.error().message);
    return json_response(200, json{{"url", s_.base_url_ + "/buckets/" + to->str()}});
  }

  // ---- Hub: files
  HttpResponse tree(const std::string& id, const std::string& prefix_in, const HubToken* token) {
    auto bucket = readable_bucket(id, token);
    if (!bucket) return bucket.error();
    std::string prefix = prefix_in;
    while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
    const auto recursive_text = query_value(request_, "recursive");
    const bool recursive = !recursive_text || (*recursive_text != "false" && *recursive_text != "0");
    std::size_t limit = kListDefaultLimit;
    if (auto text = query_value(request_, "limit")) {
      std::size_t parsed = 0;
      auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), parsed);
      if (ec != std::errc() || end != text->data() + text->size() || parsed == 0) {
        return error_response(400, "limit must be a positive integer");
      }
      limit = std::min(parsed, kListMaxLimit);
    }
    const auto cursor = query_value(request_, "cursor").value_or("");
    if (!cursor.empty() && cursor[0] != 'f' && cursor[0] != 'd') return error_response(400, "invalid cursor");
    auto page = s_.metadata_.list(id, prefix, recursive, limit, cursor);
    if (!page) return error_response(500, page.error().message);
    json out = json::array();
    for (const auto& item : page->items) {
      if (item.is_directory) {
        out.push_back(json{{"type", "directory"}, {"path", item.entry.path}});
      } else {
        out.push_back(entry_json(item.entry));
      }
    }
    HttpResponse response = json_response(200, out);
    if (page->next_cursor) {
      std::string next = s_.base_url_ + "/api/buckets/" + id + "/tree" + (prefix.empty() ? "" : encode_path("/" + prefix)) +
                         "?recursive=" + (recursive ? "true" : "false") + "&limit=" + std::to_string(limit) +
                         "&cursor=" + encode_query_value(*page->next_cursor);
      response.headers.set("Link", "<" + next + ">; rel=\"next\"");
    }
    return response;
  }

  HttpResponse paths_info(const std::string& id, const HubToken* token) {
    auto bucket = readable_bucket(id, token);
    if (!bucket) return bucket.error();
    auto body = json::parse(request_.body, nullptr, false);
    if (body.is_discarded() || !body.is_object() || !body.contains("paths") || !body["paths"].is_array()) {
      return error_response(400, "body must be {\"paths\": [...]}");
    }
    json out = json::array();
    for (const auto& path : body["paths"]) {
      if (!path.is_string()) return error_response(400, "every path must be a string");
      auto entry = s_.metadata_.entry(id, path.get<std::string>());
      if (!entry) return error_response(500, entry.error().message);
      if (*entry) out.push_back(entry_json(**entry));
    }
    return json_response(200, out);
  }

  HttpResponse batch(const std::string& id, const HubToken* token) {
    auto bucket = writable_bucket(id, token);
    if (!bucket) return bucket.error();
    auto parsed = parse_batch_request(request_.body);
    if (!parsed) return error_response(400, parsed.error());
    std::vector<BatchOperation> operations = std::move(parsed->operations);
    std::vector<BatchFailure> failures = std::move(parsed->failures);
    auto readable = [&](const std::string& source) {
      auto other = s_.metadata_.bucket(source);
      if (!other || !*other) return false;
      return !(*other)->is_private || (token && token->may_read(source.substr(0, source.find('/'))));
    };
    if (failures.empty()) {
      auto applied = s_.metadata_.apply_batch(id, operations, now_ms(), readable);
      if (!applied) return error_response(500, applied.error().message);
      failures = std::move(*applied);
    }
    const std::size_t processed = operations.size() + (failures.size() > operations.size() ? 0 : 0);
    json failed = json::array();
    for (const auto& failure : failures) failed.push_back(json{{"path", failure.path}, {"error", failure.error}});
    if (!failures.empty()) {
      return json_response(422, json{{"success", false}, {"processed", processed}, {"succeeded", 0}, {"failed", failed},
                                     {"error", "batch refused: " + std::to_string(failures.size()) +
                                                   " operation(s) failed, nothing was applied"}});
    }
    std::uint64_t added = 0;
    for (const auto& op : operations) {
      if (op.kind == BatchOperation::Kind::kDelete) continue;
      if (auto file = s_.metadata_.file(op.xet_hash); file && *file) added += (*file)->size;
    }
    s_.metrics_.file_bytes_committed += added;
    return json_response(200, json{{"success", true}, {"processed", processed}, {"succeeded", processed}, {"failed", failed}});
  }

  HttpResponse resolve(const std::string& id, const std::string& path, const HubToken* token) {
    auto bucket = readable_bucket(id, token);
    if (!bucket) return bucket.error();
    auto entry = s_.metadata_.entry(id, path);
    if (!entry) return error_response(500, entry.error().message);
    if (!*entry) return error_response(404, "Entry " + path + " not found in bucket " + id, "EntryNotFound");
    const auto& file = **entry;
    const std::string hash = file.xet_hash.to_string();
    auto set_common = [&](HttpResponse& response) {
      response.headers.set("X-Xet-Hash", hash);
      response.headers.set("X-Linked-Size", std::to_string(file.size));
      response.headers.set("ETag", "\"" + hash + "\"");
      response.headers.set("X-Linked-ETag", "\"" + hash + "\"");
      response.headers.set("Last-Modified", http_date(file.mtime_ms));
      response.headers.set("Accept-Ranges", "bytes");
      response.headers.set("X-Xet-Refresh-Route", s_.base_url_ + "/api/buckets/" + id + "/xet-read-token");
      response.headers.set("Link", "<" + s_.base_url_ + "/api/buckets/" + id + "/xet-read-token>; rel=\"xet-auth\", <" +
                                       s_.base_url_ + "/v1/reconstructions/" + hash +
                                       ">; rel=\"xet-reconstruction-info\"");
      if (!file.content_type.empty()) response.headers.set("X-Content-Type", file.content_type);
    };
    const auto accept = header(request_, "Accept").value_or("");
    if (request_.method == "GET" && accept.find("application/vnd.xet-fileinfo+json") != std::string::npos) {
      HttpResponse response = HttpResponse::json(200, json{{"hash", hash}, {"size", file.size}}.dump());
      response.headers.set("Content-Type", "application/vnd.xet-fileinfo+json");
      set_common(response);
      return response;
    }
    auto range = parse_single_range(header(request_, "Range"));
    if (!range) return error_response(416, range.error());
    std::uint64_t first = 0, last = file.size == 0 ? 0 : file.size - 1;
    int status = 200;
    if (*range) {
      if ((*range)->first >= file.size) {
        HttpResponse response = error_response(416, "Range start is past the end of " + path);
        response.headers.set("Content-Range", "bytes */" + std::to_string(file.size));
        return response;
      }
      first = (*range)->first;
      last = std::min((*range)->last.value_or(file.size - 1), file.size - 1);
      status = 206;
    }
    const std::uint64_t length = file.size == 0 ? 0 : last - first + 1;
    HttpResponse response = stream_file_bytes(file.xet_hash, first, length);
    response.status = status;
    set_common(response);
    response.headers.set("Content-Type", file.content_type.empty() ? "application/octet-stream" : file.content_type);
    if (status == 206) {
      response.headers.set("Content-Range", "bytes " + std::to_string(first) + "-" + std::to_string(last) + "/" +
                                                std::to_string(file.size));
    }
    return response;
  }

  // A response streaming bytes [first, first+length) of a stored file, decoded from its xorbs.
  HttpResponse stream_file_bytes(const xet::Hash& file_hash, std::uint64_t first, std::uint64_t length);

  HttpResponse xet_token(const std::string& id, Access access, const HubToken* token) {
    auto bucket = access == Access::kWrite ? writable_bucket(id, token) : readable_bucket(id, token);
    if (!bucket) return bucket.error();
    const std::int64_t expires = now_s() + s_.options_.cas_token_lifetime_seconds;
    const std::string cas = s_.signer_.issue_cas_token(CasGrant{id, access, expires, bucket->created_ms});
    HttpResponse response = json_response(200, json{{"accessToken", cas}, {"exp", expires}, {"casUrl", s_.base_url_}});
    response.headers.set("X-Xet-Access-Token", cas);
    response.headers.set("X-Xet-Token-Expiration", std::to_string(expires));
    response.headers.set("X-Xet-Cas-Url", s_.base_url_);
    return response;
  }

  HttpResponse whoami(const HubToken* token) {
    if (!token) return error_response(401, "Invalid user token");
    const auto& name = token->namespaces.front();
    json orgs = json::array();
    for (std::size_t i = 1; i < token->namespaces.size(); ++i) orgs.push_back(json{{"name", token->namespaces[i]}});
    return json_response(200, json{{"type", "user"}, {"id", name}, {"name", name}, {"fullname", name},
                                   {"email", nullptr}, {"emailVerified", false}, {"isPro", false}, {"canPay", false},
                                   {"avatarUrl", ""}, {"periodEnd", nullptr}, {"billingMode", "prepaid"},
                                   {"orgs", orgs},
                                   {"auth", {{"type", "access_token"},
                                             {"accessToken", {{"displayName", "bucketfs-server"},
                                                              {"role", token->access == Access::kWrite ? "write" : "read"},
                                                              {"createdAt", iso8601_ms(0)}}}}}});
  }

  // ---- CAS
  std::expected<CasGrant, HttpResponse> cas_grant(Access needed) {
    auto token = bearer(request_);
    if (!token || token->empty()) return std::unexpected(error_response(401, "A CAS token is required"));
    auto [check, grant] = s_.signer_.check_cas_token(*token, now_s());
    if (check == TokenCheck::kInvalid) return std::unexpected(error_response(401, "Invalid CAS token"));
    if (check == TokenCheck::kExpired) return std::unexpected(error_response(401, "CAS token expired; refresh it"));
    if (needed == Access::kWrite && grant.access != Access::kWrite) {
      return std::unexpected(error_response(403, "This CAS token may only read"));
    }
    // The bucket it was issued for must still be the same bucket (not deleted, moved or re-created).
    auto bucket = s_.metadata_.bucket(grant.bucket);
    if (!bucket) return std::unexpected(error_response(500, bucket.error().message));
    if (!*bucket || (*bucket)->created_ms != grant.bucket_created_ms) {
      return std::unexpected(error_response(401, "CAS token's bucket " + grant.bucket + " no longer exists; get a new token"));
    }
    return grant;
  }

  // The record of the file `hash_text` names, for a CAS read: 401/403 without a usable token, 400
  // for a malformed id, 404 when the file is unknown or the token's bucket may not read it.
  std::expected<FileRecord, HttpResponse> readable_file(const std::string& hash_text) {
    auto grant = cas_grant(Access::kRead);
    if (!grant) return std::unexpected(grant.error());
    auto hash = parse_hash(hash_text);
    if (!hash) return std::unexpected(error_response(400, "malformed file id '" + hash_text.substr(0, 80) + "'"));
    auto readable = s_.metadata_.bucket_may_read(grant->bucket, *hash);
    if (!readable) return std::unexpected(error_response(500, readable.error().message));
    auto file = s_.metadata_.file(*hash);
    if (!file) return std::unexpected(error_response(500, file.error().message));
    if (!*file || !*readable) return std::unexpected(error_response(404, "file " + hash_text + " not found"));
    return std::move(**file);
  }

  HttpResponse upload_xorb(const std::string& prefix, const std::string& hash_text) {
    auto grant = cas_grant(Access::kWrite);
    if (!grant) return grant.error();
    if (prefix != "default") return error_response(400, "xorb prefix must be 'default'");
    auto claimed = parse_hash(hash_text);
    if (!claimed) return error_response(400, "malformed xorb hash '" + hash_text.substr(0, 80) + "'");
    const xet::ByteSpan body(reinterpret_cast<const std::byte*>(request_.body.data()), request_.body.size());
    auto view = xet::parse_xorb(body);
    if (!view) return error_response(400, "invalid xorb: " + view.error().describe());
    if (view->chunks_size > xet::kMaxXorbSize) return error_response(400, "xorb larger than 64 MiB");
    const auto chunks_bytes = body.first(view->chunks_size);
    auto leaves = xet::verify_xorb(chunks_bytes, *claimed);
    if (!leaves) return error_response(400, "xorb rejected: " + leaves.error().describe());
    s_.metrics_.xorb_bytes_received += request_.body.size();
    XorbRecord record;
    record.serialized_size = view->chunks_size;
    record.chunks.reserve(leaves->size());
    for (std::size_t i = 0; i < leaves->size(); ++i) {
      record.chunks.push_back({(*leaves)[i].hash, static_cast<std::uint32_t>((*leaves)[i].size),
                               static_cast<std::uint32_t>(view->chunks[i].offset)});
    }
    auto stored = s_.xorbs_.put(*claimed, chunks_bytes);
    if (!stored) return error_response(500, stored.error());
    auto recorded = s_.metadata_.put_xorb(*claimed, record);
    if (!recorded) return error_response(500, recorded.error().message);
    return json_response(200, json{{"was_inserted", *recorded}});
  }

  HttpResponse head_xorb(const std::string& hash_text) {
    auto grant = cas_grant(Access::kRead);
    if (!grant) return grant.error();
    auto hash = parse_hash(hash_text);
    if (!hash) return error_response(400, "malformed xorb hash");
    auto record = s_.metadata_.xorb(*hash);
    if (!record) return error_response(500, record.error().message);
    if (!*record) return error_response(404, "xorb not found");
    return sized_empty(200, (*record)->serialized_size);
  }

  // A body-less answer that still reports `size` as Content-Length (for HEAD).
  HttpResponse sized_empty(int status, std::uint64_t size);

  HttpResponse head_file(const std::string& hash_text) {
    auto file = readable_file(hash_text);
    if (!file) return file.error();
    return sized_empty(200, file->size);
  }

  HttpResponse upload_shard() {
    auto grant = cas_grant(Access::kWrite);
    if (!grant) return grant.error();
    const xet::ByteSpan body(reinterpret_cast<const std::byte*>(request_.body.data()), request_.body.size());
    auto shard = xet::parse_shard(body);
    if (!shard) return error_response(400, "invalid shard: " + shard.error().describe());
    if (auto valid = xet::validate_upload_shard(*shard); !valid) {
      return error_response(400, "shard rejected: " + valid.error().describe());
    }
    // Every xorb the shard declares or references must be stored; declared ones must agree.
    std::map<xet::Hash, XorbRecord> xorbs;
    for (const auto& hash : xet::referenced_xorbs(*shard)) {
      auto record = s_.metadata_.xorb(hash);
      if (!record) return error_response(500, record.error().message);
      if (!*record) return error_response(400, "shard references xorb " + hash.to_string() + ", which was not uploaded");
      xorbs.emplace(hash, std::move(**record));
    }
    for (const auto& declared : shard->xorbs) {
      const auto& stored = xorbs.at(declared.xorb_hash);
      if (declared.chunks.size() != stored.chunks.size()) {
        return error_response(400, "shard declares xorb " + declared.xorb_hash.to_string() + " with " +
                                       std::to_string(declared.chunks.size()) + " chunks; it has " +
                                       std::to_string(stored.chunks.size()));
      }
      for (std::size_t i = 0; i < declared.chunks.size(); ++i) {
        if (declared.chunks[i].chunk_hash != stored.chunks[i].hash ||
            declared.chunks[i].unpacked_bytes != stored.chunks[i].size) {
          return error_response(400, "shard's chunk " + std::to_string(i) + " of xorb " +
                                         declared.xorb_hash.to_string() + " does not match the uploaded xorb");
        }
      }
    }
    std::vector<std::pair<xet::Hash, FileRecord>> files;
    for (const auto& file : shard->files) {
      xet::AggregatedHasher tree;
      FileRecord record;
      for (std::size_t t = 0; t < file.terms.size(); ++t) {
        const auto& term = file.terms[t];
        const auto& xorb = xorbs.at(term.xorb_hash);
        const auto leaves = xorb.leaves();
        if (auto ok = xet::verify_term(term, file.verification[t], leaves); !ok) {
          return error_response(400, "file " + file.file_hash.to_string() + " term " + std::to_string(t) + ": " +
                                         ok.error().describe());
        }
        for (auto i = term.chunk_index_start; i < term.chunk_index_end; ++i) tree.add(leaves[i]);
        record.size += term.unpacked_bytes;
        record.terms.push_back(term);
      }
      const bool empty = tree.leaf_count() == 0;
      const xet::Hash computed = empty ? xet::Hash{} : xet::file_hash_from_root(tree.finish());
      if (computed != file.file_hash) {
        return error_response(400, "file hash " + file.file_hash.to_string() + " does not match its chunks (" +
                                       computed.to_string() + ")");
      }
      files.emplace_back(file.file_hash, std::move(record));
    }
    // Global dedup answers with the xorb holding the queried chunk and the other xorbs of its
    // shard, as a shard of the Hub does: a client that queries the first chunk of a file (the npm
    // client queries only those) then learns every chunk uploaded with it.
    std::vector<std::pair<xet::Hash, std::vector<xet::Hash>>> dedup;
    const auto eligible = xet::global_dedup_eligible_chunks(*shard);
    for (const auto& xorb : shard->xorbs) {
      std::vector<xet::Hash> answer{xorb.xorb_hash};
      for (const auto& other : shard->xorbs) {
        if (other.xorb_hash != xorb.xorb_hash && answer.size() < kMaxDedupXorbs) answer.push_back(other.xorb_hash);
      }
      for (const auto& chunk : xorb.chunks) {
        if (std::binary_search(eligible.begin(), eligible.end(), chunk.chunk_hash)) {
          dedup.emplace_back(chunk.chunk_hash, answer);
        }
      }
    }
    auto added = s_.metadata_.register_files(grant->bucket, files, dedup);
    if (!added) return error_response(500, added.error().message);
    s_.metrics_.shards_accepted++;
    return json_response(200, json{{"result", *added > 0 || files.empty() ? 1 : 0}});
  }

  HttpResponse dedup_query(const std::string& prefix, const std::string& hash_text) {
    auto grant = cas_grant(Access::kRead);
    if (!grant) return grant.error();
    if (prefix != "default" && prefix != "default-merkledb") {
      return error_response(400, "dedup prefix must be 'default-merkledb' or 'default'");
    }
    auto chunk = parse_hash(hash_text);
    if (!chunk) return error_response(400, "malformed chunk hash");
    auto xorb_hashes = s_.metadata_.dedup_lookup(*chunk);
    if (!xorb_hashes) return error_response(500, xorb_hashes.error().message);
    std::vector<xet::XorbInfo> infos;
    for (const auto& xorb_hash : *xorb_hashes) {
      auto record = s_.metadata_.xorb(xorb_hash);
      if (!record) return error_response(500, record.error().message);
      if (*record) infos.push_back((*record)->info(xorb_hash));
    }
    if (infos.empty()) return error_response(404, "chunk not tracked by global deduplication");
    const auto key_bytes = s_.signer_.derive_key("global-dedup-chunk-key");
    xet::Hash key;
    std::copy(key_bytes.begin(), key_bytes.end(), key.bytes.begin());
    auto shard = xet::serialize_dedup_shard(infos, key, static_cast<std::uint64_t>(now_s()),
                                            static_cast<std::uint64_t>(now_s() + 24 * 3600));
    if (!shard) return error_response(500, shard.error().describe());
    HttpResponse response;
    response.status = 200;
    response.body = std::string(reinterpret_cast<const char*>(shard->data()), shard->size());
    response.headers.set("Content-Type", "application/octet-stream");
    return response;
  }

  // Terms of `file` overlapping [first, last], the file offset where the first one starts.
  struct Selection {
    std::vector<xet::FileTerm> terms;
    std::uint64_t first_term_offset = 0;
  };
  static Selection select_terms(const FileRecord& file, std::uint64_t first, std::uint64_t last) {
    Selection out;
    std::uint64_t offset = 0;
    for (const auto& term : file.terms) {
      const std::uint64_t end = offset + term.unpacked_bytes;
      if (end > first && offset <= last) {
        if (out.terms.empty()) out.first_term_offset = offset;
        out.terms.push_back(term);
      }
      offset = end;
      if (offset > last) break;
    }
    return out;
  }

  // The signed URL for bytes [first, last] of a xorb.
  std::string xorb_url(const xet::Hash& xorb, std::uint64_t first, std::uint64_t last) {
    const std::string hex = xorb.to_string();
    const std::int64_t expires = now_s() + s_.options_.signed_url_lifetime_seconds;
    return s_.base_url_ + "/xorb-data/" + hex + "?range=" + std::to_string(first) + "-" + std::to_string(last) +
           "&expires=" + std::to_string(expires) + "&sig=" + s_.signer_.sign_xorb_range(hex, first, last, expires);
  }

  HttpResponse reconstruction(const std::string& hash_text, int version) {
    auto file = readable_file(hash_text);
    if (!file) return file.error();
    const FileRecord& record = *file;
    auto range = parse_single_range(header(request_, "Range"));
    if (!range) return error_response(400, range.error());
    std::uint64_t first = 0;
    std::uint64_t last = record.size == 0 ? 0 : record.size - 1;
    if (*range) {
      if ((*range)->first >= record.size) return error_response(416, "range start is past the end of the file");
      first = (*range)->first;
      last = std::min((*range)->last.value_or(last), last);
    }
    Selection selection = select_terms(record, first, last);
    if (*range && !selection.terms.empty()) {
      // Serve whole chunks, not whole terms: the first term starts at the chunk holding `first`
      // and the last ends with the chunk holding `last` (download-protocol.md "Range Downloads"),
      // so a small read of a file whose terms span 64 MiB xorbs fetches kilobytes, not the xorb.
      auto trim = [&](xet::FileTerm& term, std::uint64_t term_offset, bool front, bool back) -> std::optional<std::string> {
        auto xorb = s_.metadata_.xorb(term.xorb_hash);
        if (!xorb) return xorb.error().message;
        if (!*xorb || term.chunk_index_end > (*xorb)->chunks.size()) return std::string("xorb of a term is missing");
        const auto& chunks = (*xorb)->chunks;
        std::uint32_t start = term.chunk_index_start;
        std::uint32_t end = term.chunk_index_end;
        std::uint64_t at = term_offset;
        if (front) {
          while (start + 1 < end && at + chunks[start].size <= first) at += chunks[start++].size;
          selection.first_term_offset = at;
        }
        std::uint64_t bytes = 0;
        std::uint32_t stop = start;
        for (std::uint64_t position = at; stop < end; ++stop) {
          if (back && position > last) break;
          position += chunks[stop].size;
          bytes += chunks[stop].size;
        }
        term.chunk_index_start = start;
        term.chunk_index_end = stop;
        term.unpacked_bytes = bytes;
        return std::nullopt;
      };
      std::uint64_t last_offset = selection.first_term_offset;
      for (std::size_t i = 0; i + 1 < selection.terms.size(); ++i) last_offset += selection.terms[i].unpacked_bytes;
      const bool single = selection.terms.size() == 1;
      if (auto failed = trim(selection.terms.front(), selection.first_term_offset, true, single); failed) {
        return error_response(500, *failed);
      }
      if (!single) {
        if (auto failed = trim(selection.terms.back(), last_offset, false, true); failed) {
          return error_response(500, *failed);
        }
      }
    }
    json terms = json::array();
    // Per xorb: the merged chunk ranges the selected terms need.
    std::map<xet::Hash, std::vector<std::pair<std::uint32_t, std::uint32_t>>> needed;
    for (const auto& term : selection.terms) {
      terms.push_back(json{{"hash", term.xorb_hash.to_string()},
                           {"unpacked_length", term.unpacked_bytes},
                           {"range", {{"start", term.chunk_index_start}, {"end", term.chunk_index_end}}}});
      needed[term.xorb_hash].push_back({term.chunk_index_start, term.chunk_index_end});
    }
    json fetch = json::object();
    for (auto& [xorb_hash, ranges] : needed) {
      const auto merged = merged_ranges(std::move(ranges));
      auto xorb = s_.metadata_.xorb(xorb_hash);
      if (!xorb) return error_response(500, xorb.error().message);
      if (!*xorb) return error_response(500, "xorb " + xorb_hash.to_string() + " of a registered file is missing");
      json entries = json::array();
      for (const auto& [start, end] : merged) {
        const auto [byte_begin, byte_end] = (*xorb)->byte_range(start, end);
        const std::string url = xorb_url(xorb_hash, byte_begin, byte_end - 1);
        json chunks{{"start", start}, {"end", end}};
        json bytes{{"start", byte_begin}, {"end", byte_end - 1}};
        if (version == 2) {
          entries.push_back(json{{"url", url}, {"ranges", json::array({json{{"chunks", chunks}, {"bytes", bytes}}})}});
        } else {
          entries.push_back(json{{"range", chunks}, {"url", url}, {"url_range", bytes}});
        }
      }
      fetch[xorb_hash.to_string()] = std::move(entries);
    }
    json out{{"offset_into_first_range", first - selection.first_term_offset}, {"terms", terms}};
    out[version == 2 ? "xorbs" : "fetch_info"] = std::move(fetch);
    return json_response(200, out);
  }

  // GET /v1/file-chunks/{file} [Range: bytes=a-b]: a bucketfs-server extension, not in the Xet
  // spec. The chunks of the file that overlap the range (the whole file without Range), grouped
  // by term, each with its hash and size: what a client needs to compose a new file from a part
  // of this one (terms, verification hashes and the file hash need the chunk hashes, and the
  // protocol gives clients no other way to learn them without downloading the chunks).
  //   {"offset": file offset of the first chunk listed, "size": file size,
  //    "terms": [{"xorb": hash, "start": first chunk index, "chunks": [{"hash": h, "size": n}...]}]}
  HttpResponse file_chunks(const std::string& hash_text) {
    auto file = readable_file(hash_text);
    if (!file) return file.error();
    const FileRecord& record = *file;
    auto range = parse_single_range(header(request_, "Range"));
    if (!range) return error_response(400, range.error());
    std::uint64_t first = 0;
    std::uint64_t last = record.size == 0 ? 0 : record.size - 1;
    if (*range) {
      if ((*range)->first >= record.size) return error_response(416, "range start is past the end of the file");
      first = (*range)->first;
      last = std::min((*range)->last.value_or(last), last);
    }
    json terms = json::array();
    std::optional<std::uint64_t> listed_from;
    std::uint64_t offset = 0;
    for (const auto& term : record.terms) {
      if (offset > last) break;
      const std::uint64_t term_end = offset + term.unpacked_bytes;
      if (term_end <= first) {
        offset = term_end;
        continue;
      }
      auto xorb = s_.metadata_.xorb(term.xorb_hash);
      if (!xorb) return error_response(500, xorb.error().message);
      if (!*xorb || term.chunk_index_end > (*xorb)->chunks.size()) {
        return error_response(500, "xorb " + term.xorb_hash.to_string() + " of a registered file is missing");
      }
      json chunks = json::array();
      std::optional<std::uint32_t> start;
      for (std::uint32_t i = term.chunk_index_start; i < term.chunk_index_end && offset <= last; ++i) {
        const auto& chunk = (*xorb)->chunks[i];
        if (offset + chunk.size > first) {
          if (!start) start = i;
          if (!listed_from) listed_from = offset;
          chunks.push_back(json{{"hash", chunk.hash.to_string()}, {"size", chunk.size}});
        }
        offset += chunk.size;
      }
      if (start) terms.push_back(json{{"xorb", term.xorb_hash.to_string()}, {"start", *start}, {"chunks", chunks}});
      offset = term_end;
    }
    return json_response(200, json{{"offset", listed_from.value_or(0)}, {"size", record.size}, {"terms", terms}});
  }

  // GET /v2/file-chunk-hashes/{file} with X-Range-Dirty: bytes=A-B[,C-D...] (inclusive ends):
  // what a client editing those byte ranges needs to build the new file without reading the rest
  // (api.md, "Get File Chunk Hashes"; the npm client's range edits use it). The windows to
  // re-chunk: each dirty range widened to chunk boundaries, ending where every chunker cuts
  // whatever the edit changed before (xet::certain_boundaries), so the client's chunks rejoin
  // the original ones there; then the merkle subtree of each gap around them and the
  // verification hash of every term wholly outside them.
  HttpResponse file_chunk_hashes(const std::string& hash_text);

  HttpResponse batch_reconstruction() {
    auto grant = cas_grant(Access::kRead);
    if (!grant) return grant.error();
    auto body = json::parse(request_.body, nullptr, false);
    if (body.is_discarded() || !body.is_array()) return error_response(400, "body must be a JSON array of {prefix, hash}");
    json files = json::object();
    json fetch = json::object();
    for (const auto& key : body) {
      if (!key.is_object() || !key.contains("hash") || !key["hash"].is_string()) {
        return error_response(400, "every key must be {\"prefix\": \"default\", \"hash\": \"<file id>\"}");
      }
      const auto text = key["hash"].get<std::string>();
      if (files.contains(text)) continue;
      // Reuse the single-file answer (v1 shape) for each file.
      HttpRequest single = request_;
      single.headers.erase("Range");
      Handlers inner(s_, single);
      HttpResponse one = inner.reconstruction(text, 1);
      if (one.status != 200) return one;
      auto parsed = json::parse(std::get<std::string>(one.body));
      files[text] = parsed["terms"];
      for (auto& [xorb, entries] : parsed["fetch_info"].items()) {
        for (auto& entry : entries) fetch[xorb].push_back(entry);
      }
    }
    return json_response(200, json{{"files", files}, {"fetch_info", fetch}});
  }

  HttpResponse xorb_data(const std::string& hash_text) {
    auto hash = parse_hash(hash_text);
    if (!hash) return error_response(400, "malformed xorb hash");
    const auto range_text = query_value(request_, "range").value_or("");
    const auto expires_text = query_value(request_, "expires").value_or("");
    const auto signature = query_value(request_, "sig").value_or("");
    std::uint64_t signed_first = 0, signed_last = 0;
    std::int64_t expires = 0;
    const auto dash = range_text.find('-');
    auto number = [](std::string_view digits, auto& out) {
      auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
      return ec == std::errc() && end == digits.data() + digits.size() && !digits.empty();
    };
    if (dash == std::string::npos || !number(std::string_view(range_text).substr(0, dash), signed_first) ||
        !number(std::string_view(range_text).substr(dash + 1), signed_last) || !number(expires_text, expires) ||
        !s_.signer_.verify_xorb_range(hash->to_string(), signed_first, signed_last, expires, signature)) {
      return error_response(403, "invalid signature");
    }
    if (now_s() >= expires) return error_response(403, "signed URL expired; fetch a new reconstruction");
    const std::string path = s_.xorbs_.path_of(*hash);
    struct stat info;
    if (::stat(path.c_str(), &info) != 0) return error_response(404, "xorb not found");
    const std::uint64_t size = static_cast<std::uint64_t>(info.st_size);
    if (signed_last >= size) return error_response(416, "signed range is past the end of the xorb");
    // The client asks for exactly the signed range (or parts of it) with a Range header.
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    if (auto requested = header(request_, "Range")) {
      std::string_view text = *requested;
      if (!text.starts_with("bytes=")) return error_response(416, "Range must be bytes=...");
      text.remove_prefix(6);
      for (const auto& part : split(text, ',')) {
        std::string_view p = part;
        while (!p.empty() && p.front() == ' ') p.remove_prefix(1);
        const auto d = p.find('-');
        std::uint64_t a = 0, b = 0;
        if (d == std::string_view::npos || !number(p.substr(0, d), a) || !number(p.substr(d + 1), b) || b < a) {
          return error_response(416, "Range must be bytes=START-END[,START-END...]");
        }
        if (a < signed_first || b > signed_last) return error_response(403, "Range outside the signed range");
        ranges.push_back({a, b});
      }
    } else {
      ranges.push_back({signed_first, signed_last});
    }
    std::uint64_t served = 0;
    for (const auto& [a, b] : ranges) served += b - a + 1;
    s_.metrics_.xorb_bytes_served += served;
    return serve_file_ranges(path, size, ranges);
  }

  HttpResponse serve_file_ranges(const std::string& path, std::uint64_t size,
                                 const std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges);

  HttpResponse metrics() {
    auto totals = s_.metadata_.xorb_totals();
    if (!totals) return error_response(500, totals.error().message);
    HttpResponse response;
    response.status = 200;
    response.body = s_.metrics_.render(totals->first, totals->second);
    response.headers.set("Content-Type", "text/plain; version=0.0.4");
    return response;
  }

  // ---- routing
  HttpResponse route(std::string& route_name);

 private:
  BucketServer& s_;
  HttpRequest& request_;
};

}  // namespace bucketfs::server

namespace bucketfs::server {
namespace {

// Decodes the bytes of a stored file on demand, term by term, for plain GETs of resolve.
class FileByteSource {
 public:
  FileByteSource(const MetadataStore& metadata, const XorbStore& xorbs, FileRecord record)
      : metadata_(metadata), xorbs_(xorbs), record_(std::move(record)) {
    std::uint64_t offset = 0;
    for (const auto& term : record_.terms) {
      term_offsets_.push_back(offset);
      offset += term.unpacked_bytes;
    }
  }

  // Copies up to `size` bytes at file offset `position` into `out`; -1 on a storage error.
  std::int64_t read(std::uint64_t position, char* out, std::size_t size) {
    if (position >= record_.size) return 0;
    auto it = std::upper_bound(term_offsets_.begin(), term_offsets_.end(), position);
    const std::size_t index = static_cast<std::size_t>(it - term_offsets_.begin()) - 1;
    if (index != cached_term_ && !load(index)) return -1;
    const std::uint64_t within = position - term_offsets_[index];
    const std::size_t available = static_cast<std::size_t>(decoded_.size() - within);
    const std::size_t count = std::min(size, available);
    std::memcpy(out, decoded_.data() + within, count);
    return static_cast<std::int64_t>(count);
  }

 private:
  bool load(std::size_t index) {
    const auto& term = record_.terms[index];
    auto xorb = metadata_.xorb(term.xorb_hash);
    if (!xorb || !*xorb) return false;
    const auto [begin, end] = (*xorb)->byte_range(term.chunk_index_start, term.chunk_index_end);
    std::string bytes(end - begin, '\0');
    const int fd = ::open(xorbs_.path_of(term.xorb_hash).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t got = ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(begin + done));
      if (got <= 0) break;
      done += static_cast<std::size_t>(got);
    }
    ::close(fd);
    if (done != bytes.size()) return false;
    auto decoded = decoder_.decode(xet::ByteSpan(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()),
                                   term.chunk_index_start);
    if (!decoded || decoded->data.size() != term.unpacked_bytes) return false;
    decoded_.assign(reinterpret_cast<const char*>(decoded->data.data()), decoded->data.size());
    cached_term_ = index;
    return true;
  }

  const MetadataStore& metadata_;
  const XorbStore& xorbs_;
  FileRecord record_;
  std::vector<std::uint64_t> term_offsets_;
  xet::XorbDecoder decoder_;
  std::string decoded_;
  std::size_t cached_term_ = static_cast<std::size_t>(-1);
};

}  // namespace

HttpResponse Handlers::file_chunk_hashes(const std::string& hash_text) {
  // Past this many bytes after a dirty range without a boundary the edit cannot move, the window
  // runs to the end of the file (always correct; only the client re-chunks more).
  constexpr std::uint64_t kMaxResyncScan = std::uint64_t{8} << 20;
  auto file = readable_file(hash_text);
  if (!file) return file.error();
  const FileRecord& record = *file;
  auto dirty = parse_dirty_ranges(header(request_, "X-Range-Dirty"), record.size);
  if (!dirty) return error_response(400, dirty.error());

  // The file's chunks in order, where each starts, and each term's chunks.
  std::vector<xet::HashAndSize> chunks;
  std::vector<std::uint64_t> starts;  // one per chunk, then the file size
  std::vector<std::pair<std::size_t, std::size_t>> term_chunks;
  std::uint64_t offset = 0;
  for (const auto& term : record.terms) {
    auto xorb = s_.metadata_.xorb(term.xorb_hash);
    if (!xorb) return error_response(500, xorb.error().message);
    if (!*xorb || term.chunk_index_end > (*xorb)->chunks.size()) {
      return error_response(500, "xorb " + term.xorb_hash.to_string() + " of a registered file is missing");
    }
    const std::size_t first = chunks.size();
    for (std::uint32_t i = term.chunk_index_start; i < term.chunk_index_end; ++i) {
      const auto& chunk = (*xorb)->chunks[i];
      chunks.push_back({chunk.hash, chunk.size});
      starts.push_back(offset);
      offset += chunk.size;
    }
    term_chunks.emplace_back(first, chunks.size());
  }
  starts.push_back(offset);
  if (offset != record.size) return error_response(500, "the terms of file " + hash_text + " do not add up to its size");
  // Index of the chunk boundary at `position`, if there is one (the file size is the last).
  auto boundary_index = [&](std::uint64_t position) -> std::optional<std::size_t> {
    auto it = std::lower_bound(starts.begin(), starts.end(), position);
    if (it == starts.end() || *it != position) return std::nullopt;
    return static_cast<std::size_t>(it - starts.begin());
  };
  auto chunk_start_at_or_before = [&](std::uint64_t position) {
    return *(std::upper_bound(starts.begin(), starts.end() - 1, position) - 1);
  };

  FileByteSource source(s_.metadata_, s_.xorbs_, record);
  // Bytes searched per request, over all its windows: past it, windows run to the end of the file.
  // A search that gives up (runs of zeros) costs about 0.1 s per MiB, so a request stays within
  // a couple of seconds.
  std::uint64_t search_budget = std::uint64_t{16} << 20;
  // Where a window whose edited bytes end at `dirty_end` may end: the first chunk boundary at or
  // after it that every chunker reaches whatever came before dirty_end. The bytes after it are
  // read in doubling spans, each searched whole (a boundary near a span's end is undecided).
  auto window_end = [&](std::uint64_t dirty_end) -> std::expected<std::uint64_t, std::string> {
    std::string scanned;
    for (std::uint64_t span = std::uint64_t{1} << 20; dirty_end + scanned.size() < record.size; span *= 2) {
      if (search_budget < span) break;
      search_budget -= span;
      const std::uint64_t want = std::min({span, kMaxResyncScan, record.size - dirty_end});
      while (scanned.size() < want) {
        const std::size_t before = scanned.size();
        scanned.resize(static_cast<std::size_t>(want));
        const auto got = source.read(dirty_end + before, scanned.data() + before, scanned.size() - before);
        if (got <= 0) return std::unexpected("reading file " + hash_text + " failed");
        scanned.resize(before + static_cast<std::size_t>(got));
      }
      for (const auto boundary : xet::certain_boundaries(
               xet::ByteSpan(reinterpret_cast<const std::byte*>(scanned.data()), scanned.size()))) {
        if (boundary_index(dirty_end + boundary)) return dirty_end + boundary;
      }
      if (want == kMaxResyncScan) break;
    }
    return record.size;
  };
  std::vector<std::pair<std::uint64_t, std::uint64_t>> windows;
  for (std::size_t i = 0; i < dirty->size();) {
    const std::uint64_t start = chunk_start_at_or_before((*dirty)[i].first);
    std::uint64_t dirty_end = (*dirty)[i].second;
    auto end = window_end(dirty_end);
    for (++i; end && i < dirty->size() && (*dirty)[i].first <= *end; ++i) {
      if ((*dirty)[i].second > dirty_end && *end < record.size) {
        dirty_end = (*dirty)[i].second;
        end = window_end(dirty_end);
      }
    }
    if (!end) return error_response(500, end.error());
    windows.emplace_back(start, *end);
  }

  json windows_json = json::array();
  json hash_ranges = json::array();
  auto gap = [&](std::size_t from, std::size_t to) -> json {
    if (from >= to) return nullptr;
    const auto run = std::span(chunks).subspan(from, to - from);
    return xet::to_json(xet::merkle_subtree(run, from == 0, to == chunks.size()));
  };
  std::size_t gap_from = 0;
  for (const auto& [start, end] : windows) {
    windows_json.push_back(json{{"dirtyByteRange", json::array({start, end})}});
    hash_ranges.push_back(gap(gap_from, *boundary_index(start)));
    gap_from = *boundary_index(end);
  }
  hash_ranges.push_back(gap(gap_from, chunks.size()));
  json verification = json::array();
  for (const auto& [first, last] : term_chunks) {
    const std::uint64_t term_start = starts[first];
    const std::uint64_t term_end = starts[last];
    const bool stable = std::all_of(windows.begin(), windows.end(), [&](const auto& window) {
      return term_end <= window.first || term_start >= window.second;
    });
    if (!stable) continue;
    std::vector<xet::Hash> hashes;
    for (std::size_t c = first; c < last; ++c) hashes.push_back(chunks[c].hash);
    verification.push_back(xet::verification_hash(hashes).to_string());
  }
  return json_response(200, json{{"totalChunks", chunks.size()},
                                 {"fileSize", record.size},
                                 {"windows", std::move(windows_json)},
                                 {"hashRanges", std::move(hash_ranges)},
                                 {"gapVerification", std::move(verification)}});
}

HttpResponse Handlers::stream_file_bytes(const xet::Hash& file_hash, std::uint64_t first, std::uint64_t length) {
  if (length == 0) return HttpResponse::bytes(200, std::string());
  auto file = s_.metadata_.file(file_hash);
  if (!file) return error_response(500, file.error().message);
  if (!*file) return error_response(500, "file record missing for " + file_hash.to_string());
  auto source = std::make_shared<FileByteSource>(s_.metadata_, s_.xorbs_, std::move(**file));
  return HttpResponse::stream(200, length, [source, first](std::uint64_t position, char* out, std::size_t size) {
    return source->read(first + position, out, size);
  });
}

HttpResponse Handlers::sized_empty(int status, std::uint64_t size) {
  return HttpResponse::stream(status, size, [](std::uint64_t, char*, std::size_t) -> std::int64_t { return -1; });
}

HttpResponse Handlers::serve_file_ranges(const std::string& path, std::uint64_t size,
                                         const std::vector<std::pair<std::uint64_t, std::uint64_t>>& ranges) {
  if (ranges.size() == 1) {
    HttpResponse response = HttpResponse::file(206, path, ranges[0].first, ranges[0].second - ranges[0].first + 1);
    response.headers.set("Content-Range", "bytes " + std::to_string(ranges[0].first) + "-" +
                                              std::to_string(ranges[0].second) + "/" + std::to_string(size));
    response.headers.set("Content-Type", "application/octet-stream");
    return response;
  }
  std::vector<std::pair<std::uint64_t, std::uint64_t>> parts;
  for (const auto& [a, b] : ranges) parts.push_back({a, b - a + 1});
  return HttpResponse::multipart_file(206, path, size, parts, "application/octet-stream");
}

HttpResponse Handlers::route(std::string& name) {
  const std::string& raw = request_.raw_path;
  const std::string& method = request_.method;
  auto segments = split(raw, '/');  // raw segments; segments[0] is "" (leading '/')
  auto decoded = [&](std::size_t i) -> std::optional<std::string> {
    if (i >= segments.size()) return std::nullopt;
    return percent_decode(segments[i]);
  };
  auto tail_from = [&](std::size_t i) -> std::optional<std::string> {
    std::string joined;
    for (std::size_t k = i; k < segments.size(); ++k) {
      if (k > i) joined += '/';
      joined += segments[k];
    }
    return percent_decode(joined);
  };
  auto method_not_allowed = [&] { return error_response(405, method + " is not allowed on " + raw); };

  if (raw == "/metrics") {
    name = "metrics";
    return method == "GET" ? metrics() : method_not_allowed();
  }
  if (raw.starts_with("/v1/") || raw.starts_with("/v2/") || raw.starts_with("/xorb-data/")) {
    const std::string& group = segments.size() > 2 ? segments[2] : std::string();
    if (segments[1] == "xorb-data" && segments.size() == 3) {
      name = "cas_xorb_data";
      return method == "GET" ? xorb_data(segments[2]) : method_not_allowed();
    }
    if (segments[1] == "v1" && group == "xorbs" && segments.size() == 5) {
      name = "cas_xorb";
      if (method == "POST") return upload_xorb(segments[3], segments[4]);
      if (method == "HEAD") return head_xorb(segments[4]);
      return method_not_allowed();
    }
    if (group == "shards" && segments.size() == 3) {
      name = "cas_shard";
      if (segments[1] == "v2") return error_response(404, "use /v1/shards");
      return method == "POST" ? upload_shard() : method_not_allowed();
    }
    if (segments[1] == "v1" && group == "chunks" && segments.size() == 5) {
      name = "cas_dedup";
      return method == "GET" ? dedup_query(segments[3], segments[4]) : method_not_allowed();
    }
    if (group == "reconstructions" && segments.size() == 4) {
      name = segments[1] == "v2" ? "cas_reconstruction_v2" : "cas_reconstruction_v1";
      return method == "GET" ? reconstruction(segments[3], segments[1] == "v2" ? 2 : 1) : method_not_allowed();
    }
    if (segments[1] == "v1" && group == "reconstructions" && segments.size() == 3) {
      name = "cas_batch_reconstruction";
      return method == "POST" ? batch_reconstruction() : method_not_allowed();
    }
    if (segments[1] == "v1" && group == "file-chunks" && segments.size() == 4) {
      name = "cas_file_chunks";
      return method == "GET" ? file_chunks(segments[3]) : method_not_allowed();
    }
    if (segments[1] == "v2" && group == "file-chunk-hashes" && segments.size() == 4) {
      name = "cas_file_chunk_hashes";
      return method == "GET" ? file_chunk_hashes(segments[3]) : method_not_allowed();
    }
    if (segments[1] == "v1" && group == "files" && segments.size() == 4) {
      name = "cas_file";
      return method == "HEAD" || method == "GET" ? head_file(segments[3]) : method_not_allowed();
    }
    name = "unknown";
    return error_response(404, "no such route: " + raw);
  }

  auto identity = hub_identity();
  if (!identity) {
    name = "hub_auth";
    return identity.error();
  }
  const HubToken* token = *identity;

  if (raw == "/api/whoami-v2") {
    name = "hub_whoami";
    return method == "GET" ? whoami(token) : method_not_allowed();
  }
  if (raw == "/api/repos/move") {
    name = "hub_move";
    return method == "POST" ? move_bucket(token) : method_not_allowed();
  }
  const bool api = raw.starts_with("/api/buckets/");
  if (api || raw.starts_with("/buckets/")) {
    const std::size_t base = api ? 3 : 2;  // index of the namespace segment
    auto ns = decoded(base);
    if (!ns || ns->empty()) {
      name = "unknown";
      return error_response(404, "no such route: " + raw);
    }
    if (segments.size() == base + 1) {
      name = "hub_list_buckets";
      if (api && method == "GET") return list_buckets(*ns, token);
      return error_response(404, "Bucket " + *ns + " not found", "RepoNotFound");
    }
    auto bucket_name = decoded(base + 1);
    if (!bucket_name) return error_response(400, "bad percent-encoding in " + raw);
    const std::string id = *ns + "/" + *bucket_name;
    if (segments.size() == base + 2) {
      name = "hub_bucket";
      if (!api) return error_response(404, "no such route: " + raw);
      if (method == "POST") return create_bucket(*ns, *bucket_name, token);
      if (naming::name_problem(*ns) || naming::name_problem(*bucket_name)) return repo_not_found(id);
      if (method == "GET") return bucket_info(id, token);
      if (method == "DELETE") return delete_bucket(id, token);
      return method_not_allowed();
    }
    if (naming::name_problem(*ns) || naming::name_problem(*bucket_name)) {
      name = "hub_bucket";
      return repo_not_found(id);
    }
    const std::string& operation = segments[base + 2];
    if (operation == "resolve") {
      name = "hub_resolve";
      if (method != "GET" && method != "HEAD") return method_not_allowed();
      auto path = tail_from(base + 3);
      if (!path) return error_response(400, "bad percent-encoding in " + raw);
      return resolve(id, *path, token);
    }
    if (!api) {
      name = "unknown";
      return error_response(404, "no such route: " + raw);
    }
    if (operation == "tree") {
      name = "hub_tree";
      if (method != "GET") return method_not_allowed();
      auto prefix = tail_from(base + 3);
      if (!prefix) return error_response(400, "bad percent-encoding in " + raw);
      return tree(id, *prefix, token);
    }
    if (segments.size() == base + 3) {
      if (operation == "paths-info") {
        name = "hub_paths_info";
        return method == "POST" ? paths_info(id, token) : method_not_allowed();
      }
      if (operation == "batch") {
        name = "hub_batch";
        return method == "POST" ? batch(id, token) : method_not_allowed();
      }
      if (operation == "xet-read-token" || operation == "xet-write-token") {
        name = "hub_xet_token";
        if (method != "GET") return method_not_allowed();
        return xet_token(id, operation == "xet-write-token" ? Access::kWrite : Access::kRead, token);
      }
    }
  }
  name = "unknown";
  return error_response(404, "no such route: " + raw);
}

std::expected<std::unique_ptr<BucketServer>, std::string> BucketServer::open(BucketServerOptions options) {
  if (options.data_dir.empty()) return std::unexpected("--data is required");
  if (::mkdir(options.data_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return std::unexpected("cannot create " + options.data_dir + ": " + std::strerror(errno));
  }
  if (!options.now_ms) {
    options.now_ms = [] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
  auto metadata = MetadataStore::open(options.data_dir + "/meta");
  if (!metadata) return std::unexpected(metadata.error().message);
  auto xorbs = XorbStore::open(options.data_dir);
  if (!xorbs) return std::unexpected(xorbs.error());
  auto signer = Signer::open(options.data_dir);
  if (!signer) return std::unexpected(signer.error());
  bool created = false;
  std::string tokens_path = options.tokens_file;
  std::expected<HubTokens, std::string> tokens;
  if (tokens_path.empty()) {
    tokens_path = options.data_dir + "/tokens";
    struct stat info;
    if (::stat(tokens_path.c_str(), &info) == 0) {
      tokens = HubTokens::load(tokens_path);
    } else {
      tokens = HubTokens::create_default(tokens_path);
      created = true;
    }
  } else {
    tokens = HubTokens::load(tokens_path);
  }
  if (!tokens) return std::unexpected(tokens.error());
  std::unique_ptr<BucketServer> server(new BucketServer(std::move(options), std::move(*metadata),
                                                        std::move(*xorbs), std::move(*tokens), std::move(*signer)));
  server->tokens_path_ = tokens_path;
  server->created_default_tokens_ = created;
  return server;
}

std::uint64_t BucketServer::next_fault_random() {
  std::lock_guard lock(fault_mutex_);
  // SplitMix64 step: a reproducible stream for a given seed.
  fault_state_ += 0x9E3779B97F4A7C15ULL;
  std::uint64_t z = fault_state_ ^ options_.fault_seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

bool BucketServer::inject_fault(const HttpRequest& request) {
  if (options_.fault_rate <= 0 || request.raw_path == "/metrics") return false;
  return static_cast<double>(next_fault_random() >> 11) / 9007199254740992.0 < options_.fault_rate;
}

RouteDecision BucketServer::decide(const HttpRequest& request) {
  const std::string& raw = request.raw_path;
  std::chrono::milliseconds answer_delay{0};
  if (inject_fault(request)) {
    using O = BucketServerOptions;
    const bool get = request.method == "GET";
    std::vector<unsigned> kinds;
    for (const unsigned kind : {O::kFaultStatus, O::kFaultReset, O::kFaultStall, O::kFaultTruncate, O::kFaultFlip}) {
      if ((options_.fault_kinds & kind) == 0) continue;
      if (kind == O::kFaultTruncate && !get) continue;
      if (kind == O::kFaultFlip && !(get && raw.starts_with("/xorb-data/"))) continue;
      kinds.push_back(kind);
    }
    const unsigned kind = kinds.empty() ? 0 : kinds[next_fault_random() % kinds.size()];
    if (kind == O::kFaultStatus) {
      static constexpr int kStatuses[] = {500, 503, 429};
      const int status = kStatuses[next_fault_random() % 3];
      HttpResponse response = error_response(status, "injected fault");
      if (status == 429) response.headers.set("Retry-After", "0");
      metrics_.count_request("injected_fault", status);
      metrics_.count_fault("status");
      return RouteDecision::respond(std::move(response));
    }
    if (kind == O::kFaultReset) {
      metrics_.count_fault("reset");
      return RouteDecision::close_connection();
    }
    if (kind == O::kFaultStall) {
      metrics_.count_fault("stall");
      answer_delay = std::chrono::milliseconds(options_.fault_stall_ms);
    } else if (kind == O::kFaultTruncate || kind == O::kFaultFlip) {
      // A GET has no body: handle it now and damage the answer.
      HttpRequest copy = request;
      HttpResponse response = handle(std::move(copy));
      const std::uint64_t length = response.body_length();
      if (kind == O::kFaultTruncate) {
        metrics_.count_fault("truncate");
        if (length == 0) return RouteDecision::close_connection();
        response.truncate_body_at = next_fault_random() % length;
      } else if (length > 0 && (response.status == 200 || response.status == 206) &&
                 std::holds_alternative<FileBody>(response.body)) {
        metrics_.count_fault("flip");
        response.flip_body_byte_at = next_fault_random() % length;
      }
      return RouteDecision::respond(std::move(response));
    }
  }
  std::size_t limit = kSmallBody;
  if (request.method == "POST") {
    if (raw.starts_with("/v1/xorbs/") || raw == "/v1/shards" || raw == "/v2/shards") {
      // Refuse unauthorized uploads before buffering up to 64 MiB of body.
      HttpRequest headers_only = request;
      Handlers handlers(*this, headers_only);
      auto grant = handlers.cas_grant(Access::kWrite);
      if (!grant) {
        metrics_.count_request(raw.starts_with("/v1/xorbs/") ? "cas_xorb" : "cas_shard", grant.error().status);
        return RouteDecision::respond(std::move(grant.error()));
      }
      limit = raw.starts_with("/v1/xorbs/") ? kXorbBody : kShardBody;
    } else if (raw.ends_with("/batch")) {
      limit = kBatchBody;
    }
  }
  return RouteDecision::accept(limit).delay_answer(answer_delay);
}

HttpResponse BucketServer::handle(HttpRequest&& request) {
  std::string route = "unknown";
  HttpResponse response = dispatch(request, route);
  metrics_.count_request(route, response.status);
  return response;
}

HttpResponse BucketServer::dispatch(HttpRequest& request, std::string& route) {
  Handlers handlers(*this, request);
  return handlers.route(route);
}

}  // namespace bucketfs::server
