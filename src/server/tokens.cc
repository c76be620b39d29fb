#include "tokens.h"

#include <blake3.h>
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace bucketfs::server {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

std::string to_hex(const std::uint8_t* data, std::size_t size) {
  std::string out(size * 2, '0');
  for (std::size_t i = 0; i < size; ++i) {
    out[2 * i] = kHexDigits[data[i] >> 4];
    out[2 * i + 1] = kHexDigits[data[i] & 0xf];
  }
  return out;
}

std::optional<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return std::nullopt;
  std::string out(hex.size() / 2, '\0');
  for (std::size_t i = 0; i < out.size(); ++i) {
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int high = nibble(hex[2 * i]);
    const int low = nibble(hex[2 * i + 1]);
    if (high < 0 || low < 0) return std::nullopt;
    out[i] = static_cast<char>(high << 4 | low);
  }
  return out;
}

bool fill_random(std::uint8_t* data, std::size_t size) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t got = ::getrandom(data + done, size - done, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<std::size_t>(got);
  }
  return true;
}

// Writes `content` to `path` with mode 0600, atomically (temporary file, fsync, rename).
std::expected<void, std::string> write_private_file(const std::string& path, std::string_view content) {
  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return std::unexpected("cannot create " + temporary + ": " + std::strerror(errno));
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t wrote = ::write(fd, content.data() + done, content.size() - done);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      const std::string message = "cannot write " + temporary + ": " + std::strerror(errno);
      ::close(fd);
      return std::unexpected(message);
    }
    done += static_cast<std::size_t>(wrote);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || ::rename(temporary.c_str(), path.c_str()) != 0) {
    return std::unexpected("cannot write " + path + ": " + std::strerror(errno));
  }
  return {};
}

}  // namespace

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (std::size_t i = 0; i < a.size(); ++i) difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  return difference == 0;
}

bool HubToken::may_read(std::string_view ns) const {
  for (const auto& allowed : namespaces) {
    if (allowed == ns) return true;
  }
  return false;
}

bool HubToken::may_write(std::string_view ns) const { return access == Access::kWrite && may_read(ns); }

std::expected<HubTokens, std::string> HubTokens::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::unexpected("cannot read tokens file " + path + ": " + std::strerror(errno));
  HubTokens tokens;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (const auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream fields(line);
    std::string token, access, namespaces, extra;
    if (!(fields >> token)) continue;
    const std::string where = path + ":" + std::to_string(number);
    if (!(fields >> access >> namespaces) || (fields >> extra)) {
      return std::unexpected(where + ": expected '<token> <read|write> <namespace>[,<namespace>...]'");
    }
    if (!token.starts_with("hf_") || token.size() < 8) {
      return std::unexpected(where + ": a token must start with 'hf_' and have at least 8 characters");
    }
    HubToken entry;
    entry.token = token;
    if (access == "read") {
      entry.access = Access::kRead;
    } else if (access == "write") {
      entry.access = Access::kWrite;
    } else {
      return std::unexpected(where + ": access must be 'read' or 'write', not '" + access + "'");
    }
    std::size_t start = 0;
    while (start <= namespaces.size()) {
      const auto comma = namespaces.find(',', start);
      const auto ns = namespaces.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (ns.empty()) return std::unexpected(where + ": empty namespace");
      entry.namespaces.push_back(ns);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    for (const auto& other : tokens.tokens_) {
      if (other.token == entry.token) return std::unexpected(where + ": the same token appears twice");
    }
    tokens.tokens_.push_back(std::move(entry));
  }
  return tokens;
}

std::expected<HubTokens, std::string> HubTokens::create_default(const std::string& path) {
  std::uint8_t random[20];
  if (!fill_random(random, sizeof random)) return std::unexpected("cannot get random bytes for a token");
  const std::string content = "# bucketfs-server tokens: <token> <read|write> <namespace>[,<namespace>...]\n"
                              "hf_" + to_hex(random, sizeof random) + " write local\n";
  if (auto written = write_private_file(path, content); !written) return std::unexpected(written.error());
  return load(path);
}

const HubToken* HubTokens::find(std::string_view bearer) const {
  const HubToken* match = nullptr;
  for (const auto& token : tokens_) {
    if (constant_time_equal(token.token, bearer)) match = &token;
  }
  return match;
}

