#include "bucketfs/cache/chunk_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "bucketfs/cache/dedup_index.h"
#include "bucketfs/xet/chunker.h"
#include "format.h"
#include "temp_dir.h"
#include "test_util.h"

namespace bucketfs::cache {
namespace {

using testing::make_xorb;
using testing::TestXorb;

constexpr std::size_t kChunk = 64 * 1024;

std::vector<std::filesystem::path> segment_files(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> out;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".seg") out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::uint64_t total_file_bytes(const std::filesystem::path& dir) {
  std::uint64_t total = 0;
  for (const auto& path : segment_files(dir)) total += std::filesystem::file_size(path);
  return total;
}

// Inverts the bits of `mask` in the byte at `offset` of `path`.
void flip_byte(const std::filesystem::path& path, off_t offset, char mask) {
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char byte;
  ASSERT_EQ(::pread(fd, &byte, 1, offset), 1);
  byte = static_cast<char>(byte ^ mask);
  ASSERT_EQ(::pwrite(fd, &byte, 1, offset), 1);
  ::close(fd);
}

class ChunkCacheTest : public ::testing::Test {
 protected:
  bucketfs::testing::TempDir temp_{"bucketfs-cache-test"};
  std::shared_ptr<NodeStore> store_;
  std::atomic<std::uint64_t> ticks_{0};
  xet::Bytes buffer_ = xet::Bytes(64 * kChunk);

  ChunkCacheOptions options(std::uint64_t max_bytes = std::uint64_t{1} << 30) {
    ChunkCacheOptions o;
    o.max_bytes = max_bytes;
    o.flush_interval = std::chrono::hours(1);  // tests flush explicitly unless they say otherwise
    o.clock = [this] { return ++ticks_; };
    return o;
  }

  std::unique_ptr<ChunkCache> open_cache(ChunkCacheOptions o) {
    if (!store_) {
      auto store = NodeStore::open(temp_.path());
      EXPECT_TRUE(store) << store.error().message;
      store_ = *store;
    }
    auto cache = ChunkCache::open(store_, std::move(o));
    EXPECT_TRUE(cache) << cache.error().message;
    return cache ? std::move(*cache) : nullptr;
  }

  // The chunk's bytes, or nullopt on a miss; fails the test on an error.
  std::optional<xet::Bytes> read(ChunkCache& cache, const xet::Hash& xorb, std::uint32_t index) {
    auto got = cache.get(xorb, index, buffer_);
    EXPECT_TRUE(got) << got.error().message;
    if (!got || !*got) return std::nullopt;
    return xet::Bytes((*got)->begin(), (*got)->end());
  }

  bool holds(ChunkCache& cache, const TestXorb& x) {
    for (std::size_t i = 0; i < x.chunks.size(); ++i) {
      auto bytes = read(cache, x.hash, static_cast<std::uint32_t>(i));
      if (!bytes) return false;
      EXPECT_EQ(*bytes, x.chunks[i]) << "chunk " << i;
    }
    return true;
  }

  ChunkCacheStats stats(ChunkCache& cache) {
    auto s = cache.stats();
    EXPECT_TRUE(s) << s.error().message;
    return s ? *s : ChunkCacheStats{};
  }

  std::filesystem::path chunk_dir() const { return std::filesystem::path(temp_.path()) / "chunks"; }
};

TEST_F(ChunkCacheTest, RoundTripsChunksAndRanges) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(1, 8, kChunk);
  ASSERT_TRUE(cache->put(x.hash, 0, x.data()));

