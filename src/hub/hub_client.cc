#include "bucketfs/hub/hub_client.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
#include <ctime>

#include "internal.h"

namespace bucketfs::hub {
namespace {

using nlohmann::json;

bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

void append_escaped(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  out.push_back('%');
  out.push_back(kHex[c >> 4]);
  out.push_back(kHex[c & 15]);
}

// Only digits: from_chars would also take a leading '-' ("T-1:00:00Z" as hour -1).
bool parse_digits(std::string_view text, int& out) {
  if (text.empty() || text.front() < '0' || text.front() > '9') return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

std::optional<std::string> string_field(const json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

std::optional<std::uint64_t> uint_field(const json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  if (it->is_number_integer() && it->get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(it->get<std::int64_t>());
  return std::nullopt;
}

std::optional<std::int64_t> time_field(const json& object, const char* name) {
  if (auto text = string_field(object, name)) return parse_iso8601_ms(*text);
  return std::nullopt;
}

std::optional<std::int64_t> parse_http_date(std::string_view text) {
  std::tm tm{};
  const std::string copy(text);
  const char* end = ::strptime(copy.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') return std::nullopt;
  return static_cast<std::int64_t>(::timegm(&tm)) * 1000;
}

std::string strip_quotes(std::string_view text) {
  if (text.starts_with("W/")) text.remove_prefix(2);
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"') text = text.substr(1, text.size() - 2);
  return std::string(text);
}

}  // namespace

namespace detail {

HubResult<std::optional<TreeEntry>> parse_tree_entry(const json& item, std::string_view subject) {
  if (!item.is_object()) return std::unexpected(detail::bad_response(subject, "an entry is not a JSON object"));
  auto type = string_field(item, "type");
  auto path = string_field(item, "path");
  if (!type || !path) return std::unexpected(detail::bad_response(subject, "an entry lacks 'type' or 'path'"));
  TreeEntry entry;
  entry.file.path = std::move(*path);
  entry.file.uploaded_at_ms = time_field(item, "uploadedAt");
  if (*type == "directory") {
    entry.type = TreeEntry::Type::directory;
    return entry;
  }
  if (*type != "file") return std::optional<TreeEntry>{};
  auto size = uint_field(item, "size");
  auto hash_text = string_field(item, "xetHash");
  if (!size || !hash_text) {
    return std::unexpected(detail::bad_response(subject, "file entry '" + entry.file.path + "' lacks size or xetHash"));
  }
  auto hash = xet::Hash::from_string(*hash_text);
  if (!hash) return std::unexpected(detail::bad_response(subject, "file entry '" + entry.file.path + "' has a bad xetHash"));
  entry.file.size = *size;
  entry.file.xet_hash = *hash;
  entry.file.mtime_ms = time_field(item, "mtime");
  return entry;
}

}  // namespace detail

namespace {

HubResult<BucketInfo> parse_bucket(const json& item, std::string_view subject) {
  if (!item.is_object()) return std::unexpected(detail::bad_response(subject, "bucket info is not a JSON object"));
  BucketInfo info;
  auto id = string_field(item, "id");
  if (!id) return std::unexpected(detail::bad_response(subject, "bucket info lacks 'id'"));
  info.id = std::move(*id);
  if (auto it = item.find("private"); it != item.end() && it->is_boolean()) info.is_private = it->get<bool>();
  info.created_ms = time_field(item, "createdAt").value_or(0);
  info.updated_ms = time_field(item, "updatedAt").value_or(0);
  info.size = uint_field(item, "size").value_or(0);
  info.total_files = uint_field(item, "totalFiles").value_or(0);
  return info;
}

std::string_view batch_type(BatchOperation::Kind kind) {
  switch (kind) {
    case BatchOperation::Kind::add_file: return "addFile";
    case BatchOperation::Kind::copy_file: return "copyFile";
    case BatchOperation::Kind::delete_file: return "deleteFile";
  }
  return "";
}

}  // namespace

// ---- helpers -------------------------------------------------------------------------------------

std::string encode_path(std::string_view path) {
  std::string out;
  out.reserve(path.size());
  for (unsigned char c : path) {
    if (unreserved(c) || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      append_escaped(out, c);
    }
  }
  return out;
}

std::string encode_query(std::string_view value) {
  std::string out;
  for (unsigned char c : value) {
    if (unreserved(c)) {
      out.push_back(static_cast<char>(c));
    } else {
      append_escaped(out, c);
    }
  }
  return out;
}

std::optional<std::string> link_next(std::string_view header) {
  std::size_t at = 0;
  while (true) {
    const auto open = header.find('<', at);
    if (open == std::string_view::npos) return std::nullopt;
    const auto close = header.find('>', open);
    if (close == std::string_view::npos) return std::nullopt;
    const auto url = header.substr(open + 1, close - open - 1);
    const auto following = header.find('<', close);
    const auto params = header.substr(close + 1, following == std::string_view::npos ? std::string_view::npos
                                                                                       : following - close - 1);
    // rel="next", rel=next, or rel="next other" (space-separated relation types).
    for (auto rel = params.find("rel="); rel != std::string_view::npos; rel = params.find("rel=", rel + 4)) {
      std::string_view value = params.substr(rel + 4);
      if (value.starts_with('"')) {
        value.remove_prefix(1);
        value = value.substr(0, value.find('"'));
      } else {
        value = value.substr(0, std::min(value.find(';'), value.find(',')));
      }
      std::size_t start = 0;
      while (start <= value.size()) {
        const auto space = std::min(value.find(' ', start), value.size());
        if (value.substr(start, space - start) == "next") return std::string(url);
        start = space + 1;
      }
    }
    if (following == std::string_view::npos) return std::nullopt;
    at = following;
  }
}

std::optional<std::int64_t> parse_iso8601_ms(std::string_view text) {
  // YYYY-MM-DDTHH:MM:SS[.f{0,9}](Z|+00:00)
  if (text.size() < 20 || text[4] != '-' || text[7] != '-' || (text[10] != 'T' && text[10] != 't') ||
      text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (!parse_digits(text.substr(0, 4), year) || !parse_digits(text.substr(5, 2), month) ||
      !parse_digits(text.substr(8, 2), day) || !parse_digits(text.substr(11, 2), hour) ||
      !parse_digits(text.substr(14, 2), minute) || !parse_digits(text.substr(17, 2), second)) {
    return std::nullopt;
  }
  std::string_view rest = text.substr(19);
  std::int64_t millis = 0;
  if (rest.starts_with('.')) {
    rest.remove_prefix(1);
    std::size_t digits = 0;
    while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') ++digits;
    if (digits == 0 || digits > 9) return std::nullopt;
    for (std::size_t i = 0; i < 3; ++i) millis = millis * 10 + (i < digits ? rest[i] - '0' : 0);
    rest.remove_prefix(digits);
  }
  if (rest != "Z" && rest != "z" && rest != "+00:00") return std::nullopt;
  const std::chrono::year_month_day date{std::chrono::year(year), std::chrono::month(static_cast<unsigned>(month)),
                                         std::chrono::day(static_cast<unsigned>(day))};
  if (!date.ok() || hour > 23 || minute > 59 || second > 60) return std::nullopt;
  const auto days = std::chrono::sys_days(date).time_since_epoch().count();
  return ((static_cast<std::int64_t>(days) * 24 + hour) * 60 + minute) * 60000 + second * 1000 + millis;
}

std::string origin_of(std::string_view url) {
  const auto sep = url.find("://");
  if (sep == std::string_view::npos || sep == 0) return {};
  std::string out;
  for (char c : url.substr(0, sep)) out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  out += "://";
  auto authority = url.substr(sep + 3);
  authority = authority.substr(0, std::min({authority.find('/'), authority.find('?'), authority.find('#')}));
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  if (authority.empty()) return {};
  for (char c : authority) out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  // Default ports are the same origin as none.
  if (out.starts_with("http://") && out.ends_with(":80")) out.resize(out.size() - 3);
  if (out.starts_with("https://") && out.ends_with(":443")) out.resize(out.size() - 4);
  return out;
}

BatchOperation BatchOperation::add(std::string path, const xet::Hash& hash, std::optional<std::int64_t> mtime_ms,
                                   std::optional<std::string> content_type) {
  BatchOperation op;
  op.kind = Kind::add_file;
  op.path = std::move(path);
  op.xet_hash = hash;
  op.mtime_ms = mtime_ms;
  op.content_type = std::move(content_type);
  return op;
}

BatchOperation BatchOperation::copy(std::string path, const xet::Hash& hash, std::string source_bucket) {
  BatchOperation op;
  op.kind = Kind::copy_file;
  op.path = std::move(path);
  op.xet_hash = hash;
  op.source_bucket = std::move(source_bucket);
  return op;
}

BatchOperation BatchOperation::remove(std::string path) {
  BatchOperation op;
  op.kind = Kind::delete_file;
  op.path = std::move(path);
  return op;
}

// ---- the client ----------------------------------------------------------------------------------

HubClient::HubClient(http::Transport& transport, HubSettings settings, HubClientOptions options)
    : transport_(transport), settings_(std::move(settings)), options_(options) {
  while (!settings_.endpoint.empty() && settings_.endpoint.back() == '/') settings_.endpoint.pop_back();
  if (options_.paths_info_batch == 0) options_.paths_info_batch = 1;
}

http::Request HubClient::request(std::string method, std::string url) const {
  http::Request request;
  request.method = std::move(method);
  request.url = std::move(url);
  if (settings_.token) request.headers.set("Authorization", "Bearer " + *settings_.token);
  request.timeouts = options_.timeouts;
  request.follow_redirects = false;
  return request;
}

HubResult<http::Response> HubClient::perform(const http::Request& request, const http::CancellationToken* cancel,
                                             std::string_view what) const {
  auto response = transport_.perform(request, cancel);
  if (!response) {
    return std::unexpected(detail::from_http(response.error(), what, {settings_.token.value_or("")}));
  }
  return std::move(*response);
}

std::string HubClient::bucket_url(const naming::BucketId& id) const {
  return settings_.endpoint + "/api/buckets/" + encode_query(id.ns) + "/" + encode_query(id.name);
}

namespace {

// On a bucket route every 404 is about the bucket (a missing path is an empty answer, not a 404).
HubError on_bucket_route(HubError error, const naming::BucketId& id) {
  if (error.status == 404) error.kind = HubErrorKind::bucket_not_found;
  (void)id;
  return error;
}

std::optional<HubError> check_id(const naming::BucketId& id, bool allow_me) {
  if (allow_me && id.ns == "me") {
    if (auto problem = naming::name_problem(id.name)) {
      return HubError{HubErrorKind::invalid, 0, "bucket name '" + id.name + "' " + *problem};
    }
    return std::nullopt;
  }
  if (auto problem = naming::name_problem(id.ns)) {
    return HubError{HubErrorKind::invalid, 0, "namespace '" + id.ns + "' " + *problem};
  }
  if (auto problem = naming::name_problem(id.name)) {
    return HubError{HubErrorKind::invalid, 0, "bucket name '" + id.name + "' " + *problem};
  }
  return std::nullopt;
}

}  // namespace

HubResult<CreatedBucket> HubClient::create_bucket(const naming::BucketId& id, CreateBucketOptions options,
                                                  const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, true)) return std::unexpected(*problem);
  const std::string subject = "create bucket " + id.str();
  json body = json::object();
  if (options.is_private) body["private"] = *options.is_private;
  const std::string text = body.dump();
  auto req = request("POST", bucket_url(id));
  req.headers.set("Content-Type", "application/json");
  req.body = xet::as_byte_span(text);
  auto response = perform(req, cancel, subject);
  if (!response) {
    if (response.error().status == 409) {
      if (options.exist_ok) return CreatedBucket{id.str(), settings_.endpoint + "/buckets/" + id.str(), true};
      HubError error = response.error();
      error.kind = HubErrorKind::already_exists;
      return std::unexpected(std::move(error));
    }
    return std::unexpected(response.error());
  }
  CreatedBucket created;
  created.id = id.str();
  created.url = settings_.endpoint + "/buckets/" + id.str();
  if (auto value = detail::parse_json(response->body.text()); value && value->is_object()) {
    if (auto got = string_field(*value, "id")) created.id = *got;
    if (auto got = string_field(*value, "url")) created.url = *got;
  }
  return created;
}

HubResult<BucketInfo> HubClient::bucket_info(const naming::BucketId& id, const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, false)) return std::unexpected(*problem);
  const std::string subject = "bucket " + id.str();
  auto response = perform(request("GET", bucket_url(id)), cancel, subject);
  if (!response) return std::unexpected(on_bucket_route(response.error(), id));
  auto value = detail::parse_json(response->body.text());
  if (!value) return std::unexpected(detail::bad_response(subject, "bucket info is not JSON"));
  return parse_bucket(*value, subject);
}

namespace {

// Follows Link rel="next" from `first`, handing each page's JSON array to `page`.
template <typename Perform, typename Page>
HubResult<void> paginate(const std::string& endpoint, std::string first, std::string_view subject,
                         const Perform& perform, const Page& page) {
  const std::string origin = origin_of(endpoint);
  std::string url = std::move(first);
  std::vector<std::string> seen;
  while (true) {
    auto response = perform(url);
    if (!response) return std::unexpected(response.error());
    auto value = detail::parse_json(response->body.text());
    if (!value || !value->is_array()) return std::unexpected(detail::bad_response(subject, "a page is not a JSON array"));
    auto keep_going = page(*value);
    if (!keep_going) return std::unexpected(keep_going.error());
    if (!*keep_going) return {};
    std::string links;
    for (auto link : response->headers.get_all("Link")) {
      if (!links.empty()) links += ", ";
      links += link;
    }
    auto next = link_next(links);
    if (!next) return {};
    if (origin_of(*next) != origin) {
      return std::unexpected(detail::bad_response(subject, "the next-page link leaves the endpoint's host"));
    }
    if (std::find(seen.begin(), seen.end(), *next) != seen.end() || *next == url) {
      return std::unexpected(detail::bad_response(subject, "the next-page link repeats a page"));
    }
    seen.push_back(url);
    url = std::move(*next);
  }
}

}  // namespace

HubResult<std::vector<BucketInfo>> HubClient::list_buckets(std::string_view ns, std::string_view search,
                                                           const http::CancellationToken* cancel) const {
  if (ns != "me") {
    if (auto problem = naming::name_problem(ns)) {
      return make_hub_error(HubErrorKind::invalid, "namespace '" + std::string(ns) + "' " + *problem);
    }
  }
  const std::string subject = "buckets of " + std::string(ns);
  std::string url = settings_.endpoint + "/api/buckets/" + encode_query(ns);
  if (!search.empty()) url += "?search=" + encode_query(search);
  std::vector<BucketInfo> out;
  auto done = paginate(
      settings_.endpoint, url, subject,
      [&](const std::string& page_url) -> HubResult<http::Response> {
        auto response = perform(request("GET", page_url), cancel, subject);
        if (!response && response.error().status == 404) {
          HubError error = response.error();
          error.kind = HubErrorKind::bucket_not_found;
          return std::unexpected(std::move(error));
        }
        return response;
      },
      [&](const json& page) -> HubResult<bool> {
        for (const auto& item : page) {
          auto info = parse_bucket(item, subject);
          if (!info) return std::unexpected(info.error());
          out.push_back(std::move(*info));
        }
        return true;
      });
  if (!done) return std::unexpected(done.error());
  return out;
}

HubResult<void> HubClient::delete_bucket(const naming::BucketId& id, const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, false)) return std::unexpected(*problem);
  auto req = request("DELETE", bucket_url(id));
  req.headers.set("Content-Type", "application/json");
  auto response = perform(req, cancel, "delete bucket " + id.str());
  if (!response) return std::unexpected(on_bucket_route(response.error(), id));
  return {};
}

