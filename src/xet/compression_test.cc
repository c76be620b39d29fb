#include "bucketfs/xet/compression.h"

#include <gtest/gtest.h>
#include <lz4frame.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <string>

#include "test_bytes.h"

namespace bucketfs::xet {
namespace {

using testing::bf16_like;
using testing::random_bytes;

Bytes text_like(std::size_t n, std::uint64_t seed) {
  static const char* kWords[] = {"the ",    "bucket ", "mounts ", "a ",      "checkpoint ", "of ",    "weights ",
                                 "and ",    "reads ",  "chunks ", "from ",   "xorbs ",      "while ", "training ",
                                 "writes ", "files ",  "under ",  "steps. ", "\n"};
  std::mt19937_64 rng(seed);
  std::string text;
  while (text.size() < n) text += kWords[rng() % std::size(kWords)];
  text.resize(n);
  const auto span = as_byte_span(text);
  return Bytes(span.begin(), span.end());
}

// The definition in xorb.md: byte i goes to group i % 4, groups concatenated in order.
Bytes reference_group(ByteSpan data) {
  Bytes out;
  for (std::size_t group = 0; group < 4; ++group) {
    for (std::size_t i = group; i < data.size(); i += 4) out.push_back(data[i]);
  }
  return out;
}

TEST(Compression, SchemeBytesAreTheSpecValues) {
  EXPECT_EQ(*compression_scheme_from_byte(0), CompressionScheme::kNone);
  EXPECT_EQ(*compression_scheme_from_byte(1), CompressionScheme::kLz4);
  EXPECT_EQ(*compression_scheme_from_byte(2), CompressionScheme::kByteGrouping4Lz4);
  for (int value : {3, 4, 99, int{'X'}, 255}) {
    auto scheme = compression_scheme_from_byte(static_cast<std::uint8_t>(value));
    ASSERT_FALSE(scheme.has_value()) << value;
    EXPECT_EQ(scheme.error().code, ErrorCode::kUnsupportedCompression);
  }
  EXPECT_STREQ(to_string(CompressionScheme::kByteGrouping4Lz4), "bg4-lz4");
}

TEST(Compression, Bg4GroupsAsTheSpecExample) {
  // [A1 A2 A3 A4 B1 B2 B3 B4 C1] -> [A1 B1 C1 | A2 B2 | A3 B3 | A4 B4]
  const Bytes data = {std::byte{0xA1}, std::byte{0xA2}, std::byte{0xA3}, std::byte{0xA4}, std::byte{0xB1},
                      std::byte{0xB2}, std::byte{0xB3}, std::byte{0xB4}, std::byte{0xC1}};
  const Bytes expected = {std::byte{0xA1}, std::byte{0xB1}, std::byte{0xC1}, std::byte{0xA2}, std::byte{0xB2},
                          std::byte{0xA3}, std::byte{0xB3}, std::byte{0xA4}, std::byte{0xB4}};
  EXPECT_EQ(bg4_group(data), expected);
  EXPECT_EQ(bg4_ungroup(expected), data);
}

TEST(Compression, Bg4MatchesTheDefinitionOnEverySmallAndOddLength) {
  std::vector<std::size_t> sizes;
  for (std::size_t n = 0; n <= 300; ++n) sizes.push_back(n);  // 0..9 and every tail of the 64-byte SIMD step
  for (std::size_t n : {1023u, 4097u, 65535u, 65536u, 65537u, 65538u, 65539u, 131071u, 131072u}) sizes.push_back(n);
  for (std::size_t n : sizes) {
    const Bytes data = random_bytes(n, n);
    const Bytes grouped = bg4_group(data);
    ASSERT_EQ(grouped, reference_group(data)) << "size " << n;
    ASSERT_EQ(bg4_ungroup(grouped), data) << "size " << n;
  }
}

TEST(Compression, Bg4WorksOnUnalignedSpans) {
  const Bytes data = random_bytes(1000, 7);
  for (std::size_t shift = 1; shift < 4; ++shift) {
    const ByteSpan input = ByteSpan(data).subspan(shift, 517);
    Bytes out(input.size() + 3);
    bg4_group(input, std::span(out).subspan(3, input.size()));
    EXPECT_EQ(Bytes(out.begin() + 3, out.end()), reference_group(input));
  }
}

TEST(Compression, Bg4Throughput) {
  // A figure for the report, and a floor far below what even the scalar loop does (ASan builds
  // run this too).
  const Bytes data = bf16_like(64 * 1024, 3);
  Bytes grouped(data.size()), back(data.size());
  constexpr int kRounds = 4000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) bg4_group(data, grouped);
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < kRounds; ++i) bg4_ungroup(grouped, back);
  const auto t2 = std::chrono::steady_clock::now();
  ASSERT_EQ(back, data);
  const double bytes = double(data.size()) * kRounds / (1024.0 * 1024 * 1024);
  const double group_gibs = bytes / std::chrono::duration<double>(t1 - t0).count();
  const double ungroup_gibs = bytes / std::chrono::duration<double>(t2 - t1).count();
  std::cout << "[ figure   ] BG4 group " << group_gibs << " GiB/s, ungroup " << ungroup_gibs
            << " GiB/s (64 KiB chunks, in cache)\n";
  EXPECT_GT(ungroup_gibs, 0.05);
}

