#include "bucketfs/naming/naming.h"

#include <gtest/gtest.h>

namespace bucketfs::naming {
namespace {

TEST(Naming, ObjectKeysTheHubRefuses) {
  for (const char* bad : {"", "/a", "a/", "a//b", "a\\b", "./a", "a/..", "..", ".", "../a", "a/../b", "a/./b",
                          "a/.", "tab\there"}) {
    EXPECT_TRUE(object_key_problem(bad).has_value()) << bad;
  }
  EXPECT_TRUE(object_key_problem(std::string("a\0b", 3)).has_value());
  EXPECT_TRUE(object_key_problem(std::string(1025, 'a')).has_value());
}

TEST(Naming, ObjectKeysTheHubAccepts) {
  for (const char* good : {"a", "run-7/step-2000/model.safetensors", "name#1", "with space", "a..b", ".hidden",
                           "dir/.hidden", "x/y/z.tar.gz", "百科/文件"}) {
    EXPECT_FALSE(object_key_problem(good).has_value()) << good;
  }
}

TEST(Naming, BucketIds) {
  auto id = parse_bucket_id("alice/ckpts");
  ASSERT_TRUE(id);
  EXPECT_EQ(id->ns, "alice");
  EXPECT_EQ(id->name, "ckpts");
  EXPECT_EQ(id->str(), "alice/ckpts");
  for (const char* bad : {"alice", "alice/", "/ckpts", "a/b/c", "alice/ck pts", "alice/-x", "alice/x.", "a--b/c",
                          "alice/a..b"}) {
    EXPECT_FALSE(parse_bucket_id(bad).has_value()) << bad;
  }
}

TEST(Naming, BucketPaths) {
  auto root = parse_bucket_path("hf://buckets/alice/ckpts");
  ASSERT_TRUE(root);
  EXPECT_EQ(root->bucket.str(), "alice/ckpts");
  EXPECT_EQ(root->path, "");
  auto deep = parse_bucket_path("hf://buckets/alice/ckpts/run-7/step 2000/model.bin");
  ASSERT_TRUE(deep);
  EXPECT_EQ(deep->path, "run-7/step 2000/model.bin");
  EXPECT_FALSE(deep->trailing_slash);
  EXPECT_EQ(deep->uri(), "hf://buckets/alice/ckpts/run-7/step 2000/model.bin");
  auto folder = parse_bucket_path("alice/ckpts/run-7/");
  ASSERT_TRUE(folder);
  EXPECT_EQ(folder->path, "run-7");
  EXPECT_TRUE(folder->trailing_slash);
  EXPECT_TRUE(parse_bucket_path("hf://buckets/alice/ckpts/file@1.txt"));
  for (const char* bad : {"hf://bucket/alice/x", "hf://models/alice/x", "hf://buckets/", "hf://buckets/alice",
                          "hf://buckets/al ice/x", "hf://buckets/alice/x@v1", "hf://buckets/alice/x/a//b",
                          "alice", "/alice/x"}) {
    auto parsed = parse_bucket_path(bad);
    ASSERT_FALSE(parsed) << bad;
    EXPECT_NE(parsed.error().find(bad), std::string::npos) << parsed.error();
  }
}

}  // namespace
}  // namespace bucketfs::naming
