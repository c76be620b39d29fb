#include "bucketfs/xet/xorb.h"

#include <gtest/gtest.h>

#include <bit>
#include <chrono>
#include <cstdlib>
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
  static const char* kWords[] = {"xorb ", "chunk ", "hash ", "shard ", "file ", "term ", "range ", "\n"};
  std::mt19937_64 rng(seed);
  std::string text;
  while (text.size() < n) text += kWords[rng() % std::size(kWords)];
  text.resize(n);
  const auto span = as_byte_span(text);
  return Bytes(span.begin(), span.end());
}

// Chunks of every kind: compressible by each scheme, incompressible, tiny and maximal.
std::vector<Bytes> mixed_chunks() {
  return {text_like(65536, 1), bf16_like(70000, 2), random_bytes(40000, 3), Bytes(kMaxChunkSize),
          text_like(1, 4),     bf16_like(9, 5),     text_like(12345, 6),    random_bytes(kMaxChunkSize, 7)};
}

std::vector<ByteSpan> spans(const std::vector<Bytes>& chunks) { return {chunks.begin(), chunks.end()}; }

Hash expected_xorb_hash(const std::vector<Bytes>& chunks) {
  std::vector<HashAndSize> leaves;
  for (const auto& c : chunks) leaves.push_back({chunk_hash(c), c.size()});
  return xorb_hash(leaves);
}

void put_u32(Bytes& out, std::uint32_t v) { append_le(out, v, 4); }
void put_text(Bytes& out, std::string_view s) {
  for (char c : s) out.push_back(std::byte(c));
}
void put_hash(Bytes& out, const Hash& h) {
  for (auto b : h.bytes) out.push_back(std::byte(b));
}

// xet-core's XorbObjectInfo footer, written from the layout in xorb.h.
Bytes footer_for(const SerializedXorb& xorb, int version) {
  Bytes f;
  put_text(f, "XETBLOB");
  f.push_back(std::byte(version));
  put_hash(f, xorb.hash);
  const auto n = static_cast<std::uint32_t>(xorb.chunks.size());
  std::vector<std::uint32_t> ends, unpacked;
  std::uint32_t total = 0;
  for (const auto& c : xorb.chunks) {
    ends.push_back(c.offset + kChunkHeaderSize + c.stored_size);
    unpacked.push_back(total += c.uncompressed_size);
  }
  if (version == 0) {
    put_u32(f, n);
    for (auto e : ends) put_u32(f, e);
    for (const auto& c : xorb.chunks) put_hash(f, c.hash);
  } else {
    const std::size_t hashes_start = f.size();
    put_text(f, "XBLBHSH");
    f.push_back(std::byte{0});
    put_u32(f, n);
    for (const auto& c : xorb.chunks) put_hash(f, c.hash);
    const std::size_t boundaries_start = f.size();
    put_text(f, "XBLBBND");
    f.push_back(std::byte{1});
    put_u32(f, n);
    for (auto e : ends) put_u32(f, e);
    for (auto u : unpacked) put_u32(f, u);
    put_u32(f, n);
    const std::size_t end = f.size() + 8 + 16;
    put_u32(f, static_cast<std::uint32_t>(end - hashes_start));
    put_u32(f, static_cast<std::uint32_t>(end - boundaries_start));
  }
  f.insert(f.end(), 16, std::byte{0});
  put_u32(f, static_cast<std::uint32_t>(f.size()));
  return f;
}

