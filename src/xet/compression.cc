#include "bucketfs/xet/compression.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>

#include <lz4.h>
#include <lz4frame.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace bucketfs::xet {

const char* to_string(CompressionScheme scheme) {
  switch (scheme) {
    case CompressionScheme::kNone: return "none";
    case CompressionScheme::kLz4: return "lz4";
    case CompressionScheme::kByteGrouping4Lz4: return "bg4-lz4";
  }
  return "unknown";
}

Result<CompressionScheme> compression_scheme_from_byte(std::uint8_t value) {
  switch (value) {
    case 0: return CompressionScheme::kNone;
    case 1: return CompressionScheme::kLz4;
    case 2: return CompressionScheme::kByteGrouping4Lz4;
    default:
      return make_error(ErrorCode::kUnsupportedCompression,
                        "compression scheme byte " + std::to_string(value) + " is not 0, 1 or 2");
  }
}

// ---- Byte grouping -------------------------------------------------------------------------------
namespace {

// Where each of the four groups starts in the grouped layout of `size` bytes.
struct GroupStarts {
  std::size_t words;  // complete 4-byte words
  std::size_t remainder;
  std::array<std::size_t, 4> start;
};

GroupStarts group_starts(std::size_t size) {
  GroupStarts g{size / 4, size % 4, {}};
  g.start[0] = 0;
  for (std::size_t i = 1; i < 4; ++i) g.start[i] = g.start[i - 1] + g.words + (g.remainder >= i ? 1 : 0);
  return g;
}

void bg4_group_scalar(const std::byte* in, std::byte* out, const GroupStarts& g, std::size_t from_word) {
  std::byte* g0 = out + g.start[0];
  std::byte* g1 = out + g.start[1];
  std::byte* g2 = out + g.start[2];
  std::byte* g3 = out + g.start[3];
  for (std::size_t i = from_word; i < g.words; ++i) {
    g0[i] = in[4 * i];
    g1[i] = in[4 * i + 1];
    g2[i] = in[4 * i + 2];
    g3[i] = in[4 * i + 3];
  }
  for (std::size_t r = 0; r < g.remainder; ++r) out[g.start[r] + g.words] = in[4 * g.words + r];
}

void bg4_ungroup_scalar(const std::byte* in, std::byte* out, const GroupStarts& g, std::size_t from_word) {
  const std::byte* g0 = in + g.start[0];
  const std::byte* g1 = in + g.start[1];
  const std::byte* g2 = in + g.start[2];
  const std::byte* g3 = in + g.start[3];
  for (std::size_t i = from_word; i < g.words; ++i) {
    out[4 * i] = g0[i];
    out[4 * i + 1] = g1[i];
    out[4 * i + 2] = g2[i];
    out[4 * i + 3] = g3[i];
  }
  for (std::size_t r = 0; r < g.remainder; ++r) out[4 * g.words + r] = in[g.start[r] + g.words];
}

#if defined(__x86_64__)
// 64 input bytes (16 words) per step. Within each 128-bit lane a byte shuffle transposes the
// 4x4 byte matrix (a transpose is its own inverse, so the same mask serves both directions);
// a dword permutation and 64-bit unpacks then gather each group's 16 bytes.
__attribute__((target("avx2"))) std::size_t bg4_group_avx2(const std::byte* in, std::byte* out,
                                                             const GroupStarts& g) {
  const __m256i transpose = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i pair_lanes = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  std::size_t i = 0;
  for (; i + 16 <= g.words; i += 16) {
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 4 * i));
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 4 * i + 32));
    // a = [g0 8B | g1 8B | g2 8B | g3 8B] of words i..i+7; b likewise of words i+8..i+15.
    a = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(a, transpose), pair_lanes);
    b = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(b, transpose), pair_lanes);
    const __m256i lo = _mm256_unpacklo_epi64(a, b);  // [g0 16B | g2 16B]
    const __m256i hi = _mm256_unpackhi_epi64(a, b);  // [g1 16B | g3 16B]
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + g.start[0] + i), _mm256_castsi256_si128(lo));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + g.start[1] + i), _mm256_castsi256_si128(hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + g.start[2] + i), _mm256_extracti128_si256(lo, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + g.start[3] + i), _mm256_extracti128_si256(hi, 1));
  }
  return i;
}

