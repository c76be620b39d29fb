#include "bucketfs/xet/reconstruction.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bucketfs::xet {
namespace {

// ---- The example responses of download-protocol.md, verbatim ---------------------------------

constexpr std::string_view kSpecSingleTerm = R"json({
  "offset_into_first_range": 0,
  "terms": [
    {
      "hash": "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456",
      "unpacked_length": 263873,
      "range": {
        "start": 0,
        "end": 4
      }
    }
  ],
  "xorbs": {
    "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456": [
      {
        "url": "https://transfer.xethub.hf.co/xorb/default/a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456?X-Xet-Signed-Range=bytes%3D0-131071&Expires=1735689600&Policy=eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoidHJhbnNmZXIueGV0aHViLmhmLmNvL3hvcmIvZGVmYXVsdC9hMWIyYzNkNCoiLCJDb25kaXRpb24iOnsiRGF0ZUxlc3NUaGFuIjp7IkFXUzpFcG9jaFRpbWUiOjE3MzU2ODk2MDB9fX1dfQ__&Signature=Kx8n2rJ5pYqWc3vLdBhTfZ9mAeRsUgN1oiXwEbCa0kqLm4t7yHpV6dZ~woIsPuGj&Key-Pair-Id=K2EXAMPLECDNKEY01",
        "ranges": [
          {
            "chunks": { "start": 0, "end": 4 },
            "bytes": { "start": 0, "end": 131071 }
          }
        ]
      }
    ]
  }
})json";

// download-protocol.md "More complex QueryReconstruction Example". Its second xorb hash has only
// 61 hex digits in the document.
constexpr std::string_view kSpecMultiXorb = R"json({
  "offset_into_first_range": 0,
  "terms": [
    {
      "hash": "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456",
      "unpacked_length": 263873,
      "range": {
        "start": 1,
        "end": 4
      }
    },
    {
      "hash": "fedcba0987654321098765432109876543210fedcba098765432109876543",
      "unpacked_length": 143890,
      "range": {
        "start": 0,
        "end": 3
      }
    },
    {
      "hash": "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456",
      "unpacked_length": 3063572,
      "range": {
        "start": 3,
        "end": 43
      }
    }
  ],
  "xorbs": {
    "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456": [
      {
        "url": "https://transfer.xethub.hf.co/xorb/default/a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456?X-Xet-Signed-Range=bytes%3D57980-1433008&Expires=1735689600&Policy=eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoidHJhbnNmZXIueGV0aHViLmhmLmNvL3hvcmIvZGVmYXVsdC9hMWIyYzNkNCoiLCJDb25kaXRpb24iOnsiRGF0ZUxlc3NUaGFuIjp7IkFXUzpFcG9jaFRpbWUiOjE3MzU2ODk2MDB9fX1dfQ__&Signature=Qz3mWpLf9xKvR2sHnDbTgY7uAeJcUiO1kXwEbCa5rqPm8t4yHpV6dZ~woIsPuGjN&Key-Pair-Id=K2EXAMPLECDNKEY01",
        "ranges": [
          {
            "chunks": { "start": 1, "end": 43 },
            "bytes": { "start": 57980, "end": 1433008 }
          }
        ]
      }
    ],
    "fedcba0987654321098765432109876543210fedcba098765432109876543": [
      {
        "url": "https://transfer.xethub.hf.co/xorb/default/fedcba0987654321098765432109876543210fedcba098765432109876543?X-Xet-Signed-Range=bytes%3D0-65670&Expires=1735689600&Policy=eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoidHJhbnNmZXIueGV0aHViLmhmLmNvL3hvcmIvZGVmYXVsdC9mZWRjYmEwOSoiLCJDb25kaXRpb24iOnsiRGF0ZUxlc3NUaGFuIjp7IkFXUzpFcG9jaFRpbWUiOjE3MzU2ODk2MDB9fX1dfQ__&Signature=Ht6bYnQd4wKfM9xRcS2vLpDgT8uAeJiO1kXwEbCa7rqZm5t3yHpV6dZ~woIsPuFa&Key-Pair-Id=K2EXAMPLECDNKEY01",
        "ranges": [
          {
            "chunks": { "start": 0, "end": 3 },
            "bytes": { "start": 0, "end": 65670 }
          }
        ]
      }
    ]
  }
})json";

constexpr std::string_view kXorbA = "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456";
constexpr std::string_view kTypoHash = "fedcba0987654321098765432109876543210fedcba098765432109876543";
constexpr std::string_view kFixedHash = "fedcba0987654321098765432109876543210fedcba098765432109876543fed";

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

Hash hash_of(std::string_view text) {
  auto hash = Hash::from_string(text);
  EXPECT_TRUE(hash.has_value()) << text;
  return hash.value_or(Hash{});
}

std::string error_text(const Error& error) { return error.describe(); }

// ---- A fake store: xorbs of known decompressed chunks, and a way to run a plan against it --------

struct FakeXorb {
  Hash hash;
  std::vector<Bytes> chunks;  // decompressed

  // Serialized offset of chunk i: every chunk is stored as an 8-byte header plus its bytes.
  std::uint64_t serialized_offset(std::uint64_t index) const {
    std::uint64_t offset = 0;
    for (std::uint64_t i = 0; i < index; ++i) offset += 8 + chunks[i].size();
    return offset;
  }
  XorbByteRange byte_range(ChunkRange range) const {
    return {range, {serialized_offset(range.start), serialized_offset(range.end) - 1}};
  }
  std::uint64_t unpacked(ChunkRange range) const {
    std::uint64_t total = 0;
    for (std::uint64_t i = range.start; i < range.end; ++i) total += chunks[i].size();
    return total;
  }
};

struct FakeStore {
  std::map<Hash, FakeXorb> xorbs;

  const FakeXorb& at(const Hash& hash) const { return xorbs.at(hash); }

  ReconstructionTerm term(const Hash& xorb, ChunkRange range) const {
    return {xorb, range, at(xorb).unpacked(range)};
  }
  Bytes content(const std::vector<ReconstructionTerm>& terms) const {
    Bytes out;
    for (const auto& term : terms)
      for (std::uint64_t i = term.chunks.start; i < term.chunks.end; ++i)
        out.insert(out.end(), at(term.xorb).chunks[i].begin(), at(term.xorb).chunks[i].end());
    return out;
  }
};

// Runs a plan as a downloader would: for each fetched range, ask copy_spans() with the chunk sizes
// and copy. Fails the test if a byte of the output is written other than exactly once.
Bytes execute(const ReadPlan& plan, const FakeStore& store) {
  Bytes out(plan.range.length());
  std::vector<int> writes(out.size(), 0);
  for (std::size_t f = 0; f < plan.fetches.size(); ++f) {
    const auto& fetch = plan.fetches[f];
    const FakeXorb& xorb = store.at(fetch.xorb);
    for (std::size_t r = 0; r < fetch.ranges.size(); ++r) {
      std::vector<std::uint64_t> sizes;
      for (auto i = fetch.ranges[r].chunks.start; i < fetch.ranges[r].chunks.end; ++i)
        sizes.push_back(xorb.chunks[i].size());
      auto spans = copy_spans(plan, f, r, sizes);
      EXPECT_TRUE(spans.has_value()) << (spans ? "" : error_text(spans.error()));
      if (!spans) return {};
      for (std::size_t s = 0; s < spans->size(); ++s) {
        const CopySpan& span = (*spans)[s];
        if (s > 0) {
          EXPECT_LE((*spans)[s - 1].chunk, span.chunk) << "spans not in chunk order";
        }
        EXPECT_GT(span.length, 0u);
        const Bytes& chunk = xorb.chunks.at(span.chunk);
        EXPECT_LE(span.chunk_offset + span.length, chunk.size());
        EXPECT_LE(span.output_offset + span.length, out.size());
        if (span.chunk_offset + span.length > chunk.size() || span.output_offset + span.length > out.size())
          return {};
        std::copy_n(chunk.begin() + static_cast<std::ptrdiff_t>(span.chunk_offset), span.length,
                    out.begin() + static_cast<std::ptrdiff_t>(span.output_offset));
        for (std::uint64_t i = 0; i < span.length; ++i) ++writes[span.output_offset + i];
      }
    }
  }
  for (std::size_t i = 0; i < writes.size(); ++i) {
    EXPECT_EQ(writes[i], 1) << "output byte " << i << " written " << writes[i] << " times";
    if (writes[i] != 1) break;
  }
  return out;
}

// The structural promises of a plan, independent of the data.
void expect_plan_shape(const ReadPlan& plan) {
  std::uint64_t next = 0;
  std::vector<bool> fetch_used(plan.fetches.size(), false);
  for (const auto& term : plan.terms) {
    EXPECT_EQ(term.output_offset, next) << "term outputs must be contiguous, in file order";
    EXPECT_GT(term.take, 0u);
    EXPECT_LE(term.skip + term.take, term.unpacked_length);
    ASSERT_LT(term.fetch_index, plan.fetches.size());
    ASSERT_LT(term.range_index, plan.fetches[term.fetch_index].ranges.size());
    EXPECT_TRUE(plan.fetches[term.fetch_index].ranges[term.range_index].chunks.contains(term.chunks));
    EXPECT_EQ(plan.fetches[term.fetch_index].xorb, term.xorb);
    fetch_used[term.fetch_index] = true;
    next += term.take;
  }
  EXPECT_EQ(next, plan.range.length());
  for (std::size_t f = 0; f < fetch_used.size(); ++f) {
    EXPECT_TRUE(fetch_used[f]) << "fetch " << f << " unused";
  }
  for (std::size_t a = 0; a < plan.fetches.size(); ++a) {
    for (std::size_t b = a + 1; b < plan.fetches.size(); ++b) {
      EXPECT_FALSE(plan.fetches[a] == plan.fetches[b]) << "fetch entry listed twice";
    }
  }
}

Bytes slice(const Bytes& bytes, std::uint64_t start, std::uint64_t end) {
  end = std::min<std::uint64_t>(end, bytes.size());
  start = std::min(start, end);
  return Bytes(bytes.begin() + static_cast<std::ptrdiff_t>(start), bytes.begin() + static_cast<std::ptrdiff_t>(end));
}

