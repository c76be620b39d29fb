#include "bucketfs/xet/hash.h"

#include <algorithm>
#include <bit>
#include <charconv>

// Two internal entry points of the BLAKE3 C sources we build (blake3_impl.h, not installed as a
// public header): one compression, and many equal-length inputs hashed in SIMD lanes. The group
// values of a chunk are BLAKE3 chaining values, which the public API does not expose.
extern "C" {
void blake3_compress_in_place(std::uint32_t cv[8], const std::uint8_t block[64], std::uint8_t block_len,
                              std::uint64_t counter, std::uint8_t flags);
void blake3_hash_many(const std::uint8_t* const* inputs, std::size_t num_inputs, std::size_t blocks,
                      const std::uint32_t key[8], std::uint64_t counter, bool increment_counter, std::uint8_t flags,
                      std::uint8_t flags_start, std::uint8_t flags_end, std::uint8_t* out);
}

namespace bucketfs::xet {
namespace {

constexpr std::uint8_t kDataKey[32] = {102, 151, 245, 119, 91,  149, 80,  222, 49,  53,  203,
                                       172, 165, 151, 24,  28,  157, 228, 33,  16,  155, 235,
                                       43,  88,  180, 208, 176, 75,  147, 173, 242, 41};
constexpr std::uint8_t kInternalNodeKey[32] = {1,   126, 197, 199, 165, 71,  41,  150, 253, 148, 102,
                                               102, 180, 138, 2,   230, 93,  221, 83,  111, 55,  199,
                                               109, 210, 248, 99,  82,  230, 74,  83,  113, 63};
constexpr std::uint8_t kVerificationKey[32] = {127, 24,  87,  214, 206, 86,  237, 102, 18,  127, 249,
                                               19,  231, 165, 195, 243, 164, 205, 38,  213, 181, 219,
                                               73,  230, 65,  36,  152, 127, 40,  251, 148, 195};

Hash keyed_hash(const std::uint8_t* key, const void* data, std::size_t size) {
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, key);
  blake3_hasher_update(&hasher, data, size);
  Hash out;
  blake3_hasher_finalize(&hasher, out.bytes.data(), out.bytes.size());
  return out;
}

// BLAKE3's tree (the BLAKE3 paper, section 2): 1 KiB pieces ("chunks" there) of 64-byte blocks,
// each piece's blocks chained from the key with CHUNK_START / CHUNK_END on its first / last
// block and the piece's index as counter; then parents over pairs of chaining values, the left
// subtree always the largest power of two of pieces that leaves at least one on the right; the
// topmost compression carries ROOT.
constexpr std::size_t kPieceBytes = 1024;
constexpr std::size_t kBlockBytes = 64;
constexpr std::size_t kPiecesPerGroup = kChunkGroupBytes / kPieceBytes;
constexpr std::uint8_t kChunkStart = 1, kChunkEnd = 2, kParent = 4, kRoot = 8, kKeyedHash = 16;

struct KeyWords {
  std::uint32_t words[8];
};

const KeyWords& data_key_words() {
  static const KeyWords words = [] {
    KeyWords made{};
    for (int i = 0; i < 8; ++i) {
      made.words[i] = std::uint32_t{kDataKey[4 * i]} | std::uint32_t{kDataKey[4 * i + 1]} << 8 |
                      std::uint32_t{kDataKey[4 * i + 2]} << 16 | std::uint32_t{kDataKey[4 * i + 3]} << 24;
    }
    return made;
  }();
  return words;
}

Hash hash_of_words(const std::uint32_t words[8]) {
  Hash out;
  for (int i = 0; i < 8; ++i) {
    for (int b = 0; b < 4; ++b) out.bytes[4 * i + b] = static_cast<std::uint8_t>(words[i] >> (8 * b));
  }
  return out;
}

Hash parent_value(const Hash& left, const Hash& right, bool root) {
  std::uint8_t block[kBlockBytes];
  std::memcpy(block, left.bytes.data(), 32);
  std::memcpy(block + 32, right.bytes.data(), 32);
  std::uint32_t cv[8];
  std::memcpy(cv, data_key_words().words, sizeof cv);
  blake3_compress_in_place(cv, block, kBlockBytes, 0, kKeyedHash | kParent | (root ? kRoot : 0));
  return hash_of_words(cv);
}

// Pieces a subtree of `pieces` pieces gives its left child.
std::size_t left_pieces(std::size_t pieces) { return std::bit_floor(pieces - 1); }

// Merges the values of `count` consecutive pieces (or groups: `unit` pieces each, the last
// possibly fewer, `last_pieces` of them) into their subtree's value.
Hash merge_values(const Hash* values, std::size_t count, std::size_t unit, std::size_t last_pieces, bool root) {
  if (count == 1) return values[0];
  const std::size_t pieces = (count - 1) * unit + last_pieces;
  const std::size_t left = left_pieces(pieces) / unit;  // a whole number of units (see the caller)
  return parent_value(merge_values(values, left, unit, unit, false),
                      merge_values(values + left, count - left, unit, last_pieces, false), root);
}

// Piece values of `bytes` (pieces numbered from `first_piece`), 32 bytes each, into `out`;
// returns how many. The full pieces go through SIMD lanes in one call.
std::size_t piece_values(ByteSpan bytes, std::uint64_t first_piece, std::uint8_t* out) {
  const std::size_t full = bytes.size() / kPieceBytes;
  const std::size_t tail = bytes.size() % kPieceBytes;
  const auto* data = reinterpret_cast<const std::uint8_t*>(bytes.data());
  if (full > 0) {
    const std::uint8_t* inputs[kMaxChunkGroups * kPiecesPerGroup];
    for (std::size_t i = 0; i < full; ++i) inputs[i] = data + i * kPieceBytes;
    blake3_hash_many(inputs, full, kPieceBytes / kBlockBytes, data_key_words().words, first_piece, true, kKeyedHash,
                     kChunkStart, kChunkEnd, out);
  }
  if (tail == 0) return full;
  std::uint32_t cv[8];
  std::memcpy(cv, data_key_words().words, sizeof cv);
  const std::size_t blocks = (tail + kBlockBytes - 1) / kBlockBytes;
  for (std::size_t b = 0; b < blocks; ++b) {
    std::uint8_t block[kBlockBytes] = {};
    const std::size_t length = std::min(kBlockBytes, tail - b * kBlockBytes);
    std::memcpy(block, data + full * kPieceBytes + b * kBlockBytes, length);
    const std::uint8_t flags = kKeyedHash | (b == 0 ? kChunkStart : 0) | (b + 1 == blocks ? kChunkEnd : 0);
    blake3_compress_in_place(cv, block, static_cast<std::uint8_t>(length), first_piece + full, flags);
  }
  const Hash last = hash_of_words(cv);
  std::memcpy(out + 32 * full, last.bytes.data(), 32);
  return full + 1;
}

// Reduces the values of `groups` full groups (16 piece values each, back to back in `values`)
// to one value per group, at the front of `values`: level by level, each level's parents in
// SIMD lanes (a pair of neighbouring values is one parent block).
void reduce_full_groups(std::uint8_t* values, std::size_t groups) {
  std::uint8_t parents[kMaxChunkGroups * kPiecesPerGroup / 2 * 32];
  const std::uint8_t* inputs[kMaxChunkGroups * kPiecesPerGroup / 2];
  for (std::size_t count = groups * kPiecesPerGroup; count > groups; count /= 2) {
    for (std::size_t i = 0; i < count / 2; ++i) inputs[i] = values + 64 * i;
    blake3_hash_many(inputs, count / 2, 1, data_key_words().words, 0, false, kKeyedHash | kParent, 0, 0, parents);
    std::memcpy(values, parents, count / 2 * 32);
  }
}

Hash value_at(const std::uint8_t* values, std::size_t i) {
  Hash out;
  std::memcpy(out.bytes.data(), values + 32 * i, 32);
  return out;
}

// The (non-root) value of the subtree over `bytes` (at most one group, not empty), whose first
// piece is piece number `first_piece` of the chunk.
Hash subtree_value(ByteSpan bytes, std::uint64_t first_piece) {
  std::uint8_t values[kPiecesPerGroup * 32];
  const std::size_t pieces = piece_values(bytes, first_piece, values);
  if (bytes.size() == kChunkGroupBytes) {
    reduce_full_groups(values, 1);
    return value_at(values, 0);
  }
  Hash hashes[kPiecesPerGroup];
  for (std::size_t i = 0; i < pieces; ++i) hashes[i] = value_at(values, i);
  return merge_values(hashes, pieces, 1, 1, false);
}

constexpr char kHexDigits[] = "0123456789abcdef";

// Appends "<hash string> : <size>\n", the line xet-core writes per child of an internal node.
void append_node_line(std::string& buffer, const HashAndSize& node) {
  buffer += node.hash.to_string();
  buffer += " : ";
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, node.size);
  buffer.append(digits, end);
  buffer += '\n';
}

