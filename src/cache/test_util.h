#pragma once
// Helpers shared by the cache/ tests.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bucketfs/cache/chunk_cache.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::cache::testing {

inline xet::Bytes random_bytes(std::size_t size, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  xet::Bytes out(size);
  for (std::size_t i = 0; i < size; i += 8) {
    const std::uint64_t word = rng();
    for (std::size_t k = 0; k < 8 && i + k < size; ++k) out[i + k] = std::byte((word >> (8 * k)) & 0xff);
  }
  return out;
}

// Text-like bytes that zstd compresses well.
inline xet::Bytes compressible_bytes(std::size_t size, std::uint64_t seed) {
  static const std::string kWords[] = {"tensor ", "layer ", "weight ", "bias ", "attention ", "0.0125 ", "\n"};
  std::mt19937_64 rng(seed);
  xet::Bytes out;
  out.reserve(size);
  while (out.size() < size) {
    for (char c : kWords[rng() % 7]) {
      if (out.size() == size) break;
      out.push_back(std::byte(static_cast<unsigned char>(c)));
    }
  }
  return out;
}

inline xet::Hash xorb_named(std::uint64_t n) {
  xet::Hash h;
  for (int i = 0; i < 8; ++i) h.bytes[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
  h.bytes[31] = 0xAB;
  return h;
}

// Chunks of one xorb: their bytes and hashes, and views for put().
struct TestXorb {
  xet::Hash hash;
  std::vector<xet::Bytes> chunks;
  std::vector<xet::Hash> hashes;

  std::vector<ChunkData> data(std::size_t first = 0, std::size_t last = SIZE_MAX) const {
    std::vector<ChunkData> out;
    for (std::size_t i = first; i < std::min(last, chunks.size()); ++i) out.push_back({hashes[i], chunks[i]});
    return out;
  }
  xet::Bytes concat(std::size_t first, std::size_t last) const {
    xet::Bytes out;
    for (std::size_t i = first; i < last; ++i) out.insert(out.end(), chunks[i].begin(), chunks[i].end());
    return out;
  }
};

inline TestXorb make_xorb(std::uint64_t id, std::size_t count, std::size_t chunk_size, bool compressible = false) {
  TestXorb x;
  x.hash = xorb_named(id);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t size = chunk_size + (i * 37) % 1000;  // uneven sizes
    x.chunks.push_back(compressible ? compressible_bytes(size, id * 1000 + i) : random_bytes(size, id * 1000 + i));
    x.hashes.push_back(xet::chunk_hash(x.chunks.back()));
  }
  return x;
}

}  // namespace bucketfs::cache::testing
