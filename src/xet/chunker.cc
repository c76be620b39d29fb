#include "bucketfs/xet/chunker.h"

#include <algorithm>

namespace bucketfs::xet {
namespace {

// Gearhash table of rust-gearhash (DEFAULT_TABLE), which xet-core uses.
constexpr std::uint64_t kGearTable[256] = {
#include "gear_table.inc"
};

constexpr std::uint64_t kBoundaryMask = 0xFFFF000000000000ULL;

// The rolling hash depends only on the last 64 bytes, so hashing may start this many bytes into
// a chunk and still give the exact hash at the first position where a cut is allowed.
constexpr std::size_t kHashWindow = 64;
constexpr std::size_t kSkipAhead = kMinChunkSize - kHashWindow - 1;

}  // namespace

std::optional<std::size_t> Chunker::next_boundary(ByteSpan data) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(data.data());
  const std::size_t size = data.size();
  std::size_t pos = 0;

  if (open_chunk_size_ < kSkipAhead) {
    const std::size_t skip = std::min(kSkipAhead - open_chunk_size_, size);
    pos += skip;
    open_chunk_size_ += skip;
    if (pos == size) return std::nullopt;
  }

  std::uint64_t hash = rolling_hash_;
  // Positions where a cut is not yet allowed: only roll the hash.
  if (open_chunk_size_ < kMinChunkSize - 1) {
    const std::size_t roll = std::min(kMinChunkSize - 1 - open_chunk_size_, size - pos);
    for (std::size_t end = pos + roll; pos < end; ++pos) hash = (hash << 1) + kGearTable[bytes[pos]];
    open_chunk_size_ += roll;
    if (pos == size) {
      rolling_hash_ = hash;
      return std::nullopt;
    }
  }

  // Every following position may cut; the last one allowed is at kMaxChunkSize.
  const std::size_t limit = pos + std::min(kMaxChunkSize - open_chunk_size_, size - pos);
  const std::size_t scan_start = pos;
  while (pos < limit) {
    hash = (hash << 1) + kGearTable[bytes[pos]];
    ++pos;
    if ((hash & kBoundaryMask) == 0) {
      reset();
      return pos;
    }
  }
  open_chunk_size_ += pos - scan_start;
  if (open_chunk_size_ >= kMaxChunkSize) {
    reset();
    return pos;
  }
  rolling_hash_ = hash;
  return std::nullopt;
}

std::vector<std::size_t> chunk_lengths(ByteSpan data) {
  std::vector<std::size_t> lengths;
  Chunker chunker;
  while (!data.empty()) {
    const std::size_t before = chunker.open_chunk_size();
    auto cut = chunker.next_boundary(data);
    if (!cut) {
      lengths.push_back(chunker.open_chunk_size());
      break;
    }
    lengths.push_back(before + *cut);
    data = data.subspan(*cut);
  }
  return lengths;
}

std::vector<HashAndSize> ChunkHashStream::update(ByteSpan data) {
  std::vector<HashAndSize> completed;
  while (!data.empty()) {
    const std::size_t before = chunker_.open_chunk_size();
    auto cut = chunker_.next_boundary(data);
    if (!cut) {
      hash_state_.update(data);
      break;
    }
    hash_state_.update(data.first(*cut));
    completed.push_back({hash_state_.finish(), before + *cut});
    hash_state_.reset();
    data = data.subspan(*cut);
  }
  return completed;
}

std::optional<HashAndSize> ChunkHashStream::finish() {
  const std::size_t size = chunker_.open_chunk_size();
  std::optional<HashAndSize> last;
  if (size > 0) last = HashAndSize{hash_state_.finish(), size};
  chunker_.reset();
  hash_state_.reset();
  return last;
}

}  // namespace bucketfs::xet
