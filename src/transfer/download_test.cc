// Downloader against a real bucketfs-server in-process (hub_test_fixture.h): files uploaded with
// CasClient + XorbBuilder + UploadShardBuilder, downloaded whole and by range, byte-exact; the
// chunk cache serving a second download with no xorb bytes served (server metrics); corruption
// injected by a forwarding transport (an error, nothing cached); expired signed URLs; parallel
// fetches overlapping; the buffer budget holding.
#include "bucketfs/transfer/download.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "bucketfs/cache/chunk_cache.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/hub/cas_client.h"
#include "bucketfs/hub/hub_client.h"
#include "bucketfs/hub/xet_token.h"
#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/shard.h"
#include "bucketfs/xet/xorb.h"
#include "hub_test_fixture.h"
#include "temp_dir.h"
#include "test_bytes.h"

namespace bucketfs::transfer {
namespace {

using hub::testing::kAliceWrite;
constexpr std::size_t kMiB = std::size_t{1} << 20;

bool is_xorb_get(const http::Request& request) { return request.url.find("/xorb-data/") != std::string::npos; }

// Observes xorb GETs: how many run at once, and optionally corrupts one byte of their bodies.
class XorbTransport : public http::ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;

  http::Result<http::Response> perform(const http::Request& request, const http::CancellationToken* cancel) override {
    if (!is_xorb_get(request)) return ForwardingTransport::perform(request, cancel);
    const int now = ++in_flight_;
    int seen = max_in_flight_.load();
    while (now > seen && !max_in_flight_.compare_exchange_weak(seen, now)) {
    }
    ++gets_;
    if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
    if (expire_next_.exchange(false)) {
      --in_flight_;
      http::Error error;
      error.kind = http::ErrorKind::http_status;
      error.status = 403;
      error.route = http::route_of(request.method, request.url);
      error.message = "signature expired";
      return std::unexpected(error);
    }
    http::Result<http::Response> result;
    if (flip_at_ && request.sink) {
      // Flip one byte at stream offset *flip_at_ of every xorb body.
      http::Request copy = request;
      std::uint64_t seen_bytes = 0;
      xet::Bytes piece;
      const std::uint64_t at = *flip_at_;
      copy.sink = [&, at](std::span<const std::byte> data) {
        const std::uint64_t begin = seen_bytes;
        seen_bytes += data.size();
        if (at >= begin && at < seen_bytes) {
          piece.assign(data.begin(), data.end());
          piece[at - begin] ^= std::byte{0x5a};
          return request.sink(piece);
        }
        return request.sink(data);
      };
      copy.on_retry = [&, inner = request.on_retry] {
        seen_bytes = 0;
        if (inner) inner();
      };
      result = ForwardingTransport::perform(copy, cancel);
    } else {
      result = ForwardingTransport::perform(request, cancel);
    }
    --in_flight_;
    return result;
  }

  int max_in_flight() const { return max_in_flight_.load(); }
  int gets() const { return gets_.load(); }
  void set_delay(std::chrono::milliseconds delay) { delay_ = delay; }
  void set_flip(std::optional<std::uint64_t> at) { flip_at_ = at; }
  void expire_next() { expire_next_ = true; }