__attribute__((target("avx2"))) std::size_t bg4_ungroup_avx2(const std::byte* in, std::byte* out,
                                                               const GroupStarts& g) {
  const __m256i transpose = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,  //
                                             0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i unpair_lanes = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  std::size_t i = 0;
  for (; i + 16 <= g.words; i += 16) {
    const __m128i x0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + g.start[0] + i));
    const __m128i x1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + g.start[1] + i));
    const __m128i x2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + g.start[2] + i));
    const __m128i x3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + g.start[3] + i));
    const __m256i even = _mm256_set_m128i(x2, x0);
    const __m256i odd = _mm256_set_m128i(x3, x1);
    __m256i a = _mm256_unpacklo_epi64(even, odd);  // [g0 8B | g1 8B | g2 8B | g3 8B], words i..i+7
    __m256i b = _mm256_unpackhi_epi64(even, odd);  // the same for words i+8..i+15
    a = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(a, unpair_lanes), transpose);
    b = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(b, unpair_lanes), transpose);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * i), a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * i + 32), b);
  }
  return i;
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

}  // namespace

void bg4_group(ByteSpan data, std::span<std::byte> grouped) {
  if (data.empty()) return;
  const GroupStarts g = group_starts(data.size());
  std::size_t done = 0;
#if defined(__x86_64__)
  if (cpu_has_avx2()) done = bg4_group_avx2(data.data(), grouped.data(), g);
#endif
  bg4_group_scalar(data.data(), grouped.data(), g, done);
}

void bg4_ungroup(ByteSpan grouped, std::span<std::byte> data) {
  if (grouped.empty()) return;
  const GroupStarts g = group_starts(grouped.size());
  std::size_t done = 0;
#if defined(__x86_64__)
  if (cpu_has_avx2()) done = bg4_ungroup_avx2(grouped.data(), data.data(), g);
#endif
  bg4_ungroup_scalar(grouped.data(), data.data(), g, done);
}

Bytes bg4_group(ByteSpan data) {
  Bytes out(data.size());
  bg4_group(data, out);
  return out;
}

Bytes bg4_ungroup(ByteSpan grouped) {
  Bytes out(grouped.size());
  bg4_ungroup(grouped, out);
  return out;
}

// ---- BG4 predictor -------------------------------------------------------------------------------
namespace {
// Bits set in each byte value: std::popcount compiles to a libgcc call without -mpopcnt, which was
// 3% of a mount's CPU while writing.
constexpr std::array<std::uint8_t, 256> kBitsSet = [] {
  std::array<std::uint8_t, 256> table{};
  for (unsigned value = 0; value < 256; ++value) table[value] = static_cast<std::uint8_t>(std::popcount(value));
  return table;
}();
}  // namespace

void Bg4Predictor::add(ByteSpan data, std::size_t position) {
  std::size_t i = 0;
  // Bytes up to the next multiple of 4, then whole words with a fixed group per lane.
  for (; i < data.size() && (position + i) % 4 != 0; ++i) {
    ++histograms_[(position + i) % 4][kBitsSet[std::to_integer<unsigned>(data[i])]];
  }
  for (; i + 4 <= data.size(); i += 4) {
    ++histograms_[0][kBitsSet[std::to_integer<unsigned>(data[i])]];
    ++histograms_[1][kBitsSet[std::to_integer<unsigned>(data[i + 1])]];
    ++histograms_[2][kBitsSet[std::to_integer<unsigned>(data[i + 2])]];
    ++histograms_[3][kBitsSet[std::to_integer<unsigned>(data[i + 3])]];
  }
  for (; i < data.size(); ++i) {
    ++histograms_[(position + i) % 4][kBitsSet[std::to_integer<unsigned>(data[i])]];
  }
}