HashAndSize merge_nodes(std::span<const HashAndSize> nodes) {
  thread_local std::string buffer;
  buffer.clear();
  std::uint64_t total = 0;
  for (const auto& node : nodes) {
    append_node_line(buffer, node);
    total += node.size;
  }
  return {keyed_hash(kInternalNodeKey, buffer.data(), buffer.size()), total};
}

constexpr std::size_t kMeanBranching = 4;
constexpr std::size_t kMaxChildren = 2 * kMeanBranching + 1;

// How many of the nodes starting at `nodes` form the next parent. `at_end` says no nodes follow
// the span; otherwise returns 0 when more nodes are needed to decide.
std::size_t next_merge_cut(std::span<const HashAndSize> nodes, bool at_end) {
  if (nodes.size() <= 2) return at_end ? nodes.size() : 0;
  const std::size_t end = std::min(kMaxChildren, nodes.size());
  for (std::size_t i = 2; i < end; ++i) {
    if (nodes[i].hash.word(3) % kMeanBranching == 0) return i + 1;
  }
  if (end == kMaxChildren || at_end) return end;
  return 0;
}

Hash aggregated_root(std::span<const HashAndSize> leaves) {
  if (leaves.empty()) return Hash{};
  AggregatedHasher hasher;
  for (const auto& leaf : leaves) hasher.add(leaf);
  return hasher.finish();
}

}  // namespace

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kTruncated: return "truncated";
    case ErrorCode::kInvalidFormat: return "invalid format";
    case ErrorCode::kUnsupportedCompression: return "unsupported compression";
    case ErrorCode::kDecompressionFailed: return "decompression failed";
    case ErrorCode::kSizeMismatch: return "size mismatch";
    case ErrorCode::kHashMismatch: return "hash mismatch";
    case ErrorCode::kTooLarge: return "too large";
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kInvalidHash: return "invalid hash";
  }
  return "unknown error";
}

