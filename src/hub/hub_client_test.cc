// HubClient against a real bucketfs-server in-process: buckets, typed errors, tree pagination,
// paths-info batching, batch operations and 422s, resolve, and token-free error messages.
#include "bucketfs/hub/hub_client.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "hub_test_fixture.h"

namespace bucketfs::hub {
namespace {

using testing::kAliceRead;
using testing::kAliceWrite;
using testing::kBobWrite;

naming::BucketId id(std::string ns, std::string name) { return naming::BucketId{std::move(ns), std::move(name)}; }

class HubClientTest : public testing::ServerFixture {
 protected:
  HubClient client(std::optional<std::string> token, HubClientOptions options = {}) {
    return HubClient(transport_, settings(std::move(token)), options);
  }
  // Registers empty files (the zero hash needs no upload) at `paths`.
  void add_empty_files(const HubClient& hub, const naming::BucketId& bucket, const std::vector<std::string>& paths) {
    std::vector<BatchOperation> ops;
    for (const auto& path : paths) ops.push_back(BatchOperation::add(path, xet::Hash{}, 1700000000123));
    auto result = hub.batch(bucket, ops);
    ASSERT_TRUE(result) << result.error().describe();
    ASSERT_TRUE(result->success) << (result->failed.empty() ? "" : result->failed[0].error);
  }
};

TEST_F(HubClientTest, CreateInfoListDelete) {
  auto hub = client(kAliceWrite);
  auto created = hub.create_bucket(id("alice", "models"), {.is_private = true, .exist_ok = false});
  ASSERT_TRUE(created) << created.error().describe();
  EXPECT_EQ(created->id, "alice/models");
  EXPECT_EQ(created->url, base_url_ + "/buckets/alice/models");
  EXPECT_FALSE(created->already_existed);

  auto info = hub.bucket_info(id("alice", "models"));
  ASSERT_TRUE(info) << info.error().describe();
  EXPECT_EQ(info->id, "alice/models");
  EXPECT_TRUE(info->is_private);
  EXPECT_EQ(info->total_files, 0u);
  EXPECT_NEAR(static_cast<double>(info->created_ms), static_cast<double>(testing::wall_ms()), 60'000.0);

  auto again = hub.create_bucket(id("alice", "models"));
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().kind, HubErrorKind::already_exists);
  EXPECT_EQ(again.error().status, 409);
  EXPECT_NE(again.error().message.find("alice/models"), std::string::npos);

  auto exist_ok = hub.create_bucket(id("alice", "models"), {.is_private = std::nullopt, .exist_ok = true});
  ASSERT_TRUE(exist_ok);
  EXPECT_TRUE(exist_ok->already_existed);

  ASSERT_TRUE(hub.create_bucket(id("me", "second")));  // "me" is the token's namespace
  auto listed = hub.list_buckets("alice");
  ASSERT_TRUE(listed) << listed.error().describe();
  std::set<std::string> ids;
  for (const auto& b : *listed) ids.insert(b.id);
  EXPECT_EQ(ids, (std::set<std::string>{"alice/models", "alice/second"}));
  auto searched = hub.list_buckets("me", "sec");
  ASSERT_TRUE(searched);
  ASSERT_EQ(searched->size(), 1u);
  EXPECT_EQ((*searched)[0].id, "alice/second");

  // Anonymous sees the public bucket only.
  auto anonymous = client(std::nullopt).list_buckets("alice");
  ASSERT_TRUE(anonymous);
  ASSERT_EQ(anonymous->size(), 1u);
  EXPECT_EQ((*anonymous)[0].id, "alice/second");

  ASSERT_TRUE(hub.delete_bucket(id("alice", "models")));
  auto gone = hub.bucket_info(id("alice", "models"));
  ASSERT_FALSE(gone);
  EXPECT_EQ(gone.error().kind, HubErrorKind::bucket_not_found);
  EXPECT_NE(gone.error().message.find("alice/models"), std::string::npos);
  auto deleted_twice = hub.delete_bucket(id("alice", "models"));
  ASSERT_FALSE(deleted_twice);
  EXPECT_EQ(deleted_twice.error().kind, HubErrorKind::bucket_not_found);
}

TEST_F(HubClientTest, TypedAuthErrors) {
  auto writer = client(kAliceWrite);
  ASSERT_TRUE(writer.create_bucket(id("alice", "private-b"), {.is_private = true, .exist_ok = false}));

  // A read token may read but not create or write.
  auto reader = client(kAliceRead);
  EXPECT_TRUE(reader.bucket_info(id("alice", "private-b")));
  auto create = reader.create_bucket(id("alice", "x"));
  ASSERT_FALSE(create);
  EXPECT_EQ(create.error().kind, HubErrorKind::forbidden);
  auto batch = reader.batch(id("alice", "private-b"), std::vector{BatchOperation::remove("a")});
  ASSERT_FALSE(batch);
  EXPECT_EQ(batch.error().kind, HubErrorKind::forbidden);
  auto write_token = reader.xet_token(id("alice", "private-b"), true);
  ASSERT_FALSE(write_token);
  EXPECT_EQ(write_token.error().kind, HubErrorKind::forbidden);

  // Another user does not see a private bucket at all; anonymous gets 401.
  auto other = client(kBobWrite).bucket_info(id("alice", "private-b"));
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().kind, HubErrorKind::bucket_not_found);
  auto anonymous = client(std::nullopt).tree(id("alice", "private-b"), "");
  ASSERT_FALSE(anonymous);
  EXPECT_EQ(anonymous.error().kind, HubErrorKind::unauthorized);

