#pragma once
// Xorbs (xorb.md): serialized runs of chunks, each an 8-byte header followed by the chunk's
// stored (possibly compressed) data.
//
//   chunk header: version u8 (= 0) | stored size u24 LE | scheme u8 | uncompressed size u24 LE
//
// What the real clients send: the body of POST /v1/xorbs/default/{hash} is the chunks and
// nothing else. xet-core builds it with SerializedXorbObject::from_xorb(xorb, false), commented
// "XORBs are sent without footer - the server/client reconstructs it from chunk data"
// (xet_data/src/processing/file_upload_session.rs); the npm client uploads the bytes it wrote
// with writeChunk() and no trailer (packages/hub/src/utils/createXorbs.ts). xet-core still
// defines a footer, XorbObjectInfo ("XETBLOB", xorb_object_format.rs), used for xorbs at rest
// in its local caches and its reference server, whose reconstruct_xorb_with_footer() accepts an
// upload body with or without one. Its layout, after the last chunk:
//
//   v1: "XETBLOB" 1 | xorb hash | "XBLBHSH" 0 n | n chunk hashes |
//       "XBLBBND" 1 n | n chunk end offsets u32 | n uncompressed end offsets u32 |
//       n | hashes-section offset from end u32 | boundary-section offset from end u32 |
//       16 reserved bytes | info length u32 (the footer's size without this field)
//   v0: "XETBLOB" 0 | xorb hash | n | n chunk end offsets u32 | n chunk hashes | 16 reserved |
//       info length u32
//
// A footer is recognised where a chunk header would start: its first byte, 'X', is not a valid
// chunk header version. We write xorbs without a footer, as the clients do, and parse both.
//
// Limits: a serialized xorb (its chunks) is at most 64 MiB; a chunk at most 128 KiB
// uncompressed. XorbBuilder also keeps to xet-core's client limits of 64 MiB of uncompressed
// data and 8192 chunks per xorb.
//
// Nothing here is thread-safe; XorbBuilder and XorbDecoder hold reusable buffers, one per thread.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/compression.h"
#include "bucketfs/xet/error.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::xet {

inline constexpr std::size_t kChunkHeaderSize = 8;
inline constexpr std::uint8_t kChunkHeaderVersion = 0;
inline constexpr std::size_t kMaxXorbSize = 64 * 1024 * 1024;  // serialized chunks, the CAS limit

struct ChunkHeader {
  CompressionScheme scheme = CompressionScheme::kNone;
  std::uint32_t stored_size = 0;        // bytes of data after the header ("compressed size")
  std::uint32_t uncompressed_size = 0;
  bool operator==(const ChunkHeader&) const = default;
};

// REQUIRES: both sizes < 2^24.
std::array<std::byte, kChunkHeaderSize> encode_chunk_header(const ChunkHeader& header);
// Decodes and checks the 8 bytes at the start of `bytes`: kTruncated (fewer than 8), kInvalidFormat
// (version not 0), kUnsupportedCompression, kTooLarge (uncompressed size above 128 KiB or stored
// size above kMaxCompressedChunkSize), kSizeMismatch (a kNone chunk whose sizes differ).
Result<ChunkHeader> decode_chunk_header(ByteSpan bytes);

// One chunk of a serialized xorb, as the builder wrote it.
struct XorbChunkInfo {
  Hash hash;
  std::uint32_t uncompressed_size = 0;
  std::uint32_t offset = 0;       // of the chunk's header from the start of the xorb
  std::uint32_t stored_size = 0;  // data bytes after the header
  CompressionScheme scheme = CompressionScheme::kNone;
  bool operator==(const XorbChunkInfo&) const = default;
};

struct SerializedXorb {
  Bytes bytes;  // the upload body: chunks only, no footer
  Hash hash;    // xorb_hash() over the chunks' (hash, uncompressed size)
  std::vector<XorbChunkInfo> chunks;

  std::uint64_t uncompressed_size() const;
  // The (hash, size) leaves of the xorb hash, e.g. for a shard's CAS info entries.
  std::vector<HashAndSize> chunk_hashes() const;
  // Byte range [begin, end) of chunks [first, last) in `bytes`, what a ranged GET returns.
  // REQUIRES: first < last <= chunks.size().
  std::pair<std::size_t, std::size_t> byte_range(std::size_t first, std::size_t last) const;
};

struct XorbLimits {
  std::size_t max_serialized_size = kMaxXorbSize;
  std::size_t max_uncompressed_size = kMaxXorbSize;  // xet-core's MAX_XORB_BYTES
  std::size_t max_chunks = 8 * 1024;                 // xet-core's and the npm client's MAX_XORB_CHUNKS
};

// Packs chunks into one xorb, compressing each by its policy. Usage: while would_fit(n) and
// add_chunk() succeed, add; then finish() and start the next xorb with the same builder.
class XorbBuilder {
 public:
  explicit XorbBuilder(CompressionPolicy policy = CompressionPolicy::kPredicted, XorbLimits limits = {});

  // Whether a chunk of `chunk_size` bytes fits for certain, whatever it compresses to.
  bool would_fit(std::size_t chunk_size) const;
  // Compresses the chunk and appends it. The chunk's hash is computed, or taken from `hash` when
  // the caller already has it (REQUIRES: then it is chunk_hash(chunk)). Errors, after which the
  // builder is unchanged: kInvalidArgument (empty chunk or above 128 KiB), kTooLarge (the chunk
  // would push the xorb over a limit: finish() this xorb and add it to the next).
  Result<void> add_chunk(ByteSpan chunk);
  Result<void> add_chunk(ByteSpan chunk, const Hash& hash);