bool Hash::is_zero() const {
  return std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0; });
}

std::uint64_t Hash::word(int i) const {
  std::uint64_t value = 0;
  for (int b = 7; b >= 0; --b) value = (value << 8) | bytes[static_cast<std::size_t>(8 * i + b)];
  return value;
}

std::string Hash::to_string() const {
  std::string text(64, '0');
  std::size_t pos = 0;
  for (int w = 0; w < 4; ++w) {
    // Each word printed big-endian: its bytes from most significant (offset 7) to least.
    for (int b = 7; b >= 0; --b) {
      const std::uint8_t byte = bytes[static_cast<std::size_t>(8 * w + b)];
      text[pos++] = kHexDigits[byte >> 4];
      text[pos++] = kHexDigits[byte & 0xf];
    }
  }
  return text;
}

Result<Hash> Hash::from_string(std::string_view text) {
  auto invalid = [&] {
    std::string shown(text.substr(0, 80));
    return make_error(ErrorCode::kInvalidHash, "not a 64-digit hex hash: '" + shown + "'");
  };
  if (text.size() != 64) return invalid();
  Hash hash;
  for (std::size_t i = 0; i < 32; ++i) {
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int high = nibble(text[2 * i]);
    const int low = nibble(text[2 * i + 1]);
    if (high < 0 || low < 0) return invalid();
    // Text byte i is byte (7 - i % 8) of word i / 8.
    const std::size_t word = i / 8;
    const std::size_t byte_in_word = 7 - i % 8;
    hash.bytes[word * 8 + byte_in_word] = static_cast<std::uint8_t>(high << 4 | low);
  }
  return hash;
}

Hash Hash::from_raw(std::span<const std::byte, 32> raw) {
  Hash hash;
  std::memcpy(hash.bytes.data(), raw.data(), 32);
  return hash;
}

Hash chunk_hash(ByteSpan chunk) { return keyed_hash(kDataKey, chunk.data(), chunk.size()); }

std::size_t chunk_group_count(std::size_t size) {
  if (size <= kChunkGroupBytes) return 0;
  const std::size_t groups = (size + kChunkGroupBytes - 1) / kChunkGroupBytes;
  return groups <= kMaxChunkGroups ? groups : 0;
}

Hash chunk_group_value(ByteSpan group, std::size_t index) { return subtree_value(group, index * kPiecesPerGroup); }

Hash chunk_group_values(ByteSpan chunk, std::span<Hash> out) {
  const std::size_t groups = chunk_group_count(chunk.size());
  if (groups == 0) return chunk_hash(chunk);
  std::uint8_t values[kMaxChunkGroups * kPiecesPerGroup * 32];
  const std::size_t pieces = piece_values(chunk, 0, values);
  const std::size_t full_groups = chunk.size() / kChunkGroupBytes;
  if (full_groups < groups) {  // the last group is partial: merged on its own, before the full ones are
    const std::size_t first = full_groups * kPiecesPerGroup;
    Hash hashes[kPiecesPerGroup];
    for (std::size_t i = first; i < pieces; ++i) hashes[i - first] = value_at(values, i);
    out[full_groups] = merge_values(hashes, pieces - first, 1, 1, false);
  }
  reduce_full_groups(values, full_groups);
  for (std::size_t g = 0; g < full_groups; ++g) out[g] = value_at(values, g);
  return chunk_hash_from_groups(out.first(groups), chunk.size());
}

