#include "bucketfs/cache/node_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

#include "format.h"
#include "temp_dir.h"

namespace bucketfs::cache {
namespace {

mode_t mode_of(const std::filesystem::path& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST(NodeStoreTest, CreatesPrivateDirectoriesAndFiles) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  const std::filesystem::path dir = std::filesystem::path(temp.path()) / "a" / "cache";
  auto store = NodeStore::open(dir);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_EQ(mode_of(std::filesystem::path(temp.path()) / "a"), 0700u);
  EXPECT_EQ(mode_of(dir), 0700u);
  EXPECT_EQ(mode_of(dir / "chunks"), 0700u);
  EXPECT_EQ(mode_of(dir / "data.mdb"), 0600u);
  EXPECT_EQ(mode_of(dir / "lock.mdb"), 0600u);
}

TEST(NodeStoreTest, TightensAnExistingDirectory) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  const std::filesystem::path dir = std::filesystem::path(temp.path()) / "cache";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  auto store = NodeStore::open(dir);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_EQ(mode_of(dir), 0700u);
}

TEST(NodeStoreTest, SecondOpenInOneProcessSharesTheEnvironment) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  auto a = NodeStore::open(temp.path());
  ASSERT_TRUE(a);
  auto b = NodeStore::open(temp.path() + "/.");
  ASSERT_TRUE(b);
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ((*a)->environment().get(), (*b)->environment().get());
  a->reset();
  b->reset();
  auto c = NodeStore::open(temp.path());  // a fresh one once every holder let go
  ASSERT_TRUE(c) << c.error().message;
}

// Creates a store at `path` and marks it format `version`, with `next_segment` = 5.
void make_store_of_version(const std::string& path, std::uint32_t version) {
  auto store = NodeStore::open(path);
  ASSERT_TRUE(store);
  auto txn = (*store)->environment().begin_write();
  ASSERT_TRUE(txn);
  char bytes[4];
  format::put_le(bytes, version, 4);
  ASSERT_TRUE(txn->put((*store)->databases().meta, format::kMetaFormat, {bytes, 4}));
  ASSERT_TRUE(format::set_counter(*txn, (*store)->databases().meta, format::kMetaNextSegment, 5));
  ASSERT_TRUE(txn->commit());
}

TEST(NodeStoreTest, RefusesAnotherFormatVersion) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  make_store_of_version(temp.path(), kCacheFormatVersion + 1);
  auto reopened = NodeStore::open(temp.path());
  ASSERT_FALSE(reopened);
  EXPECT_EQ(reopened.error().code, ErrorCode::kFormat);
  EXPECT_NE(reopened.error().message.find("format " + std::to_string(kCacheFormatVersion + 1)), std::string::npos)
      << reopened.error().message;
}

// A version-1 store (entries without group values) is kept, not refused, and marked version 2.
TEST(NodeStoreTest, AdoptsAVersionOneStore) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  make_store_of_version(temp.path(), 1);
  auto reopened = NodeStore::open(temp.path());
  ASSERT_TRUE(reopened) << reopened.error().message;
  auto txn = (*reopened)->environment().begin_read();
  ASSERT_TRUE(txn);
  auto version = txn->get((*reopened)->databases().meta, format::kMetaFormat);
  ASSERT_TRUE(version && *version);
  EXPECT_EQ(format::get_le((*version)->data(), 4), kCacheFormatVersion);
  auto next = format::get_counter(*txn, (*reopened)->databases().meta, format::kMetaNextSegment);
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, 5u);  // the store was kept, not recreated
}

TEST(NodeStoreTest, SegmentFileNamesRoundTrip) {
  EXPECT_EQ(format::segment_file_name(0x1a2b), "0000000000001a2b.seg");
  EXPECT_EQ(format::parse_segment_file_name("0000000000001a2b.seg"), 0x1a2bu);
  EXPECT_FALSE(format::parse_segment_file_name("0000000000001A2B.seg"));
  EXPECT_FALSE(format::parse_segment_file_name("data.mdb"));
  EXPECT_FALSE(format::parse_segment_file_name("0000000000001a2b.seg.tmp"));
}

TEST(NodeStoreTest, LocationRecordRoundTrips) {
  format::Location loc{7, 123456789012, 65000, 65536, format::Codec::kZstd, xet::chunk_hash(xet::as_byte_span("x"))};
  const auto encoded = format::encode(loc);
  const auto decoded = format::decode_location({encoded.data(), encoded.size()});
  ASSERT_TRUE(decoded);
  EXPECT_EQ(decoded->segment, 7u);
  EXPECT_EQ(decoded->offset, 123456789012u);
  EXPECT_EQ(decoded->stored_size, 65000u);
  EXPECT_EQ(decoded->raw_size, 65536u);
  EXPECT_EQ(decoded->codec, format::Codec::kZstd);
  EXPECT_EQ(decoded->hash, loc.hash);
  EXPECT_FALSE(format::decode_location({encoded.data(), encoded.size() - 1}));
}

TEST(NodeStoreTest, LocationRecordKeepsGroupValues) {
  format::Location loc{3, 4096, 40000, 40000, format::Codec::kRaw, xet::chunk_hash(xet::as_byte_span("y"))};
  loc.group_count = static_cast<std::uint8_t>(xet::chunk_group_count(40000));
  ASSERT_EQ(loc.group_count, 3);
  for (std::size_t g = 0; g < loc.group_count; ++g) loc.groups[g] = xet::chunk_hash(xet::as_byte_span(std::to_string(g)));
  const auto encoded = format::encode(loc);
  ASSERT_EQ(encoded.size(), format::kLocationSize + 3 * 32);
  const auto decoded = format::decode_location({encoded.data(), encoded.size()});
  ASSERT_TRUE(decoded);
  ASSERT_EQ(decoded->group_count, 3);
  for (std::size_t g = 0; g < 3; ++g) EXPECT_EQ(decoded->groups[g], loc.groups[g]);
  // A count that does not match the size, or group values on a compressed chunk, is malformed.
  EXPECT_FALSE(format::decode_location({encoded.data(), encoded.size() - 32}));
  // A raw entry stores the chunk as it is: stored and raw sizes agree.
  format::Location shorter = loc;
  shorter.stored_size = 39999;
  const auto lying = format::encode(shorter);
  EXPECT_FALSE(format::decode_location({lying.data(), lying.size()}));
  std::string zstd(encoded.data(), encoded.size());
  zstd[24] = static_cast<char>(format::Codec::kZstd);
  EXPECT_FALSE(format::decode_location(zstd));
}

}  // namespace
}  // namespace bucketfs::cache
