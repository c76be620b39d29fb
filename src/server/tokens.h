#pragma once
// Who may do what on bucketfs-server.
//
// Hub tokens come from the tokens file, one per line: `<token> <read|write> <ns>[,<ns>...]`,
// `#` starting a comment. They look like Hub tokens (`hf_...`) because the npm client refuses
// any other. A token grants its access on every bucket of the listed namespaces.
//
// CAS tokens (the `accessToken` of xet-read-token / xet-write-token) and the signed xorb range
// URLs of reconstruction responses are issued by the server itself: a payload and a BLAKE3
// keyed MAC under the server's secret (32 random bytes in DATA/secret, mode 0600). They are
// scoped to one bucket and one access level and expire.

#include <array>
#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bucketfs::server {

enum class Access { kRead, kWrite };

struct HubToken {
  std::string token;
  Access access = Access::kRead;
  std::vector<std::string> namespaces;

  bool may_read(std::string_view ns) const;
  bool may_write(std::string_view ns) const;
};

class HubTokens {
 public:
  // Parses a tokens file. Errors name the file and line, never the token.
  static std::expected<HubTokens, std::string> load(const std::string& path);
  // Writes a new tokens file with one write token for namespace `local` (mode 0600) and loads it.
  static std::expected<HubTokens, std::string> create_default(const std::string& path);

  // The token equal to `bearer`, compared in constant time; nullptr when there is none.
  const HubToken* find(std::string_view bearer) const;
  const std::vector<HubToken>& all() const { return tokens_; }

 private:
  std::vector<HubToken> tokens_;
};

struct CasGrant {
  std::string bucket;  // "ns/name"
  Access access = Access::kRead;
  std::int64_t expires_at = 0;  // unix seconds
  // The bucket's creation time (unix ms): a token outlives neither its bucket nor a later bucket
  // created under the same name.
  std::int64_t bucket_created_ms = 0;
};

enum class TokenCheck { kValid, kExpired, kInvalid };

class Signer {
 public:
  // Loads DATA/secret, creating it (0600) with 32 random bytes when missing.
  static std::expected<Signer, std::string> open(const std::string& data_dir);
  explicit Signer(const std::array<std::uint8_t, 32>& secret) : secret_(secret) {}

  std::string issue_cas_token(const CasGrant& grant) const;
  // The grant a CAS token carries, and whether it is still valid at `now`.
  std::pair<TokenCheck, CasGrant> check_cas_token(std::string_view token, std::int64_t now) const;

  // A signature authorising GETs of bytes [first, last] (inclusive) of xorb `xorb_hex` until
  // `expires_at`; the URL carries the three values and the signature.
  std::string sign_xorb_range(std::string_view xorb_hex, std::uint64_t first, std::uint64_t last,
                              std::int64_t expires_at) const;
  bool verify_xorb_range(std::string_view xorb_hex, std::uint64_t first, std::uint64_t last,
                         std::int64_t expires_at, std::string_view signature) const;

  // A per-server key for the chunk hashes of global dedup answers.
  std::array<std::uint8_t, 32> derive_key(std::string_view purpose) const;

 private:
  std::string mac_hex(std::string_view message) const;
  std::array<std::uint8_t, 32> secret_;
};

// Constant-time equality of two strings (length may leak).
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace bucketfs::server
