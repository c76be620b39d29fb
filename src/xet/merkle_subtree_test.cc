#include "bucketfs/xet/merkle_subtree.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>

namespace bucketfs::xet {
namespace {

std::vector<HashAndSize> random_chunks(std::size_t count, std::uint64_t seed) {
  std::mt19937_64 random(seed);
  std::vector<HashAndSize> chunks(count);
  for (auto& chunk : chunks) {
    for (auto& byte : chunk.hash.bytes) byte = static_cast<std::uint8_t>(random());
    chunk.size = 8192 + random() % 120'000;
  }
  return chunks;
}

std::uint64_t total_size(const MerkleSubtree& subtree) {
  return std::accumulate(subtree.nodes.begin(), subtree.nodes.end(), std::uint64_t{0},
                         [](std::uint64_t sum, const HashAndSize& node) { return sum + node.size; });
}

TEST(MerkleSubtree, AWholeFileClosesToTheAggregatedRoot) {
  for (const std::size_t count : {0, 1, 2, 3, 9, 10, 57, 300, 2000}) {
    SCOPED_TRACE(count);
    const auto chunks = random_chunks(count, count + 1);
    const auto subtree = merkle_subtree(chunks, true, true);
    const auto root = merkle_subtree_root(subtree);
    ASSERT_TRUE(root.has_value());
    EXPECT_EQ(*root, xorb_hash(chunks));
  }
}

TEST(MerkleSubtree, APartialRunKeepsItsOpenEdgesAndEveryByte) {
  const auto chunks = random_chunks(500, 9);
  const std::uint64_t bytes = std::accumulate(chunks.begin(), chunks.end(), std::uint64_t{0},
                                              [](std::uint64_t sum, const HashAndSize& c) { return sum + c.size; });
  for (const auto& [at_start, at_end] : {std::pair{false, false}, {true, false}, {false, true}}) {
    SCOPED_TRACE(std::to_string(at_start) + std::to_string(at_end));
    const auto subtree = merkle_subtree(chunks, at_start, at_end);
    EXPECT_FALSE(merkle_subtree_root(subtree).has_value());
    EXPECT_EQ(total_size(subtree), bytes);  // every chunk is in exactly one node
    std::size_t listed = 0;
    for (const auto& [left, right] : subtree.levels) listed += left + right;
    EXPECT_EQ(listed, subtree.nodes.size());
    // Fewer nodes than chunks: only the edges stay unmerged, up to about two groups per level.
    EXPECT_LT(subtree.nodes.size(), chunks.size() / 3);
    // An open start keeps level 0's first chunks as they are; a closed one merges them.
    EXPECT_EQ(subtree.levels.front().first > 0, !at_start);
    EXPECT_EQ(subtree.levels.front().second > 0, !at_end);
    if (!at_start) EXPECT_EQ(subtree.nodes.front(), chunks.front());
    if (!at_end) EXPECT_EQ(subtree.nodes.back(), chunks.back());
  }
}

TEST(MerkleSubtree, JsonIsTheWireForm) {
  const auto chunks = random_chunks(40, 3);
  const auto subtree = merkle_subtree(chunks, false, true);
  const auto json = to_json(subtree);
  ASSERT_EQ(json["nodes"].size(), subtree.nodes.size());
  EXPECT_EQ(json["nodes"][0]["hash"], subtree.nodes[0].hash.to_string());
  EXPECT_EQ(json["nodes"][0]["size"], subtree.nodes[0].size);
  ASSERT_EQ(json["levels"].size(), subtree.levels.size());
  EXPECT_EQ(json["levels"][0][0], subtree.levels[0].first);
  EXPECT_EQ(json["levels"][0][1], subtree.levels[0].second);
  EXPECT_EQ(json["at_start"], false);
  EXPECT_EQ(json["at_end"], true);
}

}  // namespace
}  // namespace bucketfs::xet