double Bg4Predictor::max_kl_divergence() const {
  // The pooled distribution gets one extra count per bin so that no bin has probability zero.
  std::array<double, 9> pooled{};
  std::array<double, 4> totals{};
  double pooled_total = 0;
  for (std::size_t bin = 0; bin < 9; ++bin) {
    pooled[bin] = 1;
    for (std::size_t group = 0; group < 4; ++group) {
      pooled[bin] += histograms_[group][bin];
      totals[group] += histograms_[group][bin];
    }
    pooled_total += pooled[bin];
  }
  double max_divergence = 0;
  for (std::size_t group = 0; group < 4; ++group) {
    if (totals[group] == 0) continue;
    double divergence = 0;
    for (std::size_t bin = 0; bin < 9; ++bin) {
      const double p = histograms_[group][bin] / totals[group];
      if (p == 0) continue;  // the limit of p log p
      divergence += p * std::log(p / (pooled[bin] / pooled_total));
    }
    max_divergence = std::max(max_divergence, divergence);
  }
  return max_divergence;
}

bool bg4_recommended(ByteSpan chunk) {
  constexpr std::size_t kWindow = 4 * 1024;
  constexpr std::size_t kWindows = 4;
  Bg4Predictor predictor;
  if (chunk.size() <= kWindow * kWindows) {
    predictor.add(chunk);
  } else {
    const std::size_t stride = ((chunk.size() - kWindow) / (kWindows - 1)) & ~std::size_t{3};
    for (std::size_t w = 0; w < kWindows; ++w) {
      const std::size_t start = w * stride;
      predictor.add(chunk.subspan(start, kWindow), start);
    }
  }
  return predictor.recommends_bg4();
}

// ---- LZ4 frames ----------------------------------------------------------------------------------
namespace {

LZ4F_preferences_t frame_preferences() {
  LZ4F_preferences_t prefs;
  std::memset(&prefs, 0, sizeof(prefs));
  // LZ4F_compressFrame lowers the block size to the smallest that holds the input: one block
  // of 64 KiB or 256 KiB for any chunk.
  prefs.frameInfo.blockSizeID = LZ4F_max256KB;
  prefs.frameInfo.blockMode = LZ4F_blockIndependent;
  prefs.frameInfo.contentChecksumFlag = LZ4F_noContentChecksum;
  prefs.frameInfo.blockChecksumFlag = LZ4F_noBlockChecksum;
  prefs.frameInfo.contentSize = 0;  // not written
  prefs.compressionLevel = 0;       // LZ4's fast mode
  return prefs;
}

constexpr std::uint32_t kFrameMagic = 0x184D2204;
constexpr std::size_t kLz4Window = 64 * 1024;

std::uint32_t load_u32(const std::byte* p) { return static_cast<std::uint32_t>(load_le(p, 4)); }

}  // namespace

std::size_t lz4_frame_compress_bound(std::size_t input_size) {
  const LZ4F_preferences_t prefs = frame_preferences();
  return LZ4F_compressFrameBound(input_size, &prefs);
}

Result<std::size_t> lz4_frame_compress(ByteSpan input, std::span<std::byte> output) {
  const LZ4F_preferences_t prefs = frame_preferences();
  if (output.size() < LZ4F_compressFrameBound(input.size(), &prefs)) {
    return make_error(ErrorCode::kInvalidArgument, "LZ4 output buffer of " + std::to_string(output.size()) +
                                                       " bytes is below the bound for " +
                                                       std::to_string(input.size()) + " input bytes");
  }
  const std::size_t written = LZ4F_compressFrame(output.data(), output.size(), input.data(), input.size(), &prefs);
  if (LZ4F_isError(written)) {
    return make_error(ErrorCode::kInvalidArgument, std::string("LZ4 frame compression failed: ") +
                                                       LZ4F_getErrorName(written));
  }
  return written;
}