HubResult<void> HubClient::for_each_tree_entry(const naming::BucketId& id, std::string_view prefix,
                                               TreeOptions options, const std::function<bool(TreeEntry&&)>& visit,
                                               const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, false)) return std::unexpected(*problem);
  const std::string subject = "tree of " + id.str() + (prefix.empty() ? "" : " under '" + std::string(prefix) + "'");
  std::string url = bucket_url(id) + "/tree";
  if (!prefix.empty()) url += "/" + encode_path(prefix);
  url += options.recursive ? "?recursive=true" : "?recursive=false";
  if (options.limit) url += "&limit=" + std::to_string(*options.limit);
  return paginate(
      settings_.endpoint, url, subject,
      [&](const std::string& page_url) -> HubResult<http::Response> {
        auto response = perform(request("GET", page_url), cancel, subject);
        if (!response) return std::unexpected(on_bucket_route(response.error(), id));
        return response;
      },
      [&](const json& page) -> HubResult<bool> {
        for (const auto& item : page) {
          auto entry = detail::parse_tree_entry(item, subject);
          if (!entry) return std::unexpected(entry.error());
          if (!*entry) continue;
          if (!visit(std::move(**entry))) return false;
        }
        return true;
      });
}

HubResult<std::vector<TreeEntry>> HubClient::tree(const naming::BucketId& id, std::string_view prefix,
                                                  TreeOptions options, const http::CancellationToken* cancel) const {
  std::vector<TreeEntry> out;
  auto done = for_each_tree_entry(
      id, prefix, options,
      [&](TreeEntry&& entry) {
        out.push_back(std::move(entry));
        return true;
      },
      cancel);
  if (!done) return std::unexpected(done.error());
  return out;
}