  auto bad_token = client("hf_not_a_known_token").bucket_info(id("alice", "private-b"));
  ASSERT_FALSE(bad_token);
  EXPECT_EQ(bad_token.error().kind, HubErrorKind::unauthorized);

  // Names the Hub refuses never reach the network.
  transport_.clear();
  auto invalid = writer.bucket_info(id("alice", "bad--name"));
  ASSERT_FALSE(invalid);
  EXPECT_EQ(invalid.error().kind, HubErrorKind::invalid);
  EXPECT_EQ(transport_.requests().size(), 0u);
}

TEST_F(HubClientTest, TreeFollowsPaginationWithSpacesAndHash) {
  auto hub = client(kAliceWrite);
  const auto bucket = id("alice", "tree");
  ASSERT_TRUE(hub.create_bucket(bucket));
  std::vector<std::string> inside;
  for (int i = 0; i < 11; ++i) inside.push_back("run 7/#step " + std::to_string(i) + "?.bin");
  inside.push_back("run 7/sub dir/deep 100%.bin");
  std::vector<std::string> all = inside;
  all.push_back("run 7x/sibling.bin");  // shares the raw prefix "run 7" but not the folder
  all.push_back("top.bin");
  add_empty_files(hub, bucket, all);

  transport_.clear();
  auto listed = hub.tree(bucket, "run 7/", {.recursive = true, .limit = 3});
  ASSERT_TRUE(listed) << listed.error().describe();
  std::vector<std::string> paths;
  for (const auto& e : *listed) {
    EXPECT_FALSE(e.is_directory());
    paths.push_back(e.path());
  }
  std::sort(paths.begin(), paths.end());
  std::sort(inside.begin(), inside.end());
  EXPECT_EQ(paths, inside);
  // 12 entries, 3 per page: at least 4 pages were followed.
  EXPECT_GE(transport_.count("/tree/"), 4u);
  ASSERT_FALSE(listed->empty());
  EXPECT_EQ((*listed)[0].file.mtime_ms, 1700000000123);
  EXPECT_TRUE((*listed)[0].file.uploaded_at_ms.has_value());
  EXPECT_TRUE((*listed)[0].file.xet_hash.is_zero());

  // Non-recursive: files and directories, also paginated.
  transport_.clear();
  auto level = hub.tree(bucket, "run 7", {.recursive = false, .limit = 2});
  ASSERT_TRUE(level) << level.error().describe();
  std::size_t directories = 0, files = 0;
  for (const auto& e : *level) {
    if (e.is_directory()) {
      ++directories;
      EXPECT_EQ(e.path(), "run 7/sub dir");
    } else {
      ++files;
    }
  }
  EXPECT_EQ(directories, 1u);
  EXPECT_EQ(files, 11u);
  EXPECT_GE(transport_.count("/tree/"), 6u);

  // Stopping early ends the listing without reading further pages.
  transport_.clear();
  std::size_t seen = 0;
  auto stopped = hub.for_each_tree_entry(bucket, "", {.recursive = true, .limit = 2}, [&](TreeEntry&&) {
    return ++seen < 3;
  });
  ASSERT_TRUE(stopped);
  EXPECT_EQ(seen, 3u);
  EXPECT_EQ(transport_.count("/tree"), 2u);

  auto nothing = hub.tree(bucket, "no such prefix");
  ASSERT_TRUE(nothing);
  EXPECT_TRUE(nothing->empty());
  auto missing = hub.tree(id("alice", "nope"), "");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, HubErrorKind::bucket_not_found);
}

