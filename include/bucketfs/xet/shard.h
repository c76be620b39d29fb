#pragma once
// Xet shards (shard.md): the binary format of the shard upload body (POST /v1/shards, which
// registers files and declares new xorbs) and of the global dedup response
// (GET /v1/chunks/default-merkledb/{hash}, which lists xorbs a client may reference).
//
// Layout, all integers little-endian, every record 48 bytes:
//
//   header   [0,32) tag "HFRepoMetaData\0" + 17 magic bytes   [32,40) version = 2
//            [40,48) footer_size (0 when the footer is omitted, else 200)
//   file info section, right after the header: per file
//            FileDataSequenceHeader  [0,32) file hash  [32,36) file_flags  [36,40) num_entries
//                                    [40,48) reserved
//            num_entries x FileDataSequenceEntry  [0,32) xorb hash  [32,36) cas_flags
//                                    [36,40) unpacked_segment_bytes  [40,44) chunk_index_start
//                                    [44,48) chunk_index_end (exclusive)
//            if flags & 1<<31: num_entries x FileVerificationEntry  [0,32) range hash, 16 reserved
//            if flags & 1<<30: 1 x FileMetadataExt  [0,32) SHA-256 of the content, 16 reserved
//            bookend: 32 bytes 0xFF, 16 bytes 0x00
//   CAS info section, right after the file bookend: per xorb
//            CASChunkSequenceHeader  [0,32) xorb hash  [32,36) cas_flags  [36,40) num_entries
//                                    [40,44) num_bytes_in_cas  [44,48) num_bytes_on_disk
//            num_entries x CASChunkSequenceEntry  [0,32) chunk hash  [32,36) chunk_byte_range_start
//                                    [36,40) unpacked_segment_bytes  [40,44) flags  [44,48)
//                                    reserved
//            bookend: 32 bytes 0xFF, 16 bytes 0x00
//   (full shards only) lookup tables the footer points to, then the 200-byte footer:
//            [0,8) version = 1  [8,16) file_info_offset  [16,24) cas_info_offset
//            [24,72) file/cas/chunk lookup offset + entry count (xet-core; "reserved" in the spec)
//            [72,104) chunk_hash_hmac_key  [104,112) creation timestamp  [112,120) key expiry
//            [120,168) reserved  [168,192) stored_bytes_on_disk, materialized_bytes, stored_bytes
//            (xet-core; "reserved" in the spec)  [192,200) footer_offset
//
// Where the spec text and the real clients differ (xet-core mdb_shard / xet_core_structures
// metadata_shard, huggingface.js packages/hub/src/utils/uploadShards.ts and shardParser.ts):
//  - The header tag is not spelled out in shard.md; it is xet-core's MDB_SHARD_HEADER_TAG,
//    the same bytes huggingface.js writes (kShardHeaderTag below).
//  - shard.md says an upload shard MUST NOT carry the footer. Both real clients send one anyway
//    (huggingface.js writes footer_size 200 and a footer; xet-core serializes its in-memory shard
//    with footer), and xet-core's server-side reader streams header, file section and CAS section
//    without looking at the footer. We write upload shards without footer, as the spec says, and
//    parse both forms.
//  - chunk_byte_range_start ("start position in CAS block") is the offset of the chunk in the
//    concatenation of the xorb's UNCOMPRESSED chunks, not in the serialized xorb: both clients
//    write the running sum of the previous chunks' unpacked sizes, and xet-core derives
//    num_bytes_in_cas as last.start + last.size. num_bytes_on_disk is the serialized xorb length.
//  - Bytes [40,44) of a CASChunkSequenceEntry, reserved in the spec, are xet-core's chunk flags;
//    bit 31 (kChunkFlagGlobalDedup) marks a chunk the server should index for global dedup.
//    We keep the value as read.
//  - The footer's reserved areas hold xet-core's lookup-table offsets and counts and three byte
//    statistics (the byte offsets above). A full shard may therefore hold lookup tables between
//    the CAS bookend and the footer; the CAS section ends at its bookend, not at footer_offset.
//    Dedup responses built by xet-core's serialize_xorb_subset_with_expiry have no tables (each
//    lookup offset = footer_offset, count 0); our full-shard writer does the same.
//  - HMAC: "HMAC(chunk_hash, key)" is BLAKE3 keyed with the 32-byte footer key over the 32 raw
//    chunk-hash bytes (xet-core DataHash::hmac); a zero key means the hashes are not keyed.
//  - Key expiry: xet-core's local shards use u64::MAX for "never"; its newer footer writer and
//    huggingface.js write 0 when there is no expiry. We treat 0 and u64::MAX as "no expiry".
//
// Everything here is pure: no I/O, no clock (callers pass timestamps). Parsers never trust a
// count in the input: every count is checked against the bytes that remain before anything is
// allocated, and malformed input yields an Error naming the field and byte offset.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "bucketfs/xet/bytes.h"
#include "bucketfs/xet/error.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::xet {