  std::size_t chunk_count() const { return chunks_.size(); }
  std::size_t serialized_size() const { return bytes_.size(); }
  std::uint64_t uncompressed_size() const { return uncompressed_size_; }
  bool empty() const { return chunks_.empty(); }

  // Hands over the xorb built so far (possibly empty: no chunks, zero hash) and starts a new one.
  SerializedXorb finish();
  // Gives the builder a buffer to serialize the next xorbs into, typically the bytes of an
  // uploaded SerializedXorb: its already-touched pages are reused instead of fresh ones.
  // REQUIRES: the builder is empty.
  void recycle(Bytes buffer);

 private:
  ChunkCompressor compressor_;
  XorbLimits limits_;
  Bytes bytes_;
  std::vector<XorbChunkInfo> chunks_;
  std::uint64_t uncompressed_size_ = 0;
};

// Serializes `chunks` into one xorb. kTooLarge if they exceed the default XorbLimits.
Result<SerializedXorb> serialize_xorb(std::span<const ByteSpan> chunks,
                                      CompressionPolicy policy = CompressionPolicy::kPredicted);

// ---- Parsing -------------------------------------------------------------------------------------

// xet-core's XorbObjectInfo footer, checked against the chunks it follows.
struct XorbFooter {
  std::uint8_t version = 1;  // 0 or 1
  Hash xorb_hash;
  std::vector<Hash> chunk_hashes;
  std::vector<std::uint32_t> chunk_end_offsets;         // end of each chunk (header + data)
  std::vector<std::uint32_t> uncompressed_end_offsets;  // cumulative; empty in version 0
};

// A chunk as it lies in the parsed bytes, not yet decompressed.
struct ChunkView {
  std::size_t offset = 0;  // of its header, from the start of the parsed bytes
  ChunkHeader header;
  ByteSpan stored;  // the header's stored data, inside the parsed bytes
};

struct XorbView {
  std::vector<ChunkView> chunks;
  std::size_t chunks_size = 0;        // bytes of the chunks (where a footer starts)
  std::uint64_t uncompressed_size = 0;
  std::optional<XorbFooter> footer;  // only when parsing from chunk 0
};

// Walks the chunk headers of `bytes`: a whole xorb (first_chunk_index 0), with or without a
// footer, or the bytes of chunks [first_chunk_index, ...) as a ranged GET returns them. No data
// is decompressed. The views point into `bytes`. Errors name the chunk by its index in the xorb
// (first_chunk_index + position) and its byte offset in `bytes`: kTruncated (no chunks, or a
// header or its data cut short), the errors of decode_chunk_header, kTooLarge (chunks beyond
// 64 MiB), kInvalidFormat (a footer that is malformed, disagrees with the chunks or does not
// end the bytes; a footer after a chunk other than the whole xorb's last).
Result<XorbView> parse_xorb(ByteSpan bytes, std::size_t first_chunk_index = 0);

// Decompressed chunks, back to back.
struct DecodedChunks {
  ByteSpan data;  // all chunks' bytes in order
  std::vector<std::size_t> chunk_offsets;  // chunk i is data[offsets[i], offsets[i+1]); size count+1

  std::size_t chunk_count() const { return chunk_offsets.empty() ? 0 : chunk_offsets.size() - 1; }
  ByteSpan chunk(std::size_t i) const {
    return data.subspan(chunk_offsets[i], chunk_offsets[i + 1] - chunk_offsets[i]);
  }
};

// Decompresses xorb bytes (see parse_xorb) with reusable buffers, for hot paths.
class XorbDecoder {
 public:
  // Into `destination`, which must hold at least the chunks' uncompressed total (e.g. from
  // parse_xorb(...).uncompressed_size or the reconstruction's unpacked length); the result's
  // data is the used prefix of `destination`. Errors: those of parse_xorb, kInvalidArgument
  // (destination too small), and per chunk those of ChunkDecompressor, named by chunk index.
  Result<DecodedChunks> decode_into(ByteSpan bytes, std::span<std::byte> destination,
                                    std::size_t first_chunk_index = 0);
  // Into a buffer the decoder owns and reuses; the result is valid until the next call or the
  // decoder's destruction.
  Result<DecodedChunks> decode(ByteSpan bytes, std::size_t first_chunk_index = 0);

 private:
  Result<DecodedChunks> decode_view(const XorbView& view, std::span<std::byte> destination,
                                    std::size_t first_chunk_index);

  ChunkDecompressor decompressor_;
  Bytes buffer_;
};

// Allocating convenience: each chunk's decompressed bytes.
Result<std::vector<Bytes>> decode_xorb_chunks(ByteSpan bytes, std::size_t first_chunk_index = 0);

// Verifies a whole xorb body against the hash it claims (the upload path's check, and a
// download's when the whole xorb was fetched): decompresses and hashes every chunk, computes
// the xorb hash and compares. A footer, if present, must agree too. Returns the chunks' (hash,
// size) leaves. kHashMismatch names the computed and claimed hashes; otherwise the errors of
// parse_xorb and decompression.
Result<std::vector<HashAndSize>> verify_xorb(ByteSpan bytes, const Hash& claimed_hash);

}  // namespace bucketfs::xet