Hash numbered_hash(std::uint8_t n) {
  Hash hash;
  for (std::size_t i = 0; i < hash.bytes.size(); ++i) hash.bytes[i] = static_cast<std::uint8_t>(n * 31 + i);
  return hash;
}

Bytes patterned_chunk(std::size_t size, std::uint8_t seed) {
  Bytes chunk(size);
  for (std::size_t i = 0; i < size; ++i) chunk[i] = std::byte(static_cast<std::uint8_t>(seed * 37 + i * 7 + 1));
  return chunk;
}

// A small fixed file: xorb A has chunks of 10, 20, 30, 40 bytes, xorb B of 5, 15, 25.
// Terms: A[0,2) (30 bytes), B[0,3) (45), A[1,4) (90), A[0,2) again (30): 195 bytes, file offsets
// 0, 30, 75, 165. A is one fetch entry for chunks [0,4), B one for [0,3).
struct SmallFile {
  FakeStore store;
  Hash a = numbered_hash(1);
  Hash b = numbered_hash(2);
  Reconstruction reconstruction;
  Bytes content;

  SmallFile() {
    FakeXorb xa{a, {}};
    for (std::size_t size : {10, 20, 30, 40}) xa.chunks.push_back(patterned_chunk(size, static_cast<std::uint8_t>(size)));
    FakeXorb xb{b, {}};
    for (std::size_t size : {5, 15, 25}) xb.chunks.push_back(patterned_chunk(size, static_cast<std::uint8_t>(size + 100)));
    store.xorbs[a] = xa;
    store.xorbs[b] = xb;
    reconstruction.terms = {store.term(a, {0, 2}), store.term(b, {0, 3}), store.term(a, {1, 4}), store.term(a, {0, 2})};
    reconstruction.fetches = {XorbFetch{a, "https://cdn/a", {xa.byte_range({0, 4})}},
                              XorbFetch{b, "https://cdn/b", {xb.byte_range({0, 3})}}};
    std::sort(reconstruction.fetches.begin(), reconstruction.fetches.end(),
              [](const XorbFetch& x, const XorbFetch& y) { return x.xorb.to_string() < y.xorb.to_string(); });
    content = store.content(reconstruction.terms);
  }
};

// ---- Parsing ------------------------------------------------------------------------------------

TEST(ReconstructionParse, SpecSingleTermExample) {
  auto parsed = parse_reconstruction_v2(kSpecSingleTerm);
  ASSERT_TRUE(parsed.has_value()) << error_text(parsed.error());
  EXPECT_EQ(parsed->offset_into_first_range, 0u);
  ASSERT_EQ(parsed->terms.size(), 1u);
  EXPECT_EQ(parsed->terms[0].xorb.to_string(), kXorbA);
  EXPECT_EQ(parsed->terms[0].chunks, (ChunkRange{0, 4}));
  EXPECT_EQ(parsed->terms[0].unpacked_length, 263873u);
  ASSERT_EQ(parsed->fetches.size(), 1u);
  const XorbFetch& fetch = parsed->fetches[0];
  EXPECT_EQ(fetch.xorb.to_string(), kXorbA);
  EXPECT_TRUE(fetch.url.starts_with("https://transfer.xethub.hf.co/xorb/default/a1b2"));
  EXPECT_TRUE(fetch.url.ends_with("Key-Pair-Id=K2EXAMPLECDNKEY01"));
  ASSERT_EQ(fetch.ranges.size(), 1u);
  EXPECT_EQ(fetch.ranges[0].chunks, (ChunkRange{0, 4}));
  // "whose 131072 bytes are downloaded": the byte range end is inclusive.
  EXPECT_EQ(fetch.ranges[0].bytes, (HttpByteRange{0, 131071}));
  EXPECT_EQ(fetch.ranges[0].bytes.length(), 131072u);
  EXPECT_EQ(fetch.range_header(), "bytes=0-131071");
  // The auto-detecting parser sees `xorbs` and agrees.
  auto detected = parse_reconstruction(kSpecSingleTerm);
  ASSERT_TRUE(detected.has_value());
  EXPECT_EQ(*detected, *parsed);
}

TEST(ReconstructionParse, SpecMultiXorbExampleHasA61DigitHash) {
  auto parsed = parse_reconstruction_v2(kSpecMultiXorb);
  ASSERT_FALSE(parsed.has_value());
  EXPECT_EQ(parsed.error().code, ErrorCode::kInvalidHash);
  EXPECT_NE(parsed.error().message.find("terms[1].hash"), std::string::npos) << error_text(parsed.error());
}

TEST(ReconstructionParse, SpecMultiXorbExampleWithTheHashFixed) {
  const std::string text = replace_all(std::string(kSpecMultiXorb), kTypoHash, kFixedHash);
  auto parsed = parse_reconstruction_v2(text);
  ASSERT_TRUE(parsed.has_value()) << error_text(parsed.error());
  ASSERT_EQ(parsed->terms.size(), 3u);
  EXPECT_EQ(parsed->terms[1].xorb.to_string(), kFixedHash);
  EXPECT_EQ(parsed->terms[2].chunks, (ChunkRange{3, 43}));
  EXPECT_EQ(parsed->total_unpacked_length(), 263873u + 143890u + 3063572u);

  auto plan = plan_whole_file(*parsed);
  ASSERT_TRUE(plan.has_value()) << error_text(plan.error());
  expect_plan_shape(*plan);
  EXPECT_EQ(plan->range, (FileByteRange{0, 263873u + 143890u + 3063572u}));
  // Xorb a1b2... is fetched once, first (first used by term 0), for terms 0 and 2: chunk 3 serves both.
  ASSERT_EQ(plan->fetches.size(), 2u);
  EXPECT_EQ(plan->fetches[0].xorb.to_string(), kXorbA);
  EXPECT_EQ(plan->fetches[0].range_header(), "bytes=57980-1433008");
  EXPECT_EQ(plan->fetches[1].range_header(), "bytes=0-65670");
  ASSERT_EQ(plan->terms.size(), 3u);
  EXPECT_EQ(plan->terms[0].fetch_index, 0u);
  EXPECT_EQ(plan->terms[1].fetch_index, 1u);
  EXPECT_EQ(plan->terms[2].fetch_index, 0u);
  EXPECT_EQ(plan->terms[2].output_offset, 263873u + 143890u);
  EXPECT_EQ(plan->terms[2].skip, 0u);
  EXPECT_EQ(plan->terms[2].take, 3063572u);
}

TEST(ReconstructionParse, V1AndV2OfTheSameFileAgree) {
  const std::string v2 = replace_all(std::string(kSpecMultiXorb), kTypoHash, kFixedHash);
  const std::string v1 = R"json({
    "offset_into_first_range": 0,
    "terms": [
      {"hash": "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456", "unpacked_length": 263873, "range": {"start": 1, "end": 4}},
      {"hash": "fedcba0987654321098765432109876543210fedcba098765432109876543fed", "unpacked_length": 143890, "range": {"start": 0, "end": 3}},
      {"hash": "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456", "unpacked_length": 3063572, "range": {"start": 3, "end": 43}}
    ],
    "fetch_info": {
      "a1b2c3d4e5f6789012345678901234567890abcdef1234567890abcdef123456": [
        {"range": {"start": 1, "end": 43}, "url": "URL_A", "url_range": {"start": 57980, "end": 1433008}}
      ],
      "fedcba0987654321098765432109876543210fedcba098765432109876543fed": [
        {"range": {"start": 0, "end": 3}, "url": "URL_F", "url_range": {"start": 0, "end": 65670}}
      ]
    }
  })json";
  auto from_v2 = parse_reconstruction_v2(v2);
  auto from_v1 = parse_reconstruction_v1(v1);
  ASSERT_TRUE(from_v2.has_value());
  ASSERT_TRUE(from_v1.has_value()) << error_text(from_v1.error());
  // Same URLs, then the two shapes are the same reconstruction and give the same plan.
  Reconstruction v2_same_urls = *from_v2;
  v2_same_urls.fetches[0].url = "URL_A";
  v2_same_urls.fetches[1].url = "URL_F";
  EXPECT_EQ(*from_v1, v2_same_urls);
  auto plan_v1 = plan_whole_file(*from_v1);
  auto plan_v2 = plan_whole_file(v2_same_urls);
  ASSERT_TRUE(plan_v1 && plan_v2);
  EXPECT_EQ(*plan_v1, *plan_v2);
  auto ranged_v1 = plan_read(*from_v1, 0, {300000, 500000});
  auto ranged_v2 = plan_read(v2_same_urls, 0, {300000, 500000});
  ASSERT_TRUE(ranged_v1 && ranged_v2);
  EXPECT_EQ(*ranged_v1, *ranged_v2);
  // The auto-detecting parser reads v1 too.
  auto detected = parse_reconstruction(v1);
  ASSERT_TRUE(detected.has_value());
  EXPECT_EQ(*detected, *from_v1);
  // A v1 text is not a v2 text, and the message says what is missing.
  auto wrong = parse_reconstruction_v2(v1);
  ASSERT_FALSE(wrong.has_value());
  EXPECT_NE(wrong.error().message.find("xorbs: missing"), std::string::npos) << error_text(wrong.error());
}