inline constexpr std::size_t kShardHeaderSize = 48;
inline constexpr std::size_t kShardFooterSize = 200;
inline constexpr std::size_t kShardRecordSize = 48;  // every section record and the bookends
inline constexpr std::uint64_t kShardHeaderVersion = 2;
inline constexpr std::uint64_t kShardFooterVersion = 1;
// A serialized upload shard must not exceed this (upload-protocol.md step 6); split the batch.
inline constexpr std::size_t kMaxShardSize = 64 * 1024 * 1024;

inline constexpr std::array<std::uint8_t, 32> kShardHeaderTag = {
    'H', 'F', 'R', 'e', 'p', 'o', 'M', 'e', 't', 'a', 'D', 'a', 't', 'a', 0,  85,
    105, 103, 69,  106, 123, 129, 87,  131, 165, 189, 217, 92,  205, 209, 74, 169};

// FileDataSequenceHeader.file_flags bits. Any other bit set is rejected by the parser: it could
// announce records we would not know to skip.
inline constexpr std::uint32_t kFileFlagWithVerification = 1u << 31;
inline constexpr std::uint32_t kFileFlagWithMetadataExt = 1u << 30;
// CASChunkSequenceEntry flags (xet-core): the chunk is a candidate for the global dedup table.
inline constexpr std::uint32_t kChunkFlagGlobalDedup = 1u << 31;

// One term of a file reconstruction: chunks [chunk_index_start, chunk_index_end) of a xorb.
// (FileDataSequenceEntry)
struct FileTerm {
  Hash xorb_hash;
  std::uint32_t cas_flags = 0;       // reserved, written 0
  std::uint32_t unpacked_bytes = 0;  // sum of the uncompressed sizes of the term's chunks
  std::uint32_t chunk_index_start = 0;
  std::uint32_t chunk_index_end = 0;  // exclusive

  std::uint32_t chunk_count() const {
    return chunk_index_end > chunk_index_start ? chunk_index_end - chunk_index_start : 0;
  }
  bool operator==(const FileTerm&) const = default;
};

// One file info block: a file's reconstruction plus its optional verification and metadata.
struct FileInfo {
  Hash file_hash;
  std::vector<FileTerm> terms;
  // Either empty or exactly one verification hash per term (FileVerificationEntry.range_hash).
  std::vector<Hash> verification;
  // The SHA-256 of the file content (FileMetadataExt), when known.
  std::optional<Hash> sha256;

  // The file's length: the sum of its terms' unpacked bytes.
  std::uint64_t size() const;
  bool operator==(const FileInfo&) const = default;
};

// One chunk of a xorb as listed in a CAS info block (CASChunkSequenceEntry).
struct XorbChunk {
  Hash chunk_hash;                // HMAC-keyed in a dedup response with a non-zero key
  std::uint32_t byte_offset = 0;  // offset in the xorb's uncompressed chunk bytes (see top)
  std::uint32_t unpacked_bytes = 0;
  std::uint32_t flags = 0;  // kChunkFlagGlobalDedup or 0
  bool operator==(const XorbChunk&) const = default;
};

// One CAS info block: a xorb and its chunks (CASChunkSequenceHeader + entries).
struct XorbInfo {
  Hash xorb_hash;
  std::uint32_t cas_flags = 0;         // reserved, written 0
  std::uint32_t unpacked_bytes = 0;    // num_bytes_in_cas: the sum of the chunks' sizes
  std::uint32_t serialized_bytes = 0;  // num_bytes_on_disk: the length of the uploaded xorb
  std::vector<XorbChunk> chunks;
  bool operator==(const XorbInfo&) const = default;
};

// Builds a XorbInfo from the xorb's chunks in order, with the running uncompressed offsets the
// real clients write. kInvalidArgument if the xorb's uncompressed size exceeds 32 bits.
Result<XorbInfo> make_xorb_info(const Hash& xorb_hash, std::span<const HashAndSize> chunks,
                                std::uint32_t serialized_bytes);

