// Uploader / UploadSession against a real bucketfs-server in-process: committed size and xet hash
// for edge sizes, byte-exact reconstruction through resolve, dedup ratios (local index and global
// dedup alone) read from the server's metrics, overlap of chunking and xorb upload, the memory
// bound, several files in one shard, and retries through injected 503s.
#include "bucketfs/transfer/upload.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <fstream>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include "bucketfs/cache/node_store.h"
#include "bucketfs/http/retry.h"
#include "bucketfs/hub/xet_token.h"
#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/shard.h"
#include "hub_test_fixture.h"
#include "temp_dir.h"

namespace bucketfs::transfer {
namespace {

using hub::testing::kAliceWrite;
using namespace std::chrono_literals;

constexpr std::size_t kMiB = std::size_t{1} << 20;

xet::Bytes random_data(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  xet::Bytes out(n);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const std::uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
  }
  for (; i < n; ++i) out[i] = std::byte(rng() & 0xff);
  return out;
}

// xet-core's file hash of `data`, computed in one piece.
xet::Hash expected_hash(xet::ByteSpan data) {
  std::vector<xet::HashAndSize> chunks;
  std::size_t offset = 0;
  for (const auto length : xet::chunk_lengths(data)) {
    chunks.push_back({xet::chunk_hash(data.subspan(offset, length)), length});
    offset += length;
  }
  return chunks.empty() ? xet::Hash{} : xet::file_hash(chunks);
}

// A source that remembers how far it has been read.
struct CountingSource {
  xet::ByteSpan data;
  std::shared_ptr<std::atomic<std::uint64_t>> read = std::make_shared<std::atomic<std::uint64_t>>(0);

  UploadSource source() const {
    return [data = data, read = read](std::span<std::byte> buffer) -> std::expected<std::size_t, std::string> {
      const std::uint64_t at = read->load();
      const std::size_t n = std::min<std::size_t>(buffer.size(), data.size() - at);
      std::memcpy(buffer.data(), data.data() + at, n);
      read->store(at + n);
      return n;
    };
  }
};

// Fails every `every`-th request with a 503 before it reaches the server.
class Every5thFails : public http::ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  http::Result<http::Response> perform(const http::Request& request, const http::CancellationToken* cancel) override {
    if (++count_ % 5 == 0) {
      failed_++;
      http::Error error;
      error.kind = http::ErrorKind::http_status;
      error.status = 503;
      error.route = http::route_of(request.method, request.url);
      error.message = "injected";
      return std::unexpected(error);
    }
    return ForwardingTransport::perform(request, cancel);
  }
  std::uint64_t failed() const { return failed_.load(); }

 private:
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> failed_{0};
};

class UploadTest : public hub::testing::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    hub_.emplace(transport_, settings(kAliceWrite));
    ASSERT_TRUE(hub_->create_bucket(bucket_));
    hub::XetTokenOptions options;
    options.write = true;
    tokens_.emplace(*hub_, bucket_, options);
    cas_.emplace(transport_, *tokens_);
  }

  std::shared_ptr<cache::DedupIndex> open_index(const std::string& name) {
    auto store = cache::NodeStore::open(std::filesystem::path(cache_dir_.path()) / name);
    EXPECT_TRUE(store);
    return std::make_shared<cache::DedupIndex>(*store);
  }

  std::uint64_t xorb_bytes_received() {
    http::Request request;
    request.url = base_url_ + "/metrics";
    auto response = curl_.perform(request, nullptr);
    EXPECT_TRUE(response);
    if (!response) return 0;
    const std::string_view text = response->body.text();
    const std::string_view name = "\nbucketfs_xorb_bytes_received_total ";
    const auto at = text.find(name);
    EXPECT_NE(at, std::string_view::npos);
    return std::stoull(std::string(text.substr(at + name.size(), 32)));
  }

  // GET resolve of `path` and compare with `expected`, streaming.
  void expect_bytes(const std::string& path, xet::ByteSpan expected) {
    auto resolved = hub_->resolve(bucket_, path);
    ASSERT_TRUE(resolved) << resolved.error().describe();
    EXPECT_EQ(resolved->size, expected.size());
    ASSERT_TRUE(resolved->xet_hash);
    EXPECT_EQ(*resolved->xet_hash, expected_hash(expected));
    if (expected.empty()) return;
    http::Request request;
    request.url = base_url_ + "/buckets/" + bucket_.ns + "/" + bucket_.name + "/resolve/" + path;
    request.headers.set("Authorization", std::string("Bearer ") + kAliceWrite);
    request.follow_redirects = true;
    std::uint64_t offset = 0;
    bool same = true;
    request.sink = [&](std::span<const std::byte> data) {
      if (offset + data.size() > expected.size() || std::memcmp(data.data(), expected.data() + offset, data.size()) != 0) {
        same = false;
      }
      offset += data.size();
      return true;
    };
    auto response = curl_.perform(request, nullptr);
    ASSERT_TRUE(response) << response.error().describe();
    EXPECT_EQ(response->status, 200);
    EXPECT_EQ(offset, expected.size());
    EXPECT_TRUE(same) << path << ": downloaded bytes differ";
  }

  naming::BucketId bucket_{"alice", "up"};
  std::optional<hub::HubClient> hub_;
  std::optional<hub::XetTokenSource> tokens_;
  std::optional<hub::CasClient> cas_;
  bucketfs::testing::TempDir cache_dir_{"bucketfs-upload-cache"};
};