// A next link to another host would carry the Hub token there: refused.
TEST_F(HubClientTest, TreeRefusesNextLinkToAnotherHost) {
  auto hub = client(kAliceWrite);
  const auto bucket = id("alice", "links");
  ASSERT_TRUE(hub.create_bucket(bucket));
  add_empty_files(hub, bucket, {"a", "b", "c"});
  class Rewriting : public http::ForwardingTransport {
   public:
    using ForwardingTransport::ForwardingTransport;
    http::Result<http::Response> perform(const http::Request& request, const http::CancellationToken* cancel) override {
      auto response = ForwardingTransport::perform(request, cancel);
      if (response && response->headers.get("Link")) {
        response->headers.set("Link", "<http://evil.example/next?cursor=x>; rel=\"next\"");
      }
      return response;
    }
  } rewriting(curl_);
  HubClient redirected(rewriting, settings(kAliceWrite));
  auto listed = redirected.tree(bucket, "", {.limit = 1});
  ASSERT_FALSE(listed);
  EXPECT_EQ(listed.error().kind, HubErrorKind::bad_response);
}

TEST_F(HubClientTest, PathsInfoBatchesOf1000) {
  auto hub = client(kAliceWrite);
  const auto bucket = id("alice", "info");
  ASSERT_TRUE(hub.create_bucket(bucket));
  add_empty_files(hub, bucket, {"a/one", "b two#", "z/last"});
  std::vector<std::string> asked;
  for (int i = 0; i < 2500; ++i) asked.push_back("missing/" + std::to_string(i));
  asked[0] = "a/one";
  asked[1700] = "b two#";
  asked[2499] = "z/last";
  transport_.clear();
  auto found = hub.paths_info(bucket, asked);
  ASSERT_TRUE(found) << found.error().describe();
  EXPECT_EQ(transport_.count("/paths-info"), 3u);
  std::set<std::string> paths;
  for (const auto& f : *found) paths.insert(f.path);
  EXPECT_EQ(paths, (std::set<std::string>{"a/one", "b two#", "z/last"}));

  HubClientOptions small_batches;
  small_batches.paths_info_batch = 2;
  HubClient small(transport_, settings(kAliceWrite), small_batches);
  transport_.clear();
  ASSERT_TRUE(small.paths_info(bucket, std::vector<std::string>{"a/one", "x", "y", "z/last", "q"}));
  EXPECT_EQ(transport_.count("/paths-info"), 3u);
}

TEST_F(HubClientTest, BatchAddCopyDeleteInOrder) {
  auto hub = client(kAliceWrite);
  const auto bucket = id("alice", "ops");
  ASSERT_TRUE(hub.create_bucket(bucket));
  add_empty_files(hub, bucket, {"old name"});

  // Given delete first, the client still sends the add first (a rename in one request).
  const std::vector<BatchOperation> rename{BatchOperation::remove("old name"),
                                           BatchOperation::add("new name", xet::Hash{}, 1234567, "text/plain"),
                                           BatchOperation::copy("copied", xet::Hash{}, "alice/ops")};
  transport_.clear();
  auto result = hub.batch(bucket, rename);
  ASSERT_TRUE(result) << result.error().describe();
  EXPECT_TRUE(result->success);
  EXPECT_EQ(result->processed, 3u);
  const std::string body = transport_.last_body();
  const auto add_at = body.find("\"addFile\"");
  const auto copy_at = body.find("\"copyFile\"");
  const auto delete_at = body.find("\"deleteFile\"");
  ASSERT_NE(add_at, std::string::npos);
  EXPECT_LT(add_at, copy_at);
  EXPECT_LT(copy_at, delete_at);
  EXPECT_NE(body.find("\"mtime\":1234567"), std::string::npos);
  EXPECT_NE(body.find("\"contentType\":\"text/plain\""), std::string::npos);
  EXPECT_EQ(body.back(), '\n');

  auto info = hub.paths_info(bucket, std::vector<std::string>{"old name", "new name", "copied"});
  ASSERT_TRUE(info);
  std::set<std::string> paths;
  for (const auto& f : *info) {
    paths.insert(f.path);
    if (f.path == "new name") {
      EXPECT_EQ(f.mtime_ms, 1234567);
    }
  }
  EXPECT_EQ(paths, (std::set<std::string>{"new name", "copied"}));
}

