// XetTokenSource and CasClient against a real bucketfs-server in-process: token caching, refresh
// near expiry, one fetch under concurrency, 401 -> refresh, xorb + shard upload, reconstruction v2
// and the v1 fallback, byte-exact download through signed URLs, multi-range fetches, dedup.
#include "bucketfs/hub/cas_client.h"

#include <gtest/gtest.h>

#include <barrier>
#include <cstring>
#include <thread>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/xorb.h"
#include "hub_test_fixture.h"
#include "test_bytes.h"

namespace bucketfs::hub {
namespace {

using testing::kAliceRead;
using testing::kAliceWrite;
using testing::CountingTransport;
using namespace std::chrono_literals;

http::Error status_error(const http::Request& r, int status, std::string message) {
  http::Error error;
  error.kind = http::ErrorKind::http_status;
  error.status = status;
  error.route = http::route_of(r.method, r.url);
  error.message = std::move(message);
  return error;
}

// A file uploaded to CAS: its bytes, hash, xorb.
struct Uploaded {
  xet::Bytes data;
  xet::Hash file_hash;
  xet::SerializedXorb xorb;
  std::vector<xet::HashAndSize> chunks;
};

class CasClientTest : public testing::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    hub_.emplace(transport_, settings(kAliceWrite));
    ASSERT_TRUE(hub_->create_bucket(bucket_));
  }

  // The clients' clock; starts at the server's.
  std::int64_t client_now() const { return client_clock_s_.load(); }
  XetTokenOptions token_options(bool write) {
    client_clock_s_.store(server_clock_ms_.load() / 1000);
    XetTokenOptions options;
    options.write = write;
    options.refresh_margin = 60s;
    options.now_s = [this] { return client_now(); };
    return options;
  }

  // Chunks `data`, packs it in one xorb, uploads xorb and shard, and registers it at `path`.
  Uploaded upload(CasClient& cas, std::size_t size, std::uint64_t seed, const std::string& path) {
    Uploaded out;
    out.data = bucketfs::testing::random_bytes(size, seed);
    xet::XorbBuilder builder(xet::CompressionPolicy::kPredicted);
    std::size_t offset = 0;
    std::vector<xet::Hash> chunk_hashes;
    for (const auto length : xet::chunk_lengths(out.data)) {
      const auto chunk = xet::ByteSpan(out.data).subspan(offset, length);
      const auto hash = xet::chunk_hash(chunk);
      EXPECT_TRUE(builder.add_chunk(chunk, hash));
      out.chunks.push_back({hash, length});
      chunk_hashes.push_back(hash);
      offset += length;
    }
    out.xorb = builder.finish();
    out.file_hash = xet::file_hash(out.chunks);
    auto inserted = cas.upload_xorb(out.xorb.hash, out.xorb.bytes);
    EXPECT_TRUE(inserted) << inserted.error().describe();
    EXPECT_TRUE(inserted && *inserted);

    xet::UploadShardBuilder shard;
    auto info = xet::make_xorb_info(out.xorb.hash, out.chunks, static_cast<std::uint32_t>(out.xorb.bytes.size()));
    EXPECT_TRUE(info);
    EXPECT_TRUE(shard.add_xorb(*info));
    xet::FileTerm term;
    term.xorb_hash = out.xorb.hash;
    term.unpacked_bytes = static_cast<std::uint32_t>(size);
    term.chunk_index_start = 0;
    term.chunk_index_end = static_cast<std::uint32_t>(out.chunks.size());
    EXPECT_TRUE(shard.add_file(out.file_hash, {term}, chunk_hashes));
    auto bytes = shard.serialize();
    EXPECT_TRUE(bytes);
    auto registered = cas.upload_shard(*bytes);
    EXPECT_TRUE(registered) << registered.error().describe();

    auto committed = hub_->batch(bucket_, std::vector{BatchOperation::add(path, out.file_hash)});
    EXPECT_TRUE(committed && committed->success);
    return out;
  }

