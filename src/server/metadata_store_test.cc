#include "metadata_store.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

#include "temp_dir.h"

namespace bucketfs::server {
namespace {

xet::Hash hash_of(int n) {
  xet::Hash hash;
  hash.bytes[0] = static_cast<std::uint8_t>(n);
  hash.bytes[31] = static_cast<std::uint8_t>(n >> 8);
  hash.bytes[5] = 1;
  return hash;
}

class MetadataStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = MetadataStore::open(directory_ + "/meta");
    ASSERT_TRUE(store) << store.error().message;
    store_.emplace(std::move(*store));
    ASSERT_TRUE(*store_->create_bucket("alice/b", false, 1000));
  }
  void TearDown() override { store_.reset(); }

  // Registers file `n` of `size` bytes as uploaded through bucket `bucket`.
  void register_file(int n, std::uint64_t size, const std::string& bucket = "alice/b") {
    FileRecord record;
    record.size = size;
    record.terms.push_back({hash_of(900), 0, static_cast<std::uint32_t>(size), 0, 1});
    ASSERT_TRUE(store_->register_files(bucket, {{hash_of(n), record}}, {}));
  }

  BatchOperation add(const std::string& path, int n) {
    BatchOperation op;
    op.kind = BatchOperation::Kind::kAdd;
    op.path = path;
    op.xet_hash = hash_of(n);
    return op;
  }

  std::vector<std::string> list_all(const std::string& prefix, bool recursive, std::size_t limit) {
    std::vector<std::string> out;
    std::string cursor;
    for (int page = 0; page < 1000; ++page) {
      auto listed = store_->list("alice/b", prefix, recursive, limit, cursor);
      EXPECT_TRUE(listed);
      for (const auto& item : listed->items) out.push_back((item.is_directory ? "d:" : "f:") + item.entry.path);
      if (!listed->next_cursor) break;
      cursor = *listed->next_cursor;
    }
    return out;
  }

  testing::TempDir temp_{"bucketfs-meta-test"};
  const std::string directory_ = temp_.path();
  std::optional<MetadataStore> store_;
  const std::function<bool(const std::string&)> readable_ = [](const std::string&) { return true; };
};

TEST_F(MetadataStoreTest, BatchIsAllOrNothing) {
  register_file(1, 10);
  auto failures = store_->apply_batch("alice/b", {add("ok.bin", 1), add("bad.bin", 2)}, 2000, readable_);
  ASSERT_TRUE(failures);
  ASSERT_EQ(failures->size(), 1u);
  EXPECT_EQ((*failures)[0].path, "bad.bin");
  EXPECT_FALSE(store_->entry("alice/b", "ok.bin")->has_value()) << "a refused batch must apply nothing";
  EXPECT_EQ((*store_->bucket("alice/b"))->file_count, 0u);

  failures = store_->apply_batch("alice/b", {add("ok.bin", 1)}, 2000, readable_);
  ASSERT_TRUE(failures && failures->empty());
  auto entry = store_->entry("alice/b", "ok.bin");
  ASSERT_TRUE(entry && *entry);
  EXPECT_EQ((*entry)->size, 10u);
  EXPECT_EQ((*entry)->xet_hash, hash_of(1));
  const auto bucket = **store_->bucket("alice/b");
  EXPECT_EQ(bucket.file_count, 1u);
  EXPECT_EQ(bucket.size, 10u);
  EXPECT_EQ(bucket.updated_ms, 2000);
}

TEST_F(MetadataStoreTest, RefusesBadKeysAndHashesOfOtherBuckets) {
  ASSERT_TRUE(*store_->create_bucket("bob/private", true, 1000));
  register_file(7, 5, "bob/private");
  auto failures = store_->apply_batch("alice/b", {add("stolen.bin", 7)}, 2000, readable_);
  ASSERT_TRUE(failures);
  EXPECT_EQ(failures->size(), 1u) << "a hash uploaded through another bucket must not be addable by guessing it";
  register_file(1, 10);
  for (const char* bad : {"/a", "a/", "a//b", "./a", "a/../b", "a\\b"}) {
    failures = store_->apply_batch("alice/b", {add(bad, 1)}, 2000, readable_);
    ASSERT_TRUE(failures);
    EXPECT_EQ(failures->size(), 1u) << bad;
  }
}

TEST_F(MetadataStoreTest, OverwriteAndDeleteKeepTotals) {
  register_file(1, 10);
  register_file(2, 25);
  ASSERT_TRUE(store_->apply_batch("alice/b", {add("a", 1), add("b", 1)}, 2000, readable_));
  ASSERT_TRUE(store_->apply_batch("alice/b", {add("a", 2)}, 3000, readable_));
  auto bucket = **store_->bucket("alice/b");
  EXPECT_EQ(bucket.file_count, 2u);
  EXPECT_EQ(bucket.size, 35u);
  BatchOperation remove;
  remove.kind = BatchOperation::Kind::kDelete;
  remove.path = "b";
  ASSERT_TRUE(store_->apply_batch("alice/b", {remove}, 4000, readable_));
  bucket = **store_->bucket("alice/b");
  EXPECT_EQ(bucket.file_count, 1u);
  EXPECT_EQ(bucket.size, 25u);
}