TEST_F(HubClientTest, Batch422ReportsFailures) {
  auto hub = client(kAliceWrite);
  const auto bucket = id("alice", "fails");
  ASSERT_TRUE(hub.create_bucket(bucket));
  xet::Hash unknown;
  unknown.bytes[0] = 7;
  const std::vector<BatchOperation> ops{BatchOperation::add("fine", xet::Hash{}),
                                        BatchOperation::add("ghost", unknown)};
  // Without a probe: the 422 is a result, not an error, with the server's summary.
  auto plain = hub.batch(bucket, ops);
  ASSERT_TRUE(plain) << plain.error().describe();
  EXPECT_FALSE(plain->success);
  ASSERT_EQ(plain->failed.size(), 1u);
  EXPECT_FALSE(plain->failed[0].error.empty());

  // With a probe (here: only the zero hash is known) the failing path is named.
  HubClient probed = client(kAliceWrite);
  probed.set_hash_probe([](const naming::BucketId&, const xet::Hash& hash) -> HubResult<bool> { return hash.is_zero(); });
  auto named = probed.batch(bucket, ops);
  ASSERT_TRUE(named);
  EXPECT_FALSE(named->success);
  ASSERT_EQ(named->failed.size(), 1u);
  EXPECT_EQ(named->failed[0].path, "ghost");
  EXPECT_NE(named->failed[0].error.find(unknown.to_string()), std::string::npos);

  // All or nothing on this server: "fine" was not added.
  auto tree = hub.tree(bucket, "");
  ASSERT_TRUE(tree);
  EXPECT_TRUE(tree->empty());

  // Invalid keys are refused before sending.
  transport_.clear();
  auto invalid = hub.batch(bucket, std::vector{BatchOperation::add("a//b", xet::Hash{}), BatchOperation::add("ok", xet::Hash{})});
  ASSERT_TRUE(invalid);
  EXPECT_FALSE(invalid->success);
  ASSERT_EQ(invalid->failed.size(), 1u);
  EXPECT_EQ(invalid->failed[0].path, "a//b");
  EXPECT_EQ(transport_.requests().size(), 0u);
}

TEST_F(HubClientTest, ResolveHead) {
  auto hub = client(kAliceWrite);
  const auto bucket = id("alice", "res");
  ASSERT_TRUE(hub.create_bucket(bucket));
  add_empty_files(hub, bucket, {"dir/a b#c?.txt"});
  auto resolved = hub.resolve(bucket, "dir/a b#c?.txt");
  ASSERT_TRUE(resolved) << resolved.error().describe();
  EXPECT_EQ(resolved->size, 0u);
  ASSERT_TRUE(resolved->xet_hash.has_value());
  EXPECT_TRUE(resolved->xet_hash->is_zero());
  EXPECT_EQ(resolved->etag, xet::Hash{}.to_string());
  ASSERT_TRUE(resolved->last_modified_ms.has_value());
  EXPECT_EQ(*resolved->last_modified_ms, 1700000000000);  // HTTP dates have whole seconds

  auto missing = hub.resolve(bucket, "dir/none");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, HubErrorKind::entry_not_found);
  EXPECT_NE(missing.error().message.find("dir/none"), std::string::npos);
  auto no_bucket = hub.resolve(id("alice", "nobucket"), "x");
  ASSERT_FALSE(no_bucket);
  EXPECT_EQ(no_bucket.error().kind, HubErrorKind::bucket_not_found);
}

TEST_F(HubClientTest, XetTokenRawFetch) {
  auto hub = client(kAliceWrite);
  ASSERT_TRUE(hub.create_bucket(id("alice", "tok")));
  auto token = hub.xet_token(id("alice", "tok"), false);
  ASSERT_TRUE(token) << token.error().describe();
  EXPECT_EQ(token->cas_url, base_url_);
  EXPECT_FALSE(token->access_token.empty());
  EXPECT_NEAR(static_cast<double>(token->exp), static_cast<double>(server_clock_ms_.load() / 1000 + 3600), 2.0);
}

TEST_F(HubClientTest, ErrorMessagesNeverContainTheToken) {
  auto writer = client(kAliceWrite);
  ASSERT_TRUE(writer.create_bucket(id("alice", "secret"), {.is_private = true, .exist_ok = false}));
  std::vector<std::string> described;
  auto collect = [&](const auto& result) {
    ASSERT_FALSE(result);
    described.push_back(result.error().describe());
  };
  collect(writer.create_bucket(id("alice", "secret")));
  collect(writer.bucket_info(id("alice", "missing")));
  collect(writer.resolve(id("alice", "secret"), "nope"));
  collect(client(kAliceRead).create_bucket(id("alice", "other")));
  collect(client(kAliceRead).xet_token(id("alice", "secret"), true));
  collect(client(kBobWrite).tree(id("alice", "secret"), ""));
  collect(client("hf_totally_wrong_token_123").bucket_info(id("alice", "secret")));
  collect(client(kBobWrite).delete_bucket(id("alice", "secret")));
  for (const auto& text : described) {
    EXPECT_EQ(text.find("hf_"), std::string::npos) << text;
    EXPECT_EQ(text.find('\n'), std::string::npos) << text;
    EXPECT_NE(text.find("alice/"), std::string::npos) << text;
  }
}

}  // namespace
}  // namespace bucketfs::hub