TEST(ReconstructionParse, V2MultiRangeEntry) {
  const std::string text = std::string(R"json({
    "offset_into_first_range": 0,
    "terms": [
      {"hash": "HASH", "unpacked_length": 100, "range": {"start": 0, "end": 2}},
      {"hash": "HASH", "unpacked_length": 50, "range": {"start": 10, "end": 11}},
      {"hash": "HASH", "unpacked_length": 40, "range": {"start": 0, "end": 1}}
    ],
    "xorbs": {"HASH": [
      {"url": "https://cdn/x?X-Xet-Signed-Range=bytes%3D0-99%2C500-599",
       "ranges": [{"chunks": {"start": 0, "end": 2}, "bytes": {"start": 0, "end": 99}},
                  {"chunks": {"start": 10, "end": 12}, "bytes": {"start": 500, "end": 599}}]}
    ]}
  })json");
  auto parsed = parse_reconstruction_v2(replace_all(text, "HASH", kXorbA));
  ASSERT_TRUE(parsed.has_value()) << error_text(parsed.error());
  ASSERT_EQ(parsed->fetches.size(), 1u);
  EXPECT_EQ(parsed->fetches[0].range_header(), "bytes=0-99,500-599");
  auto plan = plan_whole_file(*parsed);
  ASSERT_TRUE(plan.has_value());
  // One GET for all three terms; each term names the part (range) its chunks come from.
  ASSERT_EQ(plan->fetches.size(), 1u);
  ASSERT_EQ(plan->terms.size(), 3u);
  EXPECT_EQ(plan->terms[0].range_index, 0u);
  EXPECT_EQ(plan->terms[1].range_index, 1u);
  EXPECT_EQ(plan->terms[2].range_index, 0u);
}

TEST(ReconstructionParse, Batch) {
  const std::string file1(64, '1');
  const std::string file2(64, '2');
  std::string text = R"json({
    "files": {
      "FILE1": [{"hash": "XA", "unpacked_length": 30, "range": {"start": 0, "end": 2}}],
      "FILE2": [{"hash": "XA", "unpacked_length": 20, "range": {"start": 1, "end": 2}},
                {"hash": "XB", "unpacked_length": 7, "range": {"start": 0, "end": 1}}]
    },
    "fetch_info": {
      "XA": [{"range": {"start": 0, "end": 2}, "url": "https://cdn/a", "url_range": {"start": 0, "end": 45}}],
      "XB": [{"range": {"start": 0, "end": 1}, "url": "https://cdn/b", "url_range": {"start": 0, "end": 14}}]
    }
  })json";
  const std::string xb(64, 'b');
  text = replace_all(replace_all(replace_all(replace_all(text, "FILE1", file1), "FILE2", file2), "XA", kXorbA), "XB", xb);
  auto batch = parse_batch_reconstruction(text);
  ASSERT_TRUE(batch.has_value()) << error_text(batch.error());
  ASSERT_EQ(batch->files.size(), 2u);
  EXPECT_EQ(batch->fetches.size(), 2u);

  auto one = batch->file(hash_of(file1));
  ASSERT_TRUE(one.has_value());
  EXPECT_EQ(one->offset_into_first_range, 0u);
  ASSERT_EQ(one->terms.size(), 1u);
  ASSERT_EQ(one->fetches.size(), 1u) << "only the xorbs file 1 uses";
  EXPECT_EQ(one->fetches[0].url, "https://cdn/a");

  auto two = batch->file(hash_of(file2));
  ASSERT_TRUE(two.has_value());
  EXPECT_EQ(two->fetches.size(), 2u);
  auto plan = plan_whole_file(*two);
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(plan->range, (FileByteRange{0, 27}));
  EXPECT_EQ(plan->terms[0].chunks, (ChunkRange{1, 2}));

  auto missing = batch->file(hash_of(std::string(64, '3')));
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code, ErrorCode::kInvalidArgument);

  // A file whose term the shared fetch_info does not cover is rejected, naming the file.
  const std::string uncovered = replace_all(text, R"("start": 1, "end": 2}},)", R"("start": 1, "end": 3}},)");
  auto bad = parse_batch_reconstruction(uncovered);
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message.find("files[\"" + file2 + "\"][0]"), std::string::npos) << error_text(bad.error());

  // Round trip through the serializer.
  auto again = parse_batch_reconstruction(to_json_batch(*batch));
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->files, batch->files);
  EXPECT_EQ(again->fetches, batch->fetches);
}

struct MalformedCase {
  const char* name;
  std::string json;
  ErrorCode code;
  std::string field;  // must appear in the message
};

// A valid v2 response of one term over one xorb; the cases below break one thing each.
std::string v2_text(std::string offset = "0", std::string term = "", std::string entry = "",
                    std::string key = std::string(kXorbA)) {
  if (term.empty())
    term = R"({"hash": ")" + std::string(kXorbA) + R"(", "unpacked_length": 100, "range": {"start": 0, "end": 2}})";
  if (entry.empty())
    entry = R"({"url": "u", "ranges": [{"chunks": {"start": 0, "end": 2}, "bytes": {"start": 0, "end": 115}}]})";
  return R"({"offset_into_first_range": )" + offset + R"(, "terms": [)" + term + R"(], "xorbs": {")" + key +
         R"(": [)" + entry + "]}}";
}

std::string term_text(std::string hash, std::string length, std::string range) {
  return R"({"hash": )" + hash + R"(, "unpacked_length": )" + length + R"(, "range": )" + range + "}";
}

TEST(ReconstructionParse, MalformedResponsesAreTypedErrorsNamingTheField) {
  const std::string a = "\"" + std::string(kXorbA) + "\"";
  const std::string ok_range = R"({"start": 0, "end": 2})";
  const std::string entry_key = "xorbs[\"" + std::string(kXorbA) + "\"][0]";
  const std::vector<MalformedCase> cases = {
      {"not json", "{\"terms\": [", ErrorCode::kInvalidFormat, "not valid JSON"},
      {"garbage", "\x01\x02garbage", ErrorCode::kInvalidFormat, "not valid JSON"},
      {"empty", "", ErrorCode::kInvalidFormat, "not valid JSON"},
      {"array root", "[]", ErrorCode::kInvalidFormat, "a JSON object"},
      {"missing offset", R"({"terms": [], "xorbs": {}})", ErrorCode::kInvalidFormat, "offset_into_first_range: missing"},
      {"negative offset", v2_text("-1"), ErrorCode::kInvalidFormat, "offset_into_first_range: expected a non-negative integer, got a negative number"},
      {"fractional offset", v2_text("1.5"), ErrorCode::kInvalidFormat, "offset_into_first_range"},
      {"string offset", v2_text("\"0\""), ErrorCode::kInvalidFormat, "offset_into_first_range: expected a non-negative integer, got a string"},
      {"offset past 2^64", v2_text("18446744073709551616"), ErrorCode::kInvalidFormat, "offset_into_first_range"},
      {"offset outside the terms", v2_text("100"), ErrorCode::kInvalidFormat, "offset_into_first_range"},
      {"missing terms", R"({"offset_into_first_range": 0, "xorbs": {}})", ErrorCode::kInvalidFormat, "terms: missing"},
      {"terms not array", R"({"offset_into_first_range": 0, "terms": {}, "xorbs": {}})", ErrorCode::kInvalidFormat, "terms: expected an array"},
      {"term not object", v2_text("0", "7"), ErrorCode::kInvalidFormat, "terms[0]: expected an object"},
      {"term missing hash", v2_text("0", R"({"unpacked_length": 1, "range": {"start": 0, "end": 1}})"), ErrorCode::kInvalidFormat, "terms[0].hash: missing"},
      {"term hash a number", v2_text("0", term_text("5", "100", ok_range)), ErrorCode::kInvalidFormat, "terms[0].hash: expected a string"},
      {"term hash not hex", v2_text("0", term_text("\"xyz\"", "100", ok_range)), ErrorCode::kInvalidHash, "terms[0].hash"},
      {"term length a string", v2_text("0", term_text(a, "\"100\"", ok_range)), ErrorCode::kInvalidFormat, "terms[0].unpacked_length"},
      {"term length missing", v2_text("0", R"({"hash": )" + a + R"(, "range": {"start": 0, "end": 2}})"), ErrorCode::kInvalidFormat, "terms[0].unpacked_length: missing"},
      {"term range missing end", v2_text("0", term_text(a, "100", R"({"start": 0})")), ErrorCode::kInvalidFormat, "terms[0].range.end: missing"},
      {"term range reversed", v2_text("0", term_text(a, "100", R"({"start": 2, "end": 1})")), ErrorCode::kInvalidFormat, "terms[0].range"},
      {"term range empty", v2_text("0", term_text(a, "100", R"({"start": 1, "end": 1})")), ErrorCode::kInvalidFormat, "terms[0].range"},
      {"term range an array", v2_text("0", term_text(a, "100", "[0, 2]")), ErrorCode::kInvalidFormat, "terms[0].range: expected an object"},
      {"term not covered", v2_text("0", term_text(a, "100", R"({"start": 0, "end": 3})")), ErrorCode::kInvalidFormat, "terms[0]: no xorbs range"},
      {"term xorb absent", v2_text("0", term_text("\"" + std::string(64, 'c') + "\"", "100", ok_range)), ErrorCode::kInvalidFormat, "terms[0]: no xorbs range of xorb cccc"},
      {"lengths overflow", R"({"offset_into_first_range": 0, "terms": [)" + term_text(a, "18446744073709551615", ok_range) + "," +
                               term_text(a, "1", ok_range) + R"(], "xorbs": {)" + a +
                               R"(: [{"url": "u", "ranges": [{"chunks": {"start": 0, "end": 2}, "bytes": {"start": 0, "end": 9}}]}]}})",
       ErrorCode::kInvalidFormat, "terms[1].unpacked_length"},
      {"missing xorbs", R"({"offset_into_first_range": 0, "terms": []})", ErrorCode::kInvalidFormat, "xorbs: missing"},
      {"xorbs an array", R"({"offset_into_first_range": 0, "terms": [], "xorbs": []})", ErrorCode::kInvalidFormat, "xorbs: expected an object"},
      {"xorb key not a hash", v2_text("0", "", "", "zz"), ErrorCode::kInvalidHash, "xorbs[\"zz\"]"},
      {"xorb value not array", R"({"offset_into_first_range": 0, "terms": [], "xorbs": {)" + a + R"(: {}}})", ErrorCode::kInvalidFormat, "xorbs[\"a1b2"},
      {"entry missing url", v2_text("0", "", R"({"ranges": []})"), ErrorCode::kInvalidFormat, entry_key + ".url: missing"},
      {"entry url a number", v2_text("0", "", R"({"url": 1, "ranges": []})"), ErrorCode::kInvalidFormat, entry_key + ".url: expected a string"},
      {"entry missing ranges", v2_text("0", "", R"({"url": "u"})"), ErrorCode::kInvalidFormat, entry_key + ".ranges: missing"},
      {"entry with no ranges", v2_text("0", "", R"({"url": "u", "ranges": []})"), ErrorCode::kInvalidFormat, entry_key + ": has no ranges"},
      {"range missing bytes", v2_text("0", "", R"({"url": "u", "ranges": [{"chunks": {"start": 0, "end": 2}}]})"), ErrorCode::kInvalidFormat, entry_key + ".ranges[0].bytes: missing"},
      {"bytes reversed", v2_text("0", "", R"({"url": "u", "ranges": [{"chunks": {"start": 0, "end": 2}, "bytes": {"start": 9, "end": 8}}]})"), ErrorCode::kInvalidFormat, entry_key + ".ranges[0].bytes"},
      {"bytes end overflows", v2_text("0", "", R"({"url": "u", "ranges": [{"chunks": {"start": 0, "end": 2}, "bytes": {"start": 0, "end": 18446744073709551615}}]})"), ErrorCode::kInvalidFormat, "overflows"},
      {"chunks reversed", v2_text("0", "", R"({"url": "u", "ranges": [{"chunks": {"start": 3, "end": 2}, "bytes": {"start": 0, "end": 8}}]})"), ErrorCode::kInvalidFormat, entry_key + ".ranges[0].chunks"},
      {"ranges out of order", v2_text("0", "", R"({"url": "u", "ranges": [{"chunks": {"start": 0, "end": 2}, "bytes": {"start": 0, "end": 99}}, {"chunks": {"start": 1, "end": 3}, "bytes": {"start": 100, "end": 199}}]})"), ErrorCode::kInvalidFormat, entry_key + ".ranges[1]"},
      {"byte ranges overlap", v2_text("0", "", R"({"url": "u", "ranges": [{"chunks": {"start": 0, "end": 2}, "bytes": {"start": 0, "end": 99}}, {"chunks": {"start": 2, "end": 3}, "bytes": {"start": 99, "end": 199}}]})"), ErrorCode::kInvalidFormat, entry_key + ".ranges[1]"},
  };
  for (const auto& c : cases) {
    auto parsed = parse_reconstruction_v2(c.json);
    ASSERT_FALSE(parsed.has_value()) << c.name;
    EXPECT_EQ(parsed.error().code, c.code) << c.name << ": " << error_text(parsed.error());
    EXPECT_NE(parsed.error().message.find(c.field), std::string::npos)
        << c.name << ": message '" << parsed.error().message << "' does not name '" << c.field << "'";
  }
}

