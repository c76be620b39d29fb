#include "bucketfs/xet/shard.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <random>
#include <string>

#include "test_bytes.h"

namespace bucketfs::xet {
namespace {

using testing::random_hash;

Hash patterned_hash(std::uint8_t first) {
  Hash hash;
  for (std::size_t i = 0; i < 32; ++i) hash.bytes[i] = static_cast<std::uint8_t>(first + i);
  return hash;
}

// A new xorb with real chunk hashes and sizes, so validate_xorb_info() accepts it.
struct TestXorb {
  std::vector<HashAndSize> chunks;
  XorbInfo info;
};

TestXorb make_test_xorb(std::mt19937_64& rng, std::size_t chunk_count) {
  TestXorb xorb;
  for (std::size_t i = 0; i < chunk_count; ++i) {
    xorb.chunks.push_back(HashAndSize{random_hash(rng), 1000 + rng() % 100000});
  }
  auto info = make_xorb_info(xorb_hash(xorb.chunks), xorb.chunks,
                             static_cast<std::uint32_t>(rng() % 10000000));
  EXPECT_TRUE(info.has_value());
  xorb.info = *info;
  return xorb;
}

FileTerm term_of(const TestXorb& xorb, std::uint32_t start, std::uint32_t end) {
  FileTerm term;
  term.xorb_hash = xorb.info.xorb_hash;
  term.chunk_index_start = start;
  term.chunk_index_end = end;
  for (std::uint32_t i = start; i < end; ++i)
    term.unpacked_bytes += static_cast<std::uint32_t>(xorb.chunks[i].size);
  return term;
}

std::vector<Hash> hashes_of(const TestXorb& xorb, std::uint32_t start, std::uint32_t end) {
  std::vector<Hash> out;
  for (std::uint32_t i = start; i < end; ++i) out.push_back(xorb.chunks[i].hash);
  return out;
}

// Three xorbs and three files, one of them spanning two xorbs, some with SHA-256.
struct Fixture {
  std::vector<TestXorb> xorbs;
  std::vector<FileInfo> files;
  std::vector<XorbInfo> xorb_infos() const {
    std::vector<XorbInfo> out;
    for (const auto& x : xorbs) out.push_back(x.info);
    return out;
  }
};

Fixture make_fixture(std::uint64_t seed, bool with_verification) {
  std::mt19937_64 rng(seed);
  Fixture f;
  f.xorbs.push_back(make_test_xorb(rng, 5));
  f.xorbs.push_back(make_test_xorb(rng, 3));
  f.xorbs.push_back(make_test_xorb(rng, 7));
  struct Plan {
    std::vector<std::tuple<int, std::uint32_t, std::uint32_t>> terms;
    bool sha;
  };
  const std::vector<Plan> plans = {
      {{{0, 0, 5}, {1, 0, 2}}, true},
      {{{2, 1, 7}}, false},
      {{{1, 2, 3}, {0, 1, 4}, {2, 0, 1}}, true},
  };
  for (const Plan& plan : plans) {
    FileInfo file;
    file.file_hash = random_hash(rng);
    for (auto [x, start, end] : plan.terms) {
      file.terms.push_back(term_of(f.xorbs[x], start, end));
      if (with_verification)
        file.verification.push_back(verification_hash(hashes_of(f.xorbs[x], start, end)));
    }
    if (plan.sha) file.sha256 = random_hash(rng);
    f.files.push_back(file);
  }
  return f;
}

void put_bytes(Bytes& out, std::size_t at, const void* data, std::size_t size) {
  std::memcpy(out.data() + at, data, size);
}
void put_u32(Bytes& out, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[at + i] = std::byte((v >> (8 * i)) & 0xff);
}
void put_u64(Bytes& out, std::size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out[at + i] = std::byte((v >> (8 * i)) & 0xff);
}
void put_hash(Bytes& out, std::size_t at, const Hash& h) { put_bytes(out, at, h.bytes.data(), 32); }
void put_bookend(Bytes& out, std::size_t at) { std::memset(out.data() + at, 0xff, 32); }
std::uint32_t get_u32(const Bytes& in, std::size_t at) {
  return static_cast<std::uint32_t>(load_le(in.data() + at, 4));
}

// The header tag written out independently of kShardHeaderTag: "HFRepoMetaData", a NUL, then
// xet-core's magic bytes.
void put_tag(Bytes& out) {
  const char text[] = "HFRepoMetaData";
  put_bytes(out, 0, text, 14);
  const std::uint8_t magic[18] = {0,   85,  105, 103, 69, 106, 123, 129, 87,
                                  131, 165, 189, 217, 92, 205, 209, 74,  169};
  put_bytes(out, 14, magic, 18);
}

// --- layout -------------------------------------------------------------------------------------

TEST(ShardLayout, UploadShardBytesMatchTheSpecTables) {
  // One file (one term, verification, SHA-256) and one xorb of two chunks.
  const Hash file_hash = patterned_hash(0x10);
  const Hash xorb = patterned_hash(0x40);
  const Hash chunk_a = patterned_hash(0x70);
  const Hash chunk_b = patterned_hash(0xa0);
  const Hash sha = patterned_hash(0xd0);
  const std::vector<Hash> range = {chunk_a, chunk_b};
  const Hash range_hash = verification_hash(range);

  FileInfo file{file_hash, {FileTerm{xorb, 0, 3000, 0, 2}}, {range_hash}, sha};
  XorbInfo info{
      xorb, 0, 3000, 1234, {XorbChunk{chunk_a, 0, 1000, 0}, XorbChunk{chunk_b, 1000, 2000, 0}}};
  auto bytes = serialize_upload_shard(std::vector<FileInfo>{file}, std::vector<XorbInfo>{info});
  ASSERT_TRUE(bytes.has_value()) << bytes.error().describe();

  Bytes want(480, std::byte{0});
  put_tag(want);
  put_u64(want, 32, 2);             // header version
  put_u64(want, 40, 0);             // footer_size: no footer on upload
  put_hash(want, 48, file_hash);    // FileDataSequenceHeader
  put_u32(want, 80, 0xC0000000u);   // with verification (1<<31) and metadata ext (1<<30)
  put_u32(want, 84, 1);             // num_entries
  put_hash(want, 96, xorb);         // FileDataSequenceEntry
  put_u32(want, 128, 0);            // cas_flags
  put_u32(want, 132, 3000);         // unpacked_segment_bytes
  put_u32(want, 136, 0);            // chunk_index_start
  put_u32(want, 140, 2);            // chunk_index_end
  put_hash(want, 144, range_hash);  // FileVerificationEntry, 16 reserved zeros
  put_hash(want, 192, sha);         // FileMetadataExt, 16 reserved zeros
  put_bookend(want, 240);           // file info bookend: 32 x 0xFF + 16 x 0
  put_hash(want, 288, xorb);        // CASChunkSequenceHeader
  put_u32(want, 320, 0);            // cas_flags
  put_u32(want, 324, 2);            // num_entries
  put_u32(want, 328, 3000);         // num_bytes_in_cas
  put_u32(want, 332, 1234);         // num_bytes_on_disk
  put_hash(want, 336, chunk_a);     // CASChunkSequenceEntry
  put_u32(want, 368, 0);            // chunk_byte_range_start
  put_u32(want, 372, 1000);         // unpacked_segment_bytes
  put_hash(want, 384, chunk_b);
  put_u32(want, 416, 1000);
  put_u32(want, 420, 2000);
  put_bookend(want, 432);  // CAS info bookend, end of shard (no footer)
  EXPECT_EQ(*bytes, want);

  EXPECT_EQ(std::memcmp(bytes->data(), "HFRepoMetaData", 14), 0);
  EXPECT_EQ(upload_shard_size(std::vector<FileInfo>{file}, std::vector<XorbInfo>{info}), 480u);

  // And the hand-built bytes parse back to the same content.
  auto parsed = parse_shard(want);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().describe();
  EXPECT_FALSE(parsed->footer.has_value());
  ASSERT_EQ(parsed->files.size(), 1u);
  EXPECT_EQ(parsed->files[0], file);
  ASSERT_EQ(parsed->xorbs.size(), 1u);
  EXPECT_EQ(parsed->xorbs[0], info);
}

TEST(ShardLayout, FlagsSayWhichOptionalRecordsFollow) {
  Fixture f = make_fixture(1, /*with_verification=*/false);
  f.files.resize(2);  // file 0 has a SHA-256, file 1 has none
  auto bytes = serialize_upload_shard(f.files, f.xorb_infos());
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(get_u32(*bytes, 48 + 32),
            kFileFlagWithMetadataExt);  // 0x40000000: ext, no verification
  const std::size_t second = 48 + 48 * (1 + f.files[0].terms.size() + 1);
  EXPECT_EQ(get_u32(*bytes, second + 32), 0u);
  EXPECT_EQ(get_u32(*bytes, second + 36), f.files[1].terms.size());
}

TEST(ShardLayout, EmptyShardIsHeaderAndTwoBookends) {
  auto bytes = serialize_upload_shard({}, {});
  ASSERT_TRUE(bytes.has_value());
  ASSERT_EQ(bytes->size(), 144u);
  for (std::size_t i = 48; i < 80; ++i) EXPECT_EQ((*bytes)[i], std::byte{0xff});
  for (std::size_t i = 80; i < 96; ++i) EXPECT_EQ((*bytes)[i], std::byte{0});
  for (std::size_t i = 96; i < 128; ++i) EXPECT_EQ((*bytes)[i], std::byte{0xff});
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_TRUE(parsed->files.empty());
  EXPECT_TRUE(parsed->xorbs.empty());
}

TEST(ShardLayout, MakeXorbInfoWritesRunningUncompressedOffsets) {
  std::mt19937_64 rng(7);
  std::vector<HashAndSize> chunks = {
      {random_hash(rng), 100}, {random_hash(rng), 250}, {random_hash(rng), 7}};
  auto info = make_xorb_info(xorb_hash(chunks), chunks, 99);
  ASSERT_TRUE(info.has_value());
  ASSERT_EQ(info->chunks.size(), 3u);
  EXPECT_EQ(info->chunks[0].byte_offset, 0u);
  EXPECT_EQ(info->chunks[1].byte_offset, 100u);
  EXPECT_EQ(info->chunks[2].byte_offset, 350u);
  EXPECT_EQ(info->unpacked_bytes, 357u);
  EXPECT_EQ(info->serialized_bytes, 99u);
  EXPECT_TRUE(validate_xorb_info(*info).has_value());

  std::vector<HashAndSize> huge = {{random_hash(rng), 0xF0000000u},
                                   {random_hash(rng), 0x20000000u}};
  EXPECT_FALSE(make_xorb_info(Hash{}, huge, 0).has_value());
}

// --- round trips --------------------------------------------------------------------------------

TEST(ShardRoundTrip, UploadShardWithVerificationAndMetadata) {
  Fixture f = make_fixture(2, true);
  auto bytes = serialize_upload_shard(f.files, f.xorb_infos());
  ASSERT_TRUE(bytes.has_value()) << bytes.error().describe();
  EXPECT_EQ(bytes->size(), upload_shard_size(f.files, f.xorb_infos()));
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().describe();
  EXPECT_EQ(parsed->files, f.files);
  EXPECT_EQ(parsed->xorbs, f.xorb_infos());
  EXPECT_FALSE(parsed->footer.has_value());
  EXPECT_EQ(load_le(bytes->data() + 40, 8), 0u);  // footer_size
  EXPECT_TRUE(validate_upload_shard(*parsed).has_value());
}

TEST(ShardRoundTrip, UploadShardWithoutVerification) {
  Fixture f = make_fixture(3, false);
  auto bytes = serialize_upload_shard(f.files, f.xorb_infos());
  ASSERT_TRUE(bytes.has_value());
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().describe();
  EXPECT_EQ(parsed->files, f.files);
  EXPECT_EQ(parsed->xorbs, f.xorb_infos());
  for (const auto& file : parsed->files) EXPECT_TRUE(file.verification.empty());
  // Structurally fine, but an upload must carry verification.
  auto valid = validate_upload_shard(*parsed);
  ASSERT_FALSE(valid.has_value());
  EXPECT_NE(valid.error().message.find("verification"), std::string::npos);
}

TEST(ShardRoundTrip, ChunkFlagsAndReservedFieldsSurvive) {
  Fixture f = make_fixture(4, true);
  f.xorbs[1].info.chunks[2].flags = kChunkFlagGlobalDedup;
  f.files[1].terms[0].cas_flags = 5;
  auto bytes = serialize_upload_shard(f.files, f.xorb_infos());
  ASSERT_TRUE(bytes.has_value());
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->xorbs[1].chunks[2].flags, kChunkFlagGlobalDedup);
  EXPECT_EQ(parsed->files[1].terms[0].cas_flags, 5u);
}

TEST(ShardRoundTrip, FullShardWithFooter) {
  Fixture f = make_fixture(5, true);
  ShardFooterFields fields{patterned_hash(3), 1700000000, 1700086400};
  auto bytes = serialize_shard_with_footer(f.files, f.xorb_infos(), fields);
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(load_le(bytes->data() + 40, 8), 200u);  // header footer_size
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().describe();
  EXPECT_EQ(parsed->files, f.files);
  EXPECT_EQ(parsed->xorbs, f.xorb_infos());
  ASSERT_TRUE(parsed->footer.has_value());
  const ShardFooter& footer = *parsed->footer;
  const std::size_t sections = upload_shard_size(f.files, f.xorb_infos());
  EXPECT_EQ(bytes->size(), sections + 200);
  EXPECT_EQ(footer.footer_offset, sections);
  EXPECT_EQ(footer.file_info_offset, 48u);
  std::size_t file_bytes = 48;
  for (const auto& file : f.files)
    file_bytes += 48 * (1 + 2 * file.terms.size() + (file.sha256 ? 1 : 0));
  EXPECT_EQ(footer.cas_info_offset, 48 + file_bytes);
  EXPECT_EQ(footer.chunk_hash_key, fields.chunk_hash_key);
  EXPECT_EQ(footer.creation_timestamp, fields.creation_timestamp);
  EXPECT_EQ(footer.key_expiry, fields.key_expiry);
  std::uint64_t on_disk = 0, stored = 0, materialized = 0;
  for (const auto& x : f.xorbs) {
    on_disk += x.info.serialized_bytes;
    stored += x.info.unpacked_bytes;
  }
  for (const auto& file : f.files) materialized += file.size();
  EXPECT_EQ(footer.stored_bytes_on_disk, on_disk);
  EXPECT_EQ(footer.stored_bytes, stored);
  EXPECT_EQ(footer.materialized_bytes, materialized);
  EXPECT_EQ(footer.chunk_lookup_count, 0u);
  EXPECT_EQ(footer.chunk_lookup_offset, footer.footer_offset);
}

TEST(ShardRoundTrip, RejectsVerificationOnSomeFilesOnly) {
  Fixture f = make_fixture(6, true);
  f.files[1].verification.clear();
  auto bytes = serialize_upload_shard(f.files, f.xorb_infos());
  ASSERT_FALSE(bytes.has_value());
  EXPECT_EQ(bytes.error().code, ErrorCode::kInvalidArgument);

  f = make_fixture(6, true);
  f.files[2].verification.pop_back();
  EXPECT_FALSE(serialize_upload_shard(f.files, f.xorb_infos()).has_value());

  // The parser rejects the same thing when bytes carry it: clear file 1's verification flag and
  // drop its verification records.
  f = make_fixture(6, true);
  auto bytes_ok = serialize_upload_shard(f.files, f.xorb_infos());
  ASSERT_TRUE(bytes_ok.has_value());
  Bytes mixed = *bytes_ok;
  const std::size_t file1 = 48 + 48 * (1 + 2 * f.files[0].terms.size() + 1);
  put_u32(mixed, file1 + 32, 0);
  const std::size_t verif = file1 + 48 * (1 + f.files[1].terms.size());
  mixed.erase(mixed.begin() + verif, mixed.begin() + verif + 48 * f.files[1].terms.size());
  auto parsed = parse_shard(mixed);
  ASSERT_FALSE(parsed.has_value());
  EXPECT_EQ(parsed.error().code, ErrorCode::kInvalidFormat);
  EXPECT_NE(parsed.error().message.find("some files only"), std::string::npos);
}

TEST(ShardRoundTrip, TooLargeUploadShardIsRefused) {
  XorbInfo big;
  big.chunks.resize(kMaxShardSize / 48);  // one record too many with header and bookends
  auto bytes = serialize_upload_shard({}, std::vector<XorbInfo>{big});
  ASSERT_FALSE(bytes.has_value());
  EXPECT_EQ(bytes.error().code, ErrorCode::kTooLarge);
}

// --- footer -------------------------------------------------------------------------------------

// A full shard as xet-core writes one, built by hand: lookup tables between the CAS bookend and
// the footer, and every footer field at its byte offset.
Bytes hand_built_full_shard(const Hash& key) {
  const Hash xorb = patterned_hash(0x20);
  const Hash chunk = patterned_hash(0x50);
  // header 48 | file bookend 48 | CAS header 48 + 1 chunk 48 | bookend 48 | cas lookup 12 |
  // chunk lookup 16 | footer 200
  const std::size_t cas_at = 96, cas_end = 240, cas_lookup = 240, chunk_lookup = 252, footer = 268;
  Bytes b(footer + 200, std::byte{0});
  put_tag(b);
  put_u64(b, 32, 2);
  put_u64(b, 40, 200);
  put_bookend(b, 48);
  put_hash(b, cas_at, xorb);
  put_u32(b, cas_at + 36, 1);
  put_u32(b, cas_at + 40, 4096);
  put_u32(b, cas_at + 44, 2048);
  put_hash(b, cas_at + 48, keyed_chunk_hash(chunk, key));
  put_u32(b, cas_at + 84, 4096);
  put_bookend(b, 192);
  put_u64(b, cas_lookup, 0x1111);  // truncated xorb hash
  put_u32(b, cas_lookup + 8, 0);
  put_u64(b, chunk_lookup, 0x2222);
  put_u32(b, chunk_lookup + 8, 0);
  put_u32(b, chunk_lookup + 12, 0);
  put_u64(b, footer + 0, 1);  // version
  put_u64(b, footer + 8, 48);
  put_u64(b, footer + 16, cas_at);
  put_u64(b, footer + 24, cas_end);  // file lookup offset, 0 entries
  put_u64(b, footer + 32, 0);
  put_u64(b, footer + 40, cas_lookup);
  put_u64(b, footer + 48, 1);
  put_u64(b, footer + 56, chunk_lookup);
  put_u64(b, footer + 64, 1);
  put_hash(b, footer + 72, key);
  put_u64(b, footer + 104, 1700000000);
  put_u64(b, footer + 112, 1700604800);
  put_u64(b, footer + 168, 2048);
  put_u64(b, footer + 176, 0);
  put_u64(b, footer + 184, 4096);
  put_u64(b, footer + 192, footer);
  return b;
}

TEST(ShardFooter, ParsesEveryFieldAndSkipsLookupTables) {
  const Hash key = patterned_hash(0x99);
  Bytes b = hand_built_full_shard(key);
  auto parsed = parse_shard(b);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().describe();
  ASSERT_TRUE(parsed->footer.has_value());
  const ShardFooter& f = *parsed->footer;
  EXPECT_EQ(f.file_info_offset, 48u);
  EXPECT_EQ(f.cas_info_offset, 96u);
  EXPECT_EQ(f.file_lookup_offset, 240u);
  EXPECT_EQ(f.cas_lookup_offset, 240u);
  EXPECT_EQ(f.cas_lookup_count, 1u);
  EXPECT_EQ(f.chunk_lookup_offset, 252u);
  EXPECT_EQ(f.chunk_lookup_count, 1u);
  EXPECT_EQ(f.chunk_hash_key, key);
  EXPECT_EQ(parsed->chunk_key(), key);
  EXPECT_EQ(f.creation_timestamp, 1700000000u);
  EXPECT_EQ(f.key_expiry, 1700604800u);
  EXPECT_EQ(f.stored_bytes_on_disk, 2048u);
  EXPECT_EQ(f.stored_bytes, 4096u);
  EXPECT_EQ(f.footer_offset, 268u);
  EXPECT_TRUE(parsed->files.empty());
  ASSERT_EQ(parsed->xorbs.size(), 1u);
  EXPECT_EQ(parsed->xorbs[0].xorb_hash, patterned_hash(0x20));
  EXPECT_EQ(parsed->xorbs[0].unpacked_bytes, 4096u);
  EXPECT_EQ(parsed->xorbs[0].serialized_bytes, 2048u);
  ASSERT_EQ(parsed->xorbs[0].chunks.size(), 1u);
  EXPECT_EQ(parsed->xorbs[0].chunks[0].chunk_hash, keyed_chunk_hash(patterned_hash(0x50), key));
}

TEST(ShardFooter, InconsistentFooterIsRejected) {
  const Hash key = patterned_hash(0x99);
  const std::size_t footer = 268;
  struct Case {
    std::size_t offset;
    std::uint64_t value;
    const char* expect;
  };
  const Case cases[] = {
      {footer + 0, 2, "footer version"},
      {footer + 8, 96, "file_info_offset"},
      {footer + 16, 144, "cas_info_offset"},   // not where the file bookend ends
      {footer + 16, 5000, "cas_info_offset"},  // outside the shard
      {footer + 192, 260, "footer_offset"},
      {footer + 56, 100, "chunk lookup"},  // table overlapping the sections
      {footer + 64, 1ull << 60, "chunk lookup"},
      {40, 100, "footer_size"},
  };
  for (const Case& c : cases) {
    Bytes b = hand_built_full_shard(key);
    put_u64(b, c.offset, c.value);
    auto parsed = parse_shard(b);
    ASSERT_FALSE(parsed.has_value()) << c.expect;
    EXPECT_NE(parsed.error().message.find(c.expect), std::string::npos)
        << c.expect << " vs " << parsed.error().message;
  }
}

TEST(ShardFooter, UploadShardFromRealClientsWithFooterParses) {
  // huggingface.js uploads header footer_size 200 and a footer whose lookup fields are zero and
  // whose expiry is 0; the parser must accept it.
  Fixture f = make_fixture(8, true);
  auto bytes = serialize_shard_with_footer(f.files, f.xorb_infos(), {});
  ASSERT_TRUE(bytes.has_value());
  const std::size_t footer = bytes->size() - 200;
  for (std::size_t field = 24; field < 72; field += 8) put_u64(*bytes, footer + field, 0);
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().describe();
  EXPECT_EQ(parsed->files, f.files);
  EXPECT_FALSE(parsed->chunk_key().has_value());
  EXPECT_FALSE(parsed->footer->expired(4000000000u));
  EXPECT_TRUE(validate_upload_shard(*parsed).has_value());
}

TEST(ShardFooter, KeyExpiry) {
  ShardFooter footer;
  footer.key_expiry = 1000;
  EXPECT_FALSE(footer.expired(999));
  EXPECT_TRUE(footer.expired(1000));
  EXPECT_TRUE(footer.expired(5000));
  footer.key_expiry = 0;  // not stated
  EXPECT_FALSE(footer.expired(5000));
  footer.key_expiry = ~0ull;  // xet-core's "never"
  EXPECT_FALSE(footer.expired(~0ull - 1));
}

// --- HMAC ---------------------------------------------------------------------------------------

TEST(ShardHmac, KeyedChunkHashIsBlake3KeyedOverRawBytes) {
  const Hash chunk = patterned_hash(1);
  const Hash key = patterned_hash(200);
  blake3_hasher hasher;
  blake3_hasher_init_keyed(&hasher, key.bytes.data());
  blake3_hasher_update(&hasher, chunk.bytes.data(), 32);
  Hash want;
  blake3_hasher_finalize(&hasher, want.bytes.data(), 32);
  EXPECT_EQ(keyed_chunk_hash(chunk, key), want);
  EXPECT_NE(keyed_chunk_hash(chunk, key), chunk);
  EXPECT_NE(keyed_chunk_hash(chunk, patterned_hash(201)), want);
  // A zero key means the shard's hashes are plain.
  EXPECT_EQ(keyed_chunk_hash(chunk, Hash{}), chunk);
}

TEST(ShardHmac, ClientFindsItsChunkInAKeyedDedupResponse) {
  std::mt19937_64 rng(9);
  std::vector<XorbInfo> xorbs = {make_test_xorb(rng, 4).info, make_test_xorb(rng, 6).info};
  const Hash key = random_hash(rng);
  auto bytes = serialize_dedup_shard(xorbs, key, 1700000000, 1700003600);
  ASSERT_TRUE(bytes.has_value());
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().describe();
  EXPECT_TRUE(parsed->files.empty());
  ASSERT_EQ(parsed->chunk_key(), key);
  EXPECT_EQ(parsed->footer->key_expiry, 1700003600u);
  EXPECT_TRUE(parsed->footer->expired(1700003600));
  ASSERT_EQ(parsed->xorbs.size(), 2u);

  // The client holds the plain hash of xorb 1's chunk 3.
  const Hash mine = xorbs[1].chunks[3].chunk_hash;
  const Hash probe = keyed_chunk_hash(mine, *parsed->chunk_key());
  int found_xorb = -1, found_chunk = -1;
  bool plain_visible = false;
  for (std::size_t x = 0; x < parsed->xorbs.size(); ++x) {
    for (std::size_t c = 0; c < parsed->xorbs[x].chunks.size(); ++c) {
      if (parsed->xorbs[x].chunks[c].chunk_hash == probe) found_xorb = int(x), found_chunk = int(c);
      if (parsed->xorbs[x].chunks[c].chunk_hash == mine) plain_visible = true;
    }
  }
  EXPECT_EQ(found_xorb, 1);
  EXPECT_EQ(found_chunk, 3);
  EXPECT_FALSE(plain_visible) << "raw chunk hashes must not be sent";
  // Everything but the hashes is as given.
  EXPECT_EQ(parsed->xorbs[1].xorb_hash, xorbs[1].xorb_hash);
  EXPECT_EQ(parsed->xorbs[1].chunks[3].byte_offset, xorbs[1].chunks[3].byte_offset);

  // With a zero key the dedup shard lists plain hashes.
  auto plain = parse_shard(*serialize_dedup_shard(xorbs, Hash{}, 1, 2));
  ASSERT_TRUE(plain.has_value());
  EXPECT_FALSE(plain->chunk_key().has_value());
  EXPECT_EQ(plain->xorbs, xorbs);
}

// --- malformed input ----------------------------------------------------------------------------

TEST(ShardParse, EveryStrictPrefixOfAnUploadShardFails) {
  Fixture f = make_fixture(10, true);
  auto bytes = serialize_upload_shard(f.files, f.xorb_infos());
  ASSERT_TRUE(bytes.has_value());
  for (std::size_t n = 0; n < bytes->size(); ++n) {
    auto parsed = parse_shard(ByteSpan(bytes->data(), n));
    ASSERT_FALSE(parsed.has_value()) << "prefix of " << n << " bytes parsed";
  }
  auto with_footer = serialize_shard_with_footer(f.files, f.xorb_infos(), {});
  ASSERT_TRUE(with_footer.has_value());
  for (std::size_t n = 0; n < with_footer->size(); ++n) {
    EXPECT_FALSE(parse_shard(ByteSpan(with_footer->data(), n)).has_value()) << n;
  }
}

TEST(ShardParse, HeaderErrorsNameTheField) {
  auto good = *serialize_upload_shard({}, {});
  Bytes b = good;
  b[3] = std::byte{'x'};
  auto r = parse_shard(b);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidFormat);
  EXPECT_NE(r.error().message.find("tag"), std::string::npos);