  // Downloads file bytes `range` with a reconstruction (range request) and the signed URLs.
  xet::Bytes download(CasClient& cas, const xet::Hash& file, xet::FileByteRange range) {
    auto recon = cas.get_reconstruction(file, range);
    EXPECT_TRUE(recon) << recon.error().describe();
    if (!recon) return {};
    auto plan = xet::plan_read(*recon, range.start, range);
    EXPECT_TRUE(plan) << plan.error().describe();
    xet::Bytes out(plan->range.length());
    xet::XorbDecoder decoder;
    for (std::size_t f = 0; f < plan->fetches.size(); ++f) {
      const auto& entry = plan->fetches[f];
      std::vector<xet::Bytes> parts(entry.ranges.size());
      for (std::size_t r = 0; r < entry.ranges.size(); ++r) parts[r].resize(entry.ranges[r].bytes.length());
      auto fetched = cas.fetch(entry, [&](std::size_t part, std::uint64_t at, std::span<const std::byte> data) {
        std::memcpy(parts[part].data() + at, data.data(), data.size());
        return true;
      });
      EXPECT_TRUE(fetched) << fetched.error().describe();
      for (std::size_t r = 0; r < entry.ranges.size(); ++r) {
        auto decoded = decoder.decode(parts[r], entry.ranges[r].chunks.start);
        EXPECT_TRUE(decoded) << decoded.error().describe();
        std::vector<std::uint64_t> sizes;
        for (std::size_t c = 0; c < decoded->chunk_count(); ++c) sizes.push_back(decoded->chunk(c).size());
        auto spans = xet::copy_spans(*plan, f, r, sizes);
        EXPECT_TRUE(spans) << spans.error().describe();
        for (const auto& s : *spans) {
          const auto chunk = decoded->chunk(s.chunk - entry.ranges[r].chunks.start);
          std::memcpy(out.data() + s.output_offset, chunk.data() + s.chunk_offset, s.length);
        }
      }
    }
    return out;
  }

  naming::BucketId bucket_{"alice", "cas"};
  std::optional<HubClient> hub_;
  std::atomic<std::int64_t> client_clock_s_{0};
};

TEST_F(CasClientTest, TokenIsCachedAndRefreshedNearExpiry) {
  XetTokenSource tokens(*hub_, bucket_, token_options(false));
  auto first = tokens.get();
  ASSERT_TRUE(first) << first.error().describe();
  EXPECT_EQ(first->cas_url, base_url_);
  auto second = tokens.get();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->access_token, first->access_token);
  EXPECT_EQ(tokens.fetch_count(), 1u);
  EXPECT_EQ(transport_.count("/xet-read-token"), 1u);

  // 3600 s lifetime: at 3539 s left-over 61 s it is still used; at 59 s left it is refreshed.
  client_clock_s_ += 3600 - 61;
  ASSERT_TRUE(tokens.get());
  EXPECT_EQ(tokens.fetch_count(), 1u);
  client_clock_s_ += 2;
  advance_server_clock(3541s);
  auto refreshed = tokens.get();
  ASSERT_TRUE(refreshed);
  EXPECT_EQ(tokens.fetch_count(), 2u);
  EXPECT_NE(refreshed->access_token, first->access_token);
  EXPECT_GT(refreshed->exp, first->exp);
}