TEST(ReconstructionParse, MalformedV1AndBatch) {
  const std::string a = "\"" + std::string(kXorbA) + "\"";
  const std::string term = term_text(a, "100", R"({"start": 0, "end": 2})");
  auto v1 = [&](std::string entry) {
    return R"({"offset_into_first_range": 0, "terms": [)" + term + R"(], "fetch_info": {)" + a + ": [" + entry + "]}}";
  };
  const std::string key = "fetch_info[\"" + std::string(kXorbA) + "\"][0]";
  struct Case {
    std::string json;
    std::string field;
  };
  const std::vector<Case> cases = {
      {v1(R"({"range": {"start": 0, "end": 2}, "url": "u"})"), key + ".url_range: missing"},
      {v1(R"({"range": {"start": 0, "end": 2}, "url_range": {"start": 0, "end": 9}})"), key + ".url: missing"},
      {v1(R"({"url": "u", "url_range": {"start": 0, "end": 9}})"), key + ".range: missing"},
      {v1(R"({"range": {"start": 0, "end": 1}, "url": "u", "url_range": {"start": 0, "end": 9}})"), "terms[0]: no fetch_info range"},
      {v1(R"({"range": {"start": 0, "end": 2}, "url": "u", "url_range": {"start": 10, "end": 9}})"), key + ".url_range"},
      {v1(R"({"range": {"start": 0, "end": 2}, "url": "u", "url_range": {"start": -1, "end": 9}})"), key + ".url_range.start"},
  };
  for (const auto& c : cases) {
    auto parsed = parse_reconstruction_v1(c.json);
    ASSERT_FALSE(parsed.has_value()) << c.json;
    EXPECT_EQ(parsed.error().code, ErrorCode::kInvalidFormat);
    EXPECT_NE(parsed.error().message.find(c.field), std::string::npos) << parsed.error().message << " vs " << c.field;
  }
  // The valid v1 baseline parses, so the cases above fail for their one fault.
  EXPECT_TRUE(parse_reconstruction_v1(v1(R"({"range": {"start": 0, "end": 2}, "url": "u", "url_range": {"start": 0, "end": 9}})")));
  EXPECT_TRUE(parse_reconstruction_v2(v2_text()));

  auto no_files = parse_batch_reconstruction(R"({"fetch_info": {}})");
  ASSERT_FALSE(no_files.has_value());
  EXPECT_NE(no_files.error().message.find("files: missing"), std::string::npos);
  auto bad_id = parse_batch_reconstruction(R"({"files": {"nope": []}, "fetch_info": {}})");
  ASSERT_FALSE(bad_id.has_value());
  EXPECT_EQ(bad_id.error().code, ErrorCode::kInvalidHash);
  auto empty_batch = parse_batch_reconstruction(R"({"files": {}, "fetch_info": {}})");
  ASSERT_TRUE(empty_batch.has_value());
  EXPECT_TRUE(empty_batch->files.empty());
}

TEST(ReconstructionParse, HostileInputsDoNotCrash) {
  // Deep nesting, huge numbers, truncations of a valid text at every length.
  EXPECT_FALSE(parse_reconstruction(std::string(200000, '[') + std::string(200000, ']')));
  EXPECT_FALSE(parse_reconstruction(std::string(200000, '[')));
  const std::string nested_offset = R"({"offset_into_first_range": )" + std::string(100000, '[') + "0" + std::string(100000, ']') + "}";
  EXPECT_FALSE(parse_reconstruction(nested_offset));
  EXPECT_FALSE(parse_batch_reconstruction(std::string(100000, '{')));
  const std::string valid(kSpecSingleTerm);
  for (std::size_t length = 0; length < valid.size(); length += 7) {
    EXPECT_FALSE(parse_reconstruction(std::string_view(valid).substr(0, length))) << length;
  }
  // Invalid UTF-8 inside a string is rejected by the JSON parser, not thrown.
  EXPECT_FALSE(parse_reconstruction(replace_all(valid, "https://", "\xff\xfe://")));
}

TEST(ReconstructionParse, EmptyFileAndEmptyTerms) {
  auto empty = parse_reconstruction_v2(R"({"offset_into_first_range": 0, "terms": [], "xorbs": {}})");
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->total_unpacked_length(), 0u);
  auto plan = plan_whole_file(*empty);
  ASSERT_TRUE(plan.has_value());
  EXPECT_EQ(plan->range.length(), 0u);
  EXPECT_TRUE(plan->fetches.empty());
  EXPECT_TRUE(plan->terms.empty());
  // Non-zero offset with no terms makes no sense.
  EXPECT_FALSE(parse_reconstruction_v2(R"({"offset_into_first_range": 3, "terms": [], "xorbs": {}})"));
}

// ---- Serialization ------------------------------------------------------------------------------

TEST(ReconstructionJson, RoundTripsBothVersions) {
  SmallFile file;
  file.reconstruction.offset_into_first_range = 7;
  auto v2 = parse_reconstruction_v2(to_json_v2(file.reconstruction));
  ASSERT_TRUE(v2.has_value()) << error_text(v2.error());
  EXPECT_EQ(*v2, file.reconstruction);
  auto v1 = parse_reconstruction_v1(to_json_v1(file.reconstruction));
  ASSERT_TRUE(v1.has_value()) << error_text(v1.error());
  EXPECT_EQ(*v1, file.reconstruction);
  EXPECT_TRUE(validate_reconstruction(file.reconstruction));
  // validate_reconstruction catches a hand-built term nothing covers.
  file.reconstruction.terms.push_back(file.store.term(file.b, {0, 3}));
  file.reconstruction.terms.back().chunks.end = 9;
  auto invalid = validate_reconstruction(file.reconstruction);
  ASSERT_FALSE(invalid.has_value());
  EXPECT_NE(invalid.error().message.find("terms[4]"), std::string::npos);
}

TEST(ReconstructionJson, RangeHeaders) {
  auto header = reconstruction_range_header({100, 150});
  ASSERT_TRUE(header.has_value());
  EXPECT_EQ(*header, "bytes=100-149");  // end inclusive
  EXPECT_EQ(reconstruction_range_header({0, 1}).value_or(""), "bytes=0-0");
  auto empty = reconstruction_range_header({5, 5});
  ASSERT_FALSE(empty.has_value());
  EXPECT_EQ(empty.error().code, ErrorCode::kInvalidArgument);
  XorbFetch fetch{Hash{}, "u", {{{0, 2}, {0, 99}}, {{5, 6}, {200, 299}}, {{7, 9}, {400, 400}}}};
  EXPECT_EQ(fetch.range_header(), "bytes=0-99,200-299,400-400");
}

// ---- Plans ---------------------------------------------------------------------------------------