 private:
  std::atomic<int> in_flight_{0};
  std::atomic<int> max_in_flight_{0};
  std::atomic<int> gets_{0};
  std::chrono::milliseconds delay_{0};
  std::optional<std::uint64_t> flip_at_;
  std::atomic<bool> expire_next_{false};
};

// A file uploaded to CAS and registered in the bucket.
struct Uploaded {
  xet::Bytes data;
  xet::Hash file_hash;
  std::size_t xorbs = 0;
};

// One xorb of uploaded chunks and where its chunks lie in the source bytes.
struct PackedXorb {
  xet::SerializedXorb xorb;
  std::vector<std::size_t> chunk_offsets;  // into the source
};

class DownloadTest : public hub::testing::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    hub_.emplace(transport_, settings(kAliceWrite));
    ASSERT_TRUE(hub_->create_bucket(bucket_));
    hub::XetTokenOptions token_options;
    token_options.write = true;
    tokens_.emplace(*hub_, bucket_, token_options);
    writer_.emplace(transport_, *tokens_);
    reader_.emplace(xorbs_, *tokens_);
  }

  // Chunks `data` and packs the chunks into xorbs of at most `xorb_limit` serialized bytes, uploads
  // them, and returns them.
  std::vector<PackedXorb> pack(const xet::Bytes& data, std::size_t xorb_limit) {
    xet::XorbLimits limits;
    limits.max_serialized_size = xorb_limit;
    limits.max_uncompressed_size = xorb_limit;
    xet::XorbBuilder builder(xet::CompressionPolicy::kPredicted, limits);
    std::vector<PackedXorb> out;
    std::vector<std::size_t> offsets;
    auto finish = [&] {
      if (builder.empty()) return;
      out.push_back({builder.finish(), std::move(offsets)});
      offsets.clear();
      auto stored = writer_->upload_xorb(out.back().xorb.hash, out.back().xorb.bytes);
      EXPECT_TRUE(stored) << stored.error().describe();
    };
    std::size_t offset = 0;
    for (const auto length : xet::chunk_lengths(data)) {
      const auto chunk = xet::ByteSpan(data).subspan(offset, length);
      if (!builder.would_fit(length)) finish();
      auto added = builder.add_chunk(chunk);
      if (!added) {
        finish();
        added = builder.add_chunk(chunk);
      }
      EXPECT_TRUE(added);
      offsets.push_back(offset);
      offset += length;
    }
    finish();
    return out;
  }

  // Registers a file made of `terms` (xorb index, chunks [first, end)) of `xorbs`, at `path`.
  Uploaded register_file(const std::vector<PackedXorb>& xorbs,
                         const std::vector<std::tuple<std::size_t, std::uint32_t, std::uint32_t>>& terms,
                         const xet::Bytes& source, const std::string& path) {
    Uploaded out;
    std::vector<xet::HashAndSize> leaves;
    std::vector<xet::Hash> chunk_hashes;
    std::vector<xet::FileTerm> file_terms;
    xet::UploadShardBuilder shard;
    for (const auto& x : xorbs) {
      auto info = xet::make_xorb_info(x.xorb.hash, x.xorb.chunk_hashes(), static_cast<std::uint32_t>(x.xorb.bytes.size()));
      EXPECT_TRUE(info);
      EXPECT_TRUE(shard.add_xorb(*info));
    }
    for (const auto& [x, first, end] : terms) {
      xet::FileTerm term;
      term.xorb_hash = xorbs[x].xorb.hash;
      term.chunk_index_start = first;
      term.chunk_index_end = end;
      for (std::uint32_t c = first; c < end; ++c) {
        const auto& info = xorbs[x].xorb.chunks[c];
        leaves.push_back({info.hash, info.uncompressed_size});
        chunk_hashes.push_back(info.hash);
        term.unpacked_bytes += info.uncompressed_size;
        const auto at = xorbs[x].chunk_offsets[c];
        out.data.insert(out.data.end(), source.begin() + static_cast<std::ptrdiff_t>(at),
                        source.begin() + static_cast<std::ptrdiff_t>(at + info.uncompressed_size));
      }
      file_terms.push_back(term);
    }
    out.file_hash = xet::file_hash(leaves);
    out.xorbs = xorbs.size();
    EXPECT_TRUE(shard.add_file(out.file_hash, file_terms, chunk_hashes));
    auto bytes = shard.serialize();
    EXPECT_TRUE(bytes);
    auto registered = writer_->upload_shard(*bytes);
    EXPECT_TRUE(registered) << registered.error().describe();
    auto committed = hub_->batch(bucket_, std::vector{hub::BatchOperation::add(path, out.file_hash)});
    EXPECT_TRUE(committed && committed->success);
    return out;
  }

  // Uploads `size` random bytes as one file, each xorb covered by one term.
  Uploaded upload(std::size_t size, std::uint64_t seed, const std::string& path,
                  std::size_t xorb_limit = xet::kMaxXorbSize) {
    const auto data = bucketfs::testing::random_bytes(size, seed);
    if (size == 0) return Uploaded{};
    const auto xorbs = pack(data, xorb_limit);
    std::vector<std::tuple<std::size_t, std::uint32_t, std::uint32_t>> terms;
    for (std::size_t x = 0; x < xorbs.size(); ++x) {
      terms.emplace_back(x, 0, static_cast<std::uint32_t>(xorbs[x].xorb.chunks.size()));
    }
    auto out = register_file(xorbs, terms, data, path);
    EXPECT_EQ(out.data, data);
    return out;
  }

  // 3 MiB of random bytes packed into xorbs of 1.5 MiB, registered as the terms A B A' A'': all of
  // xorb 0, all of xorb 1, xorb 0 from chunk 1, and its first two chunks again (terms that start
  // past chunk 0 and repeat chunks).
  Uploaded upload_repeated_terms(std::uint64_t seed, const std::string& path) {
    const auto source = bucketfs::testing::random_bytes(3 * kMiB, seed);
    const auto xorbs = pack(source, kMiB + kMiB / 2);
    EXPECT_GE(xorbs.size(), 2u);
    if (xorbs.size() < 2) return Uploaded{};
    const auto n0 = static_cast<std::uint32_t>(xorbs[0].xorb.chunks.size());
    const auto n1 = static_cast<std::uint32_t>(xorbs[1].xorb.chunks.size());
    return register_file(xorbs, {{0, 0, n0}, {1, 0, n1}, {0, 1, n0}, {0, 0, 2}}, source, path);
  }

  std::unique_ptr<cache::ChunkCache> open_cache() {
    auto store = cache::NodeStore::open(cache_dir_.path());
    EXPECT_TRUE(store);
    auto opened = cache::ChunkCache::open(*store);
    EXPECT_TRUE(opened);
    return std::move(*opened);
  }

  // The server's bucketfs_xorb_bytes_served_total.
  std::uint64_t xorb_bytes_served() {
    http::Request request;
    request.url = base_url_ + "/metrics";
    auto response = curl_.perform(request, nullptr);
    EXPECT_TRUE(response);
    if (!response) return 0;
    const std::string text(response->body.text());
    const std::string name = "\nbucketfs_xorb_bytes_served_total ";
    const auto at = text.find(name);
    EXPECT_NE(at, std::string::npos);
    return at == std::string::npos ? 0 : std::stoull(text.substr(at + name.size()));
  }

  static DownloadResult<xet::Bytes> get_all(Downloader& d, const Uploaded& file) {
    xet::Bytes out;
    auto done = d.download_file(file.file_hash, file.data.size(), [&](std::span<const std::byte> piece) {
      out.insert(out.end(), piece.begin(), piece.end());
      return true;
    });
    if (!done) return std::unexpected(done.error());
    return out;
  }

  static DownloadResult<xet::Bytes> get_range(Downloader& d, const Uploaded& file, xet::FileByteRange range) {
    xet::Bytes out;
    auto done = d.read_range(file.file_hash, file.data.size(), range, [&](std::span<const std::byte> piece) {
      out.insert(out.end(), piece.begin(), piece.end());
      return true;
    });
    if (!done) return std::unexpected(done.error());
    return out;
  }

  naming::BucketId bucket_{"alice", "dl"};
  std::optional<hub::HubClient> hub_;
  std::optional<hub::XetTokenSource> tokens_;
  std::optional<hub::CasClient> writer_;
  XorbTransport xorbs_{transport_};
  std::optional<hub::CasClient> reader_;
  bucketfs::testing::TempDir cache_dir_{"bucketfs-dl-cache"};
};