// The frame layout (lz4_Frame_format.md): magic, FLG, BD, [content size u64], [dict ID u32],
// header checksum; blocks of (u32 size, high bit = stored uncompressed; data; [u32 checksum]);
// a zero u32 end mark; [u32 content checksum].
Result<std::size_t> lz4_frame_decompress(ByteSpan frame, std::span<std::byte> output) {
  const auto truncated = [&](const char* what) {
    return make_error(ErrorCode::kTruncated, std::string("LZ4 frame of ") + std::to_string(frame.size()) +
                                                 " bytes ends inside its " + what);
  };
  if (frame.size() < 7) return truncated("header");
  if (load_u32(frame.data()) != kFrameMagic) {
    return make_error(ErrorCode::kInvalidFormat, "not an LZ4 frame (bad magic number)");
  }
  const auto flags = std::to_integer<unsigned>(frame[4]);
  const auto block_descriptor = std::to_integer<unsigned>(frame[5]);
  if ((flags >> 6) != 1 || (flags & 0x02) != 0 || (block_descriptor & 0x8F) != 0) {
    return make_error(ErrorCode::kInvalidFormat, "LZ4 frame with unknown version or reserved bits set");
  }
  const bool independent_blocks = (flags & 0x20) != 0;
  const bool block_checksums = (flags & 0x10) != 0;
  const bool has_content_size = (flags & 0x08) != 0;
  const bool content_checksum = (flags & 0x04) != 0;
  if ((flags & 0x01) != 0) {
    return make_error(ErrorCode::kUnsupportedCompression, "LZ4 frame needs a dictionary");
  }
  const unsigned size_id = (block_descriptor >> 4) & 0x7;
  if (size_id < 4) return make_error(ErrorCode::kInvalidFormat, "LZ4 frame with invalid block size id");
  const std::size_t max_block_size = std::size_t{1} << (8 + 2 * size_id);  // 64 KiB .. 4 MiB

  std::size_t pos = 6;
  std::uint64_t content_size = 0;
  if (has_content_size) {
    if (frame.size() < pos + 8 + 1) return truncated("header");
    content_size = load_le(frame.data() + pos, 8);
    pos += 8;
  }
  pos += 1;  // header checksum

  std::size_t produced = 0;
  for (;;) {
    if (frame.size() - pos < 4) return truncated("block size");
    const std::uint32_t word = load_u32(frame.data() + pos);
    pos += 4;
    if (word == 0) break;  // end mark
    const bool stored = (word & 0x80000000u) != 0;
    const std::size_t block_size = word & 0x7FFFFFFFu;
    if (block_size > max_block_size) {
      return make_error(ErrorCode::kInvalidFormat, "LZ4 block of " + std::to_string(block_size) +
                                                       " bytes exceeds the frame's block size");
    }
    if (frame.size() - pos < block_size) return truncated("block data");
    const std::byte* block = frame.data() + pos;
    std::byte* out = output.data() + produced;
    const std::size_t room = std::min(output.size() - produced, max_block_size);
    if (stored) {
      if (block_size > output.size() - produced) {
        return make_error(ErrorCode::kSizeMismatch, "LZ4 frame decodes to more than " +
                                                        std::to_string(output.size()) + " bytes");
      }
      if (block_size > 0) std::memcpy(out, block, block_size);
      produced += block_size;
    } else {
      const auto* src = reinterpret_cast<const char*>(block);
      auto* dst = reinterpret_cast<char*>(out);
      int decoded;
      if (independent_blocks || produced == 0) {
        decoded = LZ4_decompress_safe(src, dst, static_cast<int>(block_size), static_cast<int>(room));
      } else {
        // Linked blocks may refer to the previous 64 KiB of output, which sits right before
        // `out`: LZ4 sees the dictionary is contiguous and decodes in place.
        const std::size_t dict_size = std::min(produced, kLz4Window);
        decoded = LZ4_decompress_safe_usingDict(src, dst, static_cast<int>(block_size), static_cast<int>(room),
                                                dst - dict_size, static_cast<int>(dict_size));
      }
      if (decoded < 0) {
        // Either corrupt, or it needed more room than the declared size leaves.
        return make_error(ErrorCode::kDecompressionFailed,
                          "LZ4 block at frame offset " + std::to_string(pos - 4) +
                              " is corrupt or decodes to more than " + std::to_string(output.size()) + " bytes");
      }
      produced += static_cast<std::size_t>(decoded);
    }
    pos += block_size;
    if (block_checksums) {
      if (frame.size() - pos < 4) return truncated("block checksum");
      pos += 4;
    }
  }
  if (content_checksum) {
    if (frame.size() - pos < 4) return truncated("content checksum");
    pos += 4;
  }
  if (pos != frame.size()) {
    return make_error(ErrorCode::kInvalidFormat, std::to_string(frame.size() - pos) +
                                                     " bytes follow the end of the LZ4 frame");
  }
  if (has_content_size && content_size != produced) {
    return make_error(ErrorCode::kSizeMismatch, "LZ4 frame declares " + std::to_string(content_size) +
                                                    " bytes but decodes to " + std::to_string(produced));
  }
  return produced;
}