  for (int flushed = 0; flushed < 2; ++flushed) {  // served from the queue, then from LMDB
    for (std::uint32_t i = 0; i < 8; ++i) EXPECT_EQ(read(*cache, x.hash, i), x.chunks[i]) << i;
    auto range = cache->get_range(x.hash, 0, 8, buffer_);
    ASSERT_TRUE(range && *range);
    EXPECT_EQ((*range)->end, 8u);
    const xet::Bytes all = x.concat(0, 8);
    ASSERT_EQ((*range)->size, all.size());
    EXPECT_TRUE(std::equal(all.begin(), all.end(), buffer_.begin()));

    auto middle = cache->get_range(x.hash, 3, 6, buffer_);
    ASSERT_TRUE(middle && *middle);
    EXPECT_EQ((*middle)->end, 6u);
    const xet::Bytes mid = x.concat(3, 6);
    ASSERT_EQ((*middle)->size, mid.size());
    EXPECT_TRUE(std::equal(mid.begin(), mid.end(), buffer_.begin()));
    ASSERT_TRUE(cache->flush());
  }
  const auto s = stats(*cache);
  EXPECT_EQ(s.entries, 8u);
  EXPECT_EQ(s.used_bytes, x.concat(0, 8).size());
  EXPECT_EQ(s.pending_bytes, 0u);
}

// Puts larger than the 4 MiB staging buffer, with uneven chunk sizes, so that puts start and end
// off the 4 KiB blocks of direct I/O: the segment file must be exactly the concatenation of the
// payloads, and large range reads (direct I/O) and small ones (page cache) must return them.
TEST_F(ChunkCacheTest, LargeUnalignedPutsRoundTripThroughDirectIo) {
  auto o = options();
  o.segment_bytes = 64 << 20;
  auto cache = open_cache(o);
  const TestXorb a = make_xorb(31, 70, kChunk + 123);  // ~4.6 MiB: more than one staging buffer
  const TestXorb b = make_xorb(32, 9, 5000);           // small: page cache only
  const TestXorb c = make_xorb(33, 40, kChunk - 77);
  ASSERT_TRUE(cache->put(a.hash, 0, a.data()));
  ASSERT_TRUE(cache->put(b.hash, 0, b.data()));
  ASSERT_TRUE(cache->put(c.hash, 0, c.data()));
  xet::Bytes big(8 << 20);
  for (int flushed = 0; flushed < 2; ++flushed) {
    for (const TestXorb* x : {&a, &b, &c}) {
      const auto n = static_cast<std::uint32_t>(x->chunks.size());
      auto range = cache->get_range(x->hash, 0, n, big);
      ASSERT_TRUE(range && *range);
      EXPECT_EQ((*range)->end, n);
      const xet::Bytes all = x->concat(0, n);
      ASSERT_EQ((*range)->size, all.size());
      EXPECT_TRUE(std::equal(all.begin(), all.end(), big.begin()));
      ASSERT_EQ((*range)->chunks.size(), n);
      for (std::uint32_t i = 0; i < n; ++i) {
        EXPECT_EQ((*range)->chunks[i].hash, x->hashes[i]);
        EXPECT_EQ((*range)->chunks[i].size, x->chunks[i].size());
      }
      EXPECT_EQ(read(*cache, x->hash, n / 2), x->chunks[n / 2]);
      auto tail = cache->get_range(x->hash, n / 3, n, big);  // starts off the block boundaries
      ASSERT_TRUE(tail && *tail);
      const xet::Bytes rest = x->concat(n / 3, n);
      ASSERT_EQ((*tail)->size, rest.size());
      EXPECT_TRUE(std::equal(rest.begin(), rest.end(), big.begin()));
    }
    ASSERT_TRUE(cache->flush());
  }
  const std::uint64_t payload = a.concat(0, a.chunks.size()).size() + b.concat(0, b.chunks.size()).size() +
                                c.concat(0, c.chunks.size()).size();
  EXPECT_EQ(total_file_bytes(chunk_dir()), payload);
  EXPECT_EQ(stats(*cache).corruptions, 0u);
}

TEST_F(ChunkCacheTest, RangeStopsAtWhatFitsAndReportsSmallBuffers) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(2, 6, kChunk);
  ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
  ASSERT_TRUE(cache->flush());
  // Room for three chunks and a bit: three come back.
  std::vector<std::byte> small(x.concat(0, 3).size() + 100);
  auto range = cache->get_range(x.hash, 0, 6, small);
  ASSERT_TRUE(range && *range);
  EXPECT_EQ((*range)->end, 3u);
  EXPECT_EQ((*range)->size, x.concat(0, 3).size());

  std::vector<std::byte> tiny(100);
  auto too_small = cache->get(x.hash, 0, tiny);
  ASSERT_FALSE(too_small);
  EXPECT_EQ(too_small.error().code, ErrorCode::kBufferTooSmall);