TEST_F(DownloadTest, WholeFilesByteExact) {
  Downloader downloader(*reader_, nullptr);
  const std::size_t sizes[] = {0, 1, 8191, 8192, 64 * 1024, 10 * kMiB};
  std::uint64_t seed = 1;
  for (const auto size : sizes) {
    SCOPED_TRACE(size);
    const auto file = upload(size, seed++, "f" + std::to_string(size));
    const auto requests_before = transport_.requests().size();
    auto got = get_all(downloader, file);
    ASSERT_TRUE(got) << got.error().describe();
    EXPECT_EQ(*got, file.data);
    if (size == 0) {
      EXPECT_EQ(transport_.requests().size(), requests_before);  // no request at all
    }
  }
}

TEST_F(DownloadTest, LargeFileSeveralXorbsInParallelWithinBudget) {
  // 70 MiB: two xorbs at the 64 MiB limit; then the same bytes in 4 MiB xorbs (18 of them).
  const auto big = upload(70 * kMiB, 7, "big.bin");
  ASSERT_EQ(big.xorbs, 2u);
  DownloaderOptions options;
  options.parallel_fetches = 4;
  options.buffer_budget = 160 * kMiB;
  Downloader downloader(*reader_, nullptr, options);
  xorbs_.set_delay(std::chrono::milliseconds(30));
  auto got = get_all(downloader, big);
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_TRUE(*got == big.data);
  EXPECT_GE(xorbs_.max_in_flight(), 2);
  EXPECT_LE(downloader.stats().peak_buffer_bytes, options.buffer_budget);

  const auto many = upload(70 * kMiB, 8, "many.bin", 4 * kMiB);
  ASSERT_GE(many.xorbs, 17u);
  DownloaderOptions small;
  small.parallel_fetches = 4;
  small.buffer_budget = 12 * kMiB;  // room for 2-3 decoded 4 MiB xorbs at once
  Downloader bounded(*reader_, nullptr, small);
  auto again = get_all(bounded, many);
  ASSERT_TRUE(again) << again.error().describe();
  EXPECT_TRUE(*again == many.data);
  const auto stats = bounded.stats();
  EXPECT_LE(stats.peak_buffer_bytes, small.buffer_budget);
  EXPECT_GE(stats.peak_buffer_bytes, 4 * kMiB);
  EXPECT_GE(stats.peak_in_flight, 2u);
  EXPECT_EQ(stats.bytes_delivered, many.data.size());
}