Bytes concat(const Bytes& a, const Bytes& b) {
  Bytes out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

void expect_chunks(const DecodedChunks& decoded, const std::vector<Bytes>& chunks, std::size_t first = 0) {
  ASSERT_EQ(decoded.chunk_count(), chunks.size() - first);
  for (std::size_t i = first; i < chunks.size(); ++i) {
    const ByteSpan got = decoded.chunk(i - first);
    ASSERT_TRUE(std::equal(got.begin(), got.end(), chunks[i].begin(), chunks[i].end())) << "chunk " << i;
  }
}

TEST(Xorb, ChunkHeaderLayoutIsTheSpecs) {
  const ChunkHeader header{CompressionScheme::kByteGrouping4Lz4, 0x012345, 0x020000};
  const auto bytes = encode_chunk_header(header);
  const std::array<std::byte, 8> expected = {std::byte{0},    std::byte{0x45}, std::byte{0x23}, std::byte{0x01},
                                             std::byte{2},    std::byte{0x00}, std::byte{0x00}, std::byte{0x02}};
  EXPECT_EQ(bytes, expected);
  EXPECT_EQ(*decode_chunk_header(bytes), header);
}

TEST(Xorb, ChunkHeaderRejectsEveryBadField) {
  const auto header = [](std::uint8_t version, std::uint32_t stored, std::uint8_t scheme, std::uint32_t size) {
    Bytes b = {std::byte(version)};
    append_le(b, stored, 3);
    b.push_back(std::byte(scheme));
    append_le(b, size, 3);
    return b;
  };
  EXPECT_EQ(decode_chunk_header(ByteSpan(header(0, 1, 0, 1)).first(7)).error().code, ErrorCode::kTruncated);
  EXPECT_EQ(decode_chunk_header(header(1, 1, 0, 1)).error().code, ErrorCode::kInvalidFormat);
  EXPECT_EQ(decode_chunk_header(header(0, 1, 3, 1)).error().code, ErrorCode::kUnsupportedCompression);
  EXPECT_EQ(decode_chunk_header(header(0, 100, 1, kMaxChunkSize + 1)).error().code, ErrorCode::kTooLarge);
  EXPECT_EQ(decode_chunk_header(header(0, 0xFFFFFF, 1, 100)).error().code, ErrorCode::kTooLarge);
  EXPECT_EQ(decode_chunk_header(header(0, 10, 0, 11)).error().code, ErrorCode::kSizeMismatch);
  EXPECT_TRUE(decode_chunk_header(header(0, kMaxChunkSize, 0, kMaxChunkSize)).has_value());
}

TEST(Xorb, RoundTripsWithEveryPolicy) {
  const std::vector<Bytes> chunks = mixed_chunks();
  const Hash expected_hash = expected_xorb_hash(chunks);
  for (auto policy : {CompressionPolicy::kPredicted, CompressionPolicy::kSmallest, CompressionPolicy::kNone,
                      CompressionPolicy::kLz4, CompressionPolicy::kByteGrouping4Lz4}) {
    auto xorb = serialize_xorb(spans(chunks), policy);
    ASSERT_TRUE(xorb.has_value()) << xorb.error().describe();
    EXPECT_EQ(xorb->hash, expected_hash);
    ASSERT_EQ(xorb->chunks.size(), chunks.size());

    std::size_t offset = 0;
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      const XorbChunkInfo& info = xorb->chunks[i];
      EXPECT_EQ(info.offset, offset) << i;
      EXPECT_EQ(info.hash, chunk_hash(chunks[i]));
      EXPECT_EQ(info.uncompressed_size, chunks[i].size());
      if (policy == CompressionPolicy::kNone) {
        EXPECT_EQ(info.scheme, CompressionScheme::kNone);
      } else if (policy == CompressionPolicy::kLz4) {
        EXPECT_EQ(info.scheme, CompressionScheme::kLz4);
      } else if (policy == CompressionPolicy::kByteGrouping4Lz4) {
        EXPECT_EQ(info.scheme, CompressionScheme::kByteGrouping4Lz4);
      }
      if (policy == CompressionPolicy::kPredicted || policy == CompressionPolicy::kSmallest) {
        EXPECT_LE(info.stored_size, info.uncompressed_size);
      }
      // The header in the bytes says what the info says.
      const auto header = decode_chunk_header(ByteSpan(xorb->bytes).subspan(info.offset));
      ASSERT_TRUE(header.has_value());
      EXPECT_EQ(*header, (ChunkHeader{info.scheme, info.stored_size, info.uncompressed_size}));
      offset += kChunkHeaderSize + info.stored_size;
    }
    EXPECT_EQ(xorb->bytes.size(), offset);  // no footer

    auto view = parse_xorb(xorb->bytes);
    ASSERT_TRUE(view.has_value()) << view.error().describe();
    EXPECT_FALSE(view->footer.has_value());
    EXPECT_EQ(view->chunks_size, xorb->bytes.size());
    EXPECT_EQ(view->uncompressed_size, xorb->uncompressed_size());
    XorbDecoder decoder;
    auto decoded = decoder.decode(xorb->bytes);
    ASSERT_TRUE(decoded.has_value()) << decoded.error().describe();
    expect_chunks(*decoded, chunks);
    auto owned = decode_xorb_chunks(xorb->bytes);
    ASSERT_TRUE(owned.has_value());
    EXPECT_EQ(*owned, chunks);
    auto leaves = verify_xorb(xorb->bytes, expected_hash);
    ASSERT_TRUE(leaves.has_value()) << leaves.error().describe();
    EXPECT_EQ(*leaves, xorb->chunk_hashes());
  }
  // The predicted policy really mixes schemes in one xorb.
  auto xorb = serialize_xorb(spans(chunks));
  EXPECT_EQ(xorb->chunks[0].scheme, CompressionScheme::kLz4);
  EXPECT_EQ(xorb->chunks[1].scheme, CompressionScheme::kByteGrouping4Lz4);
  EXPECT_EQ(xorb->chunks[2].scheme, CompressionScheme::kNone);
}

