#pragma once
// What the Hub accepts as names: bucket ids and object keys (reference/storage-buckets-s3.md
// "Object key naming", BUCKET_API.md section 6). Shared by the server, which refuses bad names
// with a 4xx, and the client and mount, which refuse them before any request (EINVAL).

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

}  // namespace bucketfs::naming