HubResult<std::vector<FileEntry>> HubClient::paths_info(const naming::BucketId& id, std::span<const std::string> paths,
                                                        const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, false)) return std::unexpected(*problem);
  const std::string subject = "paths-info in " + id.str();
  std::vector<FileEntry> out;
  for (std::size_t start = 0; start < paths.size(); start += options_.paths_info_batch) {
    const auto batch = paths.subspan(start, std::min(options_.paths_info_batch, paths.size() - start));
    json body = json::object();
    body["paths"] = json::array();
    for (const auto& path : batch) body["paths"].push_back(path);
    const std::string text = body.dump(-1, ' ', false, json::error_handler_t::replace);
    auto req = request("POST", bucket_url(id) + "/paths-info");
    req.headers.set("Content-Type", "application/json");
    req.headers.set("Accept", "application/json");
    req.body = xet::as_byte_span(text);
    auto response = perform(req, cancel, subject);
    if (!response) return std::unexpected(on_bucket_route(response.error(), id));
    auto value = detail::parse_json(response->body.text());
    if (!value || !value->is_array()) return std::unexpected(detail::bad_response(subject, "the answer is not a JSON array"));
    for (const auto& item : *value) {
      auto entry = detail::parse_tree_entry(item, subject);
      if (!entry) return std::unexpected(entry.error());
      if (*entry && !(*entry)->is_directory()) out.push_back(std::move((*entry)->file));
    }
  }
  return out;
}