TEST(Xorb, ParsesEveryChunkRangeAsARangedGetReturnsIt) {
  const std::vector<Bytes> chunks = mixed_chunks();
  auto xorb = serialize_xorb(spans(chunks));
  ASSERT_TRUE(xorb.has_value());
  XorbDecoder decoder;
  Bytes destination(chunks.size() * kMaxChunkSize);
  for (std::size_t a = 0; a < chunks.size(); ++a) {
    for (std::size_t b = a + 1; b <= chunks.size(); ++b) {
      const auto [begin, end] = xorb->byte_range(a, b);
      const Bytes range(xorb->bytes.begin() + begin, xorb->bytes.begin() + end);
      auto decoded = decoder.decode_into(range, destination, a);
      ASSERT_TRUE(decoded.has_value()) << decoded.error().describe();
      const std::vector<Bytes> expected(chunks.begin() + a, chunks.begin() + b);
      expect_chunks(*decoded, expected);
      EXPECT_EQ(decoded->data.data(), destination.data());  // decoded in place, no copy
    }
  }
  // Errors name the chunk by its index in the xorb, not in the range.
  const auto [begin, end] = xorb->byte_range(3, 6);
  Bytes range(xorb->bytes.begin() + begin, xorb->bytes.begin() + end);
  const std::size_t second = xorb->chunks[4].offset - begin;
  range[second + 4] = std::byte{7};  // scheme byte of chunk 4
  auto bad = parse_xorb(range, 3);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code, ErrorCode::kUnsupportedCompression);
  EXPECT_NE(bad.error().message.find("chunk 4 at byte " + std::to_string(second)), std::string::npos)
      << bad.error().message;
  // A cut range is truncated, not misread.
  range.resize(range.size() - 1);
  range[second + 4] = std::byte{static_cast<std::uint8_t>(xorb->chunks[4].scheme)};
  EXPECT_EQ(parse_xorb(range, 3).error().code, ErrorCode::kTruncated);
  EXPECT_EQ(decoder.decode_into(xorb->bytes, std::span(destination).first(10)).error().code,
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(parse_xorb(Bytes{}).error().code, ErrorCode::kTruncated);
}

