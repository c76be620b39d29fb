// Writes what a client would upload for one file of random bytes: the xorbs and the upload shard,
// so that benchmarks can put real objects into bucketfs-server with plain curl.
//
//   make_upload DIR SIZE_BYTES [SEED]
// Creates DIR/file.bin, DIR/xorbs/<hash> and DIR/shard.bin, and prints the file's xet hash.

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/shard.h"
#include "bucketfs/xet/xorb.h"

namespace {

using namespace bucketfs::xet;

bool write_file(const std::string& path, ByteSpan bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: make_upload DIR SIZE_BYTES [SEED]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const std::size_t size = std::strtoull(argv[2], nullptr, 10);
  std::uint64_t state = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1;
  std::filesystem::create_directories(dir + "/xorbs");

  std::vector<std::byte> data(size);
  for (std::size_t i = 0; i < size; i += 8) {
    state += 0x9E3779B97F4A7C15ULL;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    for (std::size_t b = 0; b < 8 && i + b < size; ++b) data[i + b] = std::byte((z >> (8 * b)) & 0xff);
  }
  if (!write_file(dir + "/file.bin", data)) return 1;

  const auto lengths = chunk_lengths(data);
  XorbBuilder builder(CompressionPolicy::kPredicted);
  UploadShardBuilder shard;
  std::vector<FileTerm> terms;
  std::vector<Hash> file_chunk_hashes;
  std::vector<HashAndSize> leaves;
  auto flush = [&] {
    if (builder.empty()) return true;
    SerializedXorb xorb = builder.finish();
    auto info = make_xorb_info(xorb.hash, xorb.chunk_hashes(), static_cast<std::uint32_t>(xorb.bytes.size()));
    if (!info || !shard.add_xorb(*info)) return false;
    return write_file(dir + "/xorbs/" + xorb.hash.to_string(), xorb.bytes);
  };
  std::size_t offset = 0;
  std::uint32_t index_in_xorb = 0;
  for (std::size_t length : lengths) {
    const ByteSpan chunk = ByteSpan(data).subspan(offset, length);
    offset += length;
    const Hash hash = chunk_hash(chunk);
    if (!builder.would_fit(length) || !builder.add_chunk(chunk, hash)) {
      // Close the current xorb; the term that covers it ends here.
      if (!flush()) return 1;
      index_in_xorb = 0;
      if (!builder.add_chunk(chunk, hash)) return 1;
    }
    if (index_in_xorb == 0) terms.push_back(FileTerm{Hash{}, 0, 0, 0, 0});
    terms.back().chunk_index_end = ++index_in_xorb;
    terms.back().unpacked_bytes += static_cast<std::uint32_t>(length);
    file_chunk_hashes.push_back(hash);
    leaves.push_back({hash, length});
  }
  // Terms learn their xorb hash when the xorb is finished; recompute them from the shard's xorbs.
  if (!flush()) return 1;
  std::size_t term = 0;
  for (const auto& xorb : shard.xorbs()) terms[term++].xorb_hash = xorb.xorb_hash;
  const Hash file = file_hash(leaves);
  if (!shard.add_file(file, terms, file_chunk_hashes)) return 1;
  auto bytes = shard.serialize();
  if (!bytes || !write_file(dir + "/shard.bin", *bytes)) return 1;
  std::printf("%s\n", file.to_string().c_str());
  return 0;
}