  auto empty = cache->get_range(x.hash, 4, 4, buffer_);
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().code, ErrorCode::kInvalidArgument);
}

TEST_F(ChunkCacheTest, MissIsAnEmptyOptionalAndPrefixHitsStopAtTheGap) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(3, 8, 20000);
  auto miss = cache->get(x.hash, 0, buffer_);
  ASSERT_TRUE(miss);
  EXPECT_FALSE(*miss);

  ASSERT_TRUE(cache->put(x.hash, 2, x.data(2, 5)));  // chunks 2, 3, 4
  ASSERT_TRUE(cache->flush());
  EXPECT_FALSE(read(*cache, x.hash, 1));
  EXPECT_FALSE(read(*cache, x.hash, 5));
  auto prefix = cache->get_range(x.hash, 2, 8, buffer_);
  ASSERT_TRUE(prefix && *prefix);
  EXPECT_EQ((*prefix)->end, 5u);
  auto gap = cache->get_range(x.hash, 0, 8, buffer_);
  ASSERT_TRUE(gap);
  EXPECT_FALSE(*gap);
  // Another xorb with the same chunk indices is a different key.
  EXPECT_FALSE(read(*cache, make_xorb(4, 1, 10).hash, 2));
  EXPECT_GE(stats(*cache).misses, 5u);
}

TEST_F(ChunkCacheTest, ChunkSizesComeFromTheIndexAllOrNothing) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(5, 8, 20000, /*compressible=*/true);
  ASSERT_TRUE(cache->put(x.hash, 2, x.data(2, 6)));  // chunks 2..5
  for (int flushed = 0; flushed < 2; ++flushed) {  // from the queue, then from LMDB
    auto sizes = cache->chunk_sizes(x.hash, 2, 6);
    ASSERT_TRUE(sizes && *sizes);
    ASSERT_EQ((*sizes)->size(), 4u);
    for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ((**sizes)[i], x.chunks[2 + i].size()) << i;  // raw, not stored
    auto gap = cache->chunk_sizes(x.hash, 1, 6);
    ASSERT_TRUE(gap);
    EXPECT_FALSE(*gap);
    auto past = cache->chunk_sizes(x.hash, 4, 7);
    ASSERT_TRUE(past);
    EXPECT_FALSE(*past);
    ASSERT_TRUE(cache->flush());
  }
  EXPECT_FALSE(cache->chunk_sizes(x.hash, 3, 3));  // an empty range is an error
  EXPECT_EQ(stats(*cache).hits, 0u);                 // no bytes were read
}

TEST_F(ChunkCacheTest, ReopenKeepsEntries) {
  const TestXorb x = make_xorb(5, 5, kChunk);
  {
    auto cache = open_cache(options());
    ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
    // No explicit flush: closing commits what is queued.
  }
  store_.reset();
  auto cache = open_cache(options());
  EXPECT_TRUE(holds(*cache, x));
  EXPECT_EQ(stats(*cache).entries, 5u);
}

TEST_F(ChunkCacheTest, BackgroundFlusherCommitsForOtherInstances) {
  auto o = options();
  o.flush_interval = std::chrono::milliseconds(20);
  auto writer = open_cache(o);
  auto reader = open_cache(options());
  const TestXorb x = make_xorb(6, 3, 1000);
  ASSERT_TRUE(writer->put(x.hash, 0, x.data()));
  // Another instance sees only committed entries; the flusher commits without being asked.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!read(*reader, x.hash, 0) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(holds(*reader, x));
}