TEST(Compression, Lz4WritesAFrameNotARawBlock) {
  const Bytes data = text_like(60000, 1);
  Bytes frame(lz4_frame_compress_bound(data.size()));
  auto size = lz4_frame_compress(data, frame);
  ASSERT_TRUE(size.has_value()) << size.error().describe();
  ASSERT_GT(*size, 11u);
  // Magic 0x184D2204 little-endian, then FLG version 01 with independent blocks.
  EXPECT_EQ(frame[0], std::byte{0x04});
  EXPECT_EQ(frame[1], std::byte{0x22});
  EXPECT_EQ(frame[2], std::byte{0x4D});
  EXPECT_EQ(frame[3], std::byte{0x18});
  EXPECT_EQ(std::to_integer<int>(frame[4]) >> 6, 1);
  EXPECT_LT(*size, data.size() / 2);
  // liblz4's own frame decoder reads it.
  Bytes decoded(data.size());
  LZ4F_dctx* dctx = nullptr;
  ASSERT_FALSE(LZ4F_isError(LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION)));
  std::size_t out_size = decoded.size(), in_size = *size;
  const std::size_t rc = LZ4F_decompress(dctx, decoded.data(), &out_size, frame.data(), &in_size, nullptr);
  LZ4F_freeDecompressionContext(dctx);
  EXPECT_EQ(rc, 0u);
  EXPECT_EQ(out_size, data.size());
  EXPECT_EQ(decoded, data);
}

// Frames with every option another encoder may choose: lz4js writes 4 MiB linked blocks,
// lz4_flex 64 KiB blocks; checksums and content size are legal too.
TEST(Compression, Lz4DecodesFramesWithAnyEncoderOptions) {
  Bytes data = text_like(300 * 1024, 2);
  // Repeat earlier text at distances that cross block boundaries (linked blocks refer back).
  std::memcpy(data.data() + 70000, data.data() + 10, 50000);
  for (auto block : {LZ4F_max64KB, LZ4F_max256KB, LZ4F_max1MB, LZ4F_max4MB}) {
    for (auto mode : {LZ4F_blockLinked, LZ4F_blockIndependent}) {
      for (int checksums = 0; checksums < 2; ++checksums) {
        LZ4F_preferences_t prefs;
        std::memset(&prefs, 0, sizeof(prefs));
        prefs.frameInfo.blockSizeID = block;
        prefs.frameInfo.blockMode = mode;
        prefs.frameInfo.contentChecksumFlag = checksums ? LZ4F_contentChecksumEnabled : LZ4F_noContentChecksum;
        prefs.frameInfo.blockChecksumFlag = checksums ? LZ4F_blockChecksumEnabled : LZ4F_noBlockChecksum;
        prefs.frameInfo.contentSize = checksums ? data.size() : 0;
        Bytes frame(LZ4F_compressFrameBound(data.size(), &prefs));
        // Compress block by block so LZ4F keeps the block size we asked for.
        LZ4F_cctx* cctx = nullptr;
        ASSERT_FALSE(LZ4F_isError(LZ4F_createCompressionContext(&cctx, LZ4F_VERSION)));
        std::size_t pos = LZ4F_compressBegin(cctx, frame.data(), frame.size(), &prefs);
        ASSERT_FALSE(LZ4F_isError(pos));
        const std::size_t n = LZ4F_compressUpdate(cctx, frame.data() + pos, frame.size() - pos, data.data(),
                                                  data.size(), nullptr);
        ASSERT_FALSE(LZ4F_isError(n));
        pos += n;
        const std::size_t e = LZ4F_compressEnd(cctx, frame.data() + pos, frame.size() - pos, nullptr);
        ASSERT_FALSE(LZ4F_isError(e));
        pos += e;
        LZ4F_freeCompressionContext(cctx);

        Bytes out(data.size());
        auto decoded = lz4_frame_decompress(ByteSpan(frame).first(pos), out);
        ASSERT_TRUE(decoded.has_value()) << decoded.error().describe() << " block " << block << " mode " << mode;
        EXPECT_EQ(*decoded, data.size());
        EXPECT_EQ(out, data) << "block " << block << " mode " << mode << " checksums " << checksums;
      }
    }
  }
}