TEST(Xorb, VerifyDetectsEveryKindOfTampering) {
  const std::vector<Bytes> chunks = {text_like(30000, 50), random_bytes(20000, 51), bf16_like(40000, 52)};
  auto xorb = serialize_xorb(spans(chunks));
  ASSERT_TRUE(xorb.has_value());
  ASSERT_EQ(xorb->chunks[1].scheme, CompressionScheme::kNone);
  ASSERT_TRUE(verify_xorb(xorb->bytes, xorb->hash).has_value());

  Hash other = xorb->hash;
  other.bytes[0] ^= 1;
  auto wrong_claim = verify_xorb(xorb->bytes, other);
  ASSERT_FALSE(wrong_claim.has_value());
  EXPECT_EQ(wrong_claim.error().code, ErrorCode::kHashMismatch);

  Bytes flipped = xorb->bytes;  // one data byte of the raw chunk: parses and decodes, wrong hash
  flipped[xorb->chunks[1].offset + kChunkHeaderSize + 100] ^= std::byte{1};
  EXPECT_EQ(verify_xorb(flipped, xorb->hash).error().code, ErrorCode::kHashMismatch);

  Bytes dropped = xorb->bytes;  // a whole chunk removed: valid layout, different hash
  dropped.erase(dropped.begin() + xorb->chunks[1].offset, dropped.begin() + xorb->chunks[2].offset);
  EXPECT_EQ(verify_xorb(dropped, xorb->hash).error().code, ErrorCode::kHashMismatch);

  Bytes wrong_size = xorb->bytes;  // the LZ4 chunk declares one byte more than it holds
  wrong_size[xorb->chunks[0].offset + 5] = std::byte(std::to_integer<int>(wrong_size[5]) + 1);
  auto size_error = verify_xorb(wrong_size, xorb->hash);
  ASSERT_FALSE(size_error.has_value());
  EXPECT_EQ(size_error.error().code, ErrorCode::kSizeMismatch);
  EXPECT_NE(size_error.error().message.find("chunk 0 at byte 0"), std::string::npos) << size_error.error().message;
}

TEST(Xorb, ParsesAndChecksXetCoreFooters) {
  const std::vector<Bytes> chunks = {text_like(30000, 60), bf16_like(50000, 61), random_bytes(5000, 62)};
  auto xorb = serialize_xorb(spans(chunks));
  ASSERT_TRUE(xorb.has_value());
  for (int version : {0, 1}) {
    const Bytes footer = footer_for(*xorb, version);
    const Bytes with_footer = concat(xorb->bytes, footer);
    auto view = parse_xorb(with_footer);
    ASSERT_TRUE(view.has_value()) << view.error().describe();
    ASSERT_TRUE(view->footer.has_value());
    EXPECT_EQ(view->footer->version, version);
    EXPECT_EQ(view->footer->xorb_hash, xorb->hash);
    EXPECT_EQ(view->chunks.size(), chunks.size());
    EXPECT_EQ(view->chunks_size, xorb->bytes.size());
    XorbDecoder decoder;
    expect_chunks(*decoder.decode(with_footer), chunks);
    ASSERT_TRUE(verify_xorb(with_footer, xorb->hash).has_value()) << version;

    // A footer whose hash disagrees with the chunks fails verification...
    Bytes wrong_hash = with_footer;
    wrong_hash[xorb->bytes.size() + 8] ^= std::byte{1};
    EXPECT_EQ(verify_xorb(wrong_hash, xorb->hash).error().code, ErrorCode::kHashMismatch);
    // ...one whose offsets disagree, or whose length field lies, does not parse.
    Bytes wrong_offset = with_footer;
    const std::size_t offsets_at = xorb->bytes.size() + (version == 0 ? 44 : 40 + 12 + 3 * 32 + 12);
    wrong_offset[offsets_at] ^= std::byte{1};
    EXPECT_EQ(parse_xorb(wrong_offset).error().code, ErrorCode::kInvalidFormat);
    Bytes wrong_length = with_footer;
    wrong_length[wrong_length.size() - 4] ^= std::byte{1};
    EXPECT_EQ(parse_xorb(wrong_length).error().code, ErrorCode::kInvalidFormat);
    Bytes extra = with_footer;
    extra.push_back(std::byte{0});
    EXPECT_FALSE(parse_xorb(extra).has_value());
    // A footer does not belong after a chunk range.
    const auto [begin, end] = xorb->byte_range(1, 3);
    const Bytes range_with_footer = concat(Bytes(xorb->bytes.begin() + begin, xorb->bytes.end()), footer);
    EXPECT_EQ(parse_xorb(range_with_footer, 1).error().code, ErrorCode::kInvalidFormat);
  }
}