TEST_F(UploadTest, EdgeSizesCommitTheRightHashAndBytes) {
  auto index = open_index("cache");
  Uploader uploader(*cas_, *hub_, index.get());
  const std::size_t sizes[] = {0, 1, 8191, 8192, 64 * 1024, 10 * kMiB, 70 * kMiB};
  for (const std::size_t size : sizes) {
    SCOPED_TRACE(size);
    const auto data = random_data(size, 1000 + size);
    const std::string path = "sizes/f" + std::to_string(size);
    auto done = uploader.upload_and_commit(bucket_, path, memory_source(data), 1'700'000'000'000);
    ASSERT_TRUE(done) << done.error().describe();
    EXPECT_EQ(done->file.size, size);
    EXPECT_EQ(done->file.file_hash, expected_hash(data));
    EXPECT_EQ(done->file.new_chunk_bytes, size);  // random data: nothing to dedup
    if (size > 64 * kMiB) {
      EXPECT_EQ(done->session.xorbs_uploaded, 2u);
    }
    expect_bytes(path, data);
  }
  auto entries = hub_->paths_info(bucket_, std::vector<std::string>{"sizes/f8191"});
  ASSERT_TRUE(entries);
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_EQ((*entries)[0].mtime_ms, 1'700'000'000'000);
}

// The index names, for every chunk of `data`, a xorb the server never received (a wiped store,
// a garbage-collected xorb, a cache dir shared between servers).
void put_lost_entries(cache::DedupIndex& index, xet::ByteSpan data, const xet::Hash& lost) {
  std::vector<cache::DedupRecord> records;
  std::size_t offset = 0;
  std::uint32_t chunk_index = 0;
  for (const auto length : xet::chunk_lengths(data)) {
    records.push_back({xet::chunk_hash(data.subspan(offset, length)),
                       cache::DedupEntry{lost, chunk_index++, static_cast<std::uint32_t>(length)}});
    offset += length;
  }
  ASSERT_TRUE(index.put_many(records));
}