Hash chunk_hash_from_groups(std::span<const Hash> groups, std::size_t chunk_size) {
  // Every subtree over more than one group splits at a power of two of at least 16 pieces, a
  // group boundary, so the tree above the groups is built from the group values alone.
  const std::size_t last_bytes = chunk_size - (groups.size() - 1) * kChunkGroupBytes;
  const std::size_t last_pieces = (last_bytes + kPieceBytes - 1) / kPieceBytes;
  return merge_values(groups.data(), groups.size(), kPiecesPerGroup, last_pieces, true);
}

ChunkHashState::ChunkHashState() { blake3_hasher_init_keyed(&hasher_, kDataKey); }
void ChunkHashState::update(ByteSpan data) { blake3_hasher_update(&hasher_, data.data(), data.size()); }
Hash ChunkHashState::finish() const {
  Hash out;
  blake3_hasher_finalize(&hasher_, out.bytes.data(), out.bytes.size());
  return out;
}
void ChunkHashState::reset() { blake3_hasher_reset(&hasher_); }

Hash xorb_hash(std::span<const HashAndSize> chunks) { return aggregated_root(chunks); }

HashAndSize merged_node(std::span<const HashAndSize> children) { return merge_nodes(children); }

bool is_natural_cut(const Hash& hash) { return hash.word(3) % kMeanBranching == 0; }

Hash file_hash_with_salt(std::span<const HashAndSize> chunks, const Hash& salt) {
  if (chunks.empty()) return Hash{};
  return file_hash_from_root(aggregated_root(chunks), salt);
}

Hash file_hash_from_root(const Hash& root, const Hash& salt) {
  return keyed_hash(salt.bytes.data(), root.bytes.data(), root.bytes.size());
}

Hash file_hash(std::span<const HashAndSize> chunks) { return file_hash_with_salt(chunks, Hash{}); }

Hash verification_hash(std::span<const Hash> chunk_hashes) {
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, kVerificationKey);
  for (const auto& hash : chunk_hashes) blake3_hasher_update(&hasher, hash.bytes.data(), hash.bytes.size());
  Hash out;
  blake3_hasher_finalize(&hasher, out.bytes.data(), out.bytes.size());
  return out;
}

void AggregatedHasher::add(const HashAndSize& leaf) {
  ++leaf_count_;
  total_size_ += leaf.size;
  push(0, leaf);
}

void AggregatedHasher::push(std::size_t level, const HashAndSize& node) {
  if (levels_.size() <= level) {
    levels_.resize(level + 1);
    emitted_.resize(level + 1, false);
  }
  levels_[level].push_back(node);
  drain_ready(level);
}

void AggregatedHasher::drain_ready(std::size_t level) {
  // Merge every group whose cut is already decided; later nodes cannot change it.
  for (;;) {
    auto& nodes = levels_[level];
    const std::size_t cut = next_merge_cut(nodes, /*at_end=*/false);
    if (cut == 0) return;
    const HashAndSize parent = merge_nodes(std::span(nodes).first(cut));
    nodes.erase(nodes.begin(), nodes.begin() + static_cast<std::ptrdiff_t>(cut));
    emitted_[level] = true;
    push(level + 1, parent);
  }
}

Hash AggregatedHasher::finish() {
  Hash root;
  for (std::size_t level = 0; level < levels_.size(); ++level) {
    auto& nodes = levels_[level];
    const bool is_top = !emitted_[level] && (level + 1 >= levels_.size() || levels_[level + 1].empty());
    if (is_top && nodes.size() <= 1) {
      if (!nodes.empty()) root = nodes.front().hash;
      break;
    }
    if (nodes.empty()) continue;
    // Flush the rest of this level into the next one, cutting as the batch algorithm would.
    std::vector<HashAndSize> rest = std::move(nodes);
    nodes.clear();
    if (levels_.size() <= level + 1) {
      levels_.resize(level + 2);
      emitted_.resize(level + 2, false);
    }
    std::span<const HashAndSize> pending(rest);
    while (!pending.empty()) {
      const std::size_t cut = next_merge_cut(pending, /*at_end=*/true);
      levels_[level + 1].push_back(merge_nodes(pending.first(cut)));
      pending = pending.subspan(cut);
    }
    emitted_[level] = true;
  }
  levels_.clear();
  emitted_.clear();
  total_size_ = 0;
  leaf_count_ = 0;
  return root;
}

}  // namespace bucketfs::xet