HubResult<BatchResult> HubClient::batch(const naming::BucketId& id, std::span<const BatchOperation> operations,
                                        const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, false)) return std::unexpected(*problem);
  const std::string subject = "batch in " + id.str();
  BatchResult result;
  for (const auto& op : operations) {
    if (auto problem = naming::object_key_problem(op.path)) {
      result.failed.push_back({op.path, "invalid path: " + *problem});
    }
    if (op.kind == BatchOperation::Kind::copy_file && !naming::parse_bucket_id(op.source_bucket)) {
      result.failed.push_back({op.path, "copy source '" + op.source_bucket + "' is not a bucket id"});
    }
  }
  if (!result.failed.empty()) {
    result.success = false;
    return result;
  }
  if (operations.empty()) return result;

  // Adds, then copies, then deletes; order kept within each kind.
  std::string body;
  for (const auto kind : {BatchOperation::Kind::add_file, BatchOperation::Kind::copy_file,
                          BatchOperation::Kind::delete_file}) {
    for (const auto& op : operations) {
      if (op.kind != kind) continue;
      json line = json::object();
      line["type"] = batch_type(op.kind);
      line["path"] = op.path;
      if (kind != BatchOperation::Kind::delete_file) line["xetHash"] = op.xet_hash.to_string();
      if (kind == BatchOperation::Kind::add_file) {
        if (op.mtime_ms) line["mtime"] = *op.mtime_ms;
        if (op.content_type) line["contentType"] = *op.content_type;
      }
      if (kind == BatchOperation::Kind::copy_file) {
        line["sourceRepoType"] = "bucket";
        line["sourceRepoId"] = op.source_bucket;
      }
      body += line.dump(-1, ' ', false, json::error_handler_t::replace);
      body += '\n';
    }
  }
  auto req = request("POST", bucket_url(id) + "/batch");
  req.headers.set("Content-Type", "application/x-ndjson");
  req.body = xet::as_byte_span(body);
  auto response = perform(req, cancel, subject);
  if (!response) {
    if (response.error().status != 422) return std::unexpected(on_bucket_route(response.error(), id));
    // The 422 body (failed[]) does not come through http::Error: work out which operations failed.
    result.success = false;
    result.processed = operations.size();
    if (probe_hash_) {
      for (const auto& op : operations) {
        if (op.kind == BatchOperation::Kind::delete_file || op.xet_hash.is_zero()) continue;
        naming::BucketId owner = id;
        if (op.kind == BatchOperation::Kind::copy_file) owner = *naming::parse_bucket_id(op.source_bucket);
        auto known = probe_hash_(owner, op.xet_hash);
        if (!known) break;
        if (!*known) {
          result.failed.push_back({op.path, "unknown xetHash " + op.xet_hash.to_string() + " for bucket " +
                                                owner.str() + ": upload its shard first"});
        }
      }
    }
    if (result.failed.empty()) result.failed.push_back({"", response.error().message});
    return result;
  }
  auto value = detail::parse_json(response->body.text());
  if (value && value->is_object()) {
    result.processed = uint_field(*value, "processed").value_or(operations.size());
    result.succeeded = uint_field(*value, "succeeded").value_or(result.processed);
    if (auto it = value->find("failed"); it != value->end() && it->is_array()) {
      for (const auto& failure : *it) {
        if (!failure.is_object()) continue;
        result.failed.push_back({string_field(failure, "path").value_or(""), string_field(failure, "error").value_or("")});
      }
    }
    if (auto it = value->find("success"); it != value->end() && it->is_boolean()) result.success = it->get<bool>();
  } else {
    result.processed = result.succeeded = operations.size();
  }
  if (!result.failed.empty()) result.success = false;
  return result;
}

