// Google Benchmark figures for the Xet core's per-byte stages: BLAKE3 keyed hashing, chunk
// boundary search, chunking plus chunk hashing, and chunk compression. scripts/bench-xet.sh runs
// it next to its baseline (b3sum --num-threads 1 over the same bytes) and prints the ratios.
//
// Inputs are deterministic SplitMix64 bytes (random, incompressible) and bf16-like weights
// (small-magnitude floats, which ByteGrouping4 helps), generated once and reused so that no
// benchmark pays for fresh pages (PERF-NOTES trap 1).

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/hash.h"

namespace {

using bucketfs::xet::ByteSpan;

constexpr std::size_t kInputSize = 64 << 20;

const std::vector<std::byte>& random_bytes() {
  static const std::vector<std::byte> data = [] {
    std::vector<std::byte> out(kInputSize);
    std::uint64_t state = 0;
    for (std::size_t i = 0; i < out.size(); i += 8) {
      state += 0x9E3779B97F4A7C15ULL;
      std::uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      z ^= z >> 31;
      for (std::size_t b = 0; b < 8; ++b) out[i + b] = std::byte((z >> (8 * b)) & 0xff);
    }
    return out;
  }();
  return data;
}

void set_bytes(benchmark::State& state, std::size_t per_iteration) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * per_iteration));
}

// BLAKE3 keyed over 64 KiB pieces: the raw cost of chunk hashing.
void BM_Blake3Keyed64KiB(benchmark::State& state) {
  const auto& data = random_bytes();
  for (auto _ : state) {
    for (std::size_t offset = 0; offset < data.size(); offset += 65536) {
      benchmark::DoNotOptimize(bucketfs::xet::chunk_hash(ByteSpan(data).subspan(offset, 65536)));
    }
  }
  set_bytes(state, data.size());
}
BENCHMARK(BM_Blake3Keyed64KiB)->Unit(benchmark::kMillisecond);

// Gearhash boundary search alone.
void BM_ChunkBoundaries(benchmark::State& state) {
  const auto& data = random_bytes();
  for (auto _ : state) benchmark::DoNotOptimize(bucketfs::xet::chunk_lengths(data));
  set_bytes(state, data.size());
}
BENCHMARK(BM_ChunkBoundaries)->Unit(benchmark::kMillisecond);

// What an upload does per byte before compression: find boundaries and hash every chunk, fed
// in 1 MiB pieces as a read loop would.
void BM_ChunkAndHash(benchmark::State& state) {
  const auto& data = random_bytes();
  for (auto _ : state) {
    bucketfs::xet::ChunkHashStream stream;
    std::size_t chunks = 0;
    for (std::size_t offset = 0; offset < data.size(); offset += 1 << 20) {
      chunks += stream.update(ByteSpan(data).subspan(offset, 1 << 20)).size();
    }
    chunks += stream.finish().has_value();
    benchmark::DoNotOptimize(chunks);
  }
  set_bytes(state, data.size());
}
BENCHMARK(BM_ChunkAndHash)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
