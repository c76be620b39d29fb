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

// The chunk lengths the npm client (@huggingface/xetchunk-wasm 0.2.0) cuts `data` into. It
// differs from the spec, xet-core and chunk_lengths(): its hash restarts 8,127 bytes into a chunk
// and it tests every position from there, so about one chunk in 12 of random data ends 8,128 to
// 8,190 bytes in. For interop checks.
std::vector<std::size_t> npm_client_chunk_lengths(ByteSpan data);

// Positions in `data` (offsets from its first byte, in increasing order) at which every chunker
// ends a chunk, under the spec's rule and under the npm client's alike, whatever it did before
// reaching data's first byte (the bytes before it are unknown). A rewrite of a stream's bytes
// before `data` therefore leaves the chunking from the first such position on unchanged. This is
// what lets a range edit re-chunk a window of a file and keep the original chunks after it.
// Found by following every chunking data's bytes allow (see chunker.cc); empty when they do not
// converge, as in long runs of bytes with no cut candidate.
std::vector<std::size_t> certain_boundaries(ByteSpan data);

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

// The chunks of one contiguous span of a stream, found and hashed on both cores.
struct ChunkedSpan {
  std::vector<HashAndSize> chunks;  // in order, starting at the start of the span
  std::size_t consumed = 0;         // bytes the chunks cover; the rest opens the next chunk
};

// Spans shorter than this are chunked on the calling thread alone: a helper thread costs more.
inline constexpr std::size_t kParallelChunkingMinBytes = std::size_t{1} << 20;

// Chunks and hashes `data`, whose first byte starts a chunk. Gives exactly the chunks one
// ChunkHashStream would over the same bytes: those that complete inside `data`, and with
// `at_end` the bytes after the last boundary as the final chunk. For a streaming caller, the
// bytes after `consumed` are the open chunk and must begin the next call.
//
// Why it exists: cutting and hashing is the upload's largest per-byte cost and the cut search
// is sequential. A boundary depends only on the bytes since the previous boundary, so a helper
// thread chunks the second half of `data` as if a chunk started at its middle, while this
// thread chunks the first half; where this thread's boundaries reach one of the helper's, the
// two sequences are the same from there on and the helper's chunks are taken. If they never
// meet (rare: cuts resynchronize within a few chunks) this thread chunks the rest itself.
ChunkedSpan chunk_and_hash(ByteSpan data, bool at_end);

}  // namespace bucketfs::xet