  b = good;
  put_u64(b, 32, 1);
  r = parse_shard(b);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("version"), std::string::npos);

  b = good;
  b.push_back(std::byte{0});
  r = parse_shard(b);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("follow the CAS info bookend"), std::string::npos);

  r = parse_shard(ByteSpan(good.data(), 20));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kTruncated);
}

TEST(ShardParse, HugeCountsAreBoundedByTheInput) {
  Fixture f = make_fixture(11, true);
  auto good = *serialize_upload_shard(f.files, f.xorb_infos());
  Bytes b = good;
  put_u32(b, 48 + 36, 0xFFFFFFFFu);  // file 0 num_entries
  auto r = parse_shard(b);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kTruncated);
  EXPECT_NE(r.error().message.find("num_entries 4294967295"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("offset 48"), std::string::npos);

  const std::size_t cas_at = upload_shard_size(f.files, {}) - 48;  // start of the CAS section
  b = good;
  ASSERT_EQ(get_u32(b, cas_at + 36), f.xorbs[0].info.chunks.size());
  put_u32(b, cas_at + 36, 0x7FFFFFFFu);
  r = parse_shard(b);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("CAS info #0"), std::string::npos) << r.error().message;

  b = good;
  put_u32(b, 48 + 32, kFileFlagWithVerification | 1u);  // an unknown flag bit
  r = parse_shard(b);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("unknown bits"), std::string::npos);
}

