#pragma once
// What the Hub accepts as names: bucket ids and object keys (reference/storage-buckets-s3.md
// "Object key naming", BUCKET_API.md section 6). Shared by the server, which refuses bad names
// with a 4xx, and the client and mount, which refuse them before any request (EINVAL).

#include <expected>
#include <optional>
#include <string>
#include <string_view>

namespace bucketfs::naming {

// A bucket id `namespace/name`.
struct BucketId {
  std::string ns;
  std::string name;

  std::string str() const { return ns + "/" + name; }
  bool operator==(const BucketId&) const = default;
};

// Why a name was refused, or nullopt when it is acceptable. The message is one line and names
// the rule ("contains '//'").
std::optional<std::string> object_key_problem(std::string_view key);

// A namespace or bucket name: 1..96 of [A-Za-z0-9_.-], no "--" or "..", not starting or ending
// with '-' or '.' (the Hub's repo-name rules, which buckets are inferred to share).
std::optional<std::string> name_problem(std::string_view name);

// Parses `ns/name` (exactly one '/', both parts valid names).
std::optional<BucketId> parse_bucket_id(std::string_view text);

// A place in a bucket: the bucket and a key or key prefix ("" for the root).
struct BucketPath {
  BucketId bucket;
  std::string path;             // no leading or trailing '/'
  bool trailing_slash = false;  // the text ended with '/' (a folder, rsync style)

  std::string uri() const { return "hf://buckets/" + bucket.str() + (path.empty() ? "" : "/" + path); }
};

// Parses `hf://buckets/ns/name[/path]` or a plain `ns/name[/path]`, the forms the `hf` CLI accepts
// (BUCKET_API.md section 5). Refuses `hf://bucket/` (must be plural), other repo types, a missing
// namespace or name, '@' in the bucket id (buckets have no revision), and a path with "//".
// The error is one line naming the text.
std::expected<BucketPath, std::string> parse_bucket_path(std::string_view text);

// Whether `text` names a bucket location (starts with hf://) rather than a local file.
inline bool is_bucket_uri(std::string_view text) { return text.starts_with("hf://"); }

}  // namespace bucketfs::naming
