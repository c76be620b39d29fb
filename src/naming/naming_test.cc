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

}  // namespace
}  // namespace bucketfs::naming