// The footer of a full shard (MDBShardFileFooter), as read or as written.
struct ShardFooter {
  std::uint64_t file_info_offset = kShardHeaderSize;
  std::uint64_t cas_info_offset = 0;
  std::uint64_t file_lookup_offset = 0;
  std::uint64_t file_lookup_count = 0;
  std::uint64_t cas_lookup_offset = 0;
  std::uint64_t cas_lookup_count = 0;
  std::uint64_t chunk_lookup_offset = 0;
  std::uint64_t chunk_lookup_count = 0;
  Hash chunk_hash_key;                     // zero: chunk hashes are not keyed
  std::uint64_t creation_timestamp = 0;    // seconds since the epoch
  std::uint64_t key_expiry = 0;            // seconds since the epoch; 0 or u64 max: none
  std::uint64_t stored_bytes_on_disk = 0;  // sum of the xorbs' serialized sizes
  std::uint64_t materialized_bytes = 0;    // sum of the files' sizes
  std::uint64_t stored_bytes = 0;          // sum of the xorbs' uncompressed sizes
  std::uint64_t footer_offset = 0;

  // The key chunk hashes in this shard are keyed with, or nullopt when they are plain.
  std::optional<Hash> chunk_key() const;
  // True when the shard states an expiry and `now_unix_seconds` is at or past it. After that a
  // client SHOULD NOT deduplicate against the shard (shard.md "Shard Key Expiry"): the server
  // may reject uploads referencing its xorbs.
  bool expired(std::uint64_t now_unix_seconds) const;
  bool operator==(const ShardFooter&) const = default;
};

// A parsed shard. Files and xorbs are in the order of the input.
struct Shard {
  std::vector<FileInfo> files;
  std::vector<XorbInfo> xorbs;
  std::optional<ShardFooter> footer;  // absent for upload shards that follow the spec

  // The footer's key, when there is a footer with a non-zero key.
  std::optional<Hash> chunk_key() const { return footer ? footer->chunk_key() : std::nullopt; }
  bool operator==(const Shard&) const = default;
};

// --- Parsing ------------------------------------------------------------------------------------

// Parses any shard: an upload shard (footer_size 0, the sections end the input) or a full shard
// (footer_size 200; the footer is the last 200 bytes, its offsets locate the sections, and bytes
// between the CAS bookend and the footer, xet-core's lookup tables, are skipped). Checks the
// structure only: tag, versions, bookends, that every count fits the remaining bytes, that no
// file_flags bits are unknown, that verification is present for all files or none (shard.md),
// and footer offsets that agree with the sections. Semantic checks are validate_upload_shard().
// The result owns its data; nothing points into `data`.
Result<Shard> parse_shard(ByteSpan data);

// --- Writing ------------------------------------------------------------------------------------

// The exact size serialize_upload_shard() would produce, without checking the content.
std::size_t upload_shard_size(std::span<const FileInfo> files, std::span<const XorbInfo> xorbs);

// Serializes the body of POST /v1/shards: header (footer_size 0), file info section, bookend,
// CAS info section, bookend, and no footer. Checks before writing that every file has either no
// verification entries or one per term, that all files agree on having them (shard.md), and that
// counts fit their u32 fields; kTooLarge past kMaxShardSize. Upload shards MUST carry
// verification (hashing.md); prefer UploadShardBuilder, which computes it.
Result<Bytes> serialize_upload_shard(std::span<const FileInfo> files,
                                     std::span<const XorbInfo> xorbs);

// What the writer of a full shard chooses; the writer computes offsets and statistics.
struct ShardFooterFields {
  Hash chunk_hash_key;  // written as given; the caller keys the chunk hashes (see below)
  std::uint64_t creation_timestamp = 0;
  std::uint64_t key_expiry = 0;
};

// Serializes a full shard with footer (header footer_size 200), no lookup tables: the form of a
// global dedup response and of a shard kept in a local cache. Chunk hashes are written as given.
// Same checks as serialize_upload_shard() except the size limit.
Result<Bytes> serialize_shard_with_footer(std::span<const FileInfo> files,
                                          std::span<const XorbInfo> xorbs,
                                          const ShardFooterFields& fields);

// A global dedup response: no files, the given xorbs with every chunk hash keyed with `key`
// (none when `key` is zero), `key` in the footer, and the given creation and expiry times.
Result<Bytes> serialize_dedup_shard(std::span<const XorbInfo> xorbs, const Hash& key,
                                    std::uint64_t creation_timestamp, std::uint64_t key_expiry);

// --- Chunk hash protection and global dedup -----------------------------------------------------

// The form a chunk hash takes in a shard whose footer key is `key`: BLAKE3 keyed with `key` over
// the 32 raw bytes of `chunk_hash`. A zero key means no protection: returns `chunk_hash`.
// A client looks for keyed_chunk_hash(its chunk hash, shard key) among the shard's chunk hashes.
Hash keyed_chunk_hash(const Hash& chunk_hash, const Hash& key);