TEST(Xorb, BuilderStopsAtThe64MiBLimit) {
  XorbBuilder builder;
  const Bytes random = random_bytes(kMaxChunkSize, 70);  // incompressible: stored raw, 8 + 128 KiB each
  std::size_t added = 0;
  while (builder.would_fit(random.size())) {
    Bytes chunk = random;
    std::memcpy(chunk.data(), &added, sizeof(added));  // distinct chunks
    ASSERT_TRUE(builder.add_chunk(chunk).has_value());
    ++added;
  }
  const std::size_t per_chunk = kChunkHeaderSize + kMaxChunkSize;
  EXPECT_EQ(added, kMaxXorbSize / per_chunk);
  EXPECT_EQ(builder.serialized_size(), added * per_chunk);
  EXPECT_GT(builder.serialized_size() + per_chunk, kMaxXorbSize);
  auto refused = builder.add_chunk(random);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, ErrorCode::kTooLarge);
  EXPECT_EQ(builder.chunk_count(), added);  // unchanged by the refusal
  EXPECT_TRUE(builder.add_chunk(text_like(1000, 71)).has_value());  // a small compressible chunk still fits

  SerializedXorb xorb = builder.finish();
  EXPECT_LE(xorb.bytes.size(), kMaxXorbSize);
  EXPECT_TRUE(builder.empty());
  ASSERT_TRUE(verify_xorb(xorb.bytes, xorb.hash).has_value());

  // The buffer comes back for the next xorb: same pages, no fresh allocation.
  const std::byte* pages = xorb.bytes.data();
  builder.recycle(std::move(xorb.bytes));
  ASSERT_TRUE(builder.add_chunk(random).has_value());
  SerializedXorb next = builder.finish();
  EXPECT_EQ(next.bytes.data(), pages);
  EXPECT_EQ(next.hash, expected_xorb_hash({random}));

  // The parser refuses chunks past 64 MiB.
  Bytes oversized;
  oversized.reserve(kMaxXorbSize + 2 * per_chunk);
  const auto header = encode_chunk_header({CompressionScheme::kNone, kMaxChunkSize, kMaxChunkSize});
  while (oversized.size() <= kMaxXorbSize) {
    oversized.insert(oversized.end(), header.begin(), header.end());
    oversized.insert(oversized.end(), random.begin(), random.end());
  }
  EXPECT_EQ(parse_xorb(oversized).error().code, ErrorCode::kTooLarge);
}