TEST(ShardParse, MissingBookendIsReported) {
  auto good = *serialize_upload_shard({}, {});
  Bytes b = good;
  b[100] = std::byte{0};  // CAS bookend is now a xorb header with 0 chunks, and nothing follows
  auto r = parse_shard(b);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ErrorCode::kTruncated);
  EXPECT_NE(r.error().message.find("missing bookend"), std::string::npos);
}

// --- validation and enumeration -----------------------------------------------------------------

Shard valid_upload(std::uint64_t seed) {
  Fixture f = make_fixture(seed, true);
  return Shard{f.files, f.xorb_infos(), std::nullopt};
}

TEST(ShardValidation, AcceptsAConsistentUpload) {
  EXPECT_TRUE(validate_upload_shard(valid_upload(12)).has_value());
}

TEST(ShardValidation, RejectsEachInconsistency) {
  struct Case {
    const char* name;
    void (*mutate)(Shard&);
    ErrorCode code;
  };
  const Case cases[] = {
      {"range past xorb", [](Shard& s) { s.files[0].terms[0].chunk_index_end = 6; },
       ErrorCode::kInvalidFormat},
      {"empty range", [](Shard& s) { s.files[1].terms[0].chunk_index_start = 7; },
       ErrorCode::kInvalidFormat},
      {"unpacked size", [](Shard& s) { s.files[0].terms[1].unpacked_bytes += 1; },
       ErrorCode::kSizeMismatch},
      {"verification", [](Shard& s) { s.files[2].verification[1].bytes[0] ^= 1; },
       ErrorCode::kHashMismatch},
      {"no verification", [](Shard& s) { s.files[2].verification.clear(); },
       ErrorCode::kInvalidFormat},
      {"chunk offset", [](Shard& s) { s.xorbs[0].chunks[2].byte_offset += 1; },
       ErrorCode::kSizeMismatch},
      {"xorb total", [](Shard& s) { s.xorbs[1].unpacked_bytes += 1; }, ErrorCode::kSizeMismatch},
      {"xorb hash", [](Shard& s) { s.xorbs[2].xorb_hash.bytes[5] ^= 1; }, ErrorCode::kHashMismatch},
      {"duplicate xorb", [](Shard& s) { s.xorbs.push_back(s.xorbs[0]); },
       ErrorCode::kInvalidFormat},
      {"termless file",
       [](Shard& s) {
         s.files[0].terms.clear();
         s.files[0].verification.clear();
       },
       ErrorCode::kInvalidFormat},
  };
  for (const Case& c : cases) {
    Shard shard = valid_upload(13);
    c.mutate(shard);
    auto r = validate_upload_shard(shard);
    ASSERT_FALSE(r.has_value()) << c.name;
    EXPECT_EQ(r.error().code, c.code) << c.name << ": " << r.error().describe();
  }
  // The empty file (zero hash, no terms) is fine.
  Shard shard = valid_upload(13);
  shard.files.push_back(FileInfo{});
  EXPECT_TRUE(validate_upload_shard(shard).has_value());
}