// A copy of `xorb` whose chunk hashes are keyed with `key` (unchanged when `key` is zero).
XorbInfo with_keyed_chunk_hashes(XorbInfo xorb, const Hash& key);

// Whether a chunk hash qualifies for a global dedup query by its value (deduplication.md): its
// last 8 bytes, a little-endian u64, are divisible by 1024. First chunks of files also qualify.
bool hash_is_global_dedup_eligible(const Hash& chunk_hash);

// The chunk hashes of `shard`'s CAS section a server should enter in its global dedup index,
// as xet-core does: chunks whose hash qualifies, chunks flagged kChunkFlagGlobalDedup, and the
// chunk each file of the shard starts with (when that xorb is in the shard). Sorted, unique.
std::vector<Hash> global_dedup_eligible_chunks(const Shard& shard);

// --- What a server checks on an upload ----------------------------------------------------------

// The consistency of one CAS info block with plain (not keyed) chunk hashes: it lists at least
// one chunk, no chunk is empty, chunk offsets are the running sum of the sizes from 0,
// unpacked_bytes is their total, and xorb_hash is xorb_hash() of the chunks. Error names the xorb
// and the chunk.
Result<void> validate_xorb_info(const XorbInfo& xorb);

// Checks an upload shard beyond its structure: every file has verification entries (hashing.md:
// MUST), no term has an empty chunk range, a file with no terms is the empty file (zero hash),
// every declared xorb passes validate_xorb_info(), no xorb is declared twice, and each term whose
// xorb is declared in this shard lies within it and has the unpacked size of its chunks.
// Terms referencing other xorbs are checked by the server against its store with verify_term().
Result<void> validate_upload_shard(const Shard& shard);

// Every xorb an upload shard references (in terms or in its CAS section), sorted and unique. All
// of them must exist before the shard is accepted (upload-protocol.md).
std::vector<Hash> referenced_xorbs(const Shard& shard);

// Checks one term against the full chunk list of its xorb (plain chunk hashes and sizes, in
// order): the range lies in the xorb, unpacked_bytes is the sum of the range's sizes, and
// `verification` equals verification_hash() of the range's chunk hashes.
Result<void> verify_term(const FileTerm& term, const Hash& verification,
                         std::span<const HashAndSize> xorb_chunks);

// --- Building an upload shard -------------------------------------------------------------------

// A file info with verification computed from the file's chunk hashes: the terms cover the file's
// chunks in order, so term i's verification hash is over the next chunk_count() hashes of
// `file_chunk_hashes`. kInvalidArgument when the terms' chunk counts do not sum to its size or a
// term's range is empty.
Result<FileInfo> make_file_info(const Hash& file_hash, std::vector<FileTerm> terms,
                                std::span<const Hash> file_chunk_hashes,
                                std::optional<Hash> sha256 = std::nullopt);

// Collects the files and new xorbs of one upload shard. Not thread-safe.
class UploadShardBuilder {
 public:
  // Declares a xorb created by this upload (it must be uploaded before the shard). Checked with
  // validate_xorb_info(); the same xorb added twice is kept once.
  Result<void> add_xorb(XorbInfo xorb);

  // Adds a file, computing its verification entries as make_file_info() does. All errors are
  // kInvalidArgument and leave the builder unchanged. Terms that
  // reference a xorb added to this builder are also checked against it: range within the xorb,
  // chunk hashes equal to the xorb's, unpacked bytes equal to their sizes. A file hash already
  // added is skipped (the shard registers each file once).
  Result<void> add_file(const Hash& file_hash, std::vector<FileTerm> terms,
                        std::span<const Hash> file_chunk_hashes,
                        std::optional<Hash> sha256 = std::nullopt);

  // Adds a file whose verification entries the caller computed (e.g. while streaming), with the
  // same checks and de-duplication. kInvalidArgument unless it has one verification hash per
  // term, and for a file without terms unless it is the empty file (zero hash).
  Result<void> add_file(FileInfo file);

  bool empty() const { return files_.empty() && xorbs_.empty(); }
  // The size serialize() would produce now; split the batch before it passes kMaxShardSize.
  std::size_t serialized_size() const { return upload_shard_size(files_, xorbs_); }
  const std::vector<FileInfo>& files() const { return files_; }
  const std::vector<XorbInfo>& xorbs() const { return xorbs_; }

  Result<Bytes> serialize() const { return serialize_upload_shard(files_, xorbs_); }
  void clear();

 private:
  std::vector<FileInfo> files_;
  std::vector<XorbInfo> xorbs_;
  std::unordered_set<Hash> file_hashes_;
  std::unordered_map<Hash, std::size_t> xorb_index_;  // xorb hash -> index in xorbs_
};

}  // namespace bucketfs::xet