HubResult<ResolvedFile> HubClient::resolve(const naming::BucketId& id, std::string_view path,
                                           const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, false)) return std::unexpected(*problem);
  const std::string subject = "'" + std::string(path) + "' in bucket " + id.str();
  const std::string url = settings_.endpoint + "/buckets/" + encode_query(id.ns) + "/" + encode_query(id.name) +
                          "/resolve/" + encode_path(path);
  auto response = perform(request("HEAD", url), cancel, subject);
  if (!response) {
    HubError error = response.error();
    if (error.status == 404) {
      // RepoNotFound or EntryNotFound? http::Error does not carry X-Error-Code: ask about the bucket.
      auto bucket = bucket_info(id, cancel);
      error.kind = !bucket && bucket.error().kind == HubErrorKind::bucket_not_found ? HubErrorKind::bucket_not_found
                                                                                     : HubErrorKind::entry_not_found;
    }
    return std::unexpected(std::move(error));
  }
  ResolvedFile file;
  const auto& headers = response->headers;
  auto size_text = headers.get("X-Linked-Size");
  if (!size_text) size_text = headers.get("Content-Length");
  if (!size_text) return std::unexpected(detail::bad_response(subject, "resolve gave no size"));
  auto [end, ec] = std::from_chars(size_text->data(), size_text->data() + size_text->size(), file.size);
  if (ec != std::errc() || end != size_text->data() + size_text->size()) {
    return std::unexpected(detail::bad_response(subject, "resolve gave a bad size"));
  }
  if (auto hash = headers.get("X-Xet-Hash")) {
    auto parsed = xet::Hash::from_string(*hash);
    if (!parsed) return std::unexpected(detail::bad_response(subject, "resolve gave a bad X-Xet-Hash"));
    file.xet_hash = *parsed;
  }
  auto etag = headers.get("X-Linked-ETag");
  if (!etag) etag = headers.get("ETag");
  if (etag) file.etag = strip_quotes(*etag);
  if (auto modified = headers.get("Last-Modified")) file.last_modified_ms = parse_http_date(*modified);
  return file;
}

