// compose_file against a real bucketfs-server in-process: files made of ranges of a stored file
// reference its chunks (nothing sent for aligned ranges, only the cut chunks otherwise), are
// registered by the server's shard checks and download (file hash verified) to exactly the
// bytes of the ranges; a server without the chunk list sends nothing and says entry_not_found.
#include "bucketfs/transfer/compose.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "bucketfs/hub/xet_token.h"
#include "bucketfs/xet/chunker.h"
#include "hub_test_fixture.h"

namespace bucketfs::transfer {
namespace {

using hub::testing::kAliceWrite;

constexpr std::size_t kMiB = std::size_t{1} << 20;

xet::Bytes random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  xet::Bytes out(n);
  for (auto& b : out) b = std::byte(rng() & 0xff);
  return out;
}

class ComposeTest : public hub::testing::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    hub_.emplace(transport_, settings(kAliceWrite));
    ASSERT_TRUE(hub_->create_bucket(bucket_));
    hub::XetTokenOptions options;
    options.write = true;
    tokens_.emplace(*hub_, bucket_, options);
    cas_.emplace(transport_, *tokens_);
    downloader_.emplace(*cas_, nullptr);
    data_ = random_bytes(3 * kMiB + 777, 42);
    Uploader uploader(*cas_, *hub_, nullptr);
    auto uploaded = uploader.upload_and_commit(bucket_, "source.bin", memory_source(data_));
    ASSERT_TRUE(uploaded) << uploaded.error().describe();
    source_ = uploaded->file.file_hash;
    std::uint64_t at = 0;
    offsets_.push_back(0);
    for (const auto length : xet::chunk_lengths(data_)) offsets_.push_back(at += length);
  }

  StoredRange part(std::uint64_t start, std::uint64_t end) const { return {source_, data_.size(), {start, end}}; }

  // Downloads the composed file (its file hash checked) and compares it with `expected`.
  void expect_content(const ComposedFile& file, const xet::Bytes& expected) {
    EXPECT_EQ(file.size, expected.size());
    xet::Bytes got;
    auto done = downloader_->download_file(file.file_hash, file.size, [&](std::span<const std::byte> piece) {
      got.insert(got.end(), piece.begin(), piece.end());
      return true;
    });
    ASSERT_TRUE(done) << done.error().describe();
    EXPECT_TRUE(got == expected) << "composed bytes differ";
    auto committed = Uploader(*cas_, *hub_, nullptr).commit(bucket_, "composed.bin", file.file_hash);
    EXPECT_TRUE(committed) << committed.error().describe();
  }

  xet::Bytes slice(std::uint64_t start, std::uint64_t end) const {
    return xet::Bytes(data_.begin() + static_cast<std::ptrdiff_t>(start), data_.begin() + static_cast<std::ptrdiff_t>(end));
  }

  naming::BucketId bucket_{"alice", "compose"};
  std::optional<hub::HubClient> hub_;
  std::optional<hub::XetTokenSource> tokens_;
  std::optional<hub::CasClient> cas_;
  std::optional<Downloader> downloader_;
  xet::Bytes data_;
  xet::Hash source_;
  std::vector<std::uint64_t> offsets_;
};

TEST_F(ComposeTest, AlignedRangeReferencesEveryChunkAndSendsNothing) {
  ASSERT_GT(offsets_.size(), 20u);
  const std::vector parts{part(offsets_[3], offsets_[offsets_.size() - 4])};
  auto composed = compose_file(*cas_, *downloader_, parts);
  ASSERT_TRUE(composed) << composed.error().describe();
  EXPECT_EQ(composed->xorb_bytes_sent, 0u);
  EXPECT_EQ(composed->new_chunks, 0u);
  EXPECT_EQ(composed->edge_chunks_read, 0u);
  EXPECT_EQ(composed->referenced_chunks, offsets_.size() - 1 - 3 - 3);
  // The same chunk list as the source's: an aligned range has the file hash of those chunks.
  std::vector<xet::HashAndSize> chunks;
  for (std::size_t i = 3; i + 4 < offsets_.size(); ++i) {
    const auto bytes = xet::ByteSpan(data_).subspan(offsets_[i], offsets_[i + 1] - offsets_[i]);
    chunks.push_back({xet::chunk_hash(bytes), bytes.size()});
  }
  EXPECT_EQ(composed->file_hash, xet::file_hash(chunks));
  expect_content(*composed, slice(offsets_[3], offsets_[offsets_.size() - 4]));
}