TEST(ShardValidation, TermsOfUndeclaredXorbsAreLeftToVerifyTerm) {
  std::mt19937_64 rng(14);
  TestXorb stored = make_test_xorb(rng, 10);  // already in the server's store
  Shard shard = valid_upload(14);
  shard.files[0].terms.push_back(term_of(stored, 3, 8));
  shard.files[0].verification.push_back(verification_hash(hashes_of(stored, 3, 8)));
  EXPECT_TRUE(validate_upload_shard(shard).has_value());

  const FileTerm& term = shard.files[0].terms.back();
  const Hash& verification = shard.files[0].verification.back();
  EXPECT_TRUE(verify_term(term, verification, stored.chunks).has_value());
  EXPECT_EQ(verify_term(term, patterned_hash(0), stored.chunks).error().code,
            ErrorCode::kHashMismatch);
  FileTerm wrong_size = term;
  wrong_size.unpacked_bytes -= 1;
  EXPECT_EQ(verify_term(wrong_size, verification, stored.chunks).error().code,
            ErrorCode::kSizeMismatch);
  FileTerm past_end = term;
  past_end.chunk_index_end = 11;
  EXPECT_EQ(verify_term(past_end, verification, stored.chunks).error().code,
            ErrorCode::kInvalidFormat);
  // The verification of another range of the same xorb does not pass.
  FileTerm shifted = term_of(stored, 4, 9);
  EXPECT_EQ(verify_term(shifted, verification, stored.chunks).error().code,
            ErrorCode::kHashMismatch);

  auto refs = referenced_xorbs(shard);
  EXPECT_TRUE(std::is_sorted(refs.begin(), refs.end()));
  EXPECT_EQ(refs.size(), 4u);  // three declared + the stored one
  EXPECT_TRUE(std::binary_search(refs.begin(), refs.end(), stored.info.xorb_hash));
}