std::expected<Signer, std::string> Signer::open(const std::string& data_dir) {
  const std::string path = data_dir + "/secret";
  std::array<std::uint8_t, 32> secret{};
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    const ssize_t got = ::read(fd, secret.data(), secret.size());
    ::close(fd);
    if (got != static_cast<ssize_t>(secret.size())) return std::unexpected(path + " is not a 32-byte secret");
    return Signer(secret);
  }
  if (errno != ENOENT) return std::unexpected("cannot read " + path + ": " + std::strerror(errno));
  if (!fill_random(secret.data(), secret.size())) return std::unexpected("cannot get random bytes for " + path);
  auto written = write_private_file(
      path, std::string_view(reinterpret_cast<const char*>(secret.data()), secret.size()));
  if (!written) return std::unexpected(written.error());
  return Signer(secret);
}

std::string Signer::mac_hex(std::string_view message) const {
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, secret_.data());
  blake3_hasher_update(&hasher, message.data(), message.size());
  std::uint8_t out[32];
  blake3_hasher_finalize(&hasher, out, sizeof out);
  return to_hex(out, sizeof out);
}

std::string Signer::issue_cas_token(const CasGrant& grant) const {
  const std::string payload = std::string("cas2|") + (grant.access == Access::kWrite ? "w" : "r") + "|" +
                              std::to_string(grant.bucket_created_ms) + "|" + std::to_string(grant.expires_at) +
                              "|" + grant.bucket;
  return "xet_" + to_hex(reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()) + "." +
         mac_hex(payload);
}

std::pair<TokenCheck, CasGrant> Signer::check_cas_token(std::string_view token, std::int64_t now) const {
  CasGrant grant;
  if (!token.starts_with("xet_")) return {TokenCheck::kInvalid, grant};
  token.remove_prefix(4);
  const auto dot = token.find('.');
  if (dot == std::string_view::npos) return {TokenCheck::kInvalid, grant};
  const auto payload = from_hex(token.substr(0, dot));
  if (!payload || !constant_time_equal(mac_hex(*payload), token.substr(dot + 1))) {
    return {TokenCheck::kInvalid, grant};
  }
  // cas2|<r|w>|<bucket created ms>|<expiry>|<bucket>  (the bucket last: it is the free-form part)
  const auto first = payload->find('|');
  const auto second = payload->find('|', first + 1);
  const auto third = payload->find('|', second + 1);
  const auto fourth = payload->find('|', third + 1);
  if (first == std::string::npos || second == std::string::npos || third == std::string::npos ||
      fourth == std::string::npos || payload->substr(0, first) != "cas2") {
    return {TokenCheck::kInvalid, grant};
  }
  const auto access = payload->substr(first + 1, second - first - 1);
  grant.access = access == "w" ? Access::kWrite : Access::kRead;
  grant.bucket = payload->substr(fourth + 1);
  try {
    grant.bucket_created_ms = std::stoll(payload->substr(second + 1, third - second - 1));
    grant.expires_at = std::stoll(payload->substr(third + 1, fourth - third - 1));
  } catch (...) {
    return {TokenCheck::kInvalid, grant};
  }
  if (now >= grant.expires_at) return {TokenCheck::kExpired, grant};
  return {TokenCheck::kValid, grant};
}

std::string Signer::sign_xorb_range(std::string_view xorb_hex, std::uint64_t first, std::uint64_t last,
                                    std::int64_t expires_at) const {
  return mac_hex("xorb1|" + std::string(xorb_hex) + "|" + std::to_string(first) + "|" + std::to_string(last) + "|" +
                 std::to_string(expires_at));
}

bool Signer::verify_xorb_range(std::string_view xorb_hex, std::uint64_t first, std::uint64_t last,
                               std::int64_t expires_at, std::string_view signature) const {
  return constant_time_equal(sign_xorb_range(xorb_hex, first, last, expires_at), signature);
}

std::array<std::uint8_t, 32> Signer::derive_key(std::string_view purpose) const {
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, secret_.data());
  const std::string message = "derive|" + std::string(purpose);
  blake3_hasher_update(&hasher, message.data(), message.size());
  std::array<std::uint8_t, 32> out{};
  blake3_hasher_finalize(&hasher, out.data(), out.size());
  return out;
}

}  // namespace bucketfs::server