TEST_F(MetadataStoreTest, ListsRecursiveAndByLevelWithPagination) {
  register_file(1, 1);
  std::vector<BatchOperation> ops;
  for (const char* path : {"a.txt", "dir/x", "dir/sub/y", "dir/sub/z", "dir.txt", "dir0/w", "zzz"}) {
    ops.push_back(add(path, 1));
  }
  ASSERT_TRUE(store_->apply_batch("alice/b", ops, 2000, readable_));
  const std::vector<std::string> all = {"f:a.txt", "f:dir.txt", "f:dir/sub/y", "f:dir/sub/z",
                                        "f:dir/x", "f:dir0/w",  "f:zzz"};
  EXPECT_EQ(list_all("", true, 1000), all);
  for (std::size_t limit : {1, 2, 3}) EXPECT_EQ(list_all("", true, limit), all) << limit;
  // Key order: "dir.txt" sorts before "dir/x", which yields the directory.
  const std::vector<std::string> top = {"f:a.txt", "f:dir.txt", "d:dir", "d:dir0", "f:zzz"};
  EXPECT_EQ(list_all("", false, 1000), top);
  for (std::size_t limit : {1, 2}) EXPECT_EQ(list_all("", false, limit), top) << limit;
  EXPECT_EQ(list_all("dir", false, 1000), (std::vector<std::string>{"d:dir/sub", "f:dir/x"}));
  EXPECT_EQ(list_all("dir", true, 1000), (std::vector<std::string>{"f:dir/sub/y", "f:dir/sub/z", "f:dir/x"}));
  EXPECT_EQ(list_all("dir/x", true, 1000), (std::vector<std::string>{"f:dir/x"}));
  EXPECT_TRUE(list_all("nothing", true, 1000).empty());
}

TEST_F(MetadataStoreTest, MoveCarriesEntriesAndDeleteRemovesThem) {
  register_file(1, 10);
  ASSERT_TRUE(store_->apply_batch("alice/b", {add("k", 1)}, 2000, readable_));
  ASSERT_TRUE(store_->move_bucket("alice/b", "alice/c", 3000));
  EXPECT_FALSE(store_->bucket("alice/b")->has_value());
  EXPECT_TRUE(store_->entry("alice/c", "k")->has_value());
  EXPECT_TRUE(*store_->bucket_may_read("alice/c", hash_of(1)));
  EXPECT_FALSE(store_->move_bucket("alice/missing", "alice/d", 3000));
  ASSERT_TRUE(*store_->delete_bucket("alice/c"));
  EXPECT_FALSE(store_->entry("alice/c", "k")->has_value());
  EXPECT_FALSE(*store_->delete_bucket("alice/c"));
}

TEST_F(MetadataStoreTest, XorbRecordsAndTotalsSurviveReopen) {
  XorbRecord record;
  record.serialized_size = 1000;
  record.chunks.push_back({hash_of(3), 600, 0});
  record.chunks.push_back({hash_of(4), 500, 420});
  EXPECT_TRUE(*store_->put_xorb(hash_of(50), record));
  EXPECT_FALSE(*store_->put_xorb(hash_of(50), record));
  ASSERT_TRUE(store_->register_files("alice/b", {}, {{hash_of(3), {hash_of(50), hash_of(51)}}}));
  store_.reset();
  auto reopened = MetadataStore::open(directory_ + "/meta");
  ASSERT_TRUE(reopened);
  auto xorb = reopened->xorb(hash_of(50));
  ASSERT_TRUE(xorb && *xorb);
  EXPECT_EQ((*xorb)->byte_range(1, 2), (std::pair<std::uint64_t, std::uint64_t>{420, 1000}));
  EXPECT_EQ((*xorb)->byte_range(0, 1), (std::pair<std::uint64_t, std::uint64_t>{0, 420}));
  EXPECT_EQ(*reopened->xorb_totals(), (std::pair<std::uint64_t, std::uint64_t>{1, 1000}));
  EXPECT_EQ(*reopened->dedup_lookup(hash_of(3)), (std::vector<xet::Hash>{hash_of(50), hash_of(51)}));
  EXPECT_TRUE(reopened->dedup_lookup(hash_of(4))->empty());
}

TEST(Iso8601, MillisecondsAndZ) {
  EXPECT_EQ(iso8601_ms(1727278262346), "2024-09-25T15:31:02.346Z");
  EXPECT_EQ(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
}

}  // namespace
}  // namespace bucketfs::server