TEST_F(ChunkCacheTest, FlippedByteIsDetectedDroppedAndRefetchable) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(7, 4, kChunk);
  ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
  ASSERT_TRUE(cache->flush());
  const auto files = segment_files(chunk_dir());
  ASSERT_EQ(files.size(), 1u);
  // Flip one byte in the middle of chunk 2 (raw chunks lie back to back).
  flip_byte(files[0], static_cast<off_t>(x.chunks[0].size() + x.chunks[1].size() + 1234), 0x10);
  EXPECT_FALSE(read(*cache, x.hash, 2));
  EXPECT_EQ(stats(*cache).corruptions, 1u);
  EXPECT_EQ(stats(*cache).corruptions_total, 1u);
  EXPECT_EQ(stats(*cache).entries, 3u);  // the entry is gone...
  EXPECT_FALSE(read(*cache, x.hash, 2));
  EXPECT_EQ(stats(*cache).corruptions, 1u);  // ...so the next read is a plain miss
  EXPECT_EQ(read(*cache, x.hash, 1), x.chunks[1]);
  EXPECT_EQ(read(*cache, x.hash, 3), x.chunks[3]);
  auto range = cache->get_range(x.hash, 0, 4, buffer_);
  ASSERT_TRUE(range && *range);
  EXPECT_EQ((*range)->end, 2u);  // stops before the dropped chunk

  ASSERT_TRUE(cache->put(x.hash, 2, x.data(2, 3)));  // the refetch
  EXPECT_EQ(read(*cache, x.hash, 2), x.chunks[2]);
  ASSERT_TRUE(cache->flush());
  EXPECT_TRUE(holds(*cache, x));
}

// Part reads: any byte range of a chunk comes back exactly, from the queue and from LMDB, for
// chunks with group values (raw, > 16 KiB), small chunks and compressed ones (read whole).
TEST_F(ChunkCacheTest, PartReadsReturnExactlyTheAskedBytes) {
  auto o = options();
  o.compression_level = 3;
  auto cache = open_cache(o);
  const TestXorb big = make_xorb(40, 3, 90000);
  const TestXorb small = make_xorb(41, 2, 9000);
  const TestXorb text = make_xorb(42, 2, kChunk, /*compressible=*/true);
  for (const TestXorb* x : {&big, &small, &text}) ASSERT_TRUE(cache->put(x->hash, 0, x->data()));
  for (int flushed = 0; flushed < 2; ++flushed) {
    for (const TestXorb* x : {&big, &small, &text}) {
      for (std::uint32_t i = 0; i < x->chunks.size(); ++i) {
        const xet::Bytes& chunk = x->chunks[i];
        const std::pair<std::size_t, std::size_t> ranges[] = {
            {0, 4096}, {16380, 8}, {16384, 16384}, {chunk.size() - 4096, 4096}, {100, chunk.size() - 200},
            {chunk.size() / 2, 0}, {0, chunk.size()}};
        for (const auto& [at, length] : ranges) {
          if (at + length > chunk.size()) continue;
          xet::Bytes out(length);
          auto got = cache->get_part(x->hash, i, at, out);
          ASSERT_TRUE(got) << got.error().message;
          ASSERT_TRUE(*got) << "chunk " << i << " at " << at;
          EXPECT_EQ(**got, length);
          EXPECT_TRUE(std::equal(out.begin(), out.end(), chunk.begin() + static_cast<std::ptrdiff_t>(at)))
              << "chunk " << i << " at " << at << " length " << length;
        }
      }
    }
    ASSERT_TRUE(cache->flush());
  }
  xet::Bytes out(10);
  auto past = cache->get_part(big.hash, 0, big.chunks[0].size() - 5, out);
  ASSERT_FALSE(past);
  EXPECT_EQ(past.error().code, ErrorCode::kInvalidArgument);
  auto missing = cache->get_part(big.hash, 7, 0, out);
  ASSERT_TRUE(missing);
  EXPECT_FALSE(*missing);
  EXPECT_EQ(stats(*cache).corruptions, 0u);
}

// A part read hashes only the groups it reads, and those must give the chunk hash: a flipped
// byte in them is a corruption (entry dropped), and a part read of other groups of the same
// chunk, before that, does not see the flip but returns correct bytes.
TEST_F(ChunkCacheTest, PartReadDetectsAFlippedByteInTheGroupsItReads) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(43, 2, 90000);
  ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
  ASSERT_TRUE(cache->flush());
  const auto files = segment_files(chunk_dir());
  ASSERT_EQ(files.size(), 1u);
  const std::size_t flipped = 40000;  // in group 2 of chunk 1
  flip_byte(files[0], static_cast<off_t>(x.chunks[0].size() + flipped), 0x01);
  xet::Bytes out(4096);
  auto other = cache->get_part(x.hash, 1, 0, out);  // group 0: untouched bytes
  ASSERT_TRUE(other && *other);
  EXPECT_TRUE(std::equal(out.begin(), out.end(), x.chunks[1].begin()));
  auto bad = cache->get_part(x.hash, 1, flipped - 100, out);  // group 2
  ASSERT_TRUE(bad);
  EXPECT_FALSE(*bad);
  EXPECT_EQ(stats(*cache).corruptions, 1u);
  EXPECT_FALSE(read(*cache, x.hash, 1));  // dropped
  EXPECT_EQ(read(*cache, x.hash, 0), x.chunks[0]);
}

