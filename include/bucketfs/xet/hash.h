#pragma once
// Xet hashes (hashing.md): 32-byte BLAKE3 keyed hashes of chunks, xorbs, files and term ranges,
// and their API string form (api.md "Converting Hashes to Strings").

#include <array>
#include <compare>
#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <blake3.h>

#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/error.h"

namespace bucketfs::xet {

// A 32-byte hash as raw bytes, in the order BLAKE3 produces them (and the order they take in
// xorbs and shards). Ordering is bytewise; it is not the order of the string form.
struct Hash {
  std::array<std::uint8_t, 32> bytes{};

  auto operator<=>(const Hash&) const = default;

  bool is_zero() const;
  // The i-th (0..3) little-endian 64-bit word of the raw bytes, as xet-core's [u64; 4].
  std::uint64_t word(int i) const;

  // The API string form: the four little-endian u64 words, each as 16 lowercase hex digits.
  std::string to_string() const;
  // Inverse of to_string(); accepts upper or lower case. Error kInvalidHash names the input.
  static Result<Hash> from_string(std::string_view text);
  static Hash from_raw(std::span<const std::byte, 32> raw);
};

// A chunk's hash together with its uncompressed length: the leaves of xorb and file hashes.
struct HashAndSize {
  Hash hash;
  std::uint64_t size = 0;
  bool operator==(const HashAndSize&) const = default;
};

// BLAKE3 keyed with DATA_KEY over the chunk bytes.
Hash chunk_hash(ByteSpan chunk);

// Verifying part of a chunk. BLAKE3 hashes its input as a binary tree over 1 KiB pieces, so a
// chunk hash can be recomputed from the chaining values of the chunk's aligned 16 KiB groups
// (its "group values"). A cache that keeps a chunk's group values can check the bytes of one
// group against the chunk hash without reading the rest of the chunk; a wrong group value
// changes the recomputed hash, so the group values themselves need no trust.
inline constexpr std::size_t kChunkGroupBytes = 16 * 1024;
inline constexpr std::size_t kMaxChunkGroups = 8;  // groups of a chunk of xet's 128 KiB maximum

// How many group values a chunk of `size` bytes has: 0 when it is one group or less (such a
// chunk is verified whole) or longer than kMaxChunkGroups groups; else ceil(size / 16 KiB).
std::size_t chunk_group_count(std::size_t size);

// The value of group `index` of a chunk, from that group's bytes: kChunkGroupBytes, or the
// rest of the chunk for its last group. REQUIRES: the chunk has group values.
Hash chunk_group_value(ByteSpan group, std::size_t index);

// Every group value of `chunk`, in order, into `out` (chunk_group_count(chunk.size()) entries,
// none for a chunk without group values), and returns the chunk hash: the same as
// chunk_hash(chunk), in about the same time.
Hash chunk_group_values(ByteSpan chunk, std::span<Hash> out);

// The chunk hash that group values `groups` of a chunk of `chunk_size` bytes give. Equals
// chunk_hash(chunk) exactly when every value is the chunk's own.
// REQUIRES: groups.size() == chunk_group_count(chunk_size) > 0.
Hash chunk_hash_from_groups(std::span<const Hash> groups, std::size_t chunk_size);

// Incremental chunk hash, for data that arrives in pieces. Equivalent to chunk_hash() of the
// concatenation. Cheap to reset; holds no heap memory.
class ChunkHashState {
 public:
  ChunkHashState();
  ChunkHashState(const ChunkHashState&) = default;
  ChunkHashState& operator=(const ChunkHashState&) = default;
  void update(ByteSpan data);
  Hash finish() const;
  void reset();

 private:
  blake3_hasher hasher_;
};

// The xorb hash: the root of xet-core's aggregated merkle tree over (chunk hash, size) pairs, a
// tree whose nodes have 2..9 children cut where a child's hash word 3 is divisible by 4.
// Empty input gives the zero hash.
Hash xorb_hash(std::span<const HashAndSize> chunks);

// The file hash: the xorb-style root, keyed-hashed again with a zero key (salt). Empty input
// (an empty file) gives the zero hash.
Hash file_hash(std::span<const HashAndSize> chunks);
Hash file_hash_with_salt(std::span<const HashAndSize> chunks, const Hash& salt);
// The last step of file_hash(): the aggregated root (from AggregatedHasher) keyed with `salt`.
// REQUIRES: the file has at least one chunk (an empty file's hash is the zero hash).
Hash file_hash_from_root(const Hash& root, const Hash& salt = Hash{});

// A term verification hash: BLAKE3 keyed with VERIFICATION_KEY over the concatenated raw chunk
// hashes of the term's chunk range.
Hash verification_hash(std::span<const Hash> chunk_hashes);

// A parent node of that tree: the keyed hash of its children's "<hash> : <size>\n" lines, and the
// sum of their sizes.
HashAndSize merged_node(std::span<const HashAndSize> children);
// Whether a node with this hash ends its group of siblings in that tree (when the group has at
// least 3 nodes by then): hash word 3 divisible by 4.
bool is_natural_cut(const Hash& hash);

// Builds the same root as xorb_hash() from pairs fed one at a time, in O(log n) memory, so that
// hashing a file of any size does not keep every chunk hash.
class AggregatedHasher {
 public:
  void add(const HashAndSize& leaf);
  // The root over everything added (zero hash when nothing was). Leaves the hasher empty.
  Hash finish();
  std::uint64_t total_size() const { return total_size_; }
  std::uint64_t leaf_count() const { return leaf_count_; }

 private:
  // levels_[k] holds nodes of depth k not yet merged into level k+1; emitted_[k] says whether
  // level k has already produced a parent (then it is not the root).
  std::vector<std::vector<HashAndSize>> levels_;
  std::vector<bool> emitted_;
  std::uint64_t total_size_ = 0;
  std::uint64_t leaf_count_ = 0;

  void push(std::size_t level, const HashAndSize& node);
  void drain_ready(std::size_t level);
};

}  // namespace bucketfs::xet

template <>
struct std::hash<bucketfs::xet::Hash> {
  std::size_t operator()(const bucketfs::xet::Hash& hash) const noexcept { return hash.word(0); }
};