TEST_F(DownloadTest, RandomRangesByteExact) {
  const auto file = upload(6 * kMiB + 12345, 11, "ranges.bin", kMiB);
  ASSERT_GE(file.xorbs, 6u);
  const std::uint64_t size = file.data.size();
  Downloader downloader(*reader_, nullptr);
  std::mt19937_64 rng(5);
  std::vector<xet::FileByteRange> ranges = {
      {0, 1}, {size - 1, size}, {0, size}, {size - 100, size + 1000},  // past the end is cut
      {kMiB - 7, kMiB + 9}, {100, 3 * kMiB + 17}, {size / 2, size / 2 + 1},
  };
  for (int i = 0; i < 30; ++i) {
    const std::uint64_t a = rng() % size;
    const std::uint64_t b = a + 1 + rng() % std::min<std::uint64_t>(size - a, (i % 3 == 0) ? size : 200'000);
    ranges.push_back({a, b});
  }
  for (const auto& r : ranges) {
    SCOPED_TRACE(std::to_string(r.start) + "-" + std::to_string(r.end));
    auto got = get_range(downloader, file, r);
    ASSERT_TRUE(got) << got.error().describe();
    const auto end = std::min(r.end, size);
    ASSERT_EQ(got->size(), end - r.start);
    EXPECT_TRUE(std::equal(got->begin(), got->end(), file.data.begin() + static_cast<std::ptrdiff_t>(r.start)));
  }
  // Empty and past-the-end ranges make no request.
  const auto before = transport_.requests().size();
  auto empty = get_range(downloader, file, {size, size + 10});
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
  EXPECT_EQ(transport_.requests().size(), before);
  EXPECT_FALSE(get_range(downloader, file, {10, 5}));
}

// A warmed Downloader's first small read decodes into the buffer it touched at construction (a
// mount's first read does not fault in fresh pages); a cold one allocates.
TEST_F(DownloadTest, WarmBufferServesTheFirstRead) {
  const auto file = upload(3 * kMiB, 17, "warm.bin", kMiB);
  DownloaderOptions warm_options;
  warm_options.warm_buffer_bytes = kMiB;
  Downloader warm(*reader_, nullptr, warm_options);
  Downloader cold(*reader_, nullptr);
  for (Downloader* downloader : {&warm, &cold}) {
    auto got = get_range(*downloader, file, {0, 128 * 1024});
    ASSERT_TRUE(got) << got.error().describe();
    EXPECT_TRUE(std::equal(got->begin(), got->end(), file.data.begin()));
  }
  EXPECT_EQ(warm.stats().buffers_allocated, 0u);
  EXPECT_GE(cold.stats().buffers_allocated, 1u);
  // Reads larger than the warm buffer still work (they allocate).
  auto whole = get_all(warm, file);
  ASSERT_TRUE(whole) << whole.error().describe();
  EXPECT_EQ(*whole, file.data);
}

TEST_F(DownloadTest, RepeatedContentAcrossNonAdjacentTerms) {
  // File = A B A' where A and A' are the same chunks of xorb 0: the entry is materialized twice.
  const auto file = upload_repeated_terms(21, "rep.bin");
  ASSERT_GE(file.xorbs, 2u);
  auto c = open_cache();
  Downloader downloader(*reader_, c.get());
  auto got = get_all(downloader, file);
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_TRUE(*got == file.data);
  // Jobs: xorb 0 | xorb 1 | xorb 0 (the last two terms, adjacent, are one run). The second use
  // of xorb 0 came from the cache (it was fetched whole and verified).
  EXPECT_EQ(downloader.stats().fetches, 2u);
  EXPECT_EQ(downloader.stats().cache_jobs, 1u);
  // Without a cache the entry is fetched again: same bytes.
  Downloader uncached(*reader_, nullptr);
  auto again = get_all(uncached, file);
  ASSERT_TRUE(again) << again.error().describe();
  EXPECT_TRUE(*again == file.data);
  EXPECT_EQ(uncached.stats().fetches, 3u);
  auto middle = get_range(uncached, file, {kMiB, file.data.size() - 5});
  ASSERT_TRUE(middle) << middle.error().describe();
  EXPECT_TRUE(std::equal(middle->begin(), middle->end(), file.data.begin() + static_cast<std::ptrdiff_t>(kMiB)));
}

TEST_F(DownloadTest, SecondDownloadServedFromCache) {
  const auto file = upload(10 * kMiB, 31, "cached.bin", 4 * kMiB);
  auto c = open_cache();
  {
    Downloader first(*reader_, c.get());
    auto got = get_all(first, file);
    ASSERT_TRUE(got) << got.error().describe();
    EXPECT_TRUE(*got == file.data);
    EXPECT_GT(first.stats().bytes_fetched, file.data.size());  // chunk headers too
    EXPECT_GT(first.stats().chunks_cached, 0u);
  }
  const auto served = xorb_bytes_served();
  EXPECT_GT(served, 0u);
  const auto gets = xorbs_.gets();
  Downloader second(*reader_, c.get());
  auto got = get_all(second, file);
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_TRUE(*got == file.data);
  EXPECT_EQ(second.stats().bytes_fetched, 0u);
  EXPECT_EQ(second.stats().bytes_from_cache, file.data.size());
  // Ranges too, after the whole file was cached.
  auto part = get_range(second, file, {12345, 9 * kMiB + 3});
  ASSERT_TRUE(part) << part.error().describe();
  EXPECT_TRUE(std::equal(part->begin(), part->end(), file.data.begin() + 12345));
  EXPECT_EQ(second.stats().bytes_fetched, 0u);
  EXPECT_EQ(xorbs_.gets(), gets);
  EXPECT_EQ(xorb_bytes_served(), served);
}

TEST_F(DownloadTest, ReadFromCachePlansWithoutTheServer) {
  // Terms that start past chunk 0 and repeat chunks: A B A' A''.
  const auto file = upload_repeated_terms(23, "layout.bin");
  ASSERT_GE(file.xorbs, 2u);
  const std::uint64_t size = file.data.size();
  auto c = open_cache();
  Downloader downloader(*reader_, c.get());
  auto read = [&](xet::FileByteRange range, xet::Bytes& out) {
    out.clear();
    return downloader.read_from_cache(file.file_hash, size, range, [&](std::span<const std::byte> piece) {
      out.insert(out.end(), piece.begin(), piece.end());
      return true;
    });
  };
  xet::Bytes out;
  // Nothing cached yet: false, and the sink is not called.
  auto cold = read({100, 5000}, out);
  ASSERT_TRUE(cold) << cold.error().describe();
  EXPECT_FALSE(*cold);
  EXPECT_TRUE(out.empty());
  ASSERT_TRUE(get_all(downloader, file));
  const auto requests = transport_.requests().size();
  std::mt19937_64 rng(9);
  std::vector<xet::FileByteRange> ranges = {{0, 1}, {size - 1, size + 10}, {0, size}, {size / 2, size / 2 + 4096}};
  for (int i = 0; i < 60; ++i) {
    const std::uint64_t a = rng() % size;
    ranges.push_back({a, a + 1 + rng() % 300'000});
  }
  for (const auto& r : ranges) {
    SCOPED_TRACE(std::to_string(r.start) + "-" + std::to_string(r.end));
    auto got = read(r, out);
    ASSERT_TRUE(got) << got.error().describe();
    ASSERT_TRUE(*got);
    ASSERT_EQ(out.size(), std::min(r.end, size) - r.start);
    EXPECT_TRUE(std::equal(out.begin(), out.end(), file.data.begin() + static_cast<std::ptrdiff_t>(r.start)));
  }
  EXPECT_EQ(transport_.requests().size(), requests);  // no reconstruction, no fetch
  EXPECT_EQ(downloader.stats().reads_from_cache, ranges.size());
  // Small reads read only the 16 KiB groups of a chunk that hold them, not whole chunks (about
  // 64 KiB each here): 20 reads of 4 KiB stay well under 20 × (4 KiB + two groups).
  const std::uint64_t served_before = downloader.stats().bytes_from_cache;
  for (int i = 0; i < 20; ++i) {
    const std::uint64_t a = rng() % (size - 4096);
    auto got = read({a, a + 4096}, out);
    ASSERT_TRUE(got && *got);
    EXPECT_TRUE(std::equal(out.begin(), out.end(), file.data.begin() + static_cast<std::ptrdiff_t>(a)));
  }
  EXPECT_LE(downloader.stats().bytes_from_cache - served_before, 20u * (4096 + 2 * xet::kChunkGroupBytes));
  EXPECT_EQ(downloader.stats().layouts_fetched, 1u);
  // A wrong size (a layout that does not add up) and an oversized range are declined.
  Downloader other(*reader_, c.get());
  auto wrong = other.read_from_cache(file.file_hash, size + 1, {0, 10}, [](auto) { return true; });
  ASSERT_TRUE(wrong);
  EXPECT_FALSE(*wrong);
  auto large = downloader.read_from_cache(file.file_hash, Downloader::kMaxCacheRead * 2,
                                          {0, Downloader::kMaxCacheRead + 1}, [](auto) { return true; });
  ASSERT_TRUE(large);
  EXPECT_FALSE(*large);
  // Without a cache: declined at once.
  Downloader uncached(*reader_, nullptr);
  auto none = uncached.read_from_cache(file.file_hash, size, {0, 10}, [](auto) { return true; });
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
}

TEST_F(DownloadTest, CorruptBytesFailAndAreNeverCached) {
  const auto file = upload(3 * kMiB, 41, "corrupt.bin", kMiB);
  auto c = open_cache();
  Downloader downloader(*reader_, c.get());
  // A byte inside the first chunk's data (random data is stored raw: it decodes fine, the hashes
  // catch it).
  xorbs_.set_flip(1000);
  auto got = get_all(downloader, file);
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().kind, DownloadErrorKind::corrupt) << got.error().describe();
  EXPECT_EQ(downloader.stats().chunks_cached, 0u);
  auto cstats = c->stats();
  ASSERT_TRUE(cstats);
  EXPECT_EQ(cstats->entries + cstats->pending_bytes, 0u);
  // A byte in a chunk header: caught while decoding.
  xorbs_.set_flip(3);
  auto header = get_all(downloader, file);
  ASSERT_FALSE(header);
  EXPECT_EQ(header.error().kind, DownloadErrorKind::corrupt) << header.error().describe();
  EXPECT_EQ(downloader.stats().chunks_cached, 0u);
  // Clean again: the bytes come from the network (nothing corrupt was cached) and are right.
  xorbs_.set_flip(std::nullopt);
  const auto fetched_before = downloader.stats().bytes_fetched;
  auto clean = get_all(downloader, file);
  ASSERT_TRUE(clean) << clean.error().describe();
  EXPECT_TRUE(*clean == file.data);
  EXPECT_GT(downloader.stats().bytes_fetched, fetched_before + file.data.size());
  EXPECT_EQ(downloader.stats().bytes_from_cache, 0u);
}

TEST_F(DownloadTest, PartialXorbRangesAreNotCached) {
  // A file using chunks [2, n - 2) of a xorb: its fetch range is a part of the xorb, which the
  // client cannot check against a hash, so it is served but not cached.
  const auto source = bucketfs::testing::random_bytes(2 * kMiB, 43);
  const auto xorbs = pack(source, 4 * kMiB);
  ASSERT_EQ(xorbs.size(), 1u);
  const auto n = static_cast<std::uint32_t>(xorbs[0].xorb.chunks.size());
  ASSERT_GT(n, 5u);
  const auto file = register_file(xorbs, {{0, 2, n - 2}}, source, "partial.bin");
  auto c = open_cache();
  Downloader downloader(*reader_, c.get());
  auto got = get_all(downloader, file);
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_TRUE(*got == file.data);
  EXPECT_EQ(downloader.stats().chunks_cached, 0u);
  EXPECT_EQ(downloader.stats().uncached_ranges, 1u);
  // A file using the whole xorb is cached, and then serves the part from the cache.
  const auto whole = register_file(xorbs, {{0, 0, n}}, source, "whole.bin");
  ASSERT_TRUE(get_all(downloader, whole));
  EXPECT_EQ(downloader.stats().chunks_cached, n);
  const auto fetched = downloader.stats().bytes_fetched;
  auto again = get_all(downloader, file);
  ASSERT_TRUE(again) << again.error().describe();
  EXPECT_TRUE(*again == file.data);
  EXPECT_EQ(downloader.stats().bytes_fetched, fetched);
}

TEST_F(DownloadTest, ExpiredSignedUrlRefetchesReconstruction) {
  const auto file = upload(2 * kMiB, 51, "expire.bin", kMiB);
  Downloader downloader(*reader_, nullptr);
  xorbs_.expire_next();
  auto got = get_all(downloader, file);
  ASSERT_TRUE(got) << got.error().describe();
  EXPECT_TRUE(*got == file.data);
  EXPECT_EQ(downloader.stats().reconstruction_refreshes, 1u);
}

TEST_F(DownloadTest, SinkCanStop) {
  const auto file = upload(5 * kMiB, 61, "stop.bin", kMiB);
  Downloader downloader(*reader_, nullptr);
  std::size_t calls = 0;
  auto done = downloader.download_file(file.file_hash, file.data.size(), [&](std::span<const std::byte>) {
    return ++calls < 2;
  });
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().kind, DownloadErrorKind::cancelled);
  EXPECT_EQ(calls, 2u);
}

TEST_F(DownloadTest, WrongExpectedSizeOrHashIsAnError) {
  const auto file = upload(100'000, 71, "size.bin");
  Downloader downloader(*reader_, nullptr);
  auto none = [](std::span<const std::byte>) { return true; };
  auto bad_size = downloader.download_file(file.file_hash, file.data.size() + 1, none);
  ASSERT_FALSE(bad_size);
  EXPECT_EQ(bad_size.error().kind, DownloadErrorKind::corrupt);
  xet::Hash unknown = file.file_hash;
  unknown.bytes[0] ^= 1;
  auto missing = downloader.download_file(unknown, file.data.size(), none);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, DownloadErrorKind::hub);
  EXPECT_EQ(missing.error().hub_kind, hub::HubErrorKind::entry_not_found);
}

// Not a unit test: the throughput figure (run with --gtest_also_run_disabled_tests).
TEST_F(DownloadTest, DISABLED_Throughput256MiB) {
  const auto file = upload(256 * kMiB, 81, "bench.bin");
  auto seconds = [](auto start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  const double mib = static_cast<double>(file.data.size()) / static_cast<double>(kMiB);
  for (int round = 0; round < 3; ++round) {
    Downloader downloader(*reader_, nullptr);
    std::uint64_t n = 0;
    const auto start = std::chrono::steady_clock::now();
    auto done = downloader.download_file(file.file_hash, file.data.size(), [&](std::span<const std::byte> p) {
      n += p.size();
      return true;
    });
    const double ours = seconds(start);
    ASSERT_TRUE(done) << done.error().describe();
    ASSERT_EQ(n, file.data.size());
    const std::string command = "curl -sf -o /dev/null -H 'Authorization: Bearer " + std::string(kAliceWrite) +
                                "' " + base_url_ + "/buckets/alice/dl/resolve/bench.bin";
    const auto curl_start = std::chrono::steady_clock::now();
    ASSERT_EQ(std::system(command.c_str()), 0);
    const double curl = seconds(curl_start);
    std::printf("round %d: Downloader %.0f MiB/s (%.3f s), curl resolve %.0f MiB/s (%.3f s), ratio %.2f\n", round,
                mib / ours, ours, mib / curl, curl, curl / ours);
  }
}

}  // namespace
}  // namespace bucketfs::transfer