TEST_F(CasClientTest, ConcurrentCallersShareOneFetch) {
  // Make the token endpoint slow so that the 8 callers surely overlap.
  transport_.set_delay([](const http::Request& r) {
    if (r.url.find("xet-write-token") != std::string::npos) std::this_thread::sleep_for(150ms);
  });
  XetTokenSource tokens(*hub_, bucket_, token_options(true));
  std::barrier start(8);
  std::vector<std::string> got(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      auto credentials = tokens.get();
      if (credentials) got[i] = credentials->access_token;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(tokens.fetch_count(), 1u);
  EXPECT_EQ(transport_.count("/xet-write-token"), 1u);
  for (const auto& token : got) EXPECT_EQ(token, got[0]);
  EXPECT_FALSE(got[0].empty());

  // invalidate() by 8 threads holding the same rejected token: one refetch.
  std::barrier again(8);
  threads.clear();
  const std::string rejected = got[0];
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      again.arrive_and_wait();
      tokens.invalidate(rejected);
      (void)tokens.get();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(tokens.fetch_count(), 2u);
}

TEST_F(CasClientTest, ExpiredCasTokenIsRefreshedOnce) {
  XetTokenSource tokens(*hub_, bucket_, token_options(false));
  CasClient cas(transport_, tokens);
  ASSERT_TRUE(cas.head_file(xet::Hash{}));  // fetches a token
  EXPECT_EQ(tokens.fetch_count(), 1u);
  // The server's clock passes the token's expiry; the client still believes it valid.
  advance_server_clock(7200s);
  transport_.clear();
  auto size = cas.head_file(xet::Hash{});
  ASSERT_TRUE(size) << size.error().describe();
  EXPECT_FALSE(size->has_value());  // a 404 after the refresh: no such file
  EXPECT_EQ(tokens.fetch_count(), 2u);
  EXPECT_EQ(transport_.count("/v1/files/"), 2u);  // 401, then the retry

  // A token the server keeps refusing ends as unauthorized after one retry, without the token
  // in the message.
  CountingTransport refusing(curl_);
  refusing.set_fault([](const http::Request& r) -> std::optional<http::Error> {
    if (r.url.find("/v1/files/") == std::string::npos) return std::nullopt;
    return status_error(r, 401, "bad token " + std::string(r.headers.get("Authorization").value_or("")));
  });
  XetTokenSource fresh(*hub_, bucket_, token_options(false));
  CasClient failing(refusing, fresh);
  auto refused = failing.head_file(xet::Hash{});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, HubErrorKind::unauthorized);
  EXPECT_EQ(refusing.count("/v1/files/"), 2u);
  auto latest = fresh.get();
  ASSERT_TRUE(latest);
  EXPECT_EQ(refused.error().describe().find(latest->access_token), std::string::npos) << refused.error().describe();
  EXPECT_NE(refused.error().describe().find("[redacted]"), std::string::npos);
}

TEST_F(CasClientTest, UploadThenDownloadByteExact) {
  XetTokenSource write_tokens(*hub_, bucket_, token_options(true));
  CasClient writer(transport_, write_tokens);
  const auto up = upload(writer, 700 * 1024 + 13, 42, "weights/model.bin");
  ASSERT_GT(up.chunks.size(), 3u);
  // The same xorb again: already there.
  auto again = writer.upload_xorb(up.xorb.hash, up.xorb.bytes);
  ASSERT_TRUE(again);
  EXPECT_FALSE(*again);

  XetTokenSource read_tokens(*hub_, bucket_, token_options(false));
  CasClient reader(transport_, read_tokens);
  const auto size = static_cast<std::uint64_t>(up.data.size());
  auto head = reader.head_file(up.file_hash);
  ASSERT_TRUE(head);
  EXPECT_EQ(*head, size);

  transport_.clear();
  auto whole = reader.get_reconstruction(up.file_hash);
  ASSERT_TRUE(whole) << whole.error().describe();
  EXPECT_EQ(whole->total_unpacked_length(), size);
  EXPECT_EQ(transport_.count("/v2/reconstructions/"), 1u);
  EXPECT_EQ(transport_.count("/v1/reconstructions/"), 0u);

  // Signed URLs go out without Authorization.
  transport_.clear();
  const auto all = download(reader, up.file_hash, {0, size});
  EXPECT_TRUE(all == up.data);
  EXPECT_GE(transport_.count("/xorb-data/"), 1u);
  EXPECT_FALSE(transport_.last_had_authorization());

  const xet::FileByteRange middle{100'000, 400'123};
  const auto part = download(reader, up.file_hash, middle);
  ASSERT_EQ(part.size(), middle.length());
  EXPECT_EQ(std::memcmp(part.data(), up.data.data() + middle.start, part.size()), 0);

  auto past_end = reader.get_reconstruction(up.file_hash, xet::FileByteRange{size, size + 10});
  ASSERT_FALSE(past_end);
  EXPECT_EQ(past_end.error().kind, HubErrorKind::range_not_satisfiable);
  xet::Hash missing;
  missing.bytes[5] = 1;
  auto not_there = reader.get_reconstruction(missing);
  ASSERT_FALSE(not_there);
  EXPECT_EQ(not_there.error().kind, HubErrorKind::entry_not_found);
  EXPECT_EQ(reader.reconstruction_version(), 2);  // a missing file does not switch to v1

  auto batch = reader.batch_reconstruction(std::vector{up.file_hash});
  ASSERT_TRUE(batch) << batch.error().describe();
  auto one = batch->file(up.file_hash);
  ASSERT_TRUE(one);
  EXPECT_EQ(one->total_unpacked_length(), size);

  // A read token may not upload; the error names the xorb and no token.
  auto refused = reader.upload_xorb(up.xorb.hash, up.xorb.bytes);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, HubErrorKind::forbidden);
  EXPECT_NE(refused.error().message.find(up.xorb.hash.to_string()), std::string::npos);
  EXPECT_EQ(refused.error().describe().find(read_tokens.get()->access_token), std::string::npos);
  EXPECT_EQ(refused.error().describe().find("hf_"), std::string::npos);

  // copyFile of the uploaded file into another bucket, then read it there.
  ASSERT_TRUE(hub_->create_bucket({"alice", "copy"}));
  auto copied = hub_->batch({"alice", "copy"}, std::vector{BatchOperation::copy("c.bin", up.file_hash, "alice/cas")});
  ASSERT_TRUE(copied);
  EXPECT_TRUE(copied->success);
  auto info = hub_->paths_info({"alice", "copy"}, std::vector<std::string>{"c.bin"});
  ASSERT_TRUE(info);
  ASSERT_EQ(info->size(), 1u);
  EXPECT_EQ((*info)[0].xet_hash, up.file_hash);
  EXPECT_EQ((*info)[0].size, size);
}

