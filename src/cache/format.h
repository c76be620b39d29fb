#pragma once
// Private to cache/: the byte layout of every LMDB key and value of the node store, as
// docs/CACHE_FORMAT.md specifies. Keys are big-endian so that LMDB's bytewise order is numeric
// order; values are little-endian. Decoders reject values of the wrong length.

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "bucketfs/cache/dedup_index.h"
#include "bucketfs/cache/error.h"
#include "bucketfs/cache/node_store.h"
#include "bucketfs/lmdb/lmdb.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::cache::format {

// meta keys
inline constexpr std::string_view kMetaFormat = "format";              // u32
inline constexpr std::string_view kMetaNextSegment = "next_segment";   // u64, first id is 1
inline constexpr std::string_view kMetaUsedBytes = "used_bytes";       // u64, sum of segment sizes
inline constexpr std::string_view kMetaEvictions = "evictions";        // u64, bumped per eviction txn
inline constexpr std::string_view kMetaCorruptions = "corruptions";    // u64
inline constexpr std::string_view kMetaDedupNextSeq = "dedup_next_seq";  // u64
inline constexpr std::string_view kMetaJournalSequence = "journal_sequence";  // u64, the last one stamped

inline void put_le(char* p, std::uint64_t v, int width) {
  for (int i = 0; i < width; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
inline std::uint64_t get_le(const char* p, int width) {
  std::uint64_t v = 0;
  for (int i = 0; i < width; ++i) v |= std::uint64_t(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}
inline void put_be(char* p, std::uint64_t v, int width) {
  for (int i = 0; i < width; ++i) p[i] = static_cast<char>((v >> (8 * (width - 1 - i))) & 0xff);
}
inline std::uint64_t get_be(const char* p, int width) {
  std::uint64_t v = 0;
  for (int i = 0; i < width; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
inline xet::Hash get_hash(const char* p) {
  xet::Hash h;
  std::memcpy(h.bytes.data(), p, 32);
  return h;
}
inline void put_hash(char* p, const xet::Hash& h) { std::memcpy(p, h.bytes.data(), 32); }

// chunks key: xorb hash (32) ‖ chunk index (u32 BE)
inline constexpr std::size_t kChunkKeySize = 36;
using ChunkKey = std::array<char, kChunkKeySize>;
inline ChunkKey chunk_key(const xet::Hash& xorb, std::uint32_t index) {
  ChunkKey key;
  put_hash(key.data(), xorb);
  put_be(key.data() + 32, index, 4);
  return key;
}
inline std::string_view view(const ChunkKey& key) { return {key.data(), key.size()}; }

enum class Codec : std::uint8_t { kRaw = 0, kZstd = 1 };

// chunks value: segment u64 ‖ offset u64 ‖ stored_size u32 ‖ raw_size u32 ‖ codec u8 ‖
// 3 zero bytes ‖ chunk hash (32) [‖ group values (32 each)]: 60 bytes, or 60 + 32 ×
// xet::chunk_group_count(raw_size) for a raw chunk stored with its group values.
struct Location {
  std::uint64_t segment = 0;
  std::uint64_t offset = 0;
  std::uint32_t stored_size = 0;
  std::uint32_t raw_size = 0;
  Codec codec = Codec::kRaw;
  xet::Hash hash;
  std::uint8_t group_count = 0;  // 0: no group values (the chunk is verified whole)
  std::array<xet::Hash, xet::kMaxChunkGroups> groups{};
  bool same_place(const Location& o) const { return segment == o.segment && offset == o.offset; }
};
inline constexpr std::size_t kLocationSize = 60;
inline constexpr std::size_t kMaxLocationSize = kLocationSize + 32 * xet::kMaxChunkGroups;
struct EncodedLocation {
  std::array<char, kMaxLocationSize> bytes{};
  std::size_t length = 0;
  const char* data() const { return bytes.data(); }
  std::size_t size() const { return length; }
};
EncodedLocation encode(const Location& loc);
std::optional<Location> decode_location(std::string_view value);

// segments key: id u64 BE. value (32 bytes): size u64 ‖ last_used_ms u64 ‖ created_ms u64 ‖
// owner pid u32 ‖ 4 zero bytes
struct SegmentRecord {
  std::uint64_t size = 0;
  std::uint64_t last_used_ms = 0;
  std::uint64_t created_ms = 0;
  std::uint32_t owner_pid = 0;
};
inline constexpr std::size_t kSegmentRecordSize = 32;
std::array<char, kSegmentRecordSize> encode(const SegmentRecord& rec);
std::optional<SegmentRecord> decode_segment(std::string_view value);
std::array<char, 8> segment_key(std::uint64_t id);

// segment_chunks key: segment u64 BE ‖ offset u64 BE; value: the chunk key (36 bytes)
std::array<char, 16> segment_chunk_key(std::uint64_t segment, std::uint64_t offset);

// Segment data files: chunks/<id as 16 lowercase hex digits>.seg
std::string segment_file_name(std::uint64_t id);
std::optional<std::uint64_t> parse_segment_file_name(std::string_view name);

// dedup value (48 bytes): xorb hash (32) ‖ chunk index u32 ‖ size u32 ‖ sequence u64
inline constexpr std::size_t kDedupValueSize = 48;

// meta counters (absent = 0)
Result<std::uint64_t> get_counter(const lmdb::Transaction& txn, lmdb::Database meta, std::string_view name);
Result<void> set_counter(lmdb::Transaction& txn, lmdb::Database meta, std::string_view name, std::uint64_t value);
Result<void> add_counter(lmdb::Transaction& txn, lmdb::Database meta, std::string_view name, std::int64_t delta);

// Inserts or refreshes dedup records and trims to `max_entries` (oldest sequence first), inside
// the caller's write transaction.
Result<void> put_dedup(lmdb::Transaction& txn, const NodeStore::Databases& dbs,
                       std::span<const DedupRecord> records, std::uint64_t max_entries);

Error store_error(const lmdb::Error& e);
Error io_error(int err, std::string message);

}  // namespace bucketfs::cache::format