// ---- Chunks --------------------------------------------------------------------------------------
namespace {

// Sizes a reused buffer once; later calls only check. Keeps pages touched by earlier chunks.
std::span<std::byte> reserve_buffer(Bytes& buffer, std::size_t size) {
  if (buffer.size() < size) buffer.resize(size);
  return {buffer.data(), size};
}

}  // namespace

std::size_t ChunkCompressor::max_compressed_size(std::size_t chunk_size) const {
  switch (policy_) {
    case CompressionPolicy::kPredicted:
    case CompressionPolicy::kSmallest:
    case CompressionPolicy::kNone:
      return chunk_size;
    case CompressionPolicy::kLz4:
    case CompressionPolicy::kByteGrouping4Lz4:
      return lz4_frame_compress_bound(chunk_size);
  }
  return lz4_frame_compress_bound(chunk_size);
}

Result<ByteSpan> ChunkCompressor::compress_lz4(ByteSpan input, Bytes& output) {
  const auto out = reserve_buffer(output, lz4_frame_compress_bound(kMaxChunkSize));
  auto written = lz4_frame_compress(input, out);
  if (!written) return std::unexpected(written.error());
  return ByteSpan(out.data(), *written);
}

Result<ByteSpan> ChunkCompressor::compress_bg4(ByteSpan chunk, Bytes& output) {
  const auto grouped = reserve_buffer(grouped_, kMaxChunkSize).first(chunk.size());
  bg4_group(chunk, grouped);
  return compress_lz4(grouped, output);
}

Result<CompressedChunk> ChunkCompressor::compress(ByteSpan chunk) {
  if (chunk.size() > kMaxChunkSize) {
    return make_error(ErrorCode::kInvalidArgument, "chunk of " + std::to_string(chunk.size()) +
                                                       " bytes exceeds the 128 KiB chunk limit");
  }
  const auto with = [](CompressionScheme scheme, Result<ByteSpan> data) -> Result<CompressedChunk> {
    if (!data) return std::unexpected(data.error());
    return CompressedChunk{scheme, *data};
  };
  const auto smaller_or_raw = [&](CompressionScheme scheme, Result<ByteSpan> data) -> Result<CompressedChunk> {
    if (!data) return std::unexpected(data.error());
    if (data->size() >= chunk.size()) return CompressedChunk{CompressionScheme::kNone, chunk};
    return CompressedChunk{scheme, *data};
  };
  switch (policy_) {
    case CompressionPolicy::kNone:
      return CompressedChunk{CompressionScheme::kNone, chunk};
    case CompressionPolicy::kLz4:
      return with(CompressionScheme::kLz4, compress_lz4(chunk, lz4_output_));
    case CompressionPolicy::kByteGrouping4Lz4:
      return with(CompressionScheme::kByteGrouping4Lz4, compress_bg4(chunk, bg4_output_));
    case CompressionPolicy::kPredicted:
      if (bg4_recommended(chunk)) {
        return smaller_or_raw(CompressionScheme::kByteGrouping4Lz4, compress_bg4(chunk, bg4_output_));
      }
      return smaller_or_raw(CompressionScheme::kLz4, compress_lz4(chunk, lz4_output_));
    case CompressionPolicy::kSmallest: {
      auto lz4 = compress_lz4(chunk, lz4_output_);
      auto bg4 = compress_bg4(chunk, bg4_output_);
      if (!lz4) return std::unexpected(lz4.error());
      if (!bg4) return std::unexpected(bg4.error());
      if (bg4->size() < lz4->size()) return smaller_or_raw(CompressionScheme::kByteGrouping4Lz4, bg4);
      return smaller_or_raw(CompressionScheme::kLz4, lz4);
    }
  }
  return make_error(ErrorCode::kInvalidArgument, "unknown compression policy");
}

