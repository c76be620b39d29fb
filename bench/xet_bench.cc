// Google Benchmark figures for the Xet core's per-byte stages: BLAKE3 keyed hashing, chunk
// boundary search, chunking plus chunk hashing, and chunk compression. scripts/bench-xet.sh runs
// it next to its baseline (b3sum --num-threads 1 over the same bytes) and prints the ratios.
//
// Inputs are deterministic SplitMix64 bytes (random, incompressible) and bf16-like weights
// (small-magnitude floats, which ByteGrouping4 helps), generated once and reused so that no
// benchmark pays for fresh pages (PERF-NOTES trap 1).

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <vector>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/compression.h"
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

// bf16 weights of a small model: normal-ish values of scale 0.02, the upper half of float32.
const std::vector<std::byte>& bf16_bytes() {
  static const std::vector<std::byte> data = [] {
    const auto& random = random_bytes();
    std::vector<std::byte> out(kInputSize);
    for (std::size_t i = 0; i + 2 <= out.size(); i += 2) {
      double sum = 0;
      for (int k = 0; k < 4; ++k) sum += std::to_integer<unsigned>(random[(i * 2 + k) % random.size()]) / 255.0;
      const float value = static_cast<float>((sum - 2.0) * 0.02);
      std::uint32_t bits;
      std::memcpy(&bits, &value, 4);
      out[i] = std::byte((bits >> 16) & 0xff);
      out[i + 1] = std::byte((bits >> 24) & 0xff);
    }
    return out;
  }();
  return data;
}

const std::vector<std::byte>& input_for(int which) { return which == 0 ? random_bytes() : bf16_bytes(); }

// Compresses 64 KiB chunks with one scheme (0: random input, 1: bf16 input).
void compress_chunks(benchmark::State& state, bucketfs::xet::CompressionPolicy policy) {
  const auto& data = input_for(static_cast<int>(state.range(0)));
  bucketfs::xet::ChunkCompressor compressor(policy);
  std::size_t stored = 0;
  for (auto _ : state) {
    stored = 0;
    for (std::size_t offset = 0; offset < data.size(); offset += 65536) {
      auto chunk = compressor.compress(ByteSpan(data).subspan(offset, 65536));
      if (!chunk) state.SkipWithError("compression failed");
      stored += chunk->data.size();
    }
  }
  set_bytes(state, data.size());
  state.counters["ratio"] = double(stored) / double(data.size());
}
void BM_CompressLz4(benchmark::State& state) { compress_chunks(state, bucketfs::xet::CompressionPolicy::kLz4); }
void BM_CompressBg4Lz4(benchmark::State& state) {
  compress_chunks(state, bucketfs::xet::CompressionPolicy::kByteGrouping4Lz4);
}
void BM_CompressPredicted(benchmark::State& state) {
  compress_chunks(state, bucketfs::xet::CompressionPolicy::kPredicted);
}
BENCHMARK(BM_CompressLz4)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CompressBg4Lz4)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CompressPredicted)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// Decompresses 64 KiB chunks stored with one scheme into a reused buffer.
void decompress_chunks(benchmark::State& state, bucketfs::xet::CompressionPolicy policy) {
  const auto& data = input_for(static_cast<int>(state.range(0)));
  bucketfs::xet::ChunkCompressor compressor(policy);
  std::vector<std::pair<bucketfs::xet::CompressionScheme, std::vector<std::byte>>> stored;
  for (std::size_t offset = 0; offset < data.size(); offset += 65536) {
    auto chunk = compressor.compress(ByteSpan(data).subspan(offset, 65536));
    stored.emplace_back(chunk->scheme, std::vector<std::byte>(chunk->data.begin(), chunk->data.end()));
  }
  bucketfs::xet::ChunkDecompressor decompressor;
  std::vector<std::byte> out(65536);
  for (auto _ : state) {
    for (const auto& [scheme, bytes] : stored) {
      if (!decompressor.decompress_into(scheme, bytes, out)) state.SkipWithError("decompression failed");
    }
    benchmark::DoNotOptimize(out.data());
  }
  set_bytes(state, data.size());
}
void BM_DecompressLz4(benchmark::State& state) { decompress_chunks(state, bucketfs::xet::CompressionPolicy::kLz4); }
void BM_DecompressBg4Lz4(benchmark::State& state) {
  decompress_chunks(state, bucketfs::xet::CompressionPolicy::kByteGrouping4Lz4);
}
BENCHMARK(BM_DecompressLz4)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DecompressBg4Lz4)->Arg(1)->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  // BUCKETFS_BENCH_WRITE_INPUT=FILE writes the random input the benchmarks hash, so that the
  // baseline (b3sum) runs over the same bytes, and exits.
  if (const char* path = std::getenv("BUCKETFS_BENCH_WRITE_INPUT")) {
    std::FILE* out = std::fopen(path, "wb");
    if (!out) return 1;
    const auto& data = random_bytes();
    const bool ok = std::fwrite(data.data(), 1, data.size(), out) == data.size();
    return std::fclose(out) == 0 && ok ? 0 : 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