TEST(ReconstructionPlan, WholeFileFetchesEachEntryOnceAndReproducesTheFile) {
  SmallFile file;
  ASSERT_EQ(file.content.size(), 195u);
  auto plan = plan_whole_file(file.reconstruction);
  ASSERT_TRUE(plan.has_value()) << error_text(plan.error());
  expect_plan_shape(*plan);
  EXPECT_EQ(plan->range, (FileByteRange{0, 195}));
  ASSERT_EQ(plan->fetches.size(), 2u);
  EXPECT_EQ(plan->fetches[0].xorb, file.a) << "fetches follow the file order of first use";
  EXPECT_EQ(plan->fetches[1].xorb, file.b);
  ASSERT_EQ(plan->terms.size(), 4u);
  // Terms 0, 2 and 3 share xorb A's one fetch range; term 0 and 3 are the same chunk range.
  for (std::size_t i : {0u, 2u, 3u}) {
    EXPECT_EQ(plan->terms[i].fetch_index, 0u) << i;
  }
  EXPECT_EQ(plan->terms[1].fetch_index, 1u);
  EXPECT_EQ(plan->terms[2].chunks, (ChunkRange{1, 4})) << "a sub-range of the fetched [0, 4)";
  EXPECT_EQ(plan->terms[3].output_offset, 165u);
  EXPECT_EQ(execute(*plan, file.store), file.content);

  // The spans of xorb A: chunk 0 is copied twice (terms 0 and 3), chunk 1 three times.
  std::vector<std::uint64_t> sizes_a{10, 20, 30, 40};
  auto spans = copy_spans(*plan, 0, 0, sizes_a);
  ASSERT_TRUE(spans.has_value());
  std::vector<CopySpan> chunk0;
  std::copy_if(spans->begin(), spans->end(), std::back_inserter(chunk0), [](const CopySpan& s) { return s.chunk == 0; });
  ASSERT_EQ(chunk0.size(), 2u);
  EXPECT_EQ(chunk0[0], (CopySpan{0, 0, 10, 0}));
  EXPECT_EQ(chunk0[1], (CopySpan{0, 0, 10, 165}));
  EXPECT_EQ(std::count_if(spans->begin(), spans->end(), [](const CopySpan& s) { return s.chunk == 1; }), 3);
}

TEST(ReconstructionPlan, RangeInsideOneTerm) {
  SmallFile file;
  // Term 1 (B, 45 bytes) covers file bytes [30, 75); ask for [35, 50).
  auto plan = plan_read(file.reconstruction, 0, {35, 50});
  ASSERT_TRUE(plan.has_value());
  expect_plan_shape(*plan);
  ASSERT_EQ(plan->terms.size(), 1u);
  EXPECT_EQ(plan->terms[0].term_index, 1u);
  EXPECT_EQ(plan->terms[0].skip, 5u);
  EXPECT_EQ(plan->terms[0].take, 15u);
  EXPECT_EQ(plan->terms[0].unpacked_length - plan->terms[0].skip - plan->terms[0].take, 25u) << "dropped tail";
  ASSERT_EQ(plan->fetches.size(), 1u) << "xorb A is not needed";
  EXPECT_EQ(plan->fetches[0].xorb, file.b);
  // B's chunks are 5, 15, 25: bytes [5, 20) of the term are exactly chunk 1.
  auto spans = copy_spans(*plan, 0, 0, std::vector<std::uint64_t>{5, 15, 25});
  ASSERT_TRUE(spans.has_value());
  ASSERT_EQ(spans->size(), 1u);
  EXPECT_EQ((*spans)[0], (CopySpan{1, 0, 15, 0}));
  EXPECT_EQ(execute(*plan, file.store), slice(file.content, 35, 50));
}

TEST(ReconstructionPlan, RangeSpanningTerms) {
  SmallFile file;
  auto plan = plan_read(file.reconstruction, 0, {25, 130});
  ASSERT_TRUE(plan.has_value());
  expect_plan_shape(*plan);
  ASSERT_EQ(plan->terms.size(), 3u);
  EXPECT_EQ(plan->terms[0].skip, 25u);
  EXPECT_EQ(plan->terms[0].take, 5u);
  EXPECT_EQ(plan->terms[1].skip, 0u);
  EXPECT_EQ(plan->terms[1].take, 45u);
  EXPECT_EQ(plan->terms[2].skip, 0u);
  EXPECT_EQ(plan->terms[2].take, 55u);
  EXPECT_EQ(execute(*plan, file.store), slice(file.content, 25, 130));
}

TEST(ReconstructionPlan, StartingAndEndingMidChunk) {
  SmallFile file;
  // Term 0 is A chunks 0 (10 bytes) and 1 (20 bytes); [3, 27) starts in chunk 0 and ends in chunk 1.
  auto plan = plan_read(file.reconstruction, 0, {3, 27});
  ASSERT_TRUE(plan.has_value());
  auto spans = copy_spans(*plan, 0, 0, std::vector<std::uint64_t>{10, 20, 30, 40});
  ASSERT_TRUE(spans.has_value());
  ASSERT_EQ(spans->size(), 2u);
  EXPECT_EQ((*spans)[0], (CopySpan{0, 3, 7, 0}));
  EXPECT_EQ((*spans)[1], (CopySpan{1, 0, 17, 7}));
  EXPECT_EQ(execute(*plan, file.store), slice(file.content, 3, 27));
  // Ending mid-chunk in a later term: [80, 100) is term 2 (A[1,4), 20+30+40) bytes [5, 25).
  auto tail = plan_read(file.reconstruction, 0, {80, 100});
  ASSERT_TRUE(tail.has_value());
  auto tail_spans = copy_spans(*tail, 0, 0, std::vector<std::uint64_t>{10, 20, 30, 40});
  ASSERT_TRUE(tail_spans.has_value());
  ASSERT_EQ(tail_spans->size(), 2u);
  EXPECT_EQ((*tail_spans)[0], (CopySpan{1, 5, 15, 0}));
  EXPECT_EQ((*tail_spans)[1], (CopySpan{2, 0, 5, 15}));
}

TEST(ReconstructionPlan, TheLastByte) {
  SmallFile file;
  auto plan = plan_read(file.reconstruction, 0, {194, 195});
  ASSERT_TRUE(plan.has_value());
  ASSERT_EQ(plan->terms.size(), 1u);
  EXPECT_EQ(plan->terms[0].term_index, 3u);
  EXPECT_EQ(plan->terms[0].skip, 29u);
  EXPECT_EQ(plan->terms[0].take, 1u);
  auto spans = copy_spans(*plan, 0, 0, std::vector<std::uint64_t>{10, 20, 30, 40});
  ASSERT_TRUE(spans.has_value());
  ASSERT_EQ(spans->size(), 1u);
  EXPECT_EQ((*spans)[0], (CopySpan{1, 19, 1, 0}));
  EXPECT_EQ(execute(*plan, file.store), slice(file.content, 194, 195));
}

TEST(ReconstructionPlan, EmptyRangeAndPastTheEnd) {
  SmallFile file;
  auto empty = plan_read(file.reconstruction, 0, {50, 50});
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->range, (FileByteRange{50, 50}));
  EXPECT_TRUE(empty->fetches.empty());
  EXPECT_TRUE(empty->terms.empty());
  // At or past the end of a whole-file reconstruction: an empty plan (the server would say 416).
  for (FileByteRange past : {FileByteRange{195, 300}, FileByteRange{1000, 2000}}) {
    auto plan = plan_read(file.reconstruction, 0, past);
    ASSERT_TRUE(plan.has_value());
    EXPECT_EQ(plan->range, (FileByteRange{past.start, past.start}));
    EXPECT_TRUE(plan->terms.empty());
  }
  // Straddling the end: clamped to it.
  auto straddle = plan_read(file.reconstruction, 0, {190, 300});
  ASSERT_TRUE(straddle.has_value());
  EXPECT_EQ(straddle->range, (FileByteRange{190, 195}));
  EXPECT_EQ(execute(*straddle, file.store), slice(file.content, 190, 195));
  // A reversed range is the caller's error.
  auto reversed = plan_read(file.reconstruction, 0, {10, 5});
  ASSERT_FALSE(reversed.has_value());
  EXPECT_EQ(reversed.error().code, ErrorCode::kInvalidArgument);
}

TEST(ReconstructionPlan, AnswerToARangeRequest) {
  SmallFile file;
  // The server's answer to Range: bytes=100-139 (file [100, 140)). It starts with term 2
  // (file [75, 165)) trimmed to its chunks from the one holding byte 100: A chunk 2 (file [95, 125))
  // and chunk 3 ([125, 165)). So offset_into_first_range = 5, and the terms run past 140.
  Reconstruction answer;
  answer.offset_into_first_range = 5;
  answer.terms = {file.store.term(file.a, {2, 4})};
  answer.fetches = {XorbFetch{file.a, "https://cdn/a2", {file.store.at(file.a).byte_range({2, 4})}}};
  ASSERT_TRUE(validate_reconstruction(answer));
  auto plan = plan_read(answer, 100, {100, 140});
  ASSERT_TRUE(plan.has_value()) << error_text(plan.error());
  EXPECT_EQ(plan->range, (FileByteRange{100, 140}));
  ASSERT_EQ(plan->terms.size(), 1u);
  EXPECT_EQ(plan->terms[0].skip, 5u);
  EXPECT_EQ(plan->terms[0].take, 40u);
  EXPECT_EQ(execute(*plan, file.store), slice(file.content, 100, 140));
  // The whole answer can also be used from its first byte, which is before the requested start.
  auto earlier = plan_read(answer, 100, {95, 100});
  ASSERT_TRUE(earlier.has_value());
  EXPECT_EQ(execute(*earlier, file.store), slice(file.content, 95, 100));
  // ...but not before that, and an answer is not a whole file.
  auto before = plan_read(answer, 100, {94, 100});
  ASSERT_FALSE(before.has_value());
  EXPECT_EQ(before.error().code, ErrorCode::kInvalidArgument);
  EXPECT_FALSE(plan_whole_file(answer).has_value());
  // An offset larger than the requested start does not fit the request.
  auto misfit = plan_read(answer, 3, {3, 10});
  ASSERT_FALSE(misfit.has_value());
  EXPECT_EQ(misfit.error().code, ErrorCode::kInvalidFormat);
}

