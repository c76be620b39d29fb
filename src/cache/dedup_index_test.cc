#include "bucketfs/cache/dedup_index.h"

#include <gtest/gtest.h>

#include <vector>

#include "temp_dir.h"
#include "test_util.h"

namespace bucketfs::cache {
namespace {

xet::Hash chunk_named(std::uint64_t n) { return xet::chunk_hash(xet::as_byte_span(std::to_string(n))); }

DedupRecord record(std::uint64_t n) {
  return DedupRecord{chunk_named(n), DedupEntry{testing::xorb_named(n / 10), static_cast<std::uint32_t>(n % 10),
                                                static_cast<std::uint32_t>(1000 + n)}};
}

std::shared_ptr<NodeStore> open_store(const std::string& dir, std::uint64_t max_entries) {
  auto store = NodeStore::open(dir, NodeStore::Options{.dedup_max_entries = max_entries});
  EXPECT_TRUE(store) << store.error().message;
  return store ? *store : nullptr;
}

TEST(DedupIndexTest, PutGetAndMiss) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  DedupIndex dedup(open_store(temp.path(), 1000));
  std::vector<DedupRecord> records;
  for (std::uint64_t n = 0; n < 50; ++n) records.push_back(record(n));
  ASSERT_TRUE(dedup.put_many(records));
  for (std::uint64_t n = 0; n < 50; ++n) {
    auto got = dedup.get(chunk_named(n));
    ASSERT_TRUE(got && *got) << n;
    EXPECT_EQ(**got, record(n).entry);
  }
  auto miss = dedup.get(chunk_named(999));
  ASSERT_TRUE(miss);
  EXPECT_FALSE(*miss);
  const std::vector<xet::Hash> asked = {chunk_named(3), chunk_named(999), chunk_named(49)};
  auto many = dedup.get_many(asked);
  ASSERT_TRUE(many);
  ASSERT_EQ(many->size(), 3u);
  EXPECT_EQ((*many)[0], record(3).entry);
  EXPECT_FALSE((*many)[1]);
  EXPECT_EQ((*many)[2], record(49).entry);
  EXPECT_EQ(dedup.size().value_or(0), 50u);
}

TEST(DedupIndexTest, PutReplacesTheEntry) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  DedupIndex dedup(open_store(temp.path(), 1000));
  ASSERT_TRUE(dedup.put_many(std::vector{record(1)}));
  DedupRecord moved = record(1);
  moved.entry.xorb = testing::xorb_named(777);
  moved.entry.chunk_index = 42;
  ASSERT_TRUE(dedup.put_many(std::vector{moved}));
  EXPECT_EQ(dedup.get(chunk_named(1)).value(), moved.entry);
  EXPECT_EQ(dedup.size().value_or(0), 1u);
}

TEST(DedupIndexTest, BoundDropsOldestInsertionsAndRefreshKeepsAnEntry) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  DedupIndex dedup(open_store(temp.path(), 100));
  std::vector<DedupRecord> first;
  for (std::uint64_t n = 0; n < 80; ++n) first.push_back(record(n));
  ASSERT_TRUE(dedup.put_many(first));
  ASSERT_TRUE(dedup.put_many(std::vector{record(0)}));  // refreshed: now the newest
  std::vector<DedupRecord> second;
  for (std::uint64_t n = 80; n < 150; ++n) second.push_back(record(n));
  ASSERT_TRUE(dedup.put_many(second));
  EXPECT_EQ(dedup.size().value_or(0), 100u);
  EXPECT_TRUE(dedup.get(chunk_named(0)).value());
  for (std::uint64_t n = 1; n <= 50; ++n) EXPECT_FALSE(dedup.get(chunk_named(n)).value()) << n;
  for (std::uint64_t n = 51; n < 150; ++n) EXPECT_TRUE(dedup.get(chunk_named(n)).value()) << n;
}

TEST(DedupIndexTest, ForgetXorbsRemovesTheirEntriesAndKeepsTheBoundExact) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  DedupIndex dedup(open_store(temp.path(), 40));
  std::vector<DedupRecord> records;
  for (std::uint64_t n = 0; n < 40; ++n) records.push_back(record(n));  // xorbs 0..3, ten chunks each
  ASSERT_TRUE(dedup.put_many(records));
  const std::vector<xet::Hash> lost = {testing::xorb_named(1), testing::xorb_named(3), testing::xorb_named(99)};
  EXPECT_EQ(dedup.forget_xorbs(lost).value_or(0), 20u);
  EXPECT_EQ(dedup.size().value_or(0), 20u);
  for (std::uint64_t n = 0; n < 40; ++n) {
    const bool kept = n / 10 == 0 || n / 10 == 2;
    EXPECT_EQ(dedup.get(chunk_named(n)).value().has_value(), kept) << n;
  }
  EXPECT_EQ(dedup.forget_xorbs(lost).value_or(99), 0u);
  // The insertion order lost the same entries: filling past the bound trims exactly the oldest
  // survivors (xorb 0's chunks), not the forgotten ones' stale order keys.
  std::vector<DedupRecord> more;
  for (std::uint64_t n = 100; n < 130; ++n) more.push_back(record(n));
  ASSERT_TRUE(dedup.put_many(more));
  EXPECT_EQ(dedup.size().value_or(0), 40u);
  for (std::uint64_t n = 0; n < 10; ++n) EXPECT_FALSE(dedup.get(chunk_named(n)).value()) << n;
  for (std::uint64_t n = 20; n < 30; ++n) EXPECT_TRUE(dedup.get(chunk_named(n)).value()) << n;
}

TEST(DedupIndexTest, SurvivesReopen) {
  bucketfs::testing::TempDir temp("bucketfs-cache-test");
  {
    DedupIndex dedup(open_store(temp.path(), 1000));
    ASSERT_TRUE(dedup.put_many(std::vector{record(5), record(6)}));
  }
  DedupIndex dedup(open_store(temp.path(), 1000));
  EXPECT_EQ(dedup.get(chunk_named(6)).value(), record(6).entry);
}

}  // namespace
}  // namespace bucketfs::cache