Result<void> ChunkDecompressor::decompress_into(CompressionScheme scheme, ByteSpan stored,
                                                std::span<std::byte> destination) {
  if (destination.size() > kMaxChunkSize) {
    return make_error(ErrorCode::kTooLarge, "chunk of " + std::to_string(destination.size()) +
                                                " uncompressed bytes exceeds the 128 KiB chunk limit");
  }
  const auto expect_size = [&](std::size_t decoded) -> Result<void> {
    if (decoded != destination.size()) {
      return make_error(ErrorCode::kSizeMismatch, std::string(to_string(scheme)) + " chunk decodes to " +
                                                      std::to_string(decoded) + " bytes, header says " +
                                                      std::to_string(destination.size()));
    }
    return {};
  };
  switch (scheme) {
    case CompressionScheme::kNone: {
      if (auto ok = expect_size(stored.size()); !ok) return ok;
      if (!stored.empty()) std::memmove(destination.data(), stored.data(), stored.size());
      return {};
    }
    case CompressionScheme::kLz4: {
      auto decoded = lz4_frame_decompress(stored, destination);
      if (!decoded) return std::unexpected(decoded.error());
      return expect_size(*decoded);
    }
    case CompressionScheme::kByteGrouping4Lz4: {
      const auto grouped = reserve_buffer(grouped_, kMaxChunkSize).first(destination.size());
      auto decoded = lz4_frame_decompress(stored, grouped);
      if (!decoded) return std::unexpected(decoded.error());
      if (auto ok = expect_size(*decoded); !ok) return ok;
      bg4_ungroup(grouped, destination);
      return {};
    }
  }
  return make_error(ErrorCode::kUnsupportedCompression, "unknown compression scheme");
}

Result<ByteSpan> ChunkDecompressor::decompress(CompressionScheme scheme, ByteSpan stored,
                                               std::size_t uncompressed_size) {
  if (uncompressed_size > kMaxChunkSize) {
    return make_error(ErrorCode::kTooLarge, "chunk of " + std::to_string(uncompressed_size) +
                                                " uncompressed bytes exceeds the 128 KiB chunk limit");
  }
  if (scheme == CompressionScheme::kNone) {
    if (stored.size() != uncompressed_size) {
      return make_error(ErrorCode::kSizeMismatch, "uncompressed chunk holds " + std::to_string(stored.size()) +
                                                      " bytes, header says " + std::to_string(uncompressed_size));
    }
    return stored;
  }
  const auto out = reserve_buffer(output_, kMaxChunkSize).first(uncompressed_size);
  if (auto ok = decompress_into(scheme, stored, out); !ok) return std::unexpected(ok.error());
  return ByteSpan(out);
}

Result<Bytes> decompress_chunk(CompressionScheme scheme, ByteSpan stored, std::size_t uncompressed_size) {
  if (uncompressed_size > kMaxChunkSize) {
    return make_error(ErrorCode::kTooLarge, "chunk of " + std::to_string(uncompressed_size) +
                                                " uncompressed bytes exceeds the 128 KiB chunk limit");
  }
  Bytes out(uncompressed_size);
  ChunkDecompressor decompressor;
  if (auto ok = decompressor.decompress_into(scheme, stored, out); !ok) return std::unexpected(ok.error());
  return out;
}

}  // namespace bucketfs::xet