TEST_F(UploadTest, StaleIndexEntriesAreDroppedAndASeekableSourceUploadsAgain) {
  const auto data = random_data(3 * kMiB, 77);
  const xet::Hash lost = xet::chunk_hash(xet::as_byte_span(std::string("a xorb the server lost")));
  const xet::Hash elsewhere = xet::chunk_hash(xet::as_byte_span(std::string("another xorb")));
  const xet::Hash unrelated_chunk = xet::chunk_hash(xet::as_byte_span(std::string("unrelated")));
  auto index = open_index("cache");
  ASSERT_TRUE(index->put_many(std::vector{cache::DedupRecord{unrelated_chunk, cache::DedupEntry{elsewhere, 0, 9}}}));
  const xet::Hash first_chunk = xet::chunk_hash(xet::ByteSpan(data).subspan(0, xet::chunk_lengths(data).front()));
  Uploader uploader(*cas_, *hub_, index.get());

  // A sequential source cannot be read again: the caller gets the refusal, flagged, and the
  // lost xorb's entries are gone (only those).
  put_lost_entries(*index, data, lost);
  CountingSource sequential{data};
  auto refused = uploader.upload_and_commit(bucket_, "piped.bin", sequential.source());
  ASSERT_FALSE(refused);
  EXPECT_TRUE(refused.error().stale_local_dedup) << refused.error().describe();
  ASSERT_TRUE(refused.error().hub);
  EXPECT_EQ(refused.error().hub->kind, hub::HubErrorKind::invalid);
  EXPECT_NE(refused.error().message.find("dropped"), std::string::npos) << refused.error().message;
  EXPECT_FALSE(index->get(first_chunk).value());
  EXPECT_TRUE(index->get(unrelated_chunk).value());
  auto again = uploader.upload_and_commit(bucket_, "piped.bin", CountingSource{data}.source());
  ASSERT_TRUE(again) << again.error().describe();
  expect_bytes("piped.bin", data);

  // A seekable source is uploaded again at once, without index lookups; its new xorbs are
  // recorded in the index in place of the lost one.
  const auto other = random_data(3 * kMiB, 78);
  const xet::Hash other_first = xet::chunk_hash(xet::ByteSpan(other).subspan(0, xet::chunk_lengths(other).front()));
  put_lost_entries(*index, other, lost);
  auto done = uploader.upload_and_commit(bucket_, "file.bin", memory_source(other));
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->file.local_dedup_chunks, 0u);
  EXPECT_EQ(done->file.new_chunk_bytes, other.size());
  EXPECT_EQ(done->file.file_hash, expected_hash(other));
  expect_bytes("file.bin", other);
  auto recorded = index->get(other_first);
  ASSERT_TRUE(recorded && *recorded);
  EXPECT_NE((*recorded)->xorb, lost);
}