TEST_F(ComposeTest, UnalignedRangesSendOnlyTheirEdges) {
  struct Case {
    std::uint64_t start, end;
  };
  const Case cases[] = {
      {offsets_[2] + 100, offsets_[30] - 100},  // both edges cut
      {offsets_[5] + 10, offsets_[5] + 30},     // inside one chunk
      {0, data_.size()},                       // the whole file
      {offsets_[7] + 1, data_.size()},          // to the end
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(std::to_string(c.start) + "-" + std::to_string(c.end));
    const std::vector parts{part(c.start, c.end)};
    auto composed = compose_file(*cas_, *downloader_, parts);
    ASSERT_TRUE(composed) << composed.error().describe();
    EXPECT_LE(composed->edge_chunks_read, 2u);
    EXPECT_LE(composed->new_chunk_bytes, 2 * xet::kMaxChunkSize);
    EXPECT_LE(composed->xorb_bytes_sent, 2 * xet::kMaxChunkSize + 4096);
    expect_content(*composed, slice(c.start, c.end));
  }
}

TEST_F(ComposeTest, SeveralPartsJoinTheirEdges) {
  const std::vector parts{part(offsets_[1] + 5, offsets_[4] + 9), part(offsets_[10] + 3, offsets_[12]),
                          part(100, 200)};
  auto composed = compose_file(*cas_, *downloader_, parts);
  ASSERT_TRUE(composed) << composed.error().describe();
  xet::Bytes expected = slice(offsets_[1] + 5, offsets_[4] + 9);
  for (const auto& more : {slice(offsets_[10] + 3, offsets_[12]), slice(100, 200)}) {
    expected.insert(expected.end(), more.begin(), more.end());
  }
  expect_content(*composed, expected);
}

TEST_F(ComposeTest, WithoutAChunkListNothingIsSent) {
  transport_.set_fault([](const http::Request& request) -> std::optional<http::Error> {
    if (request.url.find("/v1/file-chunks/") == std::string::npos) return std::nullopt;
    http::Error error;
    error.kind = http::ErrorKind::http_status;
    error.status = 404;
    error.route = http::route_of(request.method, request.url);
    error.message = "not found";
    return error;
  });
  transport_.clear();
  const std::vector parts{part(10, 100000)};
  auto composed = compose_file(*cas_, *downloader_, parts);
  ASSERT_FALSE(composed);
  EXPECT_EQ(composed.error().kind, UploadErrorKind::remote);
  ASSERT_TRUE(composed.error().hub);
  EXPECT_EQ(composed.error().hub->kind, hub::HubErrorKind::entry_not_found);
  EXPECT_EQ(transport_.count("/v1/xorbs/"), 0u);
  EXPECT_EQ(transport_.count("/v1/shards"), 0u);
}

TEST_F(ComposeTest, InvalidPartsAreRefused) {
  EXPECT_FALSE(compose_file(*cas_, *downloader_, std::span<const StoredRange>{}));
  const std::vector empty{part(100, 100)};
  EXPECT_FALSE(compose_file(*cas_, *downloader_, empty));
  const std::vector past{part(100, data_.size() + 1)};
  EXPECT_FALSE(compose_file(*cas_, *downloader_, past));
}

}  // namespace
}  // namespace bucketfs::transfer
