#pragma once
// A typed client of the Hub bucket API (reference/BUCKET_API.md section 3): buckets, tree listing,
// paths-info, batch mutations and resolve HEAD.
//
// Transport: the client sends every request through the http::Transport it is given and adds
// nothing but `Authorization: Bearer <hub token>` (when there is a token). Retries with backoff
// belong to that transport (wrap it in http::RetryingTransport); the client never retries on its
// own. The client holds no other state: it is thread-safe as long as the transport is.
//
// URLs: bucket ids go in as `ns/name` with the slash kept (all real clients do this); paths and
// prefixes are percent-encoded per segment with '/' kept (encode_path()), so keys with spaces,
// '#', '?', '%' or non-ASCII bytes work.
//
// Pagination (tree, list_buckets): pages are followed through the `Link: <url>; rel="next"`
// header to the end. The next URL is used as given (it carries every query parameter) but only
// if it points at the same scheme, host and port as the endpoint: the Hub token goes with it.
//
// Errors (HubError, see error.h): 404 on a bucket route is bucket_not_found. A 404 from resolve is
// either; http::Error does not carry the response's X-Error-Code header, so the client asks
// bucket_info once to tell them apart (RepoNotFound vs EntryNotFound). 401 unauthorized, 403
// forbidden, 409 already_exists (create) / conflict, 400 and 422 invalid, 5xx server.

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bucketfs/http/http.h"
#include "bucketfs/hub/error.h"
#include "bucketfs/hub/settings.h"
#include "bucketfs/naming/naming.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::hub {

struct BucketInfo {
  std::string id;  // ns/name
  bool is_private = false;
  std::int64_t created_ms = 0;  // unix milliseconds; 0 when the server omitted it
  std::int64_t updated_ms = 0;
  std::uint64_t size = 0;
  std::uint64_t total_files = 0;
};

struct CreatedBucket {
  std::string id;
  std::string url;
  bool already_existed = false;  // only with CreateBucketOptions::exist_ok
};

struct CreateBucketOptions {
  std::optional<bool> is_private;  // absent: the namespace's default
  bool exist_ok = false;           // a 409 is success (already_existed = true)
};

// A file of a bucket (tree, paths-info).
struct FileEntry {
  std::string path;  // full key from the bucket root
  std::uint64_t size = 0;
  xet::Hash xet_hash;
  std::optional<std::int64_t> mtime_ms;        // the client-supplied modification time
  std::optional<std::int64_t> uploaded_at_ms;  // server time of the upload
};

// One item of a tree listing: a file, or (non-recursive listings only) a directory.
struct TreeEntry {
  enum class Type { file, directory };
  Type type = Type::file;
  FileEntry file;  // for a directory only file.path (no trailing '/') and maybe uploaded_at_ms
  const std::string& path() const { return file.path; }
  bool is_directory() const { return type == Type::directory; }
};

struct TreeOptions {
  bool recursive = true;  // false: immediate children, files and directories
  std::optional<std::size_t> limit;  // page size the server is asked for (it may cap it)
};

// One operation of a batch. The NDJSON lines are written from these.
struct BatchOperation {
  enum class Kind { add_file, copy_file, delete_file };
  Kind kind = Kind::add_file;
  std::string path;
  xet::Hash xet_hash;                       // add_file, copy_file
  std::optional<std::int64_t> mtime_ms;     // add_file
  std::optional<std::string> content_type;  // add_file
  std::string source_bucket;                // copy_file: ns/name of the source bucket

  static BatchOperation add(std::string path, const xet::Hash& hash, std::optional<std::int64_t> mtime_ms = {},
                            std::optional<std::string> content_type = {});
  static BatchOperation copy(std::string path, const xet::Hash& hash, std::string source_bucket);
  static BatchOperation remove(std::string path);
};

struct BatchFailure {
  std::string path;
  std::string error;
};

struct BatchResult {
  bool success = true;  // false when the server answered 422 or reported failures
  std::uint64_t processed = 0;
  std::uint64_t succeeded = 0;
  std::vector<BatchFailure> failed;
};

// What resolve HEAD says about a file.
struct ResolvedFile {
  std::uint64_t size = 0;                 // X-Linked-Size, else Content-Length
  std::optional<xet::Hash> xet_hash;      // X-Xet-Hash
  std::string etag;                       // X-Linked-ETag, else ETag, quotes removed
  std::optional<std::int64_t> last_modified_ms;
};

struct HubClientOptions {
  // Operations per paths-info request (the PY client uses 1000).
  std::size_t paths_info_batch = 1000;
  http::Timeouts timeouts;
};

class HubClient {
 public:
  // `transport` must outlive the client. `settings.token` is used as the Bearer token.
  HubClient(http::Transport& transport, HubSettings settings, HubClientOptions options = {});

  const std::string& endpoint() const { return settings_.endpoint; }
  bool anonymous() const { return !settings_.token.has_value(); }