TEST(ShardValidation, GlobalDedupEligibleChunks) {
  std::mt19937_64 rng(15);
  TestXorb x = make_test_xorb(rng, 6);
  // Chunk 4's hash qualifies by value: last 8 bytes are a multiple of 1024 (here zero).
  for (int i = 24; i < 32; ++i) x.chunks[4].hash.bytes[i] = 0;
  x.chunks[4].hash.bytes[25] = 0x04;  // 0x400 = 1024
  for (auto& c : x.chunks) {
    if (&c != &x.chunks[4]) c.hash.bytes[24] |= 1;  // others do not qualify
  }
  x.info = *make_xorb_info(xorb_hash(x.chunks), x.chunks, 1);
  x.info.chunks[1].flags = kChunkFlagGlobalDedup;
  FileInfo file;
  file.file_hash = random_hash(rng);
  file.terms = {term_of(x, 2, 6)};  // the file starts at chunk 2
  file.verification = {verification_hash(hashes_of(x, 2, 6))};
  Shard shard{{file}, {x.info}, std::nullopt};

  EXPECT_TRUE(hash_is_global_dedup_eligible(x.chunks[4].hash));
  EXPECT_FALSE(hash_is_global_dedup_eligible(x.chunks[0].hash));
  std::vector<Hash> want = {x.chunks[1].hash, x.chunks[2].hash, x.chunks[4].hash};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(global_dedup_eligible_chunks(shard), want);
}