TEST(ReconstructionPlan, CopySpansCheckTheChunkSizes) {
  SmallFile file;
  auto plan = plan_whole_file(file.reconstruction);
  ASSERT_TRUE(plan.has_value());
  // Chunk 3 of A is 41 bytes instead of 40: term 2 (A[1,4)) no longer matches its unpacked_length.
  auto wrong = copy_spans(*plan, 0, 0, std::vector<std::uint64_t>{10, 20, 30, 41});
  ASSERT_FALSE(wrong.has_value());
  EXPECT_EQ(wrong.error().code, ErrorCode::kSizeMismatch);
  EXPECT_NE(wrong.error().message.find("term 2"), std::string::npos) << wrong.error().message;
  // Sizes moved between chunks keep the sums of terms 0 and 3 but not of term 2.
  auto moved = copy_spans(*plan, 0, 0, std::vector<std::uint64_t>{15, 15, 30, 40});
  ASSERT_FALSE(moved.has_value());
  EXPECT_NE(moved.error().message.find("term 2"), std::string::npos) << moved.error().message;
  // Wrong count of sizes.
  auto count = copy_spans(*plan, 0, 0, std::vector<std::uint64_t>{10, 20, 30});
  ASSERT_FALSE(count.has_value());
  EXPECT_EQ(count.error().code, ErrorCode::kSizeMismatch);
  // Indices out of range.
  EXPECT_EQ(copy_spans(*plan, 2, 0, {}).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(copy_spans(*plan, 0, 1, {}).error().code, ErrorCode::kInvalidArgument);
  // Huge sizes do not overflow silently.
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max();
  EXPECT_FALSE(copy_spans(*plan, 0, 0, std::vector<std::uint64_t>{huge, huge, 1, 1}));
}

TEST(ReconstructionPlan, UncoveredTermInAHandBuiltReconstruction) {
  SmallFile file;
  file.reconstruction.fetches.pop_back();  // drop one xorb's entry
  auto plan = plan_whole_file(file.reconstruction);
  ASSERT_FALSE(plan.has_value());
  EXPECT_EQ(plan.error().code, ErrorCode::kInvalidFormat);
}

// ---- Seeded random files ------------------------------------------------------------------------

struct RandomFile {
  FakeStore store;
  std::vector<Hash> xorb_hashes;
  Reconstruction whole;  // as a server answers without Range
  Bytes content;
};

std::vector<ChunkRange> merged(std::vector<ChunkRange> ranges) {
  std::sort(ranges.begin(), ranges.end(), [](auto& x, auto& y) { return x.start < y.start; });
  std::vector<ChunkRange> out;
  for (const auto& range : ranges) {
    if (!out.empty() && range.start <= out.back().end)
      out.back().end = std::max(out.back().end, range.end);
    else
      out.push_back(range);
  }
  return out;
}

RandomFile make_random_file(std::mt19937_64& rng) {
  auto uniform = [&](std::uint64_t low, std::uint64_t high) {
    return std::uniform_int_distribution<std::uint64_t>(low, high)(rng);
  };
  RandomFile file;
  const std::size_t xorb_count = uniform(1, 4);
  for (std::size_t x = 0; x < xorb_count; ++x) {
    FakeXorb xorb;
    for (auto& b : xorb.hash.bytes) b = static_cast<std::uint8_t>(rng());
    const std::size_t chunks = uniform(1, 12);
    for (std::size_t c = 0; c < chunks; ++c) {
      Bytes chunk(uniform(1, 64));
      for (auto& b : chunk) b = std::byte(static_cast<std::uint8_t>(rng()));
      xorb.chunks.push_back(std::move(chunk));
    }
    file.xorb_hashes.push_back(xorb.hash);
    file.store.xorbs[xorb.hash] = std::move(xorb);
  }
  const std::size_t term_count = uniform(0, 8);
  for (std::size_t t = 0; t < term_count; ++t) {
    const Hash& hash = file.xorb_hashes[uniform(0, xorb_count - 1)];
    const std::uint64_t n = file.store.at(hash).chunks.size();
    const std::uint64_t start = uniform(0, n - 1);
    const std::uint64_t end = uniform(start + 1, n);
    file.whole.terms.push_back(file.store.term(hash, {start, end}));
  }
  // Fetch entries: per xorb the merged chunk ranges its terms use, packed into entries of a random
  // number of ranges (one range per entry is the v1 shape). Xorbs in hash-string order, as parsed.
  std::vector<Hash> by_string = file.xorb_hashes;
  std::sort(by_string.begin(), by_string.end(), [](auto& x, auto& y) { return x.to_string() < y.to_string(); });
  for (const Hash& hash : by_string) {
    std::vector<ChunkRange> used;
    for (const auto& term : file.whole.terms)
      if (term.xorb == hash) used.push_back(term.chunks);
    const auto ranges = merged(used);
    const std::size_t per_entry = uniform(1, 3);
    for (std::size_t i = 0; i < ranges.size(); i += per_entry) {
      XorbFetch fetch{hash, "https://cdn/" + hash.to_string() + "/" + std::to_string(i), {}};
      for (std::size_t j = i; j < std::min(ranges.size(), i + per_entry); ++j)
        fetch.ranges.push_back(file.store.at(hash).byte_range(ranges[j]));
      file.whole.fetches.push_back(std::move(fetch));
    }
  }
  file.content = file.store.content(file.whole.terms);
  return file;
}

// What a server answers to Range [start, end) with start < file size: the terms overlapping the
// range, the first (and maybe the last) trimmed to the chunks that hold requested bytes when
// `trim` says so, and the offset of `start` into the first term.
Reconstruction server_answer(const RandomFile& file, FileByteRange requested, bool trim) {
  Reconstruction answer;
  answer.fetches = file.whole.fetches;
  std::uint64_t term_start = 0;
  bool first = true;
  for (const auto& term : file.whole.terms) {
    const std::uint64_t term_end = term_start + term.unpacked_length;
    if (term_end > requested.start && term_start < requested.end) {
      ReconstructionTerm kept = term;
      std::uint64_t kept_start = term_start;
      if (trim) {
        const FakeXorb& xorb = file.store.at(term.xorb);
        // Drop leading chunks that end at or before the start; trailing ones at or after the end.
        while (kept_start + xorb.chunks[kept.chunks.start].size() <= requested.start) {
          kept_start += xorb.chunks[kept.chunks.start].size();
          ++kept.chunks.start;
        }
        std::uint64_t kept_end = term_end;
        while (kept.chunks.end - kept.chunks.start > 1 &&
               kept_end - xorb.chunks[kept.chunks.end - 1].size() >= requested.end) {
          kept_end -= xorb.chunks[kept.chunks.end - 1].size();
          --kept.chunks.end;
        }
        kept.unpacked_length = kept_end - kept_start;
      }
      if (first) answer.offset_into_first_range = requested.start - kept_start;
      first = false;
      answer.terms.push_back(kept);
    }
    term_start = term_end;
  }
  return answer;
}

TEST(ReconstructionRandom, CutsReproduceTheReferenceBytes) {
  std::mt19937_64 rng(0x5eed'2024'0601ULL);
  for (int iteration = 0; iteration < 300; ++iteration) {
    SCOPED_TRACE("iteration " + std::to_string(iteration));
    RandomFile file = make_random_file(rng);
    ASSERT_TRUE(validate_reconstruction(file.whole)) << error_text(validate_reconstruction(file.whole).error());
    // Through the JSON of either version and back, so the parsers carry the same meaning.
    auto from_v2 = parse_reconstruction_v2(to_json_v2(file.whole));
    ASSERT_TRUE(from_v2.has_value()) << error_text(from_v2.error());
    ASSERT_EQ(*from_v2, file.whole);
    auto from_v1 = parse_reconstruction_v1(to_json_v1(file.whole));
    ASSERT_TRUE(from_v1.has_value()) << error_text(from_v1.error());

    const std::uint64_t size = file.content.size();
    auto whole = plan_whole_file(*from_v2);
    ASSERT_TRUE(whole.has_value());
    expect_plan_shape(*whole);
    ASSERT_EQ(execute(*whole, file.store), file.content);

    for (int r = 0; r < 12; ++r) {
      const std::uint64_t start = std::uniform_int_distribution<std::uint64_t>(0, size + 5)(rng);
      const std::uint64_t end = start + std::uniform_int_distribution<std::uint64_t>(0, size + 5)(rng);
      const FileByteRange wanted{start, end};
      SCOPED_TRACE("range [" + std::to_string(start) + ", " + std::to_string(end) + ") of " + std::to_string(size));
      const Bytes expected = slice(file.content, start, end);

      // From the whole-file reconstruction, parsed from either version.
      for (const Reconstruction* reconstruction : {&*from_v2, &*from_v1}) {
        auto plan = plan_read(*reconstruction, 0, wanted);
        ASSERT_TRUE(plan.has_value()) << error_text(plan.error());
        expect_plan_shape(*plan);
        EXPECT_EQ(plan->range.start, start);
        EXPECT_EQ(plan->range.end, std::max(start, std::min(end, size)));
        ASSERT_EQ(execute(*plan, file.store), expected);
      }
      // From what a server answers to a Range request for it (none when it is empty or past EOF:
      // the client does not ask, or gets 416).
      if (start < end && start < size) {
        for (bool trim : {false, true}) {
          Reconstruction answer = server_answer(file, wanted, trim);
          ASSERT_TRUE(validate_reconstruction(answer)) << error_text(validate_reconstruction(answer).error());
          auto parsed = parse_reconstruction(to_json_v2(answer));
          ASSERT_TRUE(parsed.has_value()) << error_text(parsed.error());
          auto plan = plan_read(*parsed, start, wanted);
          ASSERT_TRUE(plan.has_value()) << error_text(plan.error());
          expect_plan_shape(*plan);
          ASSERT_EQ(execute(*plan, file.store), expected) << "trim " << trim;
        }
      }
    }
  }
}

// ---- Random mutation ------------------------------------------------------------------------------
// Valid responses of every shape (v1, v2, Range answers, batches), mutated as bytes and as JSON
// trees. Every parse must end in a typed error naming a field, or in a value that keeps the
// parsers' promises (reconstruction.h): ranges non-empty and ascending, every term covered, lengths
// that fit 64 bits, an offset inside the terms, and plans and copy spans that stay in bounds.
// Run under ASan/UBSan (scripts/test.sh does) to catch out-of-bounds reads and overflows.

double fuzz_seconds() {
  const char* text = std::getenv("BUCKETFS_FUZZ_SECONDS");
  if (text == nullptr || *text == '\0') return 2.0;
  return std::max(0.05, std::atof(text));
}

using Json = nlohmann::json;

Hash random_hash(std::mt19937_64& rng) {
  Hash hash;
  for (auto& b : hash.bytes) b = static_cast<std::uint8_t>(rng());
  return hash;
}

// A JSON node with where it sits, so a mutation can replace, remove or rename it.
struct JsonNode {
  Json* value;
  Json* parent;  // nullptr for the root
  std::string key;  // when the parent is an object
  std::size_t index = 0;  // when the parent is an array
};

void collect_nodes(Json& value, Json* parent, std::string key, std::size_t index, std::vector<JsonNode>& out) {
  out.push_back({&value, parent, key, index});
  if (value.is_object()) {
    for (auto it = value.begin(); it != value.end(); ++it) collect_nodes(*it, &value, it.key(), 0, out);
  } else if (value.is_array()) {
    for (std::size_t i = 0; i < value.size(); ++i) collect_nodes(value[i], &value, {}, i, out);
  }
}

Json interesting_number(std::mt19937_64& rng) {
  switch (rng() % 14) {
    case 0: return 0;
    case 1: return 1;
    case 2: return -1;
    case 3: return std::numeric_limits<std::uint64_t>::max();
    case 4: return std::numeric_limits<std::uint64_t>::max() - 1;
    case 5: return std::uint64_t{1} << 63;
    case 6: return std::numeric_limits<std::int64_t>::min();
    case 7: return std::uint64_t{1} << 32;
    case 8: return 1e30;
    case 9: return 0.5;
    case 10: return -0.0;
    case 11: return std::uint64_t{0xFFFFFFFF};
    case 12: return rng() % 64;
    default: return rng();
  }
}

Json wrong_type(std::mt19937_64& rng) {
  switch (rng() % 6) {
    case 0: return nullptr;
    case 1: return true;
    case 2: return "12";
    case 3: return Json::array();
    case 4: return Json::object();
    default: return Json::array({Json::object({{"start", 0}, {"end", 1}})});
  }
}

std::string mutated_key(std::string key, std::mt19937_64& rng) {
  switch (rng() % 5) {
    case 0:
      if (!key.empty()) key[rng() % key.size()] = "0123456789abcdefABCDEFxz"[rng() % 24];
      break;
    case 1:
      if (!key.empty()) key.pop_back();
      break;
    case 2: key += "0"; break;
    case 3: key = ""; break;
    default: key = std::string(64, 'f'); break;
  }
  return key;
}

// One JSON-aware mutation of `root`: a number made extreme or nudged, a value of the wrong type, a
// key removed or renamed (hash keys too), an array element dropped or repeated, or a value copied
// over another (a splice within the tree).
void mutate_json(Json& root, std::mt19937_64& rng) {
  std::vector<JsonNode> nodes;
  collect_nodes(root, nullptr, {}, 0, nodes);
  const JsonNode node = nodes[rng() % nodes.size()];
  switch (rng() % 8) {
    case 0:
      if (node.value->is_number()) {
        *node.value = interesting_number(rng);
        break;
      }
      [[fallthrough]];
    case 1:
      *node.value = wrong_type(rng);
      break;
    case 2:  // remove
      if (node.parent == nullptr) break;
      if (node.parent->is_object()) node.parent->erase(node.key);
      else node.parent->erase(node.index);
      break;
    case 3:  // repeat an array element, or add a second copy of an object member under a new key
      if (node.parent == nullptr) break;
      if (node.parent->is_array()) {
        node.parent->insert(node.parent->begin() + static_cast<std::ptrdiff_t>(node.index), Json(*node.value));
      } else {
        (*node.parent)[mutated_key(node.key, rng)] = Json(*node.value);
      }
      break;
    case 4:  // rename a key
      if (node.parent != nullptr && node.parent->is_object()) {
        Json moved = std::move(*node.value);
        node.parent->erase(node.key);
        (*node.parent)[mutated_key(node.key, rng)] = std::move(moved);
      }
      break;
    case 5: {  // copy another node's value here
      const Json copy = *nodes[rng() % nodes.size()].value;
      *node.value = copy;
      break;
    }
    case 6:  // nudge a number
      if (node.value->is_number_unsigned()) {
        const std::uint64_t v = node.value->get<std::uint64_t>();
        const std::uint64_t nudged[] = {v + 1, v - 1, v * 2, v / 2, v + 1000000};
        *node.value = nudged[rng() % std::size(nudged)];
      }
      break;
    case 7:  // empty a container
      if (node.value->is_object()) *node.value = Json::object();
      else if (node.value->is_array()) *node.value = Json::array();
      break;
  }
}

// One byte-level mutation of the text: flips, structural characters, inserts, deletes, truncation,
// and a splice of another seed's bytes.
void mutate_text(std::string& text, const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  const std::size_t size = text.size();
  switch (rng() % 7) {
    case 0:
      if (size) text[rng() % size] ^= static_cast<char>(1u << (rng() % 8));
      break;
    case 1: {
      static constexpr std::string_view kSignificant = "{}[]\":,-+.eE0123456789 \\u";
      if (size) text[rng() % size] = kSignificant[rng() % kSignificant.size()];
      break;
    }
    case 2: {
      static const char* const kInserts[] = {"-", "9", "99999999999999999999", ",", "\"", "{", "]", "null",
                                             "\\u0000", "1e400", ".5"};
      text.insert(size ? rng() % (size + 1) : 0, kInserts[rng() % std::size(kInserts)]);
      break;
    }
    case 3:
      if (size) text.erase(rng() % size, 1 + rng() % 32);
      break;
    case 4:
      text.resize(size ? rng() % size : 0);
      break;
    default: {  // splice: a piece of another seed in place of a piece of this one
      const std::string& other = seeds[rng() % seeds.size()];
      if (!size || other.empty()) break;
      const std::size_t at = rng() % size, from = rng() % other.size();
      const std::size_t cut = std::min<std::size_t>(size - at, rng() % 128);
      text.replace(at, cut, other.substr(from, rng() % 128));
      break;
    }
  }
}

// "" when `r` keeps the promises of a parsed reconstruction, else what it breaks.
std::string reconstruction_problem(const Reconstruction& r) {
  for (std::size_t f = 0; f < r.fetches.size(); ++f) {
    const XorbFetch& fetch = r.fetches[f];
    const std::string where = "fetch " + std::to_string(f);
    if (f > 0 && fetch.xorb.to_string() < r.fetches[f - 1].xorb.to_string()) return where + " out of xorb order";
    if (fetch.ranges.empty()) return where + " has no ranges";
    for (std::size_t i = 0; i < fetch.ranges.size(); ++i) {
      const XorbByteRange& range = fetch.ranges[i];
      if (range.chunks.start >= range.chunks.end) return where + " has an empty chunk range";
      if (range.bytes.last < range.bytes.first || range.bytes.last == std::numeric_limits<std::uint64_t>::max())
        return where + " has a bad byte range";
      if (i > 0 && (range.chunks.start < fetch.ranges[i - 1].chunks.end ||
                    range.bytes.first <= fetch.ranges[i - 1].bytes.last))
        return where + " has ranges out of order";
    }
  }
  std::uint64_t total = 0;
  for (std::size_t t = 0; t < r.terms.size(); ++t) {
    const ReconstructionTerm& term = r.terms[t];
    const std::string where = "term " + std::to_string(t);
    if (term.chunks.start >= term.chunks.end) return where + " has an empty chunk range";
    if (term.unpacked_length > std::numeric_limits<std::uint64_t>::max() - total) return where + " overflows the total";
    total += term.unpacked_length;
    bool covered = false;
    for (const XorbFetch& fetch : r.fetches)
      for (const XorbByteRange& range : fetch.ranges)
        covered = covered || (fetch.xorb == term.xorb && range.chunks.contains(term.chunks));
    if (!covered) return where + " is not covered";
  }
  if (r.offset_into_first_range != 0 && r.offset_into_first_range >= total) return "offset outside the terms";
  if (total != r.total_unpacked_length()) return "total_unpacked_length disagrees";
  return {};
}

// The v1 form of `r`: one range per entry.
Reconstruction split_ranges(const Reconstruction& r) {
  Reconstruction out = r;
  out.fetches.clear();
  for (const XorbFetch& fetch : r.fetches)
    for (const XorbByteRange& range : fetch.ranges) out.fetches.push_back(XorbFetch{fetch.xorb, fetch.url, {range}});
  return out;
}

// "" when the plan keeps plan_read()'s promises for `wanted` over a term stream [stream_start,
// stream_end), else what it breaks.
std::string plan_problem(const ReadPlan& plan, FileByteRange wanted, std::uint64_t stream_end) {
  if (plan.range.start != wanted.start) return "plan starts elsewhere";
  const std::uint64_t expected_end = std::max(wanted.start, std::min(wanted.end, stream_end));
  if (plan.range.end != expected_end)
    return "plan ends at " + std::to_string(plan.range.end) + ", expected " + std::to_string(expected_end);
  std::uint64_t next = 0;
  for (const PlannedTerm& term : plan.terms) {
    if (term.output_offset != next) return "term outputs not contiguous";
    if (term.take == 0 || term.skip > term.unpacked_length || term.take > term.unpacked_length - term.skip)
      return "term cut outside its length";
    if (term.fetch_index >= plan.fetches.size()) return "fetch index out of range";
    const XorbFetch& fetch = plan.fetches[term.fetch_index];
    if (term.range_index >= fetch.ranges.size()) return "range index out of range";
    if (fetch.xorb != term.xorb || !fetch.ranges[term.range_index].chunks.contains(term.chunks))
      return "term not inside its fetch range";
    next += term.take;
  }
  if (next != plan.range.length()) return "terms do not add up to the plan's range";
  return {};
}

// Copy spans of every fetched range of `plan`, with made-up chunk sizes: either random, or the
// first planned term's length spread over the range's chunks. Errors are fine; spans must stay
// inside their chunk and the plan's output.
std::string copy_spans_problem(const ReadPlan& plan, std::mt19937_64& rng) {
  for (std::size_t f = 0; f < plan.fetches.size(); ++f) {
    for (std::size_t r = 0; r < plan.fetches[f].ranges.size(); ++r) {
      const ChunkRange fetched = plan.fetches[f].ranges[r].chunks;
      if (fetched.size() > 4096) continue;
      std::vector<std::uint64_t> sizes(fetched.size());
      const PlannedTerm* first = nullptr;
      for (const PlannedTerm& term : plan.terms)
        if (term.fetch_index == f && term.range_index == r && first == nullptr) first = &term;
      if (first != nullptr && first->chunks == fetched && rng() % 2 == 0) {
        for (auto& size : sizes) size = first->unpacked_length / sizes.size();
        sizes.back() += first->unpacked_length % sizes.size();
      } else {
        for (auto& size : sizes) size = rng() % 100;
      }
      auto spans = copy_spans(plan, f, r, sizes);
      if (!spans) continue;
      for (std::size_t s = 0; s < spans->size(); ++s) {
        const CopySpan& span = (*spans)[s];
        if (span.length == 0) return "empty copy span";
        if (span.chunk < fetched.start || span.chunk >= fetched.end) return "span chunk outside the range";
        const std::uint64_t chunk_size = sizes[span.chunk - fetched.start];
        if (span.chunk_offset > chunk_size || span.length > chunk_size - span.chunk_offset)
          return "span outside its chunk";
        if (span.output_offset > plan.range.length() || span.length > plan.range.length() - span.output_offset)
          return "span outside the output";
        if (s > 0 && (*spans)[s - 1].chunk > span.chunk) return "spans not in chunk order";
      }
    }
  }
  return {};
}

// Plans of a parsed reconstruction: the whole file (offset 0), and a random range of the term
// stream as an answer to a Range request at offset + something.
std::string planning_problem(const Reconstruction& r, std::mt19937_64& rng) {
  const std::uint64_t total = r.total_unpacked_length();
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  if (r.offset_into_first_range == 0) {
    auto whole = plan_whole_file(r);
    if (!whole) return "plan_whole_file failed: " + whole.error().describe();
    if (auto problem = plan_problem(*whole, {0, total}, total); !problem.empty()) return "whole file: " + problem;
    if (auto problem = copy_spans_problem(*whole, rng); !problem.empty()) return "whole file: " + problem;
  }
  const std::uint64_t extra = rng() % 3 == 0 ? kMax - r.offset_into_first_range : rng() % 1000;
  const std::uint64_t requested_start = r.offset_into_first_range + std::min(extra, kMax - r.offset_into_first_range);
  const std::uint64_t stream_start = requested_start - r.offset_into_first_range;
  const std::uint64_t span = total == kMax ? kMax : total + 2;
  const std::uint64_t start_in = rng() % (span == 0 ? 1 : span);
  const std::uint64_t start = stream_start + std::min(start_in, kMax - stream_start);
  const std::uint64_t length = rng() % 4 == 0 ? kMax - start : rng() % (span == 0 ? 1 : span);
  const FileByteRange wanted{start, start + std::min(length, kMax - start)};
  auto plan = plan_read(r, requested_start, wanted);
  const bool stream_end_fits = total <= kMax - stream_start;
  if (!plan) {
    // The only failure allowed here: a term stream that ends past 2^64.
    if (stream_end_fits || plan.error().code != ErrorCode::kInvalidFormat)
      return "plan_read failed: " + plan.error().describe();
    return {};
  }
  if (!stream_end_fits) {
    // The plan may stop before the overflow; it must still be in bounds.
    if (auto problem = plan_problem(*plan, {wanted.start, plan->range.end}, plan->range.end); !problem.empty())
      return "range: " + problem;
  } else if (auto problem = plan_problem(*plan, wanted, stream_start + total); !problem.empty()) {
    return "range: " + problem;
  }
  return copy_spans_problem(*plan, rng);
}

std::string batch_problem(const BatchReconstruction& batch) {
  Reconstruction fetches_only;
  fetches_only.fetches = batch.fetches;
  if (auto problem = reconstruction_problem(fetches_only); !problem.empty()) return problem;
  for (const XorbFetch& fetch : batch.fetches)
    if (fetch.ranges.size() != 1) return "a v1 entry with several ranges";
  for (const auto& [id, terms] : batch.files) {
    auto file = batch.file(id);
    if (!file) return "file() failed: " + file.error().describe();
    if (file->terms != terms) return "file() changed the terms";
    if (auto problem = reconstruction_problem(*file); !problem.empty()) return "file " + id.to_string() + ": " + problem;
    if (auto valid = validate_reconstruction(*file); !valid) return "file() is invalid: " + valid.error().describe();
  }
  return {};
}

std::string error_problem(const Error& error) {
  if (error.code != ErrorCode::kInvalidFormat && error.code != ErrorCode::kInvalidHash)
    return "unexpected error code: " + error.describe();
  if (error.message.find(": ") == std::string::npos) return "error names no field: " + error.message;
  return {};
}

std::string shown(const std::string& text) { return text.size() > 2000 ? text.substr(0, 2000) + "..." : text; }

TEST(ReconstructionFuzz, RandomMutationsYieldErrorsOrConsistentReconstructions) {
  std::mt19937_64 rng(0xF022'2026'1205ULL);
  std::vector<std::string> seeds = {std::string(kSpecSingleTerm),
                                    replace_all(std::string(kSpecMultiXorb), kTypoHash, kFixedHash),
                                    R"({"offset_into_first_range": 0, "terms": [], "xorbs": {}})",
                                    R"({"files": {}, "fetch_info": {}})"};
  for (int i = 0; i < 12; ++i) {
    RandomFile file = make_random_file(rng);
    RandomFile other = make_random_file(rng);
    seeds.push_back(to_json_v2(file.whole));
    seeds.push_back(to_json_v1(file.whole));
    const std::uint64_t size = file.content.size();
    if (size > 0) {
      const std::uint64_t start = rng() % size;
      Reconstruction answer = server_answer(file, {start, start + 1 + rng() % size}, i % 2 == 0);
      seeds.push_back(to_json_v2(answer));
      seeds.push_back(to_json_v1(answer));
    }
    BatchReconstruction batch;
    batch.files[random_hash(rng)] = file.whole.terms;
    batch.files[random_hash(rng)] = other.whole.terms;
    batch.fetches = file.whole.fetches;
    batch.fetches.insert(batch.fetches.end(), other.whole.fetches.begin(), other.whole.fetches.end());
    seeds.push_back(to_json_batch(batch));
  }
  // The seeds themselves must parse, or the mutations start from nothing.
  for (const std::string& seed : seeds) {
    const bool is_batch = Json::parse(seed).contains("files");
    if (is_batch) {
      ASSERT_TRUE(parse_batch_reconstruction(seed).has_value()) << shown(seed);
    } else {
      ASSERT_TRUE(parse_reconstruction(seed).has_value()) << shown(seed);
    }
  }

  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(fuzz_seconds()));
  std::size_t iterations = 0, accepted = 0;
  while (std::chrono::steady_clock::now() < deadline || iterations < 1000) {
    ++iterations;
    std::string input = seeds[rng() % seeds.size()];
    const unsigned style = rng() % 3;  // 0: JSON tree, 1: bytes, 2: both
    if (style != 1) {
      Json tree = Json::parse(input);
      const int steps = 1 + static_cast<int>(rng() % 3);
      for (int s = 0; s < steps; ++s) mutate_json(tree, rng);
      input = rng() % 4 == 0 ? tree.dump(1) : tree.dump();
    }
    if (style != 0) {
      const int steps = 1 + static_cast<int>(rng() % 3);
      for (int s = 0; s < steps; ++s) mutate_text(input, seeds, rng);
    }

    bool parsed_any = false;
    for (auto* parse : {&parse_reconstruction, &parse_reconstruction_v1, &parse_reconstruction_v2}) {
      auto parsed = (*parse)(input);
      if (!parsed) {
        ASSERT_EQ(error_problem(parsed.error()), "") << shown(input);
        continue;
      }
      parsed_any = true;
      ASSERT_EQ(reconstruction_problem(*parsed), "") << shown(input);
      auto valid = validate_reconstruction(*parsed);
      ASSERT_TRUE(valid.has_value()) << valid.error().describe() << "\n" << shown(input);
      auto v2 = parse_reconstruction_v2(to_json_v2(*parsed));
      ASSERT_TRUE(v2.has_value()) << v2.error().describe() << "\n" << shown(input);
      ASSERT_EQ(*v2, *parsed) << shown(input);
      auto v1 = parse_reconstruction_v1(to_json_v1(*parsed));
      ASSERT_TRUE(v1.has_value()) << v1.error().describe() << "\n" << shown(input);
      ASSERT_EQ(*v1, split_ranges(*parsed)) << shown(input);
      ASSERT_EQ(planning_problem(*parsed, rng), "") << shown(input);
    }
    auto batch = parse_batch_reconstruction(input);
    if (batch) {
      parsed_any = true;
      ASSERT_EQ(batch_problem(*batch), "") << shown(input);
      auto again = parse_batch_reconstruction(to_json_batch(*batch));
      ASSERT_TRUE(again.has_value()) << again.error().describe() << "\n" << shown(input);
      ASSERT_EQ(again->files, batch->files);
      ASSERT_EQ(again->fetches, batch->fetches);
    } else {
      ASSERT_EQ(error_problem(batch.error()), "") << shown(input);
    }
    if (parsed_any) ++accepted;
  }
  EXPECT_GE(iterations, 1000u);
  EXPECT_GT(accepted, iterations / 100) << "mutations almost never parse; the test lost its teeth";
  std::printf("[ReconstructionFuzz] %zu iterations, %zu parsed\n", iterations, accepted);
}

}  // namespace
}  // namespace bucketfs::xet
