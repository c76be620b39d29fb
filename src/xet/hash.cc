#include "bucketfs/xet/hash.h"

#include <algorithm>
#include <charconv>

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

ChunkHashState::ChunkHashState() { blake3_hasher_init_keyed(&hasher_, kDataKey); }
void ChunkHashState::update(ByteSpan data) { blake3_hasher_update(&hasher_, data.data(), data.size()); }
Hash ChunkHashState::finish() const {
  Hash out;
  blake3_hasher_finalize(&hasher_, out.bytes.data(), out.bytes.size());
  return out;
}
void ChunkHashState::reset() { blake3_hasher_reset(&hasher_); }

Hash xorb_hash(std::span<const HashAndSize> chunks) { return aggregated_root(chunks); }

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