// --- builder ------------------------------------------------------------------------------------

TEST(ShardBuilder, ComputesVerificationFromTheFileChunks) {
  std::mt19937_64 rng(16);
  TestXorb a = make_test_xorb(rng, 4);
  TestXorb existing = make_test_xorb(rng, 9);  // deduplicated against, not uploaded now
  UploadShardBuilder builder;
  ASSERT_TRUE(builder.add_xorb(a.info).has_value());
  ASSERT_TRUE(builder.add_xorb(a.info).has_value());  // kept once
  EXPECT_EQ(builder.xorbs().size(), 1u);

  std::vector<FileTerm> terms = {term_of(a, 0, 4), term_of(existing, 2, 5)};
  std::vector<Hash> file_chunks = hashes_of(a, 0, 4);
  for (const Hash& h : hashes_of(existing, 2, 5)) file_chunks.push_back(h);
  const Hash file_hash = random_hash(rng);
  const Hash sha = random_hash(rng);
  auto added = builder.add_file(file_hash, terms, file_chunks, sha);
  ASSERT_TRUE(added.has_value()) << added.error().describe();
  ASSERT_TRUE(builder.add_file(file_hash, terms, file_chunks, sha).has_value());  // kept once
  ASSERT_EQ(builder.files().size(), 1u);
  const FileInfo& file = builder.files()[0];
  ASSERT_EQ(file.verification.size(), 2u);
  EXPECT_EQ(file.verification[0], verification_hash(hashes_of(a, 0, 4)));
  EXPECT_EQ(file.verification[1], verification_hash(hashes_of(existing, 2, 5)));
  EXPECT_EQ(file.sha256, sha);

  auto bytes = builder.serialize();
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(bytes->size(), builder.serialized_size());
  auto parsed = parse_shard(*bytes);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_TRUE(validate_upload_shard(*parsed).has_value());
  EXPECT_TRUE(
      verify_term(parsed->files[0].terms[1], parsed->files[0].verification[1], existing.chunks)
          .has_value());

  builder.clear();
  EXPECT_TRUE(builder.empty());
}