  // POST /api/buckets/{ns}/{name}. `ns` may be "me".
  HubResult<CreatedBucket> create_bucket(const naming::BucketId& id, CreateBucketOptions options = {},
                                         const http::CancellationToken* cancel = nullptr) const;
  // GET /api/buckets/{id}.
  HubResult<BucketInfo> bucket_info(const naming::BucketId& id, const http::CancellationToken* cancel = nullptr) const;
  // GET /api/buckets/{ns}[?search=], all pages. `ns` may be "me".
  HubResult<std::vector<BucketInfo>> list_buckets(std::string_view ns, std::string_view search = {},
                                                  const http::CancellationToken* cancel = nullptr) const;
  // DELETE /api/buckets/{id}.
  HubResult<void> delete_bucket(const naming::BucketId& id, const http::CancellationToken* cancel = nullptr) const;

  // GET /api/buckets/{id}/tree[/{prefix}], every page. `visit` gets the entries in server order and
  // may return false to stop early (the result is then success). Only one page is held at a time.
  // The server matches `prefix` as a raw string prefix; entries are passed through unfiltered.
  HubResult<void> for_each_tree_entry(const naming::BucketId& id, std::string_view prefix, TreeOptions options,
                                      const std::function<bool(TreeEntry&&)>& visit,
                                      const http::CancellationToken* cancel = nullptr) const;
  // Every entry, collected.
  HubResult<std::vector<TreeEntry>> tree(const naming::BucketId& id, std::string_view prefix, TreeOptions options = {},
                                         const http::CancellationToken* cancel = nullptr) const;

  // POST /api/buckets/{id}/paths-info in batches of options.paths_info_batch. Paths that do not
  // exist are omitted; the order of the result is not that of `paths`.
  HubResult<std::vector<FileEntry>> paths_info(const naming::BucketId& id, std::span<const std::string> paths,
                                               const http::CancellationToken* cancel = nullptr) const;

  // POST /api/buckets/{id}/batch, one request, NDJSON, adds first, then copies, then deletes (the
  // Hub requires adds before deletes; a rename is add(new) + remove(old) in one call). Paths the
  // Hub refuses by name (naming::object_key_problem) are reported as failures without sending
  // anything (the batch would be refused as a whole). A 422 is not an error: the result has
  // success = false and the per-path failures. The server's 422 body is not available through
  // http::Error, so the failures of a server-side 422 are reconstructed by `probe_hash` (when
  // set): an add/copy whose hash the probe says the bucket cannot reference fails with that
  // reason. Without a probe, or when it finds nothing, the result carries one failure with an
  // empty path and the server's message.
  HubResult<BatchResult> batch(const naming::BucketId& id, std::span<const BatchOperation> operations,
                               const http::CancellationToken* cancel = nullptr) const;

  // Tells whether `owner` may reference file `hash` (e.g. CasClient::head_file with a token of
  // that bucket): true, false, or an error. Used only to explain a 422 (see batch()).
  using HashProbe = std::function<HubResult<bool>(const naming::BucketId& owner, const xet::Hash& hash)>;
  void set_hash_probe(HashProbe probe) { probe_hash_ = std::move(probe); }

  // HEAD /buckets/{id}/resolve/{path}, redirects not followed.
  HubResult<ResolvedFile> resolve(const naming::BucketId& id, std::string_view path,
                                  const http::CancellationToken* cancel = nullptr) const;

  // GET {endpoint}/api/buckets/{id}/xet-{read|write}-token, raw: what XetTokenSource caches.
  struct XetToken {
    std::string access_token;  // SECRET
    std::int64_t exp = 0;      // unix seconds
    std::string cas_url;       // no trailing '/'
  };
  HubResult<XetToken> xet_token(const naming::BucketId& id, bool write,
                                const http::CancellationToken* cancel = nullptr) const;

 private:
  http::Request request(std::string method, std::string url) const;
  HubResult<http::Response> perform(const http::Request& request, const http::CancellationToken* cancel,
                                    std::string_view what) const;
  std::string bucket_url(const naming::BucketId& id) const;

  http::Transport& transport_;
  HubSettings settings_;
  HubClientOptions options_;
  HashProbe probe_hash_;
};

// ---- Helpers shared with the tests -------------------------------------------------------------

// Percent-encodes a key for a URL path: every byte but ALPHA DIGIT - . _ ~ and '/' becomes %XX.
std::string encode_path(std::string_view path);
// Percent-encodes a query value (also '/').
std::string encode_query(std::string_view value);
// The URL of `rel="next"` in a Link header value, or nullopt.
std::optional<std::string> link_next(std::string_view link_header);
// ISO-8601 UTC ("2024-09-25T15:31:02.346Z", 0-9 fraction digits, 'Z' or +00:00) to unix ms.
std::optional<std::int64_t> parse_iso8601_ms(std::string_view text);
// "scheme://host[:port]" of a URL (lower-cased scheme and host), or "" when it is not absolute.
std::string origin_of(std::string_view url);

}  // namespace bucketfs::hub
