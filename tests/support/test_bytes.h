#pragma once
// Deterministic test inputs shared by the xet unit tests: random bytes, bf16-like weights (the
// data ByteGrouping4 exists for) and random hashes.

#include <bit>
#include <cstdint>
#include <random>

#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::testing {

inline xet::Bytes random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  xet::Bytes out(n);
  for (auto& b : out) b = std::byte(rng() & 0xff);
  return out;
}

// bf16 weights of small magnitude: the high byte (sign + exponent) takes few values, the low
// byte is noise.
inline xet::Bytes bf16_like(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> weight(0.0f, 0.02f);
  xet::Bytes out(n);
  for (std::size_t i = 0; i + 1 < n; i += 2) {
    const auto bits = std::bit_cast<std::uint32_t>(weight(rng));
    out[i] = std::byte((bits >> 16) & 0xff);
    out[i + 1] = std::byte((bits >> 24) & 0xff);
  }
  return out;
}

inline xet::Hash random_hash(std::mt19937_64& rng) {
  xet::Hash hash;
  for (auto& b : hash.bytes) b = static_cast<std::uint8_t>(rng());
  return hash;
}

}  // namespace bucketfs::testing
