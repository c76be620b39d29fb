// Xorbs and shards emitted by the npm reference client (@huggingface/hub, captured on the wire by
// tests/npm/make-fixtures.mjs into tests/data/npm/) parse, verify, and reconstruct the exact
// input bytes with our xet core.

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/shard.h"
#include "bucketfs/xet/xorb.h"
#include "vector_inputs.h"

namespace bucketfs::xet {
namespace {

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Bytes bytes(text.size());
  std::memcpy(bytes.data(), text.data(), text.size());
  return bytes;
}

std::vector<std::byte> generate(const nlohmann::json& generator, const std::map<std::string, std::vector<std::byte>>& done) {
  const auto kind = generator.at("kind").get<std::string>();
  const auto size = generator.value("size", std::size_t{0});
  if (kind == "splitmix64") return testing::splitmix(generator.at("seed").get<std::uint64_t>(), size);
  if (kind == "constant") return std::vector<std::byte>(size, std::byte(generator.at("byte").get<int>()));
  if (kind == "text_like") return testing::text_like(size);
  if (kind == "float32_ramp") {
    std::vector<std::byte> out(size);
    for (std::size_t i = 0; i < size / 4; ++i) {
      const float value = static_cast<float>(i) / 1024.0f;
      std::memcpy(out.data() + 4 * i, &value, 4);
    }
    return out;
  }
  if (kind == "edit") {
    auto data = done.at(generator.at("base").get<std::string>());
    for (const auto& edit : generator.at("edits")) {
      const auto op = edit.at("op").get<std::string>();
      const auto value = std::byte(edit.at("value").get<int>());
      if (op == "xor") {
        for (auto i = edit.at("start").get<std::size_t>(); i < edit.at("end").get<std::size_t>(); ++i) data[i] ^= value;
      } else {
        const auto at = edit.at("at").get<std::ptrdiff_t>();
        data.insert(data.begin() + at, edit.at("count").get<std::size_t>(), value);
      }
    }
    return data;
  }
  ADD_FAILURE() << "unknown generator " << kind;
  return {};
}

class NpmFixtures : public ::testing::Test {
 protected:
  static std::string dir() { return testing::test_data_path("npm"); }
  nlohmann::json manifest_ = testing::load_json("npm/manifest.json");
};

TEST_F(NpmFixtures, EveryXorbVerifiesAgainstItsUploadUrlHash) {
  std::size_t count = 0;
  for (const auto& file : std::filesystem::directory_iterator(dir() + "/xorbs")) {
    const auto name = file.path().stem().string();
    auto hash = Hash::from_string(name);
    ASSERT_TRUE(hash) << name;
    const auto bytes = read_file(file.path());
    auto leaves = verify_xorb(bytes, *hash);
    ASSERT_TRUE(leaves) << name << ": " << leaves.error().describe();
    EXPECT_FALSE(leaves->empty());
    ++count;
  }
  EXPECT_GE(count, 10u);
}

TEST_F(NpmFixtures, ShardsParseValidateAndReconstructTheInputs) {
  std::map<std::string, std::vector<std::byte>> inputs;  // by file name, for the edit generator
  std::size_t files_checked = 0;
  for (const auto& c : manifest_.at("cases")) {
    for (const auto& f : c.at("files")) {
      SCOPED_TRACE(f.at("path").get<std::string>());
      const auto input = generate(f.at("input").at("generator"), inputs);
      inputs[f.at("name").get<std::string>()] = input;
      ASSERT_EQ(input.size(), f.at("size").get<std::size_t>());

      const auto shard_bytes = read_file(dir() + "/" + f.at("shard").get<std::string>());
      auto shard = parse_shard(shard_bytes);
      ASSERT_TRUE(shard) << shard.error().describe();
      EXPECT_TRUE(shard->footer.has_value()) << "the npm client sends its upload shards with a footer";
      ASSERT_TRUE(validate_upload_shard(*shard)) << validate_upload_shard(*shard).error().describe();

      auto file_hash = Hash::from_string(f.at("xet_hash").get<std::string>());
      ASSERT_TRUE(file_hash);
      const FileInfo* info = nullptr;
      for (const auto& candidate : shard->files) {
        if (candidate.file_hash == *file_hash) info = &candidate;
      }
      ASSERT_NE(info, nullptr) << "file hash not in its shard";
      EXPECT_EQ(info->size(), input.size());

      // Rebuild the bytes from the terms and check every verification hash and the file hash.
      std::vector<std::byte> rebuilt;
      AggregatedHasher tree;
      for (std::size_t t = 0; t < info->terms.size(); ++t) {
        const auto& term = info->terms[t];
        const auto xorb_bytes = read_file(dir() + "/xorbs/" + term.xorb_hash.to_string() + ".xorb");
        auto leaves = verify_xorb(xorb_bytes, term.xorb_hash);
        ASSERT_TRUE(leaves);
        ASSERT_TRUE(verify_term(term, info->verification.at(t), *leaves));
        auto chunks = decode_xorb_chunks(xorb_bytes);
        ASSERT_TRUE(chunks);
        for (auto i = term.chunk_index_start; i < term.chunk_index_end; ++i) {
          rebuilt.insert(rebuilt.end(), (*chunks)[i].begin(), (*chunks)[i].end());
          tree.add((*leaves)[i]);
        }
      }
      EXPECT_TRUE(rebuilt == input) << "reconstructed bytes differ from the input";
      const Hash computed = info->terms.empty() ? Hash{} : file_hash_from_root(tree.finish());
      EXPECT_EQ(computed, *file_hash);
      ++files_checked;
    }
  }
  EXPECT_GE(files_checked, 12u);
}

TEST_F(NpmFixtures, FileHashAgreesWithOurChunkerWhereTheChunkersAgree) {
  // random_1000000_seed0 is cut identically by xet-core and the npm chunker (19 chunks).
  for (const auto& c : manifest_.at("cases")) {
    if (c.at("name") != "random_1000000_seed0") continue;
    const auto& f = c.at("files").at(0);
    const auto input = testing::splitmix(0, 1000000);
    ChunkHashStream stream;
    auto chunks = stream.update(input);
    if (auto last = stream.finish()) chunks.push_back(*last);
    EXPECT_EQ(file_hash(chunks).to_string(), f.at("xet_hash").get<std::string>());
    return;
  }
  FAIL() << "case random_1000000_seed0 missing";
}

// npm_client_chunk_lengths is the npm client's chunker: the lengths it cut every fixture input
// into, early cuts below 8 KiB included.
TEST_F(NpmFixtures, NpmClientChunkLengthsAreTheClientsChunks) {
  std::map<std::string, std::vector<std::byte>> inputs;
  std::size_t chunks_checked = 0;
  for (const auto& c : manifest_.at("cases")) {
    for (const auto& f : c.at("files")) {
      SCOPED_TRACE(f.at("path").get<std::string>());
      const auto input = generate(f.at("input").at("generator"), inputs);
      inputs[f.at("name").get<std::string>()] = input;
      std::vector<std::size_t> expected;
      for (const auto& chunk : f.at("npm_chunker").at("chunks")) expected.push_back(chunk.at(0).get<std::size_t>());
      EXPECT_EQ(npm_client_chunk_lengths(input), expected);
      chunks_checked += expected.size();
    }
  }
  EXPECT_GE(chunks_checked, 100u);
}

TEST_F(NpmFixtures, DedupResponseShardParsesWithFooterAndKey) {
  for (const auto& file : std::filesystem::directory_iterator(dir() + "/dedup-responses")) {
    const auto bytes = read_file(file.path());
    auto shard = parse_shard(bytes);
    ASSERT_TRUE(shard) << shard.error().describe();
    ASSERT_TRUE(shard->footer.has_value());
    EXPECT_TRUE(shard->files.empty());
    EXPECT_FALSE(shard->xorbs.empty());
  }
}

}  // namespace
}  // namespace bucketfs::xet
