#pragma once
// bucketfs-server's metadata: buckets, their entries (path -> file), file reconstructions,
// xorb chunk tables and the global dedup index, in one LMDB environment (DATA/meta).
// Every mutation is one write transaction, so a crash leaves either all of it or none.
//
// Databases and their records (keys are bytes; see docs/SERVER_FORMAT.md):
//   buckets       "ns/name"                      -> JSON {private, createdAt, updatedAt, size, files}
//   entries       "ns/name" 0x00 path            -> JSON {hash, size, mtime, uploaded, type?}
//   files         file hash (32 raw bytes)       -> FileRecord, binary
//   xorbs         xorb hash (32 raw bytes)       -> XorbRecord, binary
//   dedup         chunk hash (32 raw bytes)      -> xorb hashes (32 raw bytes each): the xorb holding
//                                                  the chunk, then the other xorbs of its shard
//   bucket_files  "ns/name" 0x00 file hash (32)  -> "" : files a bucket may read and reference
//
// Thread-safety: all methods may be called concurrently; LMDB serializes the writers.

#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bucketfs/lmdb/lmdb.h"
#include "bucketfs/xet/hash.h"
#include "bucketfs/xet/shard.h"

namespace bucketfs::server {

struct StoreError {
  std::string message;
};
template <typename T>
using StoreResult = std::expected<T, StoreError>;

struct BucketRecord {
  std::string id;  // "ns/name"
  bool is_private = false;
  std::int64_t created_ms = 0;
  std::int64_t updated_ms = 0;
  std::uint64_t size = 0;
  std::uint64_t file_count = 0;
};

struct EntryRecord {
  std::string path;
  xet::Hash xet_hash;
  std::uint64_t size = 0;
  std::int64_t mtime_ms = 0;
  std::int64_t uploaded_ms = 0;
  std::string content_type;  // empty when unknown
};

// A file's reconstruction as registered by a shard.
struct FileRecord {
  std::uint64_t size = 0;
  std::vector<xet::FileTerm> terms;
};

// A stored xorb: its chunks in order with where each lies in the serialized xorb.
struct XorbRecord {
  struct Chunk {
    xet::Hash hash;
    std::uint32_t size = 0;           // uncompressed
    std::uint32_t serialized_offset;  // of its header in the serialized xorb
  };
  std::uint64_t serialized_size = 0;
  std::vector<Chunk> chunks;

  // Byte range [begin, end) of chunks [first, last) in the serialized xorb. REQUIRES first < last <= size.
  std::pair<std::uint64_t, std::uint64_t> byte_range(std::size_t first, std::size_t last) const;
  std::vector<xet::HashAndSize> leaves() const;
  xet::XorbInfo info(const xet::Hash& xorb_hash) const;
};

// One line of a batch request, already parsed.
struct BatchOperation {
  enum class Kind { kAdd, kCopy, kDelete } kind = Kind::kAdd;
  std::string path;
  xet::Hash xet_hash;
  std::optional<std::int64_t> mtime_ms;
  std::string content_type;
  std::string source_bucket;  // copyFile: "ns/name"
};

struct BatchFailure {
  std::string path;
  std::string error;
};

struct ListPage {
  struct Item {
    bool is_directory = false;
    EntryRecord entry;  // for a directory only `path` is set
  };
  std::vector<Item> items;
  std::optional<std::string> next_cursor;  // opaque; pass back to continue
};

class MetadataStore {
 public:
  static StoreResult<MetadataStore> open(const std::string& directory);

  // --- buckets
  // False when the bucket already exists.
  StoreResult<bool> create_bucket(const std::string& id, bool is_private, std::int64_t now_ms);
  StoreResult<std::optional<BucketRecord>> bucket(const std::string& id) const;
  StoreResult<std::vector<BucketRecord>> buckets_of(const std::string& ns) const;
  // Deletes the bucket and all its entries. False when it did not exist.
  StoreResult<bool> delete_bucket(const std::string& id);
  // Renames a bucket with everything in it. Errors when `from` is missing or `to` exists.
  StoreResult<void> move_bucket(const std::string& from, const std::string& to, std::int64_t now_ms);

  // --- entries
  // Entries under `prefix` (the entry equal to it, and everything below `prefix/`; the whole
  // bucket when empty), in key order, resuming after `cursor`. Non-recursive listings return the
  // immediate children, folding deeper paths into directory items.
  StoreResult<ListPage> list(const std::string& bucket, const std::string& prefix, bool recursive,
                             std::size_t limit, const std::string& cursor) const;
  StoreResult<std::optional<EntryRecord>> entry(const std::string& bucket, const std::string& path) const;

  // Validates every operation (hash known and readable by the bucket, source readable), then
  // applies them all in one transaction, or none when any fails: the failures are returned.
  // `readable_source` tells whether the caller may read a copyFile's source bucket.
  StoreResult<std::vector<BatchFailure>> apply_batch(const std::string& bucket,
                                                     const std::vector<BatchOperation>& operations,
                                                     std::int64_t now_ms,
                                                     const std::function<bool(const std::string&)>& readable_source);

  // --- xet objects
  StoreResult<std::optional<FileRecord>> file(const xet::Hash& file_hash) const;
  StoreResult<std::optional<XorbRecord>> xorb(const xet::Hash& xorb_hash) const;
  StoreResult<bool> has_xorb(const xet::Hash& xorb_hash) const;
  // Records a stored xorb (idempotent). Returns false when it was already recorded.
  StoreResult<bool> put_xorb(const xet::Hash& xorb_hash, const XorbRecord& record);
  // Records the files of a validated upload shard, lets `bucket` read them, and indexes
  // `dedup_chunks` for global dedup: chunk hash -> the xorbs to answer with (the one holding the
  // chunk first). One transaction. Returns how many files were new.
  StoreResult<std::size_t> register_files(
      const std::string& bucket, const std::vector<std::pair<xet::Hash, FileRecord>>& files,
      const std::vector<std::pair<xet::Hash, std::vector<xet::Hash>>>& dedup_chunks);
  // The xorbs a global dedup query for `chunk_hash` answers with; empty when it is not indexed.
  StoreResult<std::vector<xet::Hash>> dedup_lookup(const xet::Hash& chunk_hash) const;
  // Whether `bucket` may read the file: it uploaded it, or holds or held an entry for it.
  StoreResult<bool> bucket_may_read(const std::string& bucket, const xet::Hash& file_hash) const;

  // Totals for /metrics: distinct xorbs and their serialized bytes.
  StoreResult<std::pair<std::uint64_t, std::uint64_t>> xorb_totals() const;

 private:
  explicit MetadataStore(lmdb::Environment env) : env_(std::move(env)) {}

  lmdb::Environment env_;
  lmdb::Database buckets_, entries_, files_, xorbs_, dedup_, bucket_files_, totals_;
};

// The mtime/uploadedAt form the clients parse: ISO-8601 UTC with milliseconds and 'Z'.
std::string iso8601_ms(std::int64_t unix_ms);

}  // namespace bucketfs::server