HubResult<HubClient::XetToken> HubClient::xet_token(const naming::BucketId& id, bool write,
                                                    const http::CancellationToken* cancel) const {
  if (auto problem = check_id(id, false)) return std::unexpected(*problem);
  const std::string subject = std::string(write ? "write" : "read") + " token for bucket " + id.str();
  auto response =
      perform(request("GET", bucket_url(id) + (write ? "/xet-write-token" : "/xet-read-token")), cancel, subject);
  if (!response) return std::unexpected(on_bucket_route(response.error(), id));
  auto value = detail::parse_json(response->body.text());
  if (!value || !value->is_object()) return std::unexpected(detail::bad_response(subject, "the answer is not a JSON object"));
  XetToken token;
  auto access = string_field(*value, "accessToken");
  auto cas = string_field(*value, "casUrl");
  auto exp = value->find("exp");
  if (!access || access->empty() || !cas || exp == value->end() || !exp->is_number()) {
    return std::unexpected(detail::bad_response(subject, "the answer lacks accessToken, exp or casUrl"));
  }
  token.access_token = std::move(*access);
  token.exp = exp->is_number_float() ? static_cast<std::int64_t>(exp->get<double>()) : exp->get<std::int64_t>();
  token.cas_url = std::move(*cas);
  while (!token.cas_url.empty() && token.cas_url.back() == '/') token.cas_url.pop_back();
  if (origin_of(token.cas_url).empty()) return std::unexpected(detail::bad_response(subject, "casUrl is not an absolute URL"));
  return token;
}

}  // namespace bucketfs::hub