TEST(Xorb, BuilderEnforcesChunkAndUncompressedLimits) {
  XorbBuilder builder(CompressionPolicy::kPredicted, XorbLimits{kMaxXorbSize, 3000, 3});
  const Bytes chunk = text_like(1000, 80);
  EXPECT_TRUE(builder.add_chunk(chunk).has_value());
  EXPECT_TRUE(builder.add_chunk(chunk).has_value());
  EXPECT_FALSE(builder.would_fit(1001));
  EXPECT_EQ(builder.add_chunk(text_like(1001, 81)).error().code, ErrorCode::kTooLarge);
  EXPECT_TRUE(builder.add_chunk(chunk).has_value());
  EXPECT_FALSE(builder.would_fit(1));
  EXPECT_EQ(builder.add_chunk(text_like(1, 82)).error().code, ErrorCode::kTooLarge);
  EXPECT_EQ(builder.add_chunk(Bytes{}).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(XorbBuilder().add_chunk(Bytes(kMaxChunkSize + 1)).error().code, ErrorCode::kInvalidArgument);
  // A known hash is used as given.
  XorbBuilder with_hash;
  ASSERT_TRUE(with_hash.add_chunk(chunk, chunk_hash(chunk)).has_value());
  EXPECT_EQ(with_hash.finish().chunks[0].hash, chunk_hash(chunk));
  // An empty builder finishes to an empty xorb with the zero hash.
  SerializedXorb empty = XorbBuilder().finish();
  EXPECT_TRUE(empty.bytes.empty());
  EXPECT_TRUE(empty.hash.is_zero());
}

double fuzz_seconds() {
  const char* env = std::getenv("BUCKETFS_FUZZ_SECONDS");
  if (env == nullptr) return 2.0;
  const double value = std::atof(env);
  return value > 0 ? value : 2.0;
}

// Mutates valid xorbs (with and without footer) and checks the parser and decoder never crash
// and never report sizes inconsistent with the bytes; anything that verifies must be the
// original content. Run under ASan/UBSan to catch out-of-bounds reads.
TEST(Xorb, SurvivesRandomMutations) {
  const std::vector<Bytes> chunks = {text_like(3000, 90), bf16_like(2002, 91), random_bytes(700, 92),
                                     text_like(5, 93), Bytes(4000)};
  auto base = serialize_xorb(spans(chunks));
  ASSERT_TRUE(base.has_value());
  auto all_lz4 = serialize_xorb(spans(chunks), CompressionPolicy::kLz4);
  auto all_bg4 = serialize_xorb(spans(chunks), CompressionPolicy::kByteGrouping4Lz4);
  const std::vector<Bytes> seeds = {base->bytes, all_lz4->bytes, all_bg4->bytes,
                                    concat(base->bytes, footer_for(*base, 1)),
                                    concat(base->bytes, footer_for(*base, 0))};

  std::mt19937_64 rng(20261123);
  XorbDecoder decoder;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(fuzz_seconds());
  std::size_t iterations = 0, parsed = 0, verified = 0;
  while (iterations < 2000 || std::chrono::steady_clock::now() < deadline) {
    ++iterations;
    Bytes data = seeds[rng() % seeds.size()];
    const int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations && !data.empty(); ++m) {
      const std::size_t at = rng() % data.size();
      switch (rng() % 6) {
        case 0: data[at] ^= std::byte(1u << (rng() % 8)); break;
        case 1: data[at] = std::byte(rng() & 0xff); break;
        case 2: data.insert(data.begin() + at, 1 + rng() % 16, std::byte(rng() & 0xff)); break;
        case 3: data.erase(data.begin() + at, data.begin() + std::min(data.size(), at + 1 + rng() % 16)); break;
        case 4: data.resize(at); break;
        case 5: {  // a chunk header field: where most of the interesting bugs would be
          const auto& info = base->chunks[rng() % base->chunks.size()];
          if (info.offset + 8 <= data.size()) data[info.offset + 1 + rng() % 7] = std::byte(rng() & 0xff);
          break;
        }
      }
    }
    const Bytes input(data.begin(), data.end());  // exact-size allocation so ASan sees overreads

    auto view = parse_xorb(input);
    if (view) {
      ++parsed;
      std::size_t pos = 0;
      std::uint64_t uncompressed = 0;
      for (const ChunkView& c : view->chunks) {
        ASSERT_EQ(c.offset, pos);
        ASSERT_EQ(c.stored.data(), input.data() + pos + kChunkHeaderSize);
        ASSERT_EQ(c.stored.size(), c.header.stored_size);
        ASSERT_LE(c.header.uncompressed_size, kMaxChunkSize);
        pos += kChunkHeaderSize + c.stored.size();
        uncompressed += c.header.uncompressed_size;
      }
      ASSERT_EQ(pos, view->chunks_size);
      ASSERT_LE(view->chunks_size, input.size());
      ASSERT_EQ(view->chunks_size == input.size(), !view->footer.has_value());
      ASSERT_EQ(uncompressed, view->uncompressed_size);

      auto decoded = decoder.decode(input);
      if (decoded) {
        ASSERT_EQ(decoded->chunk_count(), view->chunks.size());
        ASSERT_EQ(decoded->data.size(), view->uncompressed_size);
        for (std::size_t i = 0; i < view->chunks.size(); ++i) {
          ASSERT_EQ(decoded->chunk(i).size(), view->chunks[i].header.uncompressed_size);
        }
      }
    }
    auto leaves = verify_xorb(input, base->hash);
    if (leaves) {
      ++verified;
      auto decoded = decode_xorb_chunks(input);
      ASSERT_TRUE(decoded.has_value());
      ASSERT_EQ(*decoded, chunks);  // only the original content can carry the original hash
    } else {
      ASSERT_FALSE(leaves.error().message.empty());
    }
  }
  std::cout << "[ figure   ] " << iterations << " mutated xorbs, " << parsed << " parsed, " << verified
            << " still verified\n";
  EXPECT_GE(iterations, 2000u);
}

}  // namespace
}  // namespace bucketfs::xet