TEST(Compression, Lz4RejectsMalformedFrames) {
  const Bytes data = text_like(50000, 3);
  Bytes frame(lz4_frame_compress_bound(data.size()));
  const std::size_t size = *lz4_frame_compress(data, frame);
  frame.resize(size);
  Bytes out(data.size());

  // Every truncation fails, with a typed error and no out-of-bounds access (ASan build).
  for (std::size_t cut = 0; cut < size; ++cut) {
    const Bytes prefix(frame.begin(), frame.begin() + cut);  // own allocation: ASan sees overreads
    auto r = lz4_frame_decompress(prefix, out);
    ASSERT_FALSE(r.has_value()) << "cut at " << cut;
  }
  Bytes bad_magic = frame;
  bad_magic[0] = std::byte{0};
  EXPECT_EQ(lz4_frame_decompress(bad_magic, out).error().code, ErrorCode::kInvalidFormat);

  Bytes trailing = frame;
  trailing.push_back(std::byte{0});
  EXPECT_EQ(lz4_frame_decompress(trailing, out).error().code, ErrorCode::kInvalidFormat);

  Bytes dictionary = frame;
  dictionary[4] |= std::byte{0x01};
  EXPECT_EQ(lz4_frame_decompress(dictionary, out).error().code, ErrorCode::kUnsupportedCompression);

  // Output smaller than the content: never written past, reported as an error.
  Bytes small(data.size() - 1);
  EXPECT_FALSE(lz4_frame_decompress(frame, small).has_value());

  // A stored (uncompressed) block larger than the output.
  const Bytes random = random_bytes(1000, 4);
  Bytes raw_frame(lz4_frame_compress_bound(random.size()));
  raw_frame.resize(*lz4_frame_compress(random, raw_frame));
  Bytes small_raw(999);
  EXPECT_EQ(lz4_frame_decompress(raw_frame, small_raw).error().code, ErrorCode::kSizeMismatch);

  // Random corruption of the block bytes: error or some bytes, never a crash.
  std::mt19937_64 rng(5);
  for (int i = 0; i < 2000; ++i) {
    Bytes corrupt = frame;
    corrupt[7 + rng() % (size - 7)] ^= std::byte(1 + rng() % 255);
    auto r = lz4_frame_decompress(corrupt, out);
    if (r) {
      EXPECT_LE(*r, out.size());
    }
  }
}

TEST(Compression, PredictorPicksBg4ForBf16AndLz4ForText) {
  const Bytes bf16 = bf16_like(64 * 1024, 10);
  const Bytes text = text_like(64 * 1024, 11);
  const Bytes random = random_bytes(64 * 1024, 12);

  Bg4Predictor bf16_predictor;
  bf16_predictor.add(bf16);
  EXPECT_GT(bf16_predictor.max_kl_divergence(), Bg4Predictor::kBg4Threshold);
  EXPECT_TRUE(bg4_recommended(bf16));
  EXPECT_FALSE(bg4_recommended(text));
  EXPECT_FALSE(bg4_recommended(random));
  EXPECT_EQ(Bg4Predictor{}.max_kl_divergence(), 0.0);

  // The prediction is right: on bf16 data grouping beats plain LZ4, on text it does not.
  ChunkCompressor lz4(CompressionPolicy::kLz4), bg4(CompressionPolicy::kByteGrouping4Lz4);
  EXPECT_LT(bg4.compress(bf16)->data.size(), lz4.compress(bf16)->data.size());
  EXPECT_LT(lz4.compress(text)->data.size(), bg4.compress(text)->data.size());
}

TEST(Compression, PredictorSamplesRespectBytePositions) {
  // Adding a buffer in two pieces at their positions equals adding it whole.
  const Bytes data = bf16_like(1001, 13);
  Bg4Predictor whole, pieces;
  whole.add(data);
  pieces.add(ByteSpan(data).first(333), 0);
  pieces.add(ByteSpan(data).subspan(333), 333);
  EXPECT_DOUBLE_EQ(whole.max_kl_divergence(), pieces.max_kl_divergence());
}