TEST(ShardBuilder, RejectsTermsThatDisagreeWithTheFileOrTheXorb) {
  std::mt19937_64 rng(17);
  TestXorb a = make_test_xorb(rng, 4);
  UploadShardBuilder builder;
  ASSERT_TRUE(builder.add_xorb(a.info).has_value());
  std::vector<Hash> chunks = hashes_of(a, 0, 4);

  // Terms covering fewer chunks than the file has.
  EXPECT_FALSE(builder.add_file(random_hash(rng), {term_of(a, 0, 3)}, chunks).has_value());
  // Terms covering more.
  EXPECT_FALSE(
      builder.add_file(random_hash(rng), {term_of(a, 0, 4), term_of(a, 0, 1)}, chunks).has_value());
  // The file's chunks are not the xorb's chunks in that range.
  std::vector<Hash> swapped = chunks;
  std::swap(swapped[0], swapped[1]);
  auto r = builder.add_file(random_hash(rng), {term_of(a, 0, 4)}, swapped);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("verification"), std::string::npos);
  // Wrong unpacked size against a declared xorb.
  FileTerm t = term_of(a, 0, 4);
  t.unpacked_bytes += 1;
  EXPECT_FALSE(builder.add_file(random_hash(rng), {t}, chunks).has_value());
  // A xorb whose offsets do not add up.
  XorbInfo bad = make_test_xorb(rng, 3).info;
  bad.chunks[1].byte_offset = 0;
  EXPECT_FALSE(builder.add_xorb(bad).has_value());
  EXPECT_TRUE(builder.files().empty());
}

// --- random mutation ----------------------------------------------------------------------------