TEST_F(CasClientTest, MultiRangeFetchParsesMultipart) {
  XetTokenSource tokens(*hub_, bucket_, token_options(true));
  CasClient cas(transport_, tokens);
  const auto up = upload(cas, 400 * 1024, 7, "multi.bin");
  auto recon = cas.get_reconstruction(up.file_hash);
  ASSERT_TRUE(recon);
  ASSERT_EQ(recon->fetches.size(), 1u);
  const auto& entry = recon->fetches[0];
  const auto signed_range = entry.ranges[0].bytes;
  ASSERT_GT(signed_range.length(), 1000u);
  // Two pieces inside the signed range, the second one ending at its end.
  const std::vector<xet::HttpByteRange> pieces{{signed_range.first + 10, signed_range.first + 99},
                                               {signed_range.last - 499, signed_range.last}};
  std::vector<std::string> got(2);
  auto fetched = cas.fetch_xorb_range(entry.url, pieces, [&](std::size_t part, std::uint64_t at, std::span<const std::byte> d) {
    got[part].resize(at + d.size());
    std::memcpy(got[part].data() + at, d.data(), d.size());
    return true;
  });
  ASSERT_TRUE(fetched) << fetched.error().describe();
  for (std::size_t i = 0; i < 2; ++i) {
    ASSERT_EQ(got[i].size(), pieces[i].length());
    EXPECT_EQ(std::memcmp(got[i].data(), up.xorb.bytes.data() + pieces[i].first, got[i].size()), 0) << i;
  }
}

TEST_F(CasClientTest, ExpiredSignedUrlIsTyped) {
  XetTokenSource tokens(*hub_, bucket_, token_options(true));
  CasClient cas(transport_, tokens);
  const auto up = upload(cas, 100 * 1024, 9, "expiring.bin");
  auto recon = cas.get_reconstruction(up.file_hash);
  ASSERT_TRUE(recon);
  advance_server_clock(7200s);
  auto fetched = cas.fetch(recon->fetches[0], [](std::size_t, std::uint64_t, std::span<const std::byte>) { return true; });
  ASSERT_FALSE(fetched);
  EXPECT_EQ(fetched.error().kind, HubErrorKind::url_expired);
  EXPECT_EQ(fetched.error().message.find("sig="), std::string::npos);  // the signature stays out
}

