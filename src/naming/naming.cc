#include "bucketfs/naming/naming.h"

#include <algorithm>

namespace bucketfs::naming {

std::optional<std::string> object_key_problem(std::string_view key) {
  if (key.empty()) return "is empty";
  if (key.size() > 1024) return "is longer than 1024 bytes";
  if (key.front() == '/') return "starts with '/'";
  if (key.back() == '/') return "ends with '/'";
  if (key.find("//") != std::string_view::npos) return "contains '//'";
  if (key.find('\\') != std::string_view::npos) return "contains a backslash";
  if (key.find('\0') != std::string_view::npos) return "contains a NUL byte";
  if (key.starts_with("./")) return "starts with './'";
  if (key == "." || key == "..") return "is '.' or '..'";
  if (key.ends_with("/..") || key.ends_with("/.")) return "ends with a '.' or '..' segment";
  if (key.starts_with("../") || key.find("/../") != std::string_view::npos) return "contains a '..' segment";
  if (key.find("/./") != std::string_view::npos) return "contains a '.' segment";
  for (unsigned char c : key) {
    if (c < 0x20 || c == 0x7f) return "contains a control character";
  }
  return std::nullopt;
}

std::optional<std::string> name_problem(std::string_view name) {
  if (name.empty()) return "is empty";
  if (name.size() > 96) return "is longer than 96 characters";
  const bool allowed = std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
           c == '.';
  });
  if (!allowed) return "may only contain letters, digits, '_', '-' and '.'";
  if (name.find("--") != std::string_view::npos || name.find("..") != std::string_view::npos) {
    return "may not contain '--' or '..'";
  }
  if (name.front() == '-' || name.front() == '.' || name.back() == '-' || name.back() == '.') {
    return "may not start or end with '-' or '.'";
  }
  return std::nullopt;
}

std::optional<BucketId> parse_bucket_id(std::string_view text) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos || text.find('/', slash + 1) != std::string_view::npos) return std::nullopt;
  BucketId id{std::string(text.substr(0, slash)), std::string(text.substr(slash + 1))};
  if (name_problem(id.ns) || name_problem(id.name)) return std::nullopt;
  return id;
}

std::expected<BucketPath, std::string> parse_bucket_path(std::string_view text) {
  const std::string shown(text.substr(0, 200));
  std::string_view rest = text;
  if (rest.starts_with("hf://")) {
    rest.remove_prefix(5);
    if (rest.starts_with("bucket/")) return std::unexpected("'" + shown + "': use hf://buckets/ (plural)");
    if (!rest.starts_with("buckets/")) {
      return std::unexpected("'" + shown + "' is not a bucket: expected hf://buckets/NAMESPACE/NAME[/PATH]");
    }
    rest.remove_prefix(8);
  }
  BucketPath out;
  out.trailing_slash = rest.ends_with('/');
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.starts_with('/')) return std::unexpected("'" + shown + "': a bucket path may not start with '/'");
  const auto first = rest.find('/');
  if (first == std::string_view::npos) {
    return std::unexpected("'" + shown + "': expected NAMESPACE/NAME[/PATH]");
  }
  const auto second = rest.find('/', first + 1);
  const std::string_view id = rest.substr(0, second);
  if (id.find('@') != std::string_view::npos) return std::unexpected("'" + shown + "': buckets have no revision ('@')");
  auto bucket = parse_bucket_id(id);
  if (!bucket) return std::unexpected("'" + shown + "': '" + std::string(id) + "' is not a valid bucket id");
  out.bucket = std::move(*bucket);
  if (second != std::string_view::npos) {
    out.path = std::string(rest.substr(second + 1));
    if (out.path.find("//") != std::string::npos || out.path.starts_with('/')) {
      return std::unexpected("'" + shown + "': a bucket path may not contain '//'");
    }
  }
  return out;
}

}  // namespace bucketfs::naming
