#include "bucketfs/xet/chunker.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "vector_inputs.h"

namespace bucketfs::xet {
namespace {

// What chunk_and_hash must equal: one ChunkHashStream over the same bytes.
ChunkedSpan chunk_sequentially(ByteSpan data, bool at_end) {
  ChunkedSpan expected;
  ChunkHashStream stream;
  expected.chunks = stream.update(data);
  for (const auto& chunk : expected.chunks) expected.consumed += chunk.size;
  if (at_end) {
    if (auto last = stream.finish()) {
      expected.chunks.push_back(*last);
      expected.consumed += last->size;
    }
  }
  return expected;
}

void expect_same_chunks(ByteSpan data, bool at_end) {
  const auto expected = chunk_sequentially(data, at_end);
  const auto got = chunk_and_hash(data, at_end);
  EXPECT_EQ(got.consumed, expected.consumed) << data.size() << " bytes, at_end " << at_end;
  ASSERT_EQ(got.chunks.size(), expected.chunks.size()) << data.size() << " bytes, at_end " << at_end;
  for (std::size_t i = 0; i < got.chunks.size(); ++i) {
    EXPECT_EQ(got.chunks[i].size, expected.chunks[i].size) << "chunk " << i;
    EXPECT_EQ(got.chunks[i].hash, expected.chunks[i].hash) << "chunk " << i;
  }
}

TEST(ChunkAndHash, BothCoresGiveTheChunksOfOneStream) {
  // Below, at and above the size that brings in the helper thread, odd and even lengths.
  for (std::size_t size : {std::size_t{0}, kMinChunkSize - 1, kParallelChunkingMinBytes - 1, kParallelChunkingMinBytes,
                           kParallelChunkingMinBytes + 12345, std::size_t{8} << 20, (std::size_t{8} << 20) + kMaxChunkSize}) {
    const auto data = testing::splitmix(size + 3, size);
    expect_same_chunks(data, false);
    expect_same_chunks(data, true);
  }
}

TEST(ChunkAndHash, SequencesThatNeverMeetAreChunkedByTheCaller) {
  // Constant bytes cut only at the maximum size, so the helper's cuts (from the middle) line up
  // with the caller's only when the middle is a multiple of it.
  for (std::size_t size : {std::size_t{2} << 20, (std::size_t{2} << 20) + 2 * 4097, (std::size_t{3} << 20) + 1}) {
    const std::vector<std::byte> data(size, std::byte{7});
    expect_same_chunks(data, false);
    expect_same_chunks(data, true);
  }
  // Random bytes with a constant run across the middle: the sequences meet only after it.
  auto data = testing::splitmix(77, std::size_t{4} << 20);
  std::fill(data.begin() + (std::size_t{3} << 19), data.begin() + (std::size_t{5} << 19), std::byte{0});
  expect_same_chunks(data, true);
}

TEST(ChunkAndHash, ManyRandomSpansMatch) {
  std::mt19937_64 random(2024);
  for (int round = 0; round < 12; ++round) {
    const std::size_t size = kParallelChunkingMinBytes + random() % (std::size_t{3} << 20);
    const auto data = testing::splitmix(random(), size);
    expect_same_chunks(data, round % 2 == 0);
  }
}

TEST(Chunker, SizesStayWithinBounds) {
  const auto data = testing::splitmix(11, 8 << 20);
  const auto lengths = chunk_lengths(data);
  ASSERT_FALSE(lengths.empty());
  EXPECT_EQ(std::accumulate(lengths.begin(), lengths.end(), std::size_t{0}), data.size());
  for (std::size_t i = 0; i + 1 < lengths.size(); ++i) {
    EXPECT_GE(lengths[i], kMinChunkSize);
    EXPECT_LE(lengths[i], kMaxChunkSize);
  }
  // About 64 KiB on average for random data (the mask gives 1/65536 per position after 8 KiB).
  const double mean = double(data.size()) / double(lengths.size());
  EXPECT_GT(mean, 40000);
  EXPECT_LT(mean, 100000);
}

TEST(Chunker, ConstantDataCutsAtMaximum) {
  const std::vector<std::byte> data(1 << 20, std::byte{7});
  const auto lengths = chunk_lengths(data);
  ASSERT_EQ(lengths.size(), 8u);
  for (auto length : lengths) EXPECT_EQ(length, kMaxChunkSize);
}

TEST(Chunker, SmallInputIsOneChunk) {
  const auto data = testing::splitmix(5, kMinChunkSize - 1);
  EXPECT_EQ(chunk_lengths(data), std::vector<std::size_t>{kMinChunkSize - 1});
  EXPECT_TRUE(chunk_lengths({}).empty());
}

TEST(Chunker, RandomPieceSizesMatchWholeInput) {
  const auto data = testing::splitmix(12, 3 << 20);
  const auto expected = chunk_lengths(data);
  std::mt19937_64 rng(99);
  for (int round = 0; round < 5; ++round) {
    Chunker chunker;
    std::vector<std::size_t> lengths;
    std::size_t offset = 0;
    while (offset < data.size()) {
      std::size_t piece = std::min<std::size_t>(1 + rng() % 200000, data.size() - offset);
      ByteSpan rest(data.data() + offset, piece);
      while (!rest.empty()) {
        const std::size_t before = chunker.open_chunk_size();
        auto cut = chunker.next_boundary(rest);
        if (!cut) break;
        lengths.push_back(before + *cut);
        rest = rest.subspan(*cut);
      }
      offset += piece;
    }
    if (chunker.open_chunk_size() > 0) lengths.push_back(chunker.open_chunk_size());
    EXPECT_EQ(lengths, expected);
  }
}

TEST(Chunker, LocalEditChangesOnlyNearbyChunks) {
  auto data = testing::splitmix(13, 4 << 20);
  const auto before = chunk_lengths(data);
  for (std::size_t i = 2000000; i < 2000100; ++i) data[i] ^= std::byte{0x5a};
  const auto after = chunk_lengths(data);
  // Count chunks identical in position and length at the start and end.
  std::size_t same_prefix = 0;
  while (same_prefix < std::min(before.size(), after.size()) && before[same_prefix] == after[same_prefix]) {
    ++same_prefix;
  }
  std::size_t same_suffix = 0;
  while (same_suffix < std::min(before.size(), after.size()) &&
         before[before.size() - 1 - same_suffix] == after[after.size() - 1 - same_suffix]) {
    ++same_suffix;
  }
  EXPECT_GE(same_prefix + same_suffix + 3, before.size());
}

// Cut positions (ends of chunks, from the stream's start) of a whole buffer.
std::vector<std::size_t> cut_positions(const std::vector<std::size_t>& lengths) {
  std::vector<std::size_t> cuts;
  std::size_t at = 0;
  for (const auto length : lengths) cuts.push_back(at += length);
  return cuts;
}

// Whatever came before (random bytes, a run that forces maximum-size chunks, nothing), the
// chunker cuts at every certain boundary of the bytes that follow: a range edit relies on it.
TEST(Chunker, CertainBoundariesHoldAfterAnyPrefix) {
  // Random stretches separated by zero runs, which have no cut candidates (forced cuts there), then
  // 4 MiB of random data: there about one chunk in 12 ends early under the npm client's rule.
  Bytes data;
  for (int piece = 0; piece < 12; ++piece) {
    const auto random = testing::splitmix(100 + piece, (piece % 3 + 1) * 70'000);
    data.insert(data.end(), random.begin(), random.end());
    data.insert(data.end(), static_cast<std::size_t>(piece * 23'000), std::byte{0});
  }
  const auto tail = testing::splitmix(99, 4 << 20);
  data.insert(data.end(), tail.begin(), tail.end());
  const auto certain = certain_boundaries(data);
  ASSERT_GE(certain.size(), 5u);
  std::mt19937_64 random(7);
  std::vector<Bytes> prefixes{{}, Bytes(300'000, std::byte{0}), Bytes(kMaxChunkSize - 1, std::byte{7})};
  for (int i = 0; i < 40; ++i) {
    const std::size_t length = random() % 400'000;
    auto bytes = testing::splitmix(1000 + i, length);
    // Some prefixes end with a zero run of their own, so the chunker arrives mid-chunk.
    if (i % 4 == 0) bytes.insert(bytes.end(), random() % 200'000, std::byte{0});
    prefixes.push_back(std::move(bytes));
  }
  std::size_t npm_early_cuts = 0;
  for (const auto& prefix : prefixes) {
    Bytes stream = prefix;
    stream.insert(stream.end(), data.begin(), data.end());
    // Our chunker and the npm client's, which also cuts 8,128 to 8,190 bytes into a chunk.
    const auto npm_lengths = npm_client_chunk_lengths(stream);
    npm_early_cuts += static_cast<std::size_t>(std::count_if(
        npm_lengths.begin(), npm_lengths.end() - 1, [](std::size_t length) { return length < kMinChunkSize; }));
    for (const auto& cuts : {cut_positions(chunk_lengths(stream)), cut_positions(npm_lengths)}) {
      for (const auto boundary : certain) {
        EXPECT_TRUE(std::binary_search(cuts.begin(), cuts.end(), prefix.size() + boundary))
            << "prefix of " << prefix.size() << " bytes, boundary " << boundary;
      }
    }
  }
  EXPECT_GT(npm_early_cuts, 20u);  // the npm rule's own cuts were exercised
}

// Over a long stretch of random data, under both rules: the npm client's early cuts (8,128 to
// 8,190 bytes into a chunk) must not skip a certain boundary either.
TEST(Chunker, CertainBoundariesHoldUnderBothRulesOverLongRandomData) {
  const auto data = testing::splitmix(31, 24 << 20);
  const auto certain = certain_boundaries(data);
  ASSERT_GT(certain.size(), 100u);
  for (const std::size_t prefix_size : {std::size_t{0}, std::size_t{77'777}}) {
    Bytes stream = testing::splitmix(32, prefix_size);
    stream.insert(stream.end(), data.begin(), data.end());
    for (const auto& cuts : {cut_positions(chunk_lengths(stream)), cut_positions(npm_client_chunk_lengths(stream))}) {
      std::size_t missing = 0;
      for (const auto boundary : certain) {
        missing += std::binary_search(cuts.begin(), cuts.end(), prefix_size + boundary) ? 0 : 1;
      }
      EXPECT_EQ(missing, 0u) << "prefix of " << prefix_size << " bytes";
    }
  }
}

// Zeros have no cut candidate: forced cuts keep every phase apart, nothing is ever certain, and
// the search gives up instead of following every phase to the end.
TEST(Chunker, NoCertainBoundaryInZeros) {
  const Bytes zeros(8 << 20, std::byte{0});
  EXPECT_TRUE(certain_boundaries(zeros).empty());
  // After a short zero run, random data converges again.
  Bytes mixed(64 << 10, std::byte{0});
  const auto random = testing::splitmix(41, 2 << 20);
  mixed.insert(mixed.end(), random.begin(), random.end());
  const auto certain = certain_boundaries(mixed);
  ASSERT_FALSE(certain.empty());
  EXPECT_GT(certain.front(), std::size_t{64} << 10);
}

TEST(Chunker, NpmClientRuleDiffersFromTheSpecOnlyBelow8KiB) {
  const auto data = testing::splitmix(22, 8 << 20);
  const auto ours = chunk_lengths(data);
  const auto npm = npm_client_chunk_lengths(data);
  EXPECT_EQ(std::accumulate(npm.begin(), npm.end(), std::size_t{0}), data.size());
  const auto early = std::count_if(npm.begin(), npm.end() - 1, [](std::size_t length) { return length < kMinChunkSize; });
  EXPECT_GT(early, 0);
  for (std::size_t i = 0; i + 1 < npm.size(); ++i) EXPECT_GE(npm[i], 8128u);
  EXPECT_NE(ours, npm);
}

TEST(Chunker, CertainBoundariesOfRandomDataAreFrequent) {
  const auto data = testing::splitmix(21, 4 << 20);
  const auto certain = certain_boundaries(data);
  ASSERT_FALSE(certain.empty());
  // The first comes within a few chunks: a range edit re-chunks little past its bytes.
  EXPECT_LT(certain.front(), std::size_t{512} << 10);
  EXPECT_GT(certain.size(), (data.size() / kTargetChunkSize) / 4);
  for (std::size_t i = 1; i < certain.size(); ++i) EXPECT_LT(certain[i - 1], certain[i]);
}

}  // namespace
}  // namespace bucketfs::xet
