// Every case of tests/data/xet-vectors.json (xet-core's own chunker and hash facts): boundaries,
// chunk hashes, file hash, xorb hash and verification hashes, with the input fed whole and in
// pieces of 1, 37, 255 and 1 MiB bytes.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/hash.h"
#include "vector_inputs.h"

namespace bucketfs::xet {
namespace {

struct Expected {
  std::string name;
  std::vector<std::byte> input;
  std::vector<std::pair<std::size_t, std::string>> chunks;
  nlohmann::json entry;
};

const std::vector<Expected>& all_cases() {
  static const std::vector<Expected> cases = [] {
    std::vector<Expected> out;
    const auto document = testing::load_json("xet-vectors.json");
    for (const auto& entry : document.at("cases")) {
      Expected expected;
      expected.name = entry.at("name").get<std::string>();
      auto input = testing::vector_input(expected.name);
      if (!input) throw std::runtime_error("unknown vector input " + expected.name);
      expected.input = std::move(*input);
      for (const auto& chunk : entry.at("chunks")) {
        expected.chunks.emplace_back(chunk.at(0).get<std::size_t>(), chunk.at(1).get<std::string>());
      }
      expected.entry = entry;
      out.push_back(std::move(expected));
    }
    return out;
  }();
  return cases;
}

std::vector<HashAndSize> chunk_in_pieces(ByteSpan data, std::size_t piece) {
  ChunkHashStream stream;
  std::vector<HashAndSize> chunks;
  for (std::size_t offset = 0; offset < data.size(); offset += piece) {
    auto done = stream.update(data.subspan(offset, std::min(piece, data.size() - offset)));
    chunks.insert(chunks.end(), done.begin(), done.end());
  }
  if (auto last = stream.finish()) chunks.push_back(*last);
  return chunks;
}

TEST(XetVectors, FileHasAllCases) { EXPECT_EQ(all_cases().size(), 140u); }

TEST(XetVectors, ChunkBoundariesAndHashesWholeInput) {
  for (const auto& c : all_cases()) {
    SCOPED_TRACE(c.name);
    ASSERT_EQ(c.input.size(), c.entry.at("size").get<std::size_t>());
    const auto lengths = chunk_lengths(c.input);
    ASSERT_EQ(lengths.size(), c.chunks.size());
    std::size_t offset = 0;
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      EXPECT_EQ(lengths[i], c.chunks[i].first) << "chunk " << i;
      EXPECT_EQ(chunk_hash(ByteSpan(c.input).subspan(offset, lengths[i])).to_string(), c.chunks[i].second)
          << "chunk " << i;
      offset += lengths[i];
    }
  }
}

TEST(XetVectors, StreamingInPiecesGivesSameChunks) {
  for (std::size_t piece : {std::size_t{1}, std::size_t{37}, std::size_t{255}, std::size_t{1} << 20}) {
    for (const auto& c : all_cases()) {
      // Feeding one byte at a time through the big inputs is slow under ASan; the trigger and
      // small cases cover every boundary position, and the 1 MiB case covers the big ones.
      if (piece == 1 && c.input.size() > 300000) continue;
      SCOPED_TRACE(c.name + " in pieces of " + std::to_string(piece));
      const auto chunks = chunk_in_pieces(c.input, piece);
      ASSERT_EQ(chunks.size(), c.chunks.size());
      for (std::size_t i = 0; i < chunks.size(); ++i) {
        EXPECT_EQ(chunks[i].size, c.chunks[i].first);
        EXPECT_EQ(chunks[i].hash.to_string(), c.chunks[i].second);
      }
    }
  }
}

TEST(XetVectors, OneBytePiecesOverTheLargeInputs) {
  // The skipped combination above, on one large input, so piece size 1 also meets 128 KiB cuts.
  for (const auto& c : all_cases()) {
    if (c.name != "random_1000000_seed0" && c.name != "zeros_1MiB") continue;
    SCOPED_TRACE(c.name);
    const auto chunks = chunk_in_pieces(c.input, 1);
    ASSERT_EQ(chunks.size(), c.chunks.size());
    for (std::size_t i = 0; i < chunks.size(); ++i) EXPECT_EQ(chunks[i].size, c.chunks[i].first);
  }
}

TEST(XetVectors, FileXorbAndVerificationHashes) {
  for (const auto& c : all_cases()) {
    SCOPED_TRACE(c.name);
    std::vector<HashAndSize> leaves;
    std::vector<Hash> hashes;
    for (const auto& [size, text] : c.chunks) {
      auto hash = Hash::from_string(text);
      ASSERT_TRUE(hash.has_value());
      leaves.push_back({*hash, size});
      hashes.push_back(*hash);
    }
    EXPECT_EQ(file_hash(leaves).to_string(), c.entry.at("file_hash").get<std::string>());
    if (c.entry.contains("xorb_hash_all_chunks")) {
      EXPECT_EQ(xorb_hash(leaves).to_string(), c.entry.at("xorb_hash_all_chunks").get<std::string>());
    }
    if (c.entry.contains("verification_hash_all_chunks")) {
      EXPECT_EQ(verification_hash(hashes).to_string(),
                c.entry.at("verification_hash_all_chunks").get<std::string>());
    }
    if (c.entry.contains("verification_hash_chunks_1_to_3")) {
      EXPECT_EQ(verification_hash(std::span(hashes).subspan(1, 2)).to_string(),
                c.entry.at("verification_hash_chunks_1_to_3").get<std::string>());
    }
  }
}

}  // namespace
}  // namespace bucketfs::xet