// A store written without group values (format 1, or any entry of 60 bytes) is read whole.
TEST_F(ChunkCacheTest, EntriesWithoutGroupValuesAreReadWhole) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(44, 1, 90000);
  ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
  ASSERT_TRUE(cache->flush());
  {  // rewrite the entry as format 1 wrote it
    auto txn = store_->environment().begin_write();
    ASSERT_TRUE(txn);
    const auto key = format::chunk_key(x.hash, 0);
    auto value = txn->get(store_->databases().chunks, format::view(key));
    ASSERT_TRUE(value && *value);
    ASSERT_EQ((*value)->size(), format::kLocationSize + 6 * 32);
    const std::string shorter((*value)->data(), format::kLocationSize);
    ASSERT_TRUE(txn->put(store_->databases().chunks, format::view(key), shorter));
    ASSERT_TRUE(txn->commit());
  }
  xet::Bytes out(5000);
  auto got = cache->get_part(x.hash, 0, 70000, out);
  ASSERT_TRUE(got && *got);
  EXPECT_TRUE(std::equal(out.begin(), out.end(), x.chunks[0].begin() + 70000));
}

TEST_F(ChunkCacheTest, CorruptionOfAQueuedEntryIsCaughtToo) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(8, 2, 5000);
  ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
  const auto files = segment_files(chunk_dir());
  ASSERT_EQ(files.size(), 1u);
  std::filesystem::resize_file(files[0], 0);
  EXPECT_FALSE(read(*cache, x.hash, 0));
  EXPECT_FALSE(read(*cache, x.hash, 1));
  EXPECT_EQ(stats(*cache).corruptions, 2u);
  ASSERT_TRUE(cache->flush());
  EXPECT_EQ(stats(*cache).entries, 0u);
}

TEST_F(ChunkCacheTest, TruncatedFileDropsOnlyTheLostChunks) {
  const TestXorb x = make_xorb(9, 6, kChunk);
  {
    auto cache = open_cache(options());
    ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
  }
  const auto files = segment_files(chunk_dir());
  ASSERT_EQ(files.size(), 1u);
  std::filesystem::resize_file(files[0], x.concat(0, 3).size() + 100);
  auto cache = open_cache(options());
  for (std::uint32_t i = 0; i < 3; ++i) EXPECT_EQ(read(*cache, x.hash, i), x.chunks[i]);
  for (std::uint32_t i = 3; i < 6; ++i) EXPECT_FALSE(read(*cache, x.hash, i));
  EXPECT_EQ(stats(*cache).corruptions, 3u);
  ASSERT_TRUE(cache->put(x.hash, 3, x.data(3, 6)));
  ASSERT_TRUE(cache->flush());
  EXPECT_TRUE(holds(*cache, x));
}

TEST_F(ChunkCacheTest, MissingDataFileIsAMissAndItsRecordIsDroppedAtOpen) {
  const TestXorb x = make_xorb(10, 3, 4000);
  {
    auto cache = open_cache(options());
    ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
    ASSERT_TRUE(cache->flush());
    for (const auto& f : segment_files(chunk_dir())) std::filesystem::remove(f);
    EXPECT_FALSE(read(*cache, x.hash, 0));
  }
  store_.reset();
  auto cache = open_cache(options());
  const auto s = stats(*cache);
  EXPECT_EQ(s.entries, 0u);
  EXPECT_EQ(s.segments, 0u);
  EXPECT_EQ(s.used_bytes, 0u);
}