TEST_F(CasClientTest, FallsBackToV1AndRemembers) {
  XetTokenSource write_tokens(*hub_, bucket_, token_options(true));
  CasClient writer(transport_, write_tokens);
  const auto up = upload(writer, 200 * 1024, 11, "v1.bin");

  // Fault injection around the real server: no /v2/reconstructions here.
  CountingTransport no_v2(curl_);
  no_v2.set_fault([](const http::Request& r) -> std::optional<http::Error> {
    if (r.url.find("/v2/reconstructions/") == std::string::npos) return std::nullopt;
    return status_error(r, 404, "no such route");
  });
  XetTokenSource read_tokens(*hub_, bucket_, token_options(false));
  CasClient cas(no_v2, read_tokens);
  auto first = cas.get_reconstruction(up.file_hash);
  ASSERT_TRUE(first) << first.error().describe();
  EXPECT_EQ(cas.reconstruction_version(), 1);
  EXPECT_EQ(first->total_unpacked_length(), up.data.size());
  auto ranged = cas.get_reconstruction(up.file_hash, xet::FileByteRange{1000, 2000});
  ASSERT_TRUE(ranged);
  EXPECT_EQ(no_v2.count("/v2/reconstructions/"), 1u);  // remembered: asked once
  EXPECT_EQ(no_v2.count("/v1/reconstructions/"), 2u);
  // v1 and v2 describe the same file.
  CasClient v2(transport_, read_tokens);
  auto expected = v2.get_reconstruction(up.file_hash);
  ASSERT_TRUE(expected);
  EXPECT_EQ(first->terms, expected->terms);

  // 501 also falls back.
  CountingTransport not_implemented(curl_);
  not_implemented.set_fault([](const http::Request& r) -> std::optional<http::Error> {
    if (r.url.find("/v2/") == std::string::npos) return std::nullopt;
    return status_error(r, 501, "");
  });
  CasClient cas501(not_implemented, read_tokens);
  ASSERT_TRUE(cas501.get_reconstruction(up.file_hash));
  EXPECT_EQ(cas501.reconstruction_version(), 1);
}

TEST_F(CasClientTest, DedupQueryHitAndMiss) {
  XetTokenSource tokens(*hub_, bucket_, token_options(true));
  CasClient cas(transport_, tokens);
  const auto up = upload(cas, 300 * 1024, 5, "dedup.bin");
  transport_.clear();
  auto hit = cas.dedup_query(up.chunks[0].hash);  // a file's first chunk is always indexed
  ASSERT_TRUE(hit) << hit.error().describe();
  ASSERT_TRUE(hit->has_value());
  EXPECT_NE(transport_.requests().back().find("/v1/chunks/default/"), std::string::npos);
  const auto& shard = **hit;
  ASSERT_FALSE(shard.xorbs.empty());
  EXPECT_EQ(shard.xorbs[0].xorb_hash, up.xorb.hash);
  const auto key = shard.chunk_key().value_or(xet::Hash{});
  bool found = false;
  for (const auto& chunk : shard.xorbs[0].chunks) found |= chunk.chunk_hash == xet::keyed_chunk_hash(up.chunks[0].hash, key);
  EXPECT_TRUE(found);

  xet::Hash unknown;
  unknown.bytes[9] = 3;
  auto miss = cas.dedup_query(unknown);
  ASSERT_TRUE(miss);
  EXPECT_FALSE(miss->has_value());
}

// The 422 of a batch, explained with the CAS: the probe asks head_file with the bucket's token.
TEST_F(CasClientTest, Batch422FailuresFromCasProbe) {
  XetTokenSource tokens(*hub_, bucket_, token_options(true));
  CasClient cas(transport_, tokens);
  const auto up = upload(cas, 50 * 1024, 3, "known.bin");
  HubClient hub(transport_, settings(kAliceWrite));
  hub.set_hash_probe([&](const naming::BucketId& owner, const xet::Hash& hash) -> HubResult<bool> {
    EXPECT_EQ(owner, bucket_);
    auto size = cas.head_file(hash);
    if (!size) return std::unexpected(size.error());
    return size->has_value();
  });
  xet::Hash unknown;
  unknown.bytes[1] = 99;
  auto result = hub.batch(bucket_, std::vector{BatchOperation::add("again.bin", up.file_hash),
                                               BatchOperation::add("ghost.bin", unknown)});
  ASSERT_TRUE(result) << result.error().describe();
  EXPECT_FALSE(result->success);
  ASSERT_EQ(result->failed.size(), 1u);
  EXPECT_EQ(result->failed[0].path, "ghost.bin");
}

}  // namespace
}  // namespace bucketfs::hub
