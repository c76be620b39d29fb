#pragma once
// Content-defined chunking (chunking.md): Gearhash over the bytes, a cut where the top 16 bits of
// the rolling hash are zero, never before 8 KiB (xet-core's guard) and always at 128 KiB.
//
// Both classes are streaming: bytes may arrive in pieces of any size and the chunks are exactly
// those of one call over the concatenation. Neither keeps the bytes themselves.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::xet {

inline constexpr std::size_t kMinChunkSize = 8 * 1024;
inline constexpr std::size_t kTargetChunkSize = 64 * 1024;
inline constexpr std::size_t kMaxChunkSize = 128 * 1024;

// Finds chunk boundaries. Not thread-safe; one instance per stream.
class Chunker {
 public:
  // Scans `data`, the next bytes of the stream. Returns the number of leading bytes of `data`
  // that complete the current chunk (a boundary follows them, and the chunker starts a new
  // chunk), or nullopt when all of `data` belongs to the still open current chunk.
  // Call again with the rest of `data` to find further boundaries.
  std::optional<std::size_t> next_boundary(ByteSpan data);

  // Bytes of the current, open chunk seen so far. At end of stream a non-zero value is the
  // length of the last chunk.
  std::size_t open_chunk_size() const { return open_chunk_size_; }

  void reset() {
    rolling_hash_ = 0;
    open_chunk_size_ = 0;
  }

 private:
  std::uint64_t rolling_hash_ = 0;
  std::size_t open_chunk_size_ = 0;
};

// Every chunk boundary of a whole buffer, as chunk lengths in order.
std::vector<std::size_t> chunk_lengths(ByteSpan data);

// Chunks a stream and hashes each chunk as its bytes pass, without copying them.
class ChunkHashStream {
 public:
  // Feeds the next bytes; returns the chunks completed by them, in order.
  std::vector<HashAndSize> update(ByteSpan data);
  // Ends the stream: the last chunk, if any bytes are pending. The stream is then reset.
  std::optional<HashAndSize> finish();

 private:
  Chunker chunker_;
  ChunkHashState hash_state_;
};

}  // namespace bucketfs::xet
