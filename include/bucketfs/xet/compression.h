#pragma once
// Chunk compression inside xorbs (xorb.md "Chunk Compression Schemes"): None, LZ4 and
// ByteGrouping4LZ4 (BG4), the predictor that picks between LZ4 and BG4, and decompression that
// writes into buffers the caller reuses.
//
// The LZ4 format is the LZ4 *frame* format (magic 0x184D2204), not a raw LZ4 block. Both
// reference clients agree: xet-core (xet_core_structures/src/xorb_object/compression_scheme.rs)
// compresses with lz4_flex's FrameEncoder and decompresses with its FrameDecoder; the npm client
// @huggingface/hub (packages/hub/src/utils/createXorbs.ts and XetBlob.ts) uses its vendored
// lz4js `compress`/`decompress`, which write and read frames (vendor/lz4js/index.ts). The two
// differ in their frame options (lz4js: 4 MiB linked blocks, no checksums; lz4_flex: 64 KiB
// blocks), so the decoder here accepts every frame option a conforming encoder may set except
// a dictionary ID. Frames written here use one independent block sized to the chunk
// (LZ4F_compressFrame picks 64 KiB or 256 KiB), no checksums and no content size, which every
// decoder above reads.
//
// Nothing here allocates per call once a compressor or decompressor has served its first
// chunk: fresh pages are expensive on our machines (PERF-NOTES trap 1). None of these types is
// thread-safe; use one per thread.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/error.h"

namespace bucketfs::xet {

// The byte in a chunk header naming how the chunk's data is stored.
enum class CompressionScheme : std::uint8_t {
  kNone = 0,              // stored as is
  kLz4 = 1,               // one LZ4 frame of the chunk
  kByteGrouping4Lz4 = 2,  // one LZ4 frame of bg4_group(chunk)
};

// "none", "lz4", "bg4-lz4" (xet-core's names).
const char* to_string(CompressionScheme scheme);
// The scheme a chunk header byte names. kUnsupportedCompression for any other value.
Result<CompressionScheme> compression_scheme_from_byte(std::uint8_t value);

// ---- Byte grouping -------------------------------------------------------------------------------
// bg4_group splits `data` into four groups by byte position modulo 4 and writes the groups one
// after the other: [b0 b4 b8 ... | b1 b5 ... | b2 b6 ... | b3 b7 ...]. When the size is not a
// multiple of 4, the first (size % 4) groups are one byte longer. bg4_ungroup is its inverse.
// REQUIRES: both spans have the same size and do not overlap. Vectorized (AVX2 when the CPU
// has it): several GB/s, fast enough to sit on every read.
void bg4_group(ByteSpan data, std::span<std::byte> grouped);
void bg4_ungroup(ByteSpan grouped, std::span<std::byte> data);

// ---- BG4 predictor -------------------------------------------------------------------------------
// Predicts whether byte grouping will help LZ4, as xet-core's bg4_prediction.rs does: for each
// of the four byte positions modulo 4 it builds the distribution of per-byte popcounts, and
// recommends BG4 when one position's distribution diverges from the pooled one (KL divergence
// above 0.02). Structured numeric data (floats, bf16 weights, integers) has position-dependent
// bytes; text and random data do not. Cheap: one popcount and one increment per sampled byte.
class Bg4Predictor {
 public:
  // Adds `data`, whose first byte sits at byte position `position` of the chunk (only
  // position % 4 matters).
  void add(ByteSpan data, std::size_t position = 0);
  // Largest KL divergence (nats) of a position's popcount distribution from the pooled one;
  // 0 when nothing was added.
  double max_kl_divergence() const;
  bool recommends_bg4() const { return max_kl_divergence() > kBg4Threshold; }

  static constexpr double kBg4Threshold = 0.02;