TEST_F(UploadTest, SmallPiecesAndFdSourceGiveTheSameHash) {
  // Read pieces barely larger than two chunks: chunks carried across many blocks.
  UploadOptions options;
  options.read_piece = 256 * 1024;
  options.dedup_window = 1 * kMiB;
  Uploader uploader(*cas_, *hub_, nullptr, options);
  const auto data = random_data(5 * kMiB + 123, 7);
  const auto file = std::filesystem::path(dir_.path()) / "src.bin";
  {
    std::ofstream out(file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
  }
  const int fd = ::open(file.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  auto done = uploader.upload_and_commit(bucket_, "pieces.bin", fd_source(fd));
  ::close(fd);
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(done->file.file_hash, expected_hash(data));
  EXPECT_LE(done->session.peak_buffered_bytes, options.memory_budget());
  expect_bytes("pieces.bin", data);
}

TEST_F(UploadTest, SmallerXorbsBoundMemoryAndKeepTheFileHash) {
  // The mount's settings (16 MiB xorbs and window) and a tighter one: the file hash does not
  // depend on how chunks are packed, and memory_budget() shrinks with the xorb size.
  for (const std::size_t xorb : {std::size_t{16} << 20, std::size_t{3} << 20}) {
    SCOPED_TRACE(xorb);
    UploadOptions options;
    options.max_xorb_bytes = xorb;
    options.dedup_window = 16 * kMiB;
    EXPECT_LT(options.memory_budget(), UploadOptions{}.memory_budget() / 2);
    Uploader uploader(*cas_, *hub_, nullptr, options);
    const auto data = random_data(40 * kMiB + 99, 41 + xorb);
    const std::string path = "xorbs/" + std::to_string(xorb);
    auto done = uploader.upload_and_commit(bucket_, path, memory_source(data));
    ASSERT_TRUE(done) << done.error().describe();
    EXPECT_EQ(done->file.file_hash, expected_hash(data));
    // Random data: every xorb but the last is nearly full.
    EXPECT_GE(done->session.xorbs_uploaded, (data.size() + xorb - 1) / xorb);
    EXPECT_LE(done->session.xorbs_uploaded, data.size() / (xorb - 2 * xet::kMaxChunkSize) + 1);
    EXPECT_LE(done->session.peak_buffered_bytes, options.memory_budget());
    expect_bytes(path, data);
  }
}

TEST_F(UploadTest, BufferPoolCarriesBuffersToTheNextSession) {
  // A mount's settings: each upload is a new session; with a pool the second takes the first's
  // read blocks and xorb buffers instead of allocating (and faulting in) new ones.
  UploadOptions options;
  options.max_xorb_bytes = 16 * kMiB;
  options.dedup_window = 16 * kMiB;
  UploadBufferPool pool(options.memory_budget());
  options.buffer_pool = &pool;
  Uploader uploader(*cas_, *hub_, nullptr, options);
  SessionStats second;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    const auto data = random_data(40 * kMiB + 5, 90 + round);
    const std::string path = "pooled/" + std::to_string(round);
    auto done = uploader.upload_and_commit(bucket_, path, memory_source(data));
    ASSERT_TRUE(done) << done.error().describe();
    EXPECT_EQ(done->file.file_hash, expected_hash(data));
    EXPECT_LE(done->session.peak_buffered_bytes, options.memory_budget());
    expect_bytes(path, data);
    EXPECT_GT(pool.idle_bytes(), 0u);  // given back when the session ended
    EXPECT_LE(pool.idle_bytes(), options.memory_budget());
    second = done->session;
    if (round == 0) {
      EXPECT_EQ(second.pooled_blocks + second.pooled_xorb_buffers, 0u);
    }
  }
  EXPECT_GE(second.pooled_blocks, 2u);
  EXPECT_GE(second.pooled_xorb_buffers, 1u);
  // A pool too small for a block keeps nothing.
  UploadBufferPool tiny(kMiB);
  options.buffer_pool = &tiny;
  Uploader small(*cas_, *hub_, nullptr, options);
  const auto data = random_data(3 * kMiB, 99);
  auto done = small.upload_and_commit(bucket_, "pooled/tiny", memory_source(data));
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_EQ(tiny.idle_bytes(), 0u);
}

TEST_F(UploadTest, SessionSharesOneShardAndDedupsWithinIt) {
  const auto a = random_data(3 * kMiB, 11);
  auto b = a;  // same content plus a tail
  const auto tail = random_data(kMiB, 12);
  b.insert(b.end(), tail.begin(), tail.end());
  const std::uint64_t shards_before = transport_.count("POST " + base_url_ + "/v1/shards");
  UploadSession session(*cas_, nullptr);
  auto fa = session.add_file(memory_source(a));
  ASSERT_TRUE(fa) << fa.error().describe();
  auto fb = session.add_file(memory_source(b));
  ASSERT_TRUE(fb) << fb.error().describe();
  EXPECT_GE(fb->session_dedup_chunks + 3, fa->chunks);  // all of a's chunks but the last few
  EXPECT_LT(fb->new_chunk_bytes, 2 * kMiB);
  auto totals = session.finish();
  ASSERT_TRUE(totals) << totals.error().describe();
  EXPECT_EQ(totals->files, 2u);
  EXPECT_EQ(transport_.count("POST " + base_url_ + "/v1/shards") - shards_before, 1u);
  Uploader committer(*cas_, *hub_, nullptr);
  ASSERT_TRUE(committer.commit(bucket_, "a.bin", fa->file_hash));
  ASSERT_TRUE(committer.commit(bucket_, "b.bin", fb->file_hash));
  expect_bytes("a.bin", a);
  expect_bytes("b.bin", b);
}

TEST_F(UploadTest, RetriesInjected503s) {
  Every5thFails faulty(curl_);
  http::RetryPolicy policy;
  policy.initial_backoff = 5ms;
  policy.max_backoff = 50ms;
  http::RetryingTransport retrying(faulty, policy);
  hub::HubClient hub(retrying, settings(kAliceWrite));
  hub::XetTokenOptions token_options;
  token_options.write = true;
  hub::XetTokenSource tokens(hub, bucket_, token_options);
  hub::CasClient cas(retrying, tokens);
  Uploader uploader(cas, hub, nullptr);
  for (const std::size_t size : {std::size_t{100}, 3 * kMiB, 70 * kMiB}) {
    const auto data = random_data(size, 500 + size);
    const std::string path = "faults/f" + std::to_string(size);
    auto done = uploader.upload_and_commit(bucket_, path, memory_source(data));
    ASSERT_TRUE(done) << done.error().describe();
    EXPECT_EQ(done->file.file_hash, expected_hash(data));
    expect_bytes(path, data);
  }
  EXPECT_GE(faulty.failed(), 2u);
}

// The dedup scenario of issue 4: a large random file, then a copy with three 1 MiB regions
// rewritten and 100 bytes inserted near the start.
class UploadDedupTest : public UploadTest {
 protected:
  static constexpr std::size_t kSize = 256 * kMiB;

  static xet::Bytes edited(const xet::Bytes& original) {
    xet::Bytes copy = original;
    for (const std::size_t at : {40 * kMiB, 130 * kMiB, 200 * kMiB}) {
      const auto fresh = random_data(kMiB, at);
      std::memcpy(copy.data() + at, fresh.data(), kMiB);
    }
    const auto inserted = random_data(100, 99);
    copy.insert(copy.begin() + 4096, inserted.begin(), inserted.end());
    return copy;
  }

  // Uploads the original with `first_index` and checks overlap, memory and bytes.
  void upload_original(const xet::Bytes& original, cache::DedupIndex* first_index) {
    UploadOptions options;
    options.dedup_window = 16 * kMiB;  // a budget well below the file's size
    Uploader uploader(*cas_, *hub_, first_index, options);
    CountingSource source{original};
    std::atomic<std::uint64_t> read_at_first_post{0};
    transport_.set_delay([&](const http::Request& request) {
      if (request.method == "POST" && request.url.find("/v1/xorbs/") != std::string::npos) {
        std::uint64_t expected = 0;
        read_at_first_post.compare_exchange_strong(expected, source.read->load());
      }
    });
    const std::uint64_t before = xorb_bytes_received();
    const auto start = std::chrono::steady_clock::now();
    auto done = uploader.upload_and_commit(bucket_, "original.bin", source.source());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    transport_.set_delay(nullptr);
    ASSERT_TRUE(done) << done.error().describe();
    const std::uint64_t sent = xorb_bytes_received() - before;
    std::printf("[ upload ] %zu MiB new random data: %.2f s, %.0f MiB/s; xorb bytes %llu; peak buffered %llu MiB\n",
                original.size() / kMiB, seconds, double(original.size()) / kMiB / seconds,
                static_cast<unsigned long long>(sent),
                static_cast<unsigned long long>(done->session.peak_buffered_bytes / kMiB));
    EXPECT_EQ(done->file.file_hash, expected_hash(original));
    EXPECT_GE(sent, original.size());  // all new
    // Upload overlapped chunking: the first xorb went out long before the source was read.
    EXPECT_GT(read_at_first_post.load(), 0u);
    EXPECT_LT(read_at_first_post.load(), original.size() - 64 * kMiB);
    EXPECT_LE(done->session.peak_buffered_bytes, options.memory_budget());
    EXPECT_LT(options.memory_budget(), original.size());
  }

  // Uploads the edited copy; returns the new xorb bytes the server received.
  std::uint64_t upload_copy(const xet::Bytes& copy, cache::DedupIndex* index, UploadStats* stats_out) {
    Uploader uploader(*cas_, *hub_, index);
    const std::uint64_t before = xorb_bytes_received();
    auto done = uploader.upload_and_commit(bucket_, "copy.bin", memory_source(copy));
    EXPECT_TRUE(done) << done.error().describe();
    if (!done) return ~std::uint64_t{0};
    *stats_out = done->file;
    EXPECT_EQ(done->file.file_hash, expected_hash(copy));
    return xorb_bytes_received() - before;
  }
};

TEST_F(UploadDedupTest, EditedCopySendsUnder5PercentWithLocalIndex) {
  const auto original = random_data(kSize, 42);
  auto index = open_index("cache");
  upload_original(original, index.get());
  const auto copy = edited(original);
  UploadStats stats;
  const std::uint64_t sent = upload_copy(copy, index.get(), &stats);
  std::printf("[ dedup ] local index: new xorb bytes %llu of %zu (%.2f%%), chunks local %llu global %llu new %llu\n",
              static_cast<unsigned long long>(sent), copy.size(), 100.0 * double(sent) / double(copy.size()),
              static_cast<unsigned long long>(stats.local_dedup_chunks),
              static_cast<unsigned long long>(stats.global_dedup_chunks),
              static_cast<unsigned long long>(stats.new_chunks));
  EXPECT_LE(sent, copy.size() / 20);
  EXPECT_GT(stats.local_dedup_chunks, stats.chunks * 9 / 10);
  expect_bytes("copy.bin", copy);
}

TEST_F(UploadDedupTest, EditedCopySendsUnder5PercentWithGlobalDedupAlone) {
  const auto original = random_data(kSize, 43);
  auto first_cache = open_index("first");
  upload_original(original, first_cache.get());
  const auto copy = edited(original);
  auto fresh_cache = open_index("fresh");  // a fresh --cache-dir
  UploadStats stats;
  const std::uint64_t sent = upload_copy(copy, fresh_cache.get(), &stats);
  std::printf("[ dedup ] global only: new xorb bytes %llu of %zu (%.2f%%), chunks global %llu new %llu, queries %llu hits %llu\n",
              static_cast<unsigned long long>(sent), copy.size(), 100.0 * double(sent) / double(copy.size()),
              static_cast<unsigned long long>(stats.global_dedup_chunks),
              static_cast<unsigned long long>(stats.new_chunks),
              static_cast<unsigned long long>(stats.dedup_queries),
              static_cast<unsigned long long>(stats.dedup_query_hits));
  EXPECT_LE(sent, copy.size() / 20);
  EXPECT_EQ(stats.local_dedup_chunks, 0u);
  EXPECT_GT(stats.global_dedup_chunks, stats.chunks * 9 / 10);
  expect_bytes("copy.bin", copy);
}


// Writes `data` to a temporary regular file and opens it for reading.
class TempFileFd {
 public:
  TempFileFd(const std::filesystem::path& path, xet::ByteSpan data) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    out.close();
    fd_ = ::open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd_, 0);
  }
  ~TempFileFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  TempFileFd(const TempFileFd&) = delete;
  TempFileFd& operator=(const TempFileFd&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

// Offset of the first chunk after the file's first one whose hash is global dedup eligible.
std::uint64_t first_eligible_offset(xet::ByteSpan data) {
  std::uint64_t offset = 0;
  bool first = true;
  for (const auto length : xet::chunk_lengths(data)) {
    if (!first && xet::hash_is_global_dedup_eligible(xet::chunk_hash(data.subspan(offset, length)))) return offset;
    first = false;
    offset += length;
  }
  return data.size();
}

// Issue 4 with global dedup alone, from a regular file (as `bucketfs cp FILE` reads it), for
// several base files: however far the first eligible chunk is, the copy must send <= 5%.
// Global dedup can only find a file through a chunk that is eligible (the server indexes no
// other); a copy without any eligible chunk outside the first one (seed 203: about one 128 MiB
// random file in 7, one 256 MiB file in 55) cannot be deduplicated by it at all, which the test
// checks as such.
TEST_F(UploadDedupTest, EditedCopyFromAFileSendsUnder5PercentForAnyData) {
  struct Case {
    std::uint64_t seed;
    std::size_t size;
    bool wrapped;  // read through a wrapper that passes the positional reader on, as `cp` does
  };
  const Case cases[] = {{201, 256 * kMiB, false}, {202, 128 * kMiB, true}, {203, 128 * kMiB, false},
                        {204, 128 * kMiB, true},  {205, 128 * kMiB, false}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.seed);
    const auto original = random_data(c.size, c.seed);
    {
      Uploader uploader(*cas_, *hub_, nullptr);
      auto done = uploader.upload_and_commit(bucket_, "seeds/o" + std::to_string(c.seed), memory_source(original));
      ASSERT_TRUE(done) << done.error().describe();
    }
    xet::Bytes copy = original;
    for (const std::size_t at : {c.size / 6, c.size / 2, c.size * 4 / 5}) {
      const auto fresh = random_data(kMiB, c.seed * 1000 + at);
      std::memcpy(copy.data() + at, fresh.data(), kMiB);
    }
    const auto inserted = random_data(100, c.seed + 7);
    copy.insert(copy.begin() + 4096, inserted.begin(), inserted.end());
    const std::uint64_t eligible_at = first_eligible_offset(copy);
    TempFileFd file(std::filesystem::path(dir_.path()) / ("copy" + std::to_string(c.seed)), copy);
    auto fresh_cache = open_index("fresh" + std::to_string(c.seed));  // a fresh --cache-dir
    Uploader uploader(*cas_, *hub_, fresh_cache.get());
    const UploadSource plain = fd_source(file.fd());
    const UploadSource wrapper(
        [&plain](std::span<std::byte> buffer) { return plain(buffer); },
        [&plain](std::uint64_t offset, std::span<std::byte> buffer) { return plain.read_at(offset, buffer); });
    const std::uint64_t before = xorb_bytes_received();
    const std::string path = "seeds/c" + std::to_string(c.seed);
    auto done = uploader.upload_and_commit(bucket_, path, c.wrapped ? wrapper : plain);
    ASSERT_TRUE(done) << done.error().describe();
    const std::uint64_t sent = xorb_bytes_received() - before;
    const auto& stats = done->file;
    std::printf("[ dedup ] seed %llu, %zu MiB%s, first eligible chunk at %.1f MiB: new xorb bytes %llu (%.2f%%), "
                "queries %llu hits %llu, re-read %llu bytes, peak held chunks %llu, peak buffered %llu MiB\n",
                static_cast<unsigned long long>(c.seed), c.size / kMiB, c.wrapped ? " (wrapped fd)" : "",
                double(eligible_at) / kMiB, static_cast<unsigned long long>(sent),
                100.0 * double(sent) / double(copy.size()), static_cast<unsigned long long>(stats.dedup_queries),
                static_cast<unsigned long long>(stats.dedup_query_hits),
                static_cast<unsigned long long>(stats.reread_bytes),
                static_cast<unsigned long long>(stats.peak_held_chunks),
                static_cast<unsigned long long>(done->session.peak_buffered_bytes / kMiB));
    EXPECT_TRUE(stats.seekable);
    EXPECT_EQ(stats.file_hash, expected_hash(copy));
    if (eligible_at == copy.size()) {
      EXPECT_EQ(c.seed, 203u);  // the only case chosen so
      EXPECT_EQ(stats.dedup_query_hits, 0u);
      EXPECT_EQ(stats.new_chunk_bytes, copy.size());
    } else {
      EXPECT_LE(sent, copy.size() / 20);
    }
    EXPECT_GE(sent, 3 * kMiB);  // the rewritten regions are new
    EXPECT_EQ(stats.local_dedup_chunks, 0u);
    EXPECT_LE(done->session.peak_buffered_bytes, UploadOptions{}.memory_budget());
    if (c.size == 256 * kMiB) expect_bytes(path, copy);
  }
}

