#include "bucketfs/xet/hash.h"

#include <gtest/gtest.h>

#include <random>

#include "test_bytes.h"

namespace bucketfs::xet {
namespace {

using testing::random_hash;

// The reference the streaming AggregatedHasher must match: xet-core's level-by-level batch
// algorithm written as plainly as possible, with its own BLAKE3 call.
HashAndSize merge(std::span<const HashAndSize> nodes) {
  static const std::uint8_t kInternalNodeKey[32] = {1,   126, 197, 199, 165, 71,  41,  150, 253, 148, 102,
                                                    102, 180, 138, 2,   230, 93,  221, 83,  111, 55,  199,
                                                    109, 210, 248, 99,  82,  230, 74,  83,  113, 63};
  std::string text;
  std::uint64_t total = 0;
  for (const auto& node : nodes) {
    text += node.hash.to_string() + " : " + std::to_string(node.size) + "\n";
    total += node.size;
  }
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, kInternalNodeKey);
  blake3_hasher_update(&hasher, text.data(), text.size());
  HashAndSize out;
  blake3_hasher_finalize(&hasher, out.hash.bytes.data(), 32);
  out.size = total;
  return out;
}

Hash batch_root(std::vector<HashAndSize> nodes) {
  if (nodes.empty()) return Hash{};
  while (nodes.size() > 1) {
    std::vector<HashAndSize> parents;
    std::size_t read = 0;
    while (read < nodes.size()) {
      const std::size_t left = nodes.size() - read;
      std::size_t take = left;
      if (left > 2) {
        const std::size_t end = std::min<std::size_t>(9, left);
        take = end;
        for (std::size_t i = 2; i < end; ++i) {
          if (nodes[read + i].hash.word(3) % 4 == 0) {
            take = i + 1;
            break;
          }
        }
      }
      parents.push_back(merge(std::span(nodes).subspan(read, take)));
      read += take;
    }
    nodes = std::move(parents);
  }
  return nodes.front().hash;
}

TEST(Hash, StringFormIsLittleEndianWords) {
  // From xet-core's test_hash_hex_string_endianness.
  const std::uint8_t raw[32] = {22,  175, 58, 132, 4,   75,  131, 214, 190, 153, 138,
                                66,  226, 3,  153, 242, 204, 86,  80,  234, 249, 153,
                                80,  99,  159, 80, 65,  138, 236, 231, 149, 78};
  Hash hash;
  std::copy(std::begin(raw), std::end(raw), hash.bytes.begin());
  EXPECT_EQ(hash.to_string(), "d6834b04843aaf16f29903e2428a99be635099f9ea5056cc4e95e7ec8a41509f");
  auto parsed = Hash::from_string(hash.to_string());
  ASSERT_TRUE(parsed);
  EXPECT_EQ(*parsed, hash);
}

TEST(Hash, FromStringRejectsBadInput) {
  EXPECT_EQ(Hash::from_string("abc").error().code, ErrorCode::kInvalidHash);
  EXPECT_FALSE(Hash::from_string(std::string(63, 'a') + "g"));
  EXPECT_FALSE(Hash::from_string(std::string(65, 'a')));
  EXPECT_TRUE(Hash::from_string(std::string(64, 'A')));
}

TEST(Hash, RoundTripRandom) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 1000; ++i) {
    const Hash hash = random_hash(rng);
    EXPECT_EQ(*Hash::from_string(hash.to_string()), hash);
  }
}

TEST(Hash, EmptyInputsGiveZeroHash) {
  EXPECT_TRUE(xorb_hash({}).is_zero());
  EXPECT_TRUE(file_hash({}).is_zero());
}

TEST(Hash, XetCoreAggregatedReference) {
  // xet-core aggregated_hashes.rs test_correctness: three chunks of sizes 100, 200, 300.
  std::vector<HashAndSize> leaves = {
      {*Hash::from_string("cfc5d07f6f03c29bbf424132963fe08d19a37d5757aaf520bf08119f05cd56d6"), 100},
      {*Hash::from_string("c3e67584b5c4fc2a89837ec39e40f2c8a6bb0b2987ac94cd4b31e5fbdd210a72"), 200},
      {*Hash::from_string("0d2beb91b9196929a5ddec9f6e306924ddf4a24268e3e59fd8464738d525af37"), 300},
  };
  EXPECT_EQ(xorb_hash(leaves).to_string(), "71ec1275fca074724e2dd666921b3277c7cee603e4d025bcab2d4050015be2bc");
  EXPECT_EQ(file_hash(leaves).to_string(), "54e55dccc6653c612bdb5576c5d3cb34bb31bc4e100248abccf4c908b3ef7715");
  auto salt = *Hash::from_string("b286606709ef32a1cfede1e603a39f83fef56772d8234c0e35d8920071d80b69");
  EXPECT_EQ(file_hash_with_salt(leaves, salt).to_string(),
            "337f1f046e4cfc1057f0f3edbd87cf977fdfaf3c2b0c0031ca2d1d2a34aa2270");
  // A single leaf is its own root.
  EXPECT_EQ(xorb_hash(std::span(leaves).first(1)), leaves[0].hash);
}