TEST(Compression, PolicyPicksSchemeAndFallsBackToRaw) {
  ChunkCompressor predicted;
  const Bytes bf16 = bf16_like(64 * 1024, 20);
  const Bytes text = text_like(64 * 1024, 21);
  const Bytes random = random_bytes(64 * 1024, 22);
  EXPECT_EQ(predicted.compress(bf16)->scheme, CompressionScheme::kByteGrouping4Lz4);
  EXPECT_EQ(predicted.compress(text)->scheme, CompressionScheme::kLz4);
  auto raw = predicted.compress(random);
  ASSERT_TRUE(raw.has_value());
  EXPECT_EQ(raw->scheme, CompressionScheme::kNone);
  EXPECT_EQ(raw->data.data(), random.data());  // no copy
  EXPECT_EQ(raw->data.size(), random.size());

  ChunkCompressor smallest(CompressionPolicy::kSmallest);
  for (const Bytes* input : {&bf16, &text, &random}) {
    auto best = smallest.compress(*input);
    ASSERT_TRUE(best.has_value());
    ChunkCompressor lz4(CompressionPolicy::kLz4), bg4(CompressionPolicy::kByteGrouping4Lz4);
    const std::size_t expected =
        std::min({input->size(), lz4.compress(*input)->data.size(), bg4.compress(*input)->data.size()});
    EXPECT_EQ(best->data.size(), expected);
  }

  // Forced schemes are kept even when they do not help.
  ChunkCompressor forced(CompressionPolicy::kLz4);
  auto forced_random = forced.compress(random);
  EXPECT_EQ(forced_random->scheme, CompressionScheme::kLz4);
  EXPECT_GT(forced_random->data.size(), random.size());
  EXPECT_LE(forced_random->data.size(), forced.max_compressed_size(random.size()));
  EXPECT_LE(forced_random->data.size(), kMaxCompressedChunkSize);

  const Bytes too_big(kMaxChunkSize + 1);
  EXPECT_EQ(predicted.compress(too_big).error().code, ErrorCode::kInvalidArgument);
}

TEST(Compression, EverySchemeRoundTripsThroughReusedBuffers) {
  const std::vector<Bytes> inputs = {bf16_like(64 * 1024, 30), text_like(100000, 31), random_bytes(131072, 32),
                                     Bytes(131072),            text_like(1, 33),      bf16_like(7, 34),
                                     random_bytes(9, 35),      text_like(8191, 36),   Bytes{}};
  ChunkDecompressor decompressor;  // one for everything: no state may leak between chunks
  for (auto policy : {CompressionPolicy::kNone, CompressionPolicy::kLz4, CompressionPolicy::kByteGrouping4Lz4,
                      CompressionPolicy::kPredicted, CompressionPolicy::kSmallest}) {
    ChunkCompressor compressor(policy);
    for (const Bytes& input : inputs) {
      auto compressed = compressor.compress(input);
      ASSERT_TRUE(compressed.has_value()) << compressed.error().describe();
      const Bytes stored(compressed->data.begin(), compressed->data.end());
      auto view = decompressor.decompress(compressed->scheme, stored, input.size());
      ASSERT_TRUE(view.has_value()) << view.error().describe();
      ASSERT_TRUE(std::equal(view->begin(), view->end(), input.begin(), input.end()))
          << to_string(compressed->scheme) << " size " << input.size();

      Bytes destination(input.size(), std::byte{0xEE});
      ASSERT_TRUE(decompressor.decompress_into(compressed->scheme, stored, destination).has_value());
      ASSERT_EQ(destination, input);
      ASSERT_EQ(*decompress_chunk(compressed->scheme, stored, input.size()), input);
    }
  }
}

TEST(Compression, DecompressionRejectsWrongDeclaredSizes) {
  const Bytes text = text_like(20000, 40);
  ChunkCompressor lz4(CompressionPolicy::kLz4), bg4(CompressionPolicy::kByteGrouping4Lz4);
  ChunkDecompressor decompressor;
  for (auto* compressor : {&lz4, &bg4}) {
    auto c = compressor->compress(text);
    const Bytes stored(c->data.begin(), c->data.end());
    auto shorter = decompressor.decompress(c->scheme, stored, text.size() - 1);
    ASSERT_FALSE(shorter.has_value());
    auto longer = decompressor.decompress(c->scheme, stored, text.size() + 1);
    ASSERT_FALSE(longer.has_value());
    EXPECT_EQ(longer.error().code, ErrorCode::kSizeMismatch);
    EXPECT_EQ(decompressor.decompress(c->scheme, stored, kMaxChunkSize + 1).error().code, ErrorCode::kTooLarge);
  }
  EXPECT_EQ(decompressor.decompress(CompressionScheme::kNone, text, text.size() - 1).error().code,
            ErrorCode::kSizeMismatch);
  // Stored data that is not a frame at all.
  EXPECT_FALSE(decompressor.decompress(CompressionScheme::kLz4, text, 100).has_value());
}

}  // namespace
}  // namespace bucketfs::xet