TEST_F(ChunkCacheTest, OrphanDataFilesAreRemovedAtOpen) {
  auto cache = open_cache(options());
  const auto orphan = chunk_dir() / "00000000000fffff.seg";
  { std::ofstream(orphan) << "left by a crash"; }
  const auto unrelated = chunk_dir() / "notes.txt";
  { std::ofstream(unrelated) << "not ours"; }
  auto second = open_cache(options());
  EXPECT_FALSE(std::filesystem::exists(orphan));
  EXPECT_TRUE(std::filesystem::exists(unrelated));
}

TEST_F(ChunkCacheTest, LruEvictionKeepsRecentlyUsedWithinBudget) {
  constexpr std::uint64_t kBudget = 2 << 20;
  auto o = options(kBudget);
  o.segment_bytes = 256 << 10;  // one 3-chunk xorb per segment
  auto cache = open_cache(o);
  std::vector<TestXorb> xorbs;
  for (std::uint64_t i = 0; i < 40; ++i) {
    xorbs.push_back(make_xorb(100 + i, 3, kChunk));
    ASSERT_TRUE(cache->put(xorbs.back().hash, 0, xorbs.back().data()));
    ASSERT_TRUE(holds(*cache, xorbs[0])) << "hot xorb lost after " << i;  // keeps xorb 0 recent
    ASSERT_TRUE(cache->flush());
    const auto s = stats(*cache);
    ASSERT_LE(s.used_bytes, kBudget);
    ASSERT_LE(total_file_bytes(chunk_dir()), kBudget);
  }
  const auto s = stats(*cache);
  EXPECT_GT(s.evicted_segments, 20u);
  EXPECT_GT(s.used_bytes, kBudget / 2);  // evicts segments, not everything
  EXPECT_EQ(total_file_bytes(chunk_dir()), s.used_bytes);
  EXPECT_EQ(segment_files(chunk_dir()).size(), s.segments);
  EXPECT_TRUE(holds(*cache, xorbs[0]));
  EXPECT_TRUE(holds(*cache, xorbs[39]));
  EXPECT_TRUE(holds(*cache, xorbs[38]));
  for (std::size_t i = 1; i < 25; ++i) EXPECT_FALSE(read(*cache, xorbs[i].hash, 0)) << i;
  EXPECT_EQ(s.entries, 3 * s.segments);
  EXPECT_EQ(s.corruptions, 0u);
}

TEST_F(ChunkCacheTest, ZstdRoundTripsAndStoresIncompressibleChunksRaw) {
  auto o = options();
  o.compression_level = 3;
  const TestXorb text = make_xorb(11, 4, kChunk, /*compressible=*/true);
  const TestXorb noise = make_xorb(12, 4, kChunk);
  const std::uint64_t text_raw = text.concat(0, 4).size();
  const std::uint64_t noise_raw = noise.concat(0, 4).size();
  std::uint64_t used_text = 0;
  {
    auto cache = open_cache(o);
    ASSERT_TRUE(cache->put(text.hash, 0, text.data()));
    ASSERT_TRUE(cache->flush());
    used_text = stats(*cache).used_bytes;
    EXPECT_LT(used_text, text_raw / 3);
    ASSERT_TRUE(cache->put(noise.hash, 0, noise.data()));
    ASSERT_TRUE(cache->flush());
    EXPECT_EQ(stats(*cache).used_bytes - used_text, noise_raw);  // stored raw
    EXPECT_TRUE(holds(*cache, text));
    EXPECT_TRUE(holds(*cache, noise));
    auto range = cache->get_range(text.hash, 0, 4, buffer_);
    ASSERT_TRUE(range && *range);
    const xet::Bytes all = text.concat(0, 4);
    ASSERT_EQ((*range)->size, all.size());
    EXPECT_TRUE(std::equal(all.begin(), all.end(), buffer_.begin()));
  }
  // The codec is per entry: an instance without compression reads them, and stores raw.
  auto plain = open_cache(options());
  EXPECT_TRUE(holds(*plain, text));
  const TestXorb text2 = make_xorb(13, 4, kChunk, true);
  const auto before = stats(*plain).used_bytes;
  ASSERT_TRUE(plain->put(text2.hash, 0, text2.data()));
  ASSERT_TRUE(plain->flush());
  EXPECT_EQ(stats(*plain).used_bytes - before, text2.concat(0, 4).size());
}