TEST(Hash, StreamingTreeMatchesBatchTreeForManySizes) {
  std::mt19937_64 rng(7);
  for (std::size_t n : {1, 2, 3, 4, 5, 8, 9, 10, 17, 63, 64, 65, 100, 257, 1000, 4097}) {
    std::vector<HashAndSize> leaves;
    for (std::size_t i = 0; i < n; ++i) leaves.push_back({random_hash(rng), rng() % 131072});
    AggregatedHasher streaming;
    for (const auto& leaf : leaves) streaming.add(leaf);
    EXPECT_EQ(streaming.leaf_count(), n);
    const Hash expected = batch_root(leaves);
    EXPECT_EQ(streaming.finish(), expected) << n;
    EXPECT_EQ(xorb_hash(leaves), expected) << n;
  }
}

TEST(Hash, ChunkHashStateMatchesOneShot) {
  std::mt19937_64 rng(3);
  std::vector<std::byte> data(200000);
  for (auto& b : data) b = std::byte(rng());
  ChunkHashState state;
  for (std::size_t offset = 0; offset < data.size(); offset += 4099) {
    state.update(ByteSpan(data).subspan(offset, std::min<std::size_t>(4099, data.size() - offset)));
  }
  EXPECT_EQ(state.finish(), chunk_hash(data));
  state.reset();
  state.update(ByteSpan(data).first(10));
  EXPECT_EQ(state.finish(), chunk_hash(ByteSpan(data).first(10)));
}

// Group values must rebuild the chunk hash bit for bit at every size the tree shape depends
// on: one piece past a group, a partial last piece, exact powers of two, xet's maximum.
TEST(ChunkGroups, RebuildTheChunkHashAtEverySize) {
  std::mt19937_64 rng(11);
  std::vector<std::byte> data(kMaxChunkGroups * kChunkGroupBytes);
  for (auto& b : data) b = std::byte(rng());
  const std::size_t sizes[] = {16385, 17407, 17408, 17409, 32767, 32768, 32769, 48000,  49152,
                               65535, 65536, 65537, 87041, 98304, 114688, 131071, 131072};
  for (const std::size_t size : sizes) {
    const ByteSpan chunk = ByteSpan(data).first(size);
    const std::size_t groups = chunk_group_count(size);
    ASSERT_EQ(groups, (size + kChunkGroupBytes - 1) / kChunkGroupBytes) << size;
    std::vector<Hash> values(groups);
    EXPECT_EQ(chunk_group_values(chunk, values), chunk_hash(chunk)) << size;
    EXPECT_EQ(chunk_hash_from_groups(values, size), chunk_hash(chunk)) << size;
    for (std::size_t g = 0; g < groups; ++g) {
      const std::size_t start = g * kChunkGroupBytes;
      EXPECT_EQ(chunk_group_value(chunk.subspan(start, std::min(kChunkGroupBytes, size - start)), g), values[g])
          << size << " group " << g;
    }
  }
  // Chunks without group values: the hash, and nothing written.
  for (const std::size_t size : {std::size_t{0}, std::size_t{1000}, kChunkGroupBytes}) {
    EXPECT_EQ(chunk_group_values(ByteSpan(data).first(size), {}), chunk_hash(ByteSpan(data).first(size))) << size;
  }
  EXPECT_EQ(chunk_group_count(0), 0u);
  EXPECT_EQ(chunk_group_count(kChunkGroupBytes), 0u);  // one group: verified whole
  EXPECT_EQ(chunk_group_count(kMaxChunkGroups * kChunkGroupBytes + 1), 0u);
}

// What a reader relies on: a changed byte in the group it read, or a group value that is not the
// chunk's (a corrupt index), gives a different chunk hash.
TEST(ChunkGroups, AChangedByteOrValueChangesTheHash) {
  std::mt19937_64 rng(12);
  std::vector<std::byte> data(87041);
  for (auto& b : data) b = std::byte(rng());
  std::vector<Hash> values(chunk_group_count(data.size()));
  const Hash expected = chunk_group_values(data, values);
  for (const std::size_t at : {std::size_t{0}, std::size_t{16384}, std::size_t{40000}, data.size() - 1}) {
    const std::size_t g = at / kChunkGroupBytes;
    std::vector<std::byte> group(data.begin() + static_cast<std::ptrdiff_t>(g * kChunkGroupBytes),
                                 data.begin() + static_cast<std::ptrdiff_t>(
                                                    std::min(data.size(), (g + 1) * kChunkGroupBytes)));
    group[at - g * kChunkGroupBytes] ^= std::byte{1};
    std::vector<Hash> changed = values;
    changed[g] = chunk_group_value(group, g);
    EXPECT_NE(chunk_hash_from_groups(changed, data.size()), expected) << at;
    // The same bytes claimed as another group (a wrong counter) do not verify either.
    const std::size_t other = (g + 1) % values.size();
    changed = values;
    changed[other] = values[g];
    EXPECT_NE(chunk_hash_from_groups(changed, data.size()), expected) << at;
  }
  values[2].bytes[5] ^= 1;
  EXPECT_NE(chunk_hash_from_groups(values, data.size()), expected);
}

}  // namespace
}  // namespace bucketfs::xet