double fuzz_seconds() {
  const char* text = std::getenv("BUCKETFS_FUZZ_SECONDS");
  if (text == nullptr || *text == '\0') return 2.0;
  return std::max(0.05, std::atof(text));
}

Bytes mutate(const Bytes& input, std::mt19937_64& rng) {
  Bytes b = input;
  const int steps = 1 + int(rng() % 3);
  for (int s = 0; s < steps; ++s) {
    const std::size_t size = b.size();
    switch (rng() % 8) {
      case 0:  // flip a bit
        if (size) b[rng() % size] ^= std::byte(1u << (rng() % 8));
        break;
      case 1:  // overwrite a byte
        if (size) b[rng() % size] = std::byte(rng());
        break;
      case 2: {  // an interesting u32 at a field boundary
        if (size < 4) break;
        static const std::uint32_t values[] = {
            0, 1, 2, 0xFFFFFFFFu, 0x80000000u, 0x40000000u, 0xC0000000u, 48, 200, 0x7FFFFFFFu};
        const std::size_t at = (rng() % (size / 4)) * 4;
        put_u32(b, at, values[rng() % std::size(values)]);
        break;
      }
      case 3: {  // insert bytes
        const std::size_t at = size ? rng() % (size + 1) : 0;
        const std::size_t n = 1 + rng() % 64;
        Bytes extra(n);
        for (auto& x : extra) x = std::byte(rng());
        b.insert(b.begin() + at, extra.begin(), extra.end());
        break;
      }
      case 4: {  // delete a range
        if (!size) break;
        const std::size_t at = rng() % size;
        const std::size_t n = std::min<std::size_t>(size - at, 1 + rng() % 96);
        b.erase(b.begin() + at, b.begin() + at + n);
        break;
      }
      case 5:  // truncate
        b.resize(size ? rng() % size : 0);
        break;
      case 6: {  // duplicate a 48-byte record at a record boundary (past the header)
        if (size < 96) break;
        const std::size_t records = (size - 48) / 48;
        const std::size_t from = 48 + (rng() % records) * 48;
        const std::size_t to = 48 + (rng() % (records + 1)) * 48;
        Bytes rec(b.begin() + from, b.begin() + from + 48);
        b.insert(b.begin() + std::min(to, b.size()), rec.begin(), rec.end());
        break;
      }
      case 7: {  // a bookend somewhere
        if (size < 48) break;
        const std::size_t at = (rng() % ((size - 16) / 16)) * 16;
        std::memset(b.data() + at, 0xff, std::min<std::size_t>(32, size - at));
        break;
      }
    }
  }
  return b;
}

TEST(ShardFuzz, RandomMutationsYieldErrorsOrConsistentShards) {
  std::vector<Bytes> corpus;
  for (std::uint64_t seed : {20u, 21u}) {
    Fixture f = make_fixture(seed, true);
    corpus.push_back(*serialize_upload_shard(f.files, f.xorb_infos()));
    corpus.push_back(
        *serialize_shard_with_footer(f.files, f.xorb_infos(), {patterned_hash(1), 5, 6}));
    Fixture g = make_fixture(seed, false);
    corpus.push_back(*serialize_upload_shard(g.files, g.xorb_infos()));
    corpus.push_back(*serialize_dedup_shard(g.xorb_infos(), patterned_hash(9), 7, 8));
  }
  corpus.push_back(*serialize_upload_shard({}, {}));
  corpus.push_back(hand_built_full_shard(patterned_hash(3)));

  std::mt19937_64 rng(0xB0C4E7F5);
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(fuzz_seconds()));
  std::size_t iterations = 0, accepted = 0;
  while (std::chrono::steady_clock::now() < deadline || iterations < 1000) {
    const Bytes& seed = corpus[rng() % corpus.size()];
    const Bytes input = mutate(seed, rng);
    ++iterations;
    auto parsed = parse_shard(input);
    if (!parsed) {
      EXPECT_FALSE(parsed.error().message.empty());
      continue;
    }
    ++accepted;
    // Consistency: the content fits the input, and writing it out again gives the same content.
    std::size_t records = 2;
    for (const auto& file : parsed->files) {
      records += 1 + file.terms.size() + file.verification.size() + (file.sha256 ? 1 : 0);
      ASSERT_TRUE(file.verification.empty() || file.verification.size() == file.terms.size());
    }
    for (const auto& xorb : parsed->xorbs) records += 1 + xorb.chunks.size();
    ASSERT_LE(48 + records * 48, input.size());
    Result<Bytes> again = parsed->footer
                              ? serialize_shard_with_footer(parsed->files, parsed->xorbs,
                                                            {parsed->footer->chunk_hash_key,
                                                             parsed->footer->creation_timestamp,
                                                             parsed->footer->key_expiry})
                              : serialize_upload_shard(parsed->files, parsed->xorbs);
    ASSERT_TRUE(again.has_value()) << again.error().describe();
    auto reparsed = parse_shard(*again);
    ASSERT_TRUE(reparsed.has_value()) << reparsed.error().describe();
    ASSERT_EQ(reparsed->files, parsed->files);
    ASSERT_EQ(reparsed->xorbs, parsed->xorbs);
    ASSERT_EQ(reparsed->chunk_key(), parsed->chunk_key());
    // The server-side helpers must cope with whatever parsed.
    (void)validate_upload_shard(*parsed);
    (void)global_dedup_eligible_chunks(*parsed);
    (void)referenced_xorbs(*parsed);
  }
  EXPECT_GT(iterations, 1000u);
  EXPECT_GT(accepted, 0u) << "mutations never produced a valid shard; the test lost its teeth";
  std::printf("[ShardFuzz] %zu iterations, %zu parsed\n", iterations, accepted);
}

}  // namespace
}  // namespace bucketfs::xet