TEST_F(ChunkCacheTest, CorruptCompressedChunkIsDetected) {
  auto o = options();
  o.compression_level = 1;
  auto cache = open_cache(o);
  const TestXorb text = make_xorb(14, 1, kChunk, true);
  ASSERT_TRUE(cache->put(text.hash, 0, text.data()));
  ASSERT_TRUE(cache->flush());
  const auto files = segment_files(chunk_dir());
  ASSERT_EQ(files.size(), 1u);
  const auto size = std::filesystem::file_size(files[0]);
  const int fd = ::open(files[0].c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  const char junk[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  ASSERT_EQ(::pwrite(fd, junk, sizeof junk, static_cast<off_t>(size / 2)), 8);
  ::close(fd);
  EXPECT_FALSE(read(*cache, text.hash, 0));
  EXPECT_EQ(stats(*cache).corruptions, 1u);
}

TEST_F(ChunkCacheTest, DataFilesArePrivate) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(15, 1, 100);
  ASSERT_TRUE(cache->put(x.hash, 0, x.data()));
  ASSERT_TRUE(cache->flush());
  const auto files = segment_files(chunk_dir());
  ASSERT_EQ(files.size(), 1u);
  struct stat st;
  ASSERT_EQ(::stat(files[0].c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(ChunkCacheTest, FeedsTheDedupIndex) {
  auto cache = open_cache(options());
  const TestXorb x = make_xorb(16, 3, 3000);
  ASSERT_TRUE(cache->put(x.hash, 7, x.data()));
  ASSERT_TRUE(cache->flush());
  DedupIndex dedup(store_);
  auto entry = dedup.get(x.hashes[1]);
  ASSERT_TRUE(entry && *entry);
  EXPECT_EQ(**entry, (DedupEntry{x.hash, 8, static_cast<std::uint32_t>(x.chunks[1].size())}));
}

TEST_F(ChunkCacheTest, TwoInstancesWriteAndReadConcurrently) {
  auto o = options();
  o.flush_interval = std::chrono::milliseconds(10);
  o.segment_bytes = 512 << 10;
  std::unique_ptr<ChunkCache> caches[2] = {open_cache(o), open_cache(o)};
  std::vector<TestXorb> xorbs;
  for (std::uint64_t i = 0; i < 24; ++i) xorbs.push_back(make_xorb(200 + i, 4, 16 * 1024));
  std::atomic<int> wrong{0}, hits{0};
  auto worker = [&](int who) {
    xet::Bytes buffer(256 * 1024);
    for (std::size_t i = static_cast<std::size_t>(who); i < xorbs.size(); i += 2) {
      if (!caches[who]->put(xorbs[i].hash, 0, xorbs[i].data())) ++wrong;
      if (!caches[who]->put(xorbs[0].hash, 0, xorbs[0].data())) ++wrong;  // both write one xorb
      for (const TestXorb& x : xorbs) {  // read whatever the other has committed so far
        auto range = caches[who]->get_range(x.hash, 0, 4, buffer);
        if (!range) ++wrong;
        if (!range || !*range) continue;
        ++hits;
        const xet::Bytes expect = x.concat(0, (*range)->end);
        if ((*range)->size != expect.size() || !std::equal(expect.begin(), expect.end(), buffer.begin())) ++wrong;
      }
    }
  };
  std::thread a(worker, 0), b(worker, 1);
  a.join();
  b.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(hits.load(), 0);
  ASSERT_TRUE(caches[0]->flush());
  ASSERT_TRUE(caches[1]->flush());
  for (auto& cache : caches) {
    for (const TestXorb& x : xorbs) EXPECT_TRUE(holds(*cache, x));
    EXPECT_EQ(stats(*cache).corruptions, 0u);
  }
  EXPECT_GE(stats(*caches[0]).segments, 2u);  // each instance wrote its own segment files
}

// Real processes: children open the same directory, write their own and shared xorbs, and read
// each other's while eviction runs under a small budget. Any chunk served must be right.
int child_run(const std::string& dir, int who, int children, std::uint64_t budget) {
  auto store = NodeStore::open(dir);
  if (!store) return 10;
  ChunkCacheOptions o;
  o.max_bytes = budget;
  o.segment_bytes = 256 << 10;
  o.flush_interval = std::chrono::milliseconds(5);
  auto cache = ChunkCache::open(*store, o);
  if (!cache) return 11;
  xet::Bytes buffer(1 << 20);
  std::mt19937 rng(static_cast<unsigned>(who));
  int hits = 0;
  for (int round = 0; round < 12; ++round) {
    const TestXorb mine = make_xorb(static_cast<std::uint64_t>(1000 * (who + 1) + round), 3, 32 * 1024);
    if (!(*cache)->put(mine.hash, 0, mine.data())) return 12;
    const TestXorb shared = make_xorb(static_cast<std::uint64_t>(round), 3, 32 * 1024);
    if (!(*cache)->put(shared.hash, 0, shared.data())) return 13;
    for (int probe = 0; probe < 8; ++probe) {
      const int owner = static_cast<int>(rng() % static_cast<unsigned>(children));
      const TestXorb x = make_xorb(static_cast<std::uint64_t>(1000 * (owner + 1) + static_cast<int>(rng() % 12)), 3, 32 * 1024);
      auto range = (*cache)->get_range(x.hash, 0, 3, buffer);
      if (!range) return 14;
      if (!*range) continue;
      const xet::Bytes expect = x.concat(0, (*range)->end);
      if ((*range)->size != expect.size() || !std::equal(expect.begin(), expect.end(), buffer.begin())) return 15;
      ++hits;
    }
  }
  if (!(*cache)->flush()) return 16;
  auto s = (*cache)->stats();
  if (!s || s->corruptions != 0) return 17;
  return 0;
}

void run_children(const std::string& dir, int children, std::uint64_t budget) {
  std::vector<pid_t> pids;
  for (int who = 0; who < children; ++who) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) ::_exit(child_run(dir, who, children, budget));
    pids.push_back(pid);
  }
  for (const pid_t pid : pids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "child " << pid;
  }
}

TEST_F(ChunkCacheTest, ForkedProcessesShareOneDirectory) {
  constexpr int kChildren = 3;
  run_children(temp_.path(), kChildren, std::uint64_t{1} << 30);
  auto cache = open_cache(options());  // the parent opens only after the children exited
  for (int who = 0; who < kChildren; ++who) {
    for (int round = 0; round < 12; ++round) {
      EXPECT_TRUE(holds(*cache, make_xorb(static_cast<std::uint64_t>(1000 * (who + 1) + round), 3, 32 * 1024)));
    }
  }
  for (int round = 0; round < 12; ++round) EXPECT_TRUE(holds(*cache, make_xorb(static_cast<std::uint64_t>(round), 3, 32 * 1024)));
  EXPECT_EQ(stats(*cache).corruptions, 0u);
}

TEST_F(ChunkCacheTest, ForkedProcessesEvictingConcurrentlyStayConsistent) {
  constexpr std::uint64_t kBudget = 1 << 20;
  run_children(temp_.path(), 3, kBudget);
  auto cache = open_cache(options(kBudget));
  const auto s = stats(*cache);
  EXPECT_LE(s.used_bytes, kBudget);
  EXPECT_GT(s.used_bytes, 0u);
  // Files on disk are the indexed segments (plus at most unindexed tails of dead writers).
  EXPECT_EQ(segment_files(chunk_dir()).size(), s.segments);
  EXPECT_LE(total_file_bytes(chunk_dir()), kBudget + (256 << 10));
  std::uint64_t found = 0;
  for (int who = 0; who < 3; ++who) {
    for (int round = 0; round < 12; ++round) {
      const TestXorb x = make_xorb(static_cast<std::uint64_t>(1000 * (who + 1) + round), 3, 32 * 1024);
      for (std::uint32_t i = 0; i < 3; ++i) {  // right bytes or a miss
        if (auto bytes = read(*cache, x.hash, i)) {
          EXPECT_EQ(*bytes, x.chunks[i]);
          ++found;
        }
      }
    }
  }
  EXPECT_GT(found, 0u);
  EXPECT_EQ(stats(*cache).corruptions, 0u);
}

}  // namespace
}  // namespace bucketfs::cache