 private:
  std::array<std::array<std::uint32_t, 9>, 4> histograms_{};
};

// Bg4Predictor over a sample of the chunk: all of it up to 16 KiB, otherwise four evenly spaced
// 4 KiB windows (aligned to 4 so byte positions stay in their groups).
bool bg4_recommended(ByteSpan chunk);

// ---- LZ4 frames ----------------------------------------------------------------------------------
// Largest frame lz4_frame_compress can write for `input_size` bytes.
std::size_t lz4_frame_compress_bound(std::size_t input_size);
// Compresses `input` into one LZ4 frame at the start of `output`; returns the frame's size.
// kInvalidArgument when output is smaller than lz4_frame_compress_bound(input.size()).
Result<std::size_t> lz4_frame_compress(ByteSpan input, std::span<std::byte> output);
// Decodes `frame`, which must be exactly one LZ4 frame, into the start of `output`; returns the
// number of bytes decoded. Uses LZ4's bounds-checked decoder only; never writes past `output`.
// Errors: kTruncated (frame ends early), kInvalidFormat (bad magic, flags, block size, trailing
// bytes), kUnsupportedCompression (a dictionary ID), kDecompressionFailed (corrupt block),
// kSizeMismatch (decodes to more than output.size(), or disagrees with its own content size).
// Header and content checksums are not verified: chunk hashes verify content end to end.
Result<std::size_t> lz4_frame_decompress(ByteSpan frame, std::span<std::byte> output);

// ---- Chunks --------------------------------------------------------------------------------------
// How ChunkCompressor picks a chunk's scheme.
enum class CompressionPolicy {
  kPredicted,  // the predictor's choice (BG4 or LZ4); stored raw when that is not smaller
  kSmallest,   // try LZ4 and BG4, keep the smallest of them and raw (the npm client's way)
  kNone,       // forced: always raw
  kLz4,        // forced: always LZ4, even when larger than raw
  kByteGrouping4Lz4,  // forced: always BG4, even when larger than raw
};

struct CompressedChunk {
  CompressionScheme scheme = CompressionScheme::kNone;
  // The bytes to store. Points into the compressor's buffer, or at the input chunk itself for
  // kNone; valid until the next compress() call or the compressor's destruction.
  ByteSpan data;
};

// Largest data size a compressed chunk of at most kMaxChunkSize bytes can have (an LZ4 frame of
// incompressible input plus frame overheads). Parsers reject larger declared sizes.
inline constexpr std::size_t kMaxCompressedChunkSize = kMaxChunkSize + kMaxChunkSize / 255 + 1024;

class ChunkCompressor {
 public:
  explicit ChunkCompressor(CompressionPolicy policy = CompressionPolicy::kPredicted) : policy_(policy) {}
  CompressionPolicy policy() const { return policy_; }

  // Compresses one chunk by the policy. kInvalidArgument when the chunk is larger than
  // kMaxChunkSize (chunk sizes must fit the 3-byte header fields and the protocol's limit).
  Result<CompressedChunk> compress(ByteSpan chunk);
  // The worst case of compress(): the largest data size it can return for `chunk_size` bytes.
  std::size_t max_compressed_size(std::size_t chunk_size) const;

 private:
  Result<ByteSpan> compress_lz4(ByteSpan input, Bytes& output);
  Result<ByteSpan> compress_bg4(ByteSpan chunk, Bytes& output);

  CompressionPolicy policy_;
  Bytes grouped_;
  Bytes lz4_output_;
  Bytes bg4_output_;
};

class ChunkDecompressor {
 public:
  // Decodes one chunk's stored data into `destination`, whose size is the chunk's declared
  // uncompressed size; every byte of it is written on success. Errors: kTooLarge (destination
  // larger than kMaxChunkSize), kSizeMismatch (the data decodes to a different size), and those
  // of lz4_frame_decompress. On error the destination's contents are unspecified.
  Result<void> decompress_into(CompressionScheme scheme, ByteSpan stored, std::span<std::byte> destination);
  // As decompress_into, into a buffer the decompressor owns and reuses. Returns a view valid until
  // the next call or the decompressor's destruction; for kNone, the view is `stored` itself.
  Result<ByteSpan> decompress(CompressionScheme scheme, ByteSpan stored, std::size_t uncompressed_size);

 private:
  Bytes grouped_;  // BG4: the LZ4 output before ungrouping
  Bytes output_;
};

// Allocating conveniences for tests and cold paths.
Result<Bytes> decompress_chunk(CompressionScheme scheme, ByteSpan stored, std::size_t uncompressed_size);
Bytes bg4_group(ByteSpan data);
Bytes bg4_ungroup(ByteSpan grouped);

}  // namespace bucketfs::xet
