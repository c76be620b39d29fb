// Warm chunk cache reads against their ceilings, measured in the same run: BLAKE3 over the same
// chunk size (the verification every read pays) and a plain pread of the same bytes.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bucketfs/cache/chunk_cache.h"
#include "test_util.h"

namespace bucketfs::cache {
namespace {

constexpr std::size_t kChunk = 64 * 1024;
constexpr std::size_t kChunks = 1024;  // 64 MiB of cached chunks per xorb set

struct Bench {
  std::string dir;
  std::shared_ptr<NodeStore> store;
  std::unique_ptr<ChunkCache> raw_cache;
  std::unique_ptr<ChunkCache> zstd_cache;
  xet::Hash raw_xorb = testing::xorb_named(1);
  xet::Hash zstd_xorb = testing::xorb_named(2);

  Bench() {
    std::string pattern = (std::filesystem::temp_directory_path() / "bucketfs-cache-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    dir = pattern;
    store = NodeStore::open(dir).value();
    ChunkCacheOptions options;
    options.max_bytes = std::uint64_t{4} << 30;
    raw_cache = ChunkCache::open(store, options).value();
    options.compression_level = 1;
    zstd_cache = ChunkCache::open(store, options).value();
    fill(*raw_cache, raw_xorb, false);
    fill(*zstd_cache, zstd_xorb, true);
  }
  ~Bench() {
    raw_cache.reset();
    zstd_cache.reset();
    store.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }

  static void fill(ChunkCache& cache, const xet::Hash& xorb, bool compressible) {
    for (std::size_t first = 0; first < kChunks; first += 64) {
      std::vector<xet::Bytes> bytes;
      std::vector<ChunkData> data;
      for (std::size_t i = first; i < first + 64; ++i) {
        bytes.push_back(compressible ? testing::compressible_bytes(kChunk, i) : testing::random_bytes(kChunk, i));
      }
      for (const auto& b : bytes) data.push_back({xet::chunk_hash(b), b});
      if (!cache.put(xorb, static_cast<std::uint32_t>(first), data)) std::abort();
    }
    if (!cache.flush()) std::abort();
  }
};

Bench& bench() {
  static Bench* instance = new Bench();  // lives until exit; its directory is removed by atexit
  static bool registered = [] {
    std::atexit([] { delete instance; });
    return true;
  }();
  (void)registered;
  return *instance;
}

void BM_Blake3ChunkHash(benchmark::State& state) {
  const xet::Bytes data = testing::random_bytes(kChunk, 7);
  for (auto _ : state) benchmark::DoNotOptimize(xet::chunk_hash(data));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kChunk));
}
BENCHMARK(BM_Blake3ChunkHash);

void BM_PlainPread(benchmark::State& state) {
  Bench& b = bench();
  std::filesystem::path file;
  for (const auto& entry : std::filesystem::directory_iterator(b.store->chunk_directory())) {
    if (std::filesystem::file_size(entry.path()) >= kChunks * kChunk / 2) file = entry.path();
  }
  const int fd = ::open(file.c_str(), O_RDONLY);
  const std::size_t span = std::filesystem::file_size(file) / kChunk;
  xet::Bytes buffer(kChunk);
  std::mt19937 rng(1);
  for (auto _ : state) {
    const auto offset = static_cast<off_t>((rng() % span) * kChunk);
    benchmark::DoNotOptimize(::pread(fd, buffer.data(), kChunk, offset));
  }
  ::close(fd);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kChunk));
}
BENCHMARK(BM_PlainPread);

void BM_CacheGet(benchmark::State& state) {
  Bench& b = bench();
  ChunkCache& cache = state.range(0) ? *b.zstd_cache : *b.raw_cache;
  const xet::Hash xorb = state.range(0) ? b.zstd_xorb : b.raw_xorb;
  xet::Bytes buffer(kChunk);
  std::mt19937 rng(2);
  for (auto _ : state) {
    auto got = cache.get(xorb, static_cast<std::uint32_t>(rng() % kChunks), buffer);
    if (!got || !*got) state.SkipWithError("miss");
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * kChunk));
  state.SetLabel(state.range(0) ? "zstd-1, verified" : "raw, verified");
}
BENCHMARK(BM_CacheGet)->Arg(0)->Arg(1)->UseRealTime();
BENCHMARK(BM_CacheGet)->Arg(0)->Threads(2)->UseRealTime();

void BM_CacheGetRange16(benchmark::State& state) {
  Bench& b = bench();
  xet::Bytes buffer(16 * kChunk);
  std::mt19937 rng(3);
  for (auto _ : state) {
    const auto first = static_cast<std::uint32_t>(rng() % (kChunks - 16));
    auto got = b.raw_cache->get_range(b.raw_xorb, first, first + 16, buffer);
    if (!got || !*got || (*got)->end != first + 16) state.SkipWithError("miss");
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * 16 * kChunk));
}
BENCHMARK(BM_CacheGetRange16)->UseRealTime();

void BM_CachePut(benchmark::State& state) {
  Bench& b = bench();
  std::vector<xet::Bytes> bytes;
  for (std::size_t i = 0; i < 16; ++i) bytes.push_back(testing::random_bytes(kChunk, 5000 + i));
  std::vector<ChunkData> data;
  for (const auto& bb : bytes) data.push_back({xet::chunk_hash(bb), bb});
  std::uint32_t first = 0;
  const xet::Hash xorb = testing::xorb_named(3);
  for (auto _ : state) {
    if (!b.raw_cache->put(xorb, first, data)) state.SkipWithError("put failed");
    first += 16;
  }
  if (!b.raw_cache->flush()) state.SkipWithError("flush failed");
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * 16 * kChunk));
}
BENCHMARK(BM_CachePut)->UseRealTime()->Iterations(256);

}  // namespace
}  // namespace bucketfs::cache

BENCHMARK_MAIN();