// A pipe cannot be read again: the bounded window decides chunks with what is known, and the
// bytes still arrive whole.
TEST_F(UploadTest, PipeSourceRoundTripsWithBoundedMemory) {
  UploadOptions options;
  options.dedup_window = 8 * kMiB;
  options.read_piece = 2 * kMiB;
  options.dedup_wait = 20ms;
  Uploader uploader(*cas_, *hub_, nullptr, options);
  const auto data = random_data(48 * kMiB + 777, 31);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  std::jthread writer([&] {
    std::size_t done = 0;
    while (done < data.size()) {
      const auto n = ::write(fds[1], data.data() + done, std::min<std::size_t>(data.size() - done, 100'000));
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    ::close(fds[1]);
  });
  auto done = uploader.upload_and_commit(bucket_, "pipe.bin", fd_source(fds[0]));
  writer.join();
  ::close(fds[0]);
  ASSERT_TRUE(done) << done.error().describe();
  EXPECT_FALSE(done->file.seekable);
  EXPECT_EQ(done->file.reread_bytes, 0u);
  EXPECT_EQ(done->file.size, data.size());
  EXPECT_EQ(done->file.file_hash, expected_hash(data));
  EXPECT_LE(done->session.peak_buffered_bytes, options.memory_budget());
  expect_bytes("pipe.bin", data);
}

// A regular file changed after it was chunked fails the upload instead of storing other bytes.
TEST_F(UploadTest, FileChangedBeforeReReadFailsTheUpload) {
  UploadOptions options;
  options.dedup_window = 2 * kMiB;
  options.read_piece = kMiB;
  Uploader uploader(*cas_, *hub_, nullptr, options);
  auto data = random_data(24 * kMiB, 32);
  const auto path = std::filesystem::path(dir_.path()) / "changing.bin";
  TempFileFd file(path, data);
  const UploadSource plain = fd_source(file.fd());
  bool changed = false;
  const UploadSource source = [&](std::span<std::byte> buffer) {
    auto n = plain(buffer);
    if (!changed && n && *n == 0) {  // at the end: rewrite the file's start
      changed = true;
      const int w = ::open(path.c_str(), O_WRONLY);
      const auto other = random_data(4 * kMiB, 33);
      EXPECT_EQ(::pwrite(w, other.data(), other.size(), 0), static_cast<ssize_t>(other.size()));
      ::close(w);
    }
    return n;
  };
  auto done = uploader.upload(source);
  if (done) {
    // Only possible when no chunk of the rewritten start was dropped before the end.
    EXPECT_EQ(done->file.reread_bytes, 0u);
  } else {
    EXPECT_EQ(done.error().kind, UploadErrorKind::source) << done.error().describe();
  }
}

}  // namespace
}  // namespace bucketfs::transfer
